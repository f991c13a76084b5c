"""AID baselines (AmIGO-GD/CG, SOBA, TTSA, stocBiO, BSA, STABLE, HJFBiO) against dense hand computations.

The shared registry tests (test_all_solvers.py) check convergence budgets and oracle counts; these check
what each method computes: the v estimate, the order of the updates, the corrections, the finite
differences and the option checks.  Everything is float64 and seeded.  On the quadratic problem
g = ½ yᵀAy − yᵀ(Bx + d), f = ½‖y − c‖² + (α/2)‖x‖², so
∇_y g = Ay − Bx − d, b = ∇_y f = y − c, ∇_x f = αx, J = ∇²_xy g = −Bᵀ (dx × dy) and Jᵀ = −B.
"""

from __future__ import annotations

import pytest
import torch

import bilevel
from bilevel.oracles import CountingOracles, Counts, Oracles
from bilevel.problem import BilevelProblem
from bilevel.sampling import full_batches
from bilevel.schedules import PowerDecay
from bilevel.solvers import SOLVERS

F64 = torch.float64


@pytest.fixture(scope="module")
def quad():
    return bilevel.problems.quadratic(dx=5, dy=20, condition=100.0, seed=0)


@pytest.fixture(scope="module")
def syn():
    return bilevel.problems.synthetic(n=40, condition=100.0, seed=0)


def make(name, **options):
    return SOLVERS[name].create(**options)


def steps(solver, problem, k, seed=0, counts=None):
    """The states after each of k steps (the run's own init/step, as solve() drives them)."""
    oracles = Oracles(problem) if counts is None else CountingOracles(Oracles(problem), counts)
    gen = torch.Generator().manual_seed(seed)
    solver = solver.bind(problem)
    state = solver.init(problem, oracles, gen)
    out = []
    for i in range(k):
        state = solver.step(state, oracles, full_batches(i))
        out.append(state)
    return out


def parts(problem):
    info = problem.info
    return info["A"], info["B"], info["c"], info["d"], info["alpha"]


def neumann_dense(A, b, eta, terms):
    """η Σ_{i<terms} (I − ηA)^i b."""
    M = torch.eye(A.shape[0], dtype=A.dtype) - eta * A
    term, total = b.clone(), torch.zeros_like(b)
    for _ in range(terms):
        total = total + term
        term = M @ term
    return eta * total


def rel(u, ref):
    return float(torch.linalg.vector_norm(u - ref) / torch.linalg.vector_norm(ref))


def y_after_gd(problem, x, y, theta, T):
    A, B, _, d, _ = parts(problem)
    for _ in range(T):
        y = y - theta * (A @ y - B @ x - d)
    return y


# ---- AmIGO ---------------------------------------------------------------------------------------


def test_amigo_gd_v_is_q_warm_started_gd_steps(quad):
    A, _, c, _, _ = parts(quad)
    opts = make("amigo_gd").resolve(quad)
    eta, Q, T, theta = opts["eta"], opts["v_steps"], opts["inner_steps"], opts["lr_y"]
    s0, s1 = steps(make("amigo_gd"), quad, 2)
    b0 = s0.iterate[1] - c
    assert rel(s0.v, neumann_dense(A, b0, eta, Q)) < 1e-12  # Q GD steps from 0 = Q Neumann terms
    y1 = y_after_gd(quad, s0.x, s0.y, theta, T)
    b1 = y1 - c
    v = s0.v
    for _ in range(Q):  # warm start from v_0
        v = v - eta * (A @ v - b1)
    assert rel(s1.v, v) < 1e-12


def _krylov_galerkin(A, b, q):
    """The CG iterate after q steps from 0: the Galerkin solution on span{b, Ab, …, A^(q−1) b}."""
    cols, u = [], b
    for _ in range(q):
        cols.append(u)
        u = A @ u
    V, _ = torch.linalg.qr(torch.stack(cols, 1))
    return V @ torch.linalg.solve(V.T @ A @ V, V.T @ b)


def test_amigo_cg_updates_v_every_cg_iteration(quad):
    """Frozen x and y = y*(x): the system A v = b is fixed.  Each extra CG iteration moves v (to the
    Krylov-Galerkin solution of one more dimension) and lowers the A-norm error; repeated calls lower the
    residual ‖A v − b‖."""
    A, B, c, d, _ = parts(quad)
    x = quad.x0
    b = torch.linalg.solve(A, B @ x + d) - c
    v_star = torch.linalg.solve(A, b)
    a_err = lambda v: float((v - v_star) @ A @ (v - v_star)) ** 0.5
    errors, previous = [], None
    for q in range(1, 7):
        solver = make("amigo_cg", v_steps=q)
        vs = solver.bind(quad).v_solver
        v, _, info = vs.solve(lambda u: A @ u, b, vs.init(b))
        assert info.matvecs == q  # from v = 0: no residual product
        assert rel(v, _krylov_galerkin(A, b, q)) < 1e-8
        if previous is not None:
            assert rel(v, previous) > 1e-3  # the last iteration changed v
        errors.append(a_err(v))
        previous = v
    assert all(e1 < e0 for e0, e1 in zip(errors, errors[1:]))

    # Restarted CG (a warm start per call) decreases the energy norm of the residual,
    # ‖r‖_{A⁻¹} = ‖v − v*‖_A, at every call; the 2-norm ‖r‖ may wobble between calls but falls overall.
    solver = make("amigo_cg", v_steps=5)
    vs = solver.bind(quad).v_solver
    state = vs.init(b)
    energy, residuals = [a_err(torch.zeros_like(b))], [float(torch.linalg.vector_norm(b))]
    for k in range(8):
        v, state, _ = vs.solve(lambda u: A @ u, b, state, k=k)
        energy.append(a_err(v))
        residuals.append(float(torch.linalg.vector_norm(A @ v - b)))
    assert all(e1 < e0 for e0, e1 in zip(energy, energy[1:])), energy
    assert residuals[-1] < 0.1 * residuals[0], residuals


def test_amigo_cg_in_the_loop_is_q_cg_steps_at_the_current_point(quad):
    A, _, c, _, _ = parts(quad)
    (s0,) = steps(make("amigo_cg", v_steps=4), quad, 1)
    b0 = s0.iterate[1] - c
    assert rel(s0.v, _krylov_galerkin(A, b0, 4)) < 1e-8


def test_amigo_cg_rtol_makes_counts_data_dependent(quad):
    solver = make("amigo_cg", rtol=1e-6)
    with pytest.raises(ValueError, match="rtol"):
        solver.bind(quad).expected_counts(10)


# ---- SOBA ----------------------------------------------------------------------------------------


def test_soba_is_simultaneous(quad):
    """Two steps against the hand computation: x_{k+1} uses v_k (not v_{k+1}), y_{k+1} and v_{k+1} use
    the directions at (x_k, y_k)."""
    A, B, c, d, alpha = parts(quad)
    solver = make("soba")
    opts = solver.resolve(quad)
    assert opts["order"] == "simultaneous" and opts["inner_steps"] == 1  # not the "*" preset's T = 5
    lam, theta, eta = opts["lr_x"], opts["lr_y"], opts["eta"]
    s0, s1 = steps(solver, quad, 2)
    x, y, v = quad.x0, quad.y0, torch.zeros_like(quad.y0)
    previous = (x, y, v)
    for state in (s0, s1):
        x_new = x - lam * (alpha * x + B.T @ v)  # ∇_x f − J v_k with J = −Bᵀ
        v_new = v - eta * (A @ v - (y - c))
        y_new = y - theta * (A @ y - B @ x - d)
        assert torch.allclose(state.x, x_new, rtol=1e-12, atol=1e-14)
        assert torch.allclose(state.v, v_new, rtol=1e-12, atol=1e-14)
        assert torch.allclose(state.y, y_new, rtol=1e-12, atol=1e-14)
        assert all(torch.equal(a, b) for a, b in zip(state.iterate, previous))  # evaluated at (x_k, y_k, v_k)
        x_seq = x - lam * (alpha * x + B.T @ v_new)  # what a sequential x-step would have done
        x, y, v = x_new, y_new, v_new
        previous = (state.x, state.y, state.v)
    assert rel(s1.x, x_seq) > 1e-6


def test_structural_options_come_from_the_solver_not_the_problem():
    """Problems carry only solver-neutral scales ("*"); T and Q come from the user, else the solver's
    published settings for the problem's experiment, else the solver's defaults."""
    x0, y0 = torch.zeros(2, dtype=F64), torch.zeros(3, dtype=F64)
    presets = {"*": {"lr_x": 0.1, "lr_y": 0.1, "eta": 0.1}}
    f, g = lambda x, y: (y ** 2).sum() + (x ** 2).sum(), lambda x, y: ((y - x.sum()) ** 2).sum()
    problem = BilevelProblem(f, g, x0, y0, presets=presets)
    assert make("soba").resolve(problem)["inner_steps"] == 1  # single loop by default
    assert make("soba", inner_steps=3).resolve(problem)["inner_steps"] == 3
    assert make("stocbio").resolve(problem)["inner_steps"] == 10  # the library default (reference HC)
    assert make("amigo_gd").resolve(problem)["inner_steps"] == 10
    synthetic_like = BilevelProblem(f, g, x0, y0, presets=presets, experiment="synthetic")
    assert make("amigo_gd").resolve(synthetic_like)["inner_steps"] == 5  # AmIGO-GD's synthetic setting
    assert make("amigo_gd", inner_steps=7).resolve(synthetic_like)["inner_steps"] == 7
    with pytest.raises(bilevel.ProblemError, match="solver-neutral"):
        BilevelProblem(f, g, x0, y0, presets={"*": {"lr_x": 0.1}, "ttsa": {"inner_steps": 2}})


@pytest.mark.parametrize("name", ["ttsa", "bsa"])
def test_randomized_neumann_estimator_is_unbiased_for_the_truncated_series(quad, name):
    """Each draw is v = Q·η·(I − ηA)^p b with p ∈ {0, …, Q−1}; over seeds the mean approaches
    η Σ_{i<Q} (I − ηA)^i b, not the Q + 1 term sum."""
    A, _, c, _, _ = parts(quad)
    solver = make(name, v_steps=5)  # the 3 % tolerance below is calibrated for Q = 5 and 1500 draws
    opts = solver.resolve(quad)
    eta, Q = opts["eta"], opts["v_steps"]
    M = torch.eye(A.shape[0], dtype=F64) - eta * A
    draws, ps, b = [], [], None
    for seed in range(1500):
        (state,) = steps(solver, quad, 1, seed=seed)
        x, y, v = state.iterate
        b = y - c  # y after the (deterministic) inner steps: b is the same for every seed
        p = state.v_state.last_p
        assert 0 <= p < Q
        assert rel(v, Q * eta * torch.linalg.matrix_power(M, p) @ b) < 1e-12
        draws.append(v)
        ps.append(p)
    counts = torch.bincount(torch.tensor(ps), minlength=Q).double() / len(ps)
    assert float((counts - 1.0 / Q).abs().max()) < 0.05  # p is uniform
    mean = torch.stack(draws).mean(0)
    target = neumann_dense(A, b, eta, Q)
    assert rel(mean, target) < 0.03
    assert rel(mean, neumann_dense(A, b, eta, Q + 1)) > 2 * rel(mean, target)


@pytest.mark.parametrize("name", ["ttsa", "bsa"])
def test_randomized_neumann_draws_are_reproducible_and_counted(quad, name):
    def draws(seed):
        # the v-solver's state is updated in place, so read each p right after its step
        counts = Counts()
        oracles = CountingOracles(Oracles(quad), counts)
        solver = make(name)
        bound = solver.bind(quad)
        state = bound.init(quad, oracles, torch.Generator().manual_seed(seed))
        ps = []
        for k in range(25):
            state = bound.step(state, oracles, full_batches(k))
            ps.append(state.v_state.last_p)
        return ps, counts.hvp

    ps, hvps = draws(3)
    assert draws(3) == (ps, hvps)
    assert draws(4)[0] != ps
    assert hvps == sum(ps)  # p HVPs per iteration, exactly
    r1 = bilevel.solve(quad, make(name), max_iter=20, seed=7)
    r2 = bilevel.solve(quad, make(name), max_iter=20, seed=7)
    assert torch.equal(r1.x, r2.x) and r1.counts.hvp == r2.counts.hvp


def test_ttsa_is_sequential_with_one_y_step(quad):
    A, B, c, d, alpha = parts(quad)
    solver = make("ttsa")
    opts = solver.resolve(quad)
    assert opts["order"] == "sequential" and opts["inner_steps"] == 1
    (s0,) = steps(solver, quad, 1)
    x, y, v = s0.iterate
    assert torch.allclose(y, y_after_gd(quad, quad.x0, quad.y0, opts["lr_y"], 1), rtol=1e-13)
    assert torch.allclose(s0.x, x - opts["lr_x"] * (alpha * x + B.T @ v), rtol=1e-13)


def test_ttsa_compat_hybrid_is_off_by_default_and_matches_its_definition(quad):
    from bilevel.linear_solvers import HybridNeumann, Neumann

    assert type(make("ttsa").v_solver) is Neumann and type(make("bsa").v_solver) is Neumann
    assert type(make("ttsa", compat_hybrid=True).v_solver) is HybridNeumann
    A, _, c, _, _ = parts(quad)
    solver = make("ttsa", compat_hybrid=True)
    opts = solver.resolve(quad)
    eta, Q = opts["eta"], opts["v_steps"]
    counts = Counts()
    (s0,) = steps(solver, quad, 1, seed=1, counts=counts)
    _, y, v = s0.iterate
    b, p = y - c, s0.v_state.last_p
    ref = eta * torch.linalg.matrix_power(torch.eye(A.shape[0], dtype=F64) - eta * A, p) @ b  # c = η
    for _ in range(Q):
        ref = ref - eta * (A @ ref - b)
    assert rel(v, ref) < 1e-12
    assert counts.hvp == p + Q
    assert solver.bind(quad).expected_counts(4)["hvp"] == 4 * ((Q - 1) / 2 + Q)


# ---- stocBiO -------------------------------------------------------------------------------------


def test_stocbio_v_is_the_dense_truncated_series_without_warm_start(quad):
    A, _, c, _, _ = parts(quad)
    solver = make("stocbio", v_steps=7)
    opts = solver.resolve(quad)
    for state in steps(solver, quad, 3):
        _, y, v = state.iterate
        b = y - c
        assert rel(v, neumann_dense(A, b, opts["eta"], 8)) < 1e-12  # i = 0..Q: Q + 1 terms, Q HVPs
        assert rel(v, neumann_dense(A, b, opts["eta"], 7)) > 1e-3


# ---- STABLE --------------------------------------------------------------------------------------


@pytest.mark.parametrize("closed_forms", [True, False])
def test_stable_step_and_y_correction_match_dense(closed_forms):
    problem = bilevel.problems.quadratic(dx=5, dy=20, condition=100.0, seed=0, closed_forms=closed_forms)
    A, B, c, d, alpha = parts(problem)
    solver = make("stable", v_steps=6)
    opts = solver.resolve(problem)
    lam, theta, eta, Q = opts["lr_x"], opts["lr_y"], opts["eta"], opts["v_steps"]
    x, y = problem.x0, problem.y0
    previous = (x, y)
    for state in steps(solver, problem, 3):
        v = neumann_dense(A, y - c, eta, Q + 1)
        x_new = x - lam * (alpha * x + B.T @ v)  # J v = −Bᵀ v
        t = -B @ (x_new - x)  # Jᵀ(x_{k+1} − x_k) with Jᵀ = −B
        z = neumann_dense(A, t, eta, Q + 1)
        y_new = y - theta * (A @ y - B @ x - d) - z
        assert rel(state.v, v) < 1e-10
        assert rel(state.x, x_new) < 1e-10
        assert rel(state.correction, z) < 1e-10
        assert rel(state.y, y_new) < 1e-10
        assert all(torch.equal(a, b) for a, b in zip(state.iterate, (*previous, state.v)))
        x, y, previous = x_new, y_new, (state.x, state.y)


def test_stable_uses_one_transposed_cross_product_per_iteration(quad):
    res = bilevel.solve(quad, make("stable", v_steps=4), max_iter=7, eval_every=100)
    assert res.counts.cross_t == 7 and res.counts.cross == 7
    assert res.counts.hvp == 2 * 4 * 7 and res.counts.grad_y_g == 7


# ---- HJFBiO --------------------------------------------------------------------------------------


def _random_point(problem, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = problem.x0 + 0.3 * torch.randn(problem.dx, generator=gen, dtype=F64)
    y = problem.y0 + 0.3 * torch.randn(problem.dy, generator=gen, dtype=F64)
    v = torch.randn(problem.dy, generator=gen, dtype=F64)
    return x, y, v


@pytest.mark.parametrize("scaled_shift", [False, True])
def test_hjfbio_finite_differences_match_exact_products(syn, scaled_shift):
    x, y, v = _random_point(syn)
    oracles = Oracles(syn)
    point = oracles.at(x, y)
    exact_av, exact_jv = point.hvp(v), point.cross(v)
    solver = make("hjfbio", scaled_shift=scaled_shift)
    opts = solver.resolve(syn)
    assert opts["delta"] == 1e-5
    av, jv = solver.bind(syn).products(oracles, x, y, v)
    assert rel(av, exact_av) < 1e-8 and rel(jv, exact_jv) < 1e-8
    coarse = make("hjfbio", scaled_shift=scaled_shift, delta=0.3)
    av2, jv2 = coarse.bind(syn).products(oracles, x, y, v)
    assert rel(av2, av) > 1e-6 and rel(jv2, jv) > 1e-6  # δ is used: O(δ²) truncation error


def test_hjfbio_zero_v_costs_nothing_and_counts_two_joint_gradients_otherwise(syn):
    x, y, v = _random_point(syn)
    counts = Counts()
    oracles = CountingOracles(Oracles(syn), counts)
    solver = make("hjfbio")
    av, jv = solver.bind(syn).products(oracles, x, y, torch.zeros_like(y))
    assert not av.any() and not jv.any() and counts.grad_y_g == 0 and counts.grad_x_g == 0
    solver.bind(syn).products(oracles, x, y, v)
    assert counts.grad_y_g == 2 and counts.grad_x_g == 2 and counts.hvp == 0 and counts.cross == 0


def test_hjfbio_float32_defaults_to_a_larger_scaled_shift():
    problem = bilevel.problems.synthetic(n=40, condition=100.0, seed=0, dtype=torch.float32)
    solver = make("hjfbio")
    opts = solver.resolve(problem)
    assert opts["delta"] == 1e-3 and opts["scaled_shift"] is True
    x, y, v = (t.float() for t in _random_point(problem))
    oracles = Oracles(problem)
    av, jv = solver.bind(problem).products(oracles, x, y, 1e3 * v)  # a large v would wreck an unscaled shift
    point = oracles.at(x, y)
    assert rel(av, point.hvp(1e3 * v)) < 1e-2 and rel(jv, point.cross(1e3 * v)) < 1e-2


def test_hjfbio_is_simultaneous_with_its_own_v_step(quad):
    A, B, c, d, alpha = parts(quad)
    solver = make("hjfbio", eta=0.5 / quad.info["L"])  # η ≠ θ: the v-step is its own option
    opts = solver.resolve(quad)
    lam, theta, eta = opts["lr_x"], opts["lr_y"], opts["eta"]
    x, y, v = quad.x0, quad.y0, torch.zeros_like(quad.y0)
    for state in steps(solver, quad, 3):
        x_new = x - lam * (alpha * x + B.T @ v)  # Ĵ v_k, the old v
        v_new = v - eta * (A @ v - (y - c))
        y_new = y - theta * (A @ y - B @ x - d)
        assert rel(state.x, x_new) < 1e-9 and rel(state.v, v_new) < 1e-9 and rel(state.y, y_new) < 1e-12
        x, y, v = x_new, y_new, v_new


# ---- options -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kwargs, exc, fragment",
    [
        ("amigo_gd", {"eta": -1.0}, ValueError, "eta must be finite and > 0"),
        ("amigo_gd", {"v_steps": 0}, ValueError, "v_steps must be >= 1"),
        ("amigo_gd", {"v_step": 3}, TypeError, "Did you mean 'v_steps'"),
        ("amigo_cg", {"v_steps": 2.5}, TypeError, "v_steps must be an integer"),
        ("amigo_cg", {"rtol": 0.0}, ValueError, "rtol must be finite and > 0"),
        ("amigo_cg", {"freeze_x_first": 2}, ValueError, "freeze_x_first"),
        ("soba", {"eta": PowerDecay(0.1, 0.4)}, TypeError, "eta must be a number"),
        ("soba", {"inner_steps": 0}, ValueError, "inner_steps must be >= 1"),
        ("ttsa", {"compat_hybrid": 1}, TypeError, "compat_hybrid must be True or False"),
        ("ttsa", {"v_init": "randn"}, ValueError, "v_init"),
        ("stocbio", {"v_steps": -2}, ValueError, "v_steps must be >= 1"),
        ("bsa", {"eta": float("inf")}, ValueError, "eta must be finite"),
        ("stable", {"tau": 0.5}, TypeError, "unknown option 'tau'"),
        ("stable", {"inner_steps": 1}, TypeError, "unknown option 'inner_steps'"),
        ("stable", {"v_steps": 0}, ValueError, "v_steps must be >= 1"),
        ("stable", {"lr_x": -1.0}, ValueError, "lr_x"),
        ("hjfbio", {"delta": 0.0}, ValueError, "delta must be finite and > 0"),
        ("hjfbio", {"scaled_shift": "yes"}, TypeError, "scaled_shift must be True or False"),
        ("hjfbio", {"inner_steps": 1}, TypeError, "unknown option 'inner_steps'"),
    ],
)
def test_bad_options_are_rejected_with_a_clear_message(name, kwargs, exc, fragment):
    with pytest.raises(exc, match=fragment):
        make(name, **kwargs)


@pytest.mark.parametrize("name", ["stable", "hjfbio"])  # like the AID solvers, they fill eta from curvature
def test_missing_eta_is_automatic(name):
    problem = BilevelProblem(lambda x, y: (y ** 2).sum(), lambda x, y: ((y - x) ** 2).sum(),
                             torch.zeros(3, dtype=F64), torch.zeros(3, dtype=F64))
    solver = make(name, lr_x=0.1, lr_y=0.1)
    assert solver.resolve(problem)["eta"] == "auto" and solver.bind(problem).auto_steps.names == ("eta",)
