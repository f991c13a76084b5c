"""Stochastic (mini-batch) versions of the solvers: the ``"stochastic/…"`` settings, ``hessian_batch``, the
estimators' means and variances, convergence under mini-batches, and exact counts of calls, samples and draws.

Problems: the finite-sum forms of ``quadratic`` and ``synthetic`` (``n_samples=``, ``n_samples_f=``), whose
closed forms evaluate the batch mean and whose ground truth is exact for the full sums (float64).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import pytest
import torch

import bilevel
from bilevel.linear_solvers.base import LinearSolver
from bilevel.linear_solvers.cg import CG
from bilevel.linear_solvers.gd import GD, GDState
from bilevel.sampling import MiniBatch, full_batches
from bilevel.solvers import SOLVERS, aid

#: every solver with a stochastic version in its paper, and the others that run under mini-batches
STOCHASTIC = {"soba", "ttsa", "stocbio", "bsa", "amigo_gd", "amigo_cg", "f2sa", "bome", "pbgd", "stable", "hjfbio",
              "itd"}


@pytest.fixture(scope="module")
def small():
    return bilevel.problems.quadratic(dx=4, dy=8, condition=10.0, seed=0, n_samples=200, n_samples_f=100)


@pytest.fixture(scope="module")
def problems():
    return {
        "quadratic": bilevel.problems.quadratic(dx=5, dy=20, condition=10.0, seed=0, n_samples=200,
                                                n_samples_f=100),
        "synthetic": bilevel.problems.synthetic(n=100, condition=100.0, seed=0, n_samples=200, n_samples_f=100),
    }


# ---- interface 2: stochastic settings ------------------------------------------------------------------
def _keyed_problem(experiment):
    x0, y0 = torch.zeros(2, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    return bilevel.BilevelProblem(lambda x, y: (x.sum() - y.sum()) ** 2, lambda x, y: (y ** 2).sum() - x.sum() * y.sum(),
                                  x0, y0, experiment=experiment, presets={"*": {"lr_x": 1.0, "lr_y": 0.1, "eta": 0.1}})


def test_stochastic_settings_are_looked_up_first():
    problem = _keyed_problem("hyperclean/mnist")
    solver = aid(v_solver=GD(), name="probe", settings={
        "hyperclean": {"inner_steps": 3, "lr_x": 7.0},
        "stochastic/hyperclean": {"inner_steps": 6, "v_steps": 9},
        "stochastic/hyperclean/mnist": {"v_steps": 4},
    })
    det = solver.bind(problem)
    sto = solver.bind(problem, stochastic=True)
    assert not det.stochastic and sto.stochastic
    assert (det.inner.steps, det.v_solver.steps, det.lr_x) == (3, 5, 7.0)  # GD's library default Q = 5
    # the most specific stochastic key, then stochastic/hyperclean, then the deterministic keys
    assert (sto.inner.steps, sto.v_solver.steps, sto.lr_x) == (6, 4, 7.0)
    # re-binding a bound copy with the other flag binds its configuration again
    assert det.bind(problem, stochastic=True).inner.steps == 6 and det.bind(problem) is det
    with pytest.raises(TypeError, match="stochastic must be True or False"):
        solver.bind(problem, stochastic="yes")


@pytest.mark.parametrize("name,expected", [
    ("amigo_gd", {"inner_steps": 6, "v_steps": 9, "lr_x": 100.0, "lr_y": 0.1, "eta": 0.1,
                  "hessian_batch": "product"}),
    ("amigo_cg", {"inner_steps": 6, "v_steps": 9, "lr_x": 100.0, "lr_y": 0.1, "hessian_batch": "iteration"}),
    ("stocbio", {"inner_steps": 9, "v_steps": 9, "lr_x": 100.0, "lr_y": 0.1, "eta": 0.1, "hessian_batch": "product"}),
    ("bsa", {"inner_steps": 9, "v_steps": 9, "lr_x": 100.0, "lr_y": 0.1, "eta": 0.1, "hessian_batch": "product"}),
    ("ttsa", {"inner_steps": 1, "v_steps": 9, "lr_x": 100.0, "lr_y": 0.1, "eta": 0.1, "hessian_batch": "product"}),
    ("soba", {"inner_steps": 1, "lr_x": 100.0, "lr_y": 0.1, "eta": 0.1}),
    ("itd", {"inner_steps": 9, "lr_x": 100.0, "lr_y": 0.1}),
])
def test_published_stochastic_hyperclean_settings(name, expected):
    """§3 "Stoc" columns and §4.3 (λ = 100, θ = 0.1, η = 0.1), resolved for a mini-batch hyper-cleaning run."""
    problem = _keyed_problem("hyperclean/mnist")
    opts = SOLVERS[name].create().resolve(problem, stochastic=True)
    assert {k: opts[k] for k in expected} == expected
    det = SOLVERS[name].create().resolve(problem)
    assert det["lr_x"] == 1.0  # the deterministic run keeps the problem's scale (no stochastic settings)


def test_solve_binds_stochastic_and_records_it(small):
    solver = SOLVERS["amigo_gd"].create(inner_steps=2, v_steps=2)
    full = bilevel.solve(small, solver, max_iter=3, eval_every=10)
    mini = bilevel.solve(small, solver, max_iter=3, eval_every=10, batches=MiniBatch(16))
    assert full.options["stochastic"] is False and mini.options["stochastic"] is True
    assert mini.options["hessian_batch"] == "product" and full.options["hessian_batch"] == "product"


# ---- interface 1: hessian_batch --------------------------------------------------------------------------
class _Spy(bilevel.OracleWrapper):
    """Records the batch of every HVP and cross product, in order."""

    def __init__(self, inner):
        super().__init__(inner)
        self.hvp_batches = []
        self.cross_batches = []

    def at(self, x, y, batch=None):
        spy, point = self, self.inner.at(x, y, batch)

        class P(bilevel.oracles.PointWrapper):
            def hvp(self, u):
                spy.hvp_batches.append(batch)
                return point.hvp(u)

            def cross(self, u):
                spy.cross_batches.append(batch)
                return point.cross(u)

        return P(point)


def _key(batch):
    return None if batch is None else tuple(batch.tolist())


@pytest.mark.parametrize("mode", ["iteration", "product", "epoch"])
def test_hessian_batch_modes(small, mode):
    Q, K = 4, 3
    solver = aid(v_solver=GD(steps=Q), inner_steps=1, hessian_batch=mode, v_init="randn")
    spy = _Spy(bilevel.Oracles(small))
    bilevel.solve(small, solver, max_iter=K, eval_every=100, batches=MiniBatch(8), oracles=spy)
    keys = [_key(b) for b in spy.hvp_batches]
    assert len(keys) == Q * K
    per_iter = [keys[i * Q:(i + 1) * Q] for i in range(K)]
    if mode == "product":
        assert all(len(set(it)) == Q for it in per_iter)  # a fresh batch per product
    else:
        assert all(len(set(it)) == 1 for it in per_iter)  # one operator per v-solve
        # "epoch" with the default starts_epoch (every call its own epoch) draws anew every iteration
        assert len({it[0] for it in per_iter}) == K


class _EveryOther(GD):
    """GD whose epochs are two calls long (starts_epoch at even k)."""

    def starts_epoch(self, state, k):
        return k % 2 == 0


def test_hessian_batch_epoch_holds_the_draw_within_an_epoch(small):
    solver = aid(v_solver=_EveryOther(steps=2), inner_steps=1, hessian_batch="epoch", v_init="randn")
    spy = _Spy(bilevel.Oracles(small))
    bilevel.solve(small, solver, max_iter=6, eval_every=100, batches=MiniBatch(8), oracles=spy)
    per_iter = [_key(spy.hvp_batches[2 * i]) for i in range(6)]
    assert per_iter[0] == per_iter[1] and per_iter[2] == per_iter[3] and per_iter[4] == per_iter[5]
    assert len({per_iter[0], per_iter[2], per_iter[4]}) == 3


def test_starts_epoch_default_is_true():
    assert LinearSolver.starts_epoch(GD(eta=0.1, steps=1), None, 3) is True


@pytest.mark.parametrize("mode", ["iteration", "product", "epoch"])
def test_hessian_batch_full_batch_is_bit_identical(small, mode):
    base = bilevel.solve(small, aid(v_solver=GD(steps=3)), max_iter=20, eval_every=5)
    other = bilevel.solve(small, aid(v_solver=GD(steps=3), hessian_batch=mode), max_iter=20, eval_every=5)
    strip = lambda res: [{k: v for k, v in row.items() if k != "time"} for row in res.history]
    assert strip(base) == strip(other) and torch.equal(base.x, other.x)


def test_no_hvp_draw_without_a_product(small):
    """A randomised Neumann draw p = 0 makes no product, so no HVP batch is drawn (defect 3)."""
    solver = SOLVERS["ttsa"].create(v_steps=1)  # p ~ U{0}: never a product
    spy = _Spy(bilevel.Oracles(small))
    res = bilevel.solve(small, solver, max_iter=5, eval_every=100, batches=MiniBatch(8), oracles=spy)
    assert res.counts.hvp == 0 and spy.hvp_batches == []
    assert res.counts.samples_g == 5 * (8 + 8)  # 1 y-step and 1 cross product per iteration


def test_amigo_cg_one_hessian_batch_per_cg_run(small):
    """AmIGO-CG under mini-batches: every product of an iteration's CG run on one batch (§3.2), the cross
    product on its own training batch."""
    spy = _Spy(bilevel.Oracles(small))
    Q, K = 3, 4
    res = bilevel.solve(small, SOLVERS["amigo_cg"].create(v_steps=Q, inner_steps=1), max_iter=K, eval_every=100,
                        batches=MiniBatch(8), oracles=spy)
    keys = [_key(b) for b in spy.hvp_batches]
    runs = [keys[:Q]] + [keys[Q + i * (Q + 1):Q + (i + 1) * (Q + 1)] for i in range(K - 1)]
    assert res.counts.hvp == len(keys) == Q + (K - 1) * (Q + 1)
    assert all(len(set(run)) == 1 for run in runs) and len({run[0] for run in runs}) == K
    assert all(_key(c) != run[0] for c, run in zip(spy.cross_batches, runs))


def test_cg_updates_v_every_step_and_the_residual_decreases():
    """Reference defect §6.9: v changes at every CG step, and on a fixed system the error in the A-norm (the
    quantity CG minimises) and the residual ‖b − A v‖ decrease, step by step and call by call (warm start)."""
    gen = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(30, 30, generator=gen, dtype=torch.float64))
    A = (basis * torch.linspace(1.0, 50.0, 30, dtype=torch.float64)) @ basis.T
    b = torch.randn(30, generator=gen, dtype=torch.float64)
    v_star = torch.linalg.solve(A, b)
    energy = lambda v: float((v - v_star) @ A @ (v - v_star))
    residual = lambda v: float(torch.linalg.vector_norm(b - A @ v))
    v0 = torch.randn(30, generator=gen, dtype=torch.float64)
    vs = [v0]
    for q in range(1, 7):  # the iterate after q CG steps from the same warm start
        solver = CG(steps=q)
        v, _, _ = solver.solve(lambda u: A @ u, b, solver.init(b, v0))
        vs.append(v)
    assert all(not torch.equal(vs[i], vs[i + 1]) for i in range(6))
    errors = [energy(v) for v in vs]
    assert all(e1 < e0 for e0, e1 in zip(errors, errors[1:])), errors
    assert residual(vs[-1]) < 0.5 * residual(v0)
    solver = CG(steps=3)
    state = solver.init(b, v0)
    res = [residual(v0)]
    for k in range(6):  # warm-started calls on the fixed system
        v, state, _ = solver.solve(lambda u: A @ u, b, state, k=k)
        res.append(residual(v))
    assert all(r1 < r0 for r0, r1 in zip(res, res[1:])), res


# ---- estimators at a fixed point -------------------------------------------------------------------------
class _Point:
    """A fixed (x, y, v_prev) of the small quadratic and its closed-form AID quantities."""

    def __init__(self, problem):
        gen = torch.Generator().manual_seed(7)
        self.problem = problem
        info = problem.info
        self.A, self.B, self.c, self.alpha = info["A"], info["B"], info["c"], info["alpha"]
        self.x = torch.randn(problem.dx, generator=gen, dtype=torch.float64)
        self.y = torch.randn(problem.dy, generator=gen, dtype=torch.float64)
        self.v_prev = torch.randn(problem.dy, generator=gen, dtype=torch.float64)
        self.b = self.y - self.c  # ∇_y f on the full data
        self.oracles = bilevel.Oracles(problem)

    def direction(self, v):
        """∇_x f − J v = αx + Bᵀv (J = −Bᵀ)."""
        return self.alpha * self.x + self.B.T @ v

    def neumann(self, eta, terms):
        """η Σ_{i<terms} (I − ηA)^i b."""
        r, total = self.b, self.b.clone()
        for _ in range(terms - 1):
            r = r - eta * (self.A @ r)
            total = total + r
        return eta * total

    def step(self, bound, batches, seed=0):
        """One step of ``bound`` from (x, y, v_prev): the x-direction (lr_x = 1) and the new v."""
        state = bound.init(self.problem, self.oracles, torch.Generator().manual_seed(seed))
        v_state = GDState(v=self.v_prev, v_is_zero=False) if isinstance(state.v_state, GDState) else state.v_state
        state = dataclasses.replace(state, x=self.x, y=self.y, v=self.v_prev, v_state=v_state)
        new = self.last = bound.step(state, self.oracles, batches)
        return (self.x - new.x) / bound.lr_x, new.v

    def draws(self, bound, batch_size, n):
        """n independent estimates (each from its own seeded sampler and solver generator): the directions,
        the new v's and the drawn truncations p (None for a solver without)."""
        ds, vs, ps = [], [], []
        for s in range(n):
            stream = MiniBatch(batch_size).start(bound.batch_roles, torch.Generator().manual_seed(10_000 + s),
                                                 self.problem)
            d, v = self.step(bound, stream(0), seed=s)
            ds.append(d)
            vs.append(v)
            ps.append(getattr(self.last.v_state, "last_p", None))
        self.ps = ps
        return torch.stack(ds), torch.stack(vs)


def _within(samples, target, z=4.0):
    """The sample mean is within z standard errors of ``target`` in every coordinate (sampling error only:
    the draws are independent)."""
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(samples.shape[0])
    return bool(((mean - target).abs() <= z * se).all()), ((mean - target) / se).abs().max().item()


N_MEAN, N_VAR = 1000, 300


def _check_variance_falls(point, bound, small, factor, centre=None):
    """The total sampling variance (trace of the covariance) of the estimates at B = 64 is at most 1/factor of
    that at B = 8 (``small``: the B = 8 draws).  ``centre(point)``: the full-data value of each draw given its
    other randomness (BSA/TTSA: the drawn truncation p, whose own variance no batch size removes)."""
    small_ps = point.ps
    large, _ = point.draws(bound, 64, N_VAR)
    if centre is not None:
        small = small - torch.stack([centre(p) for p in small_ps])
        large = large - torch.stack([centre(p) for p in point.ps])
    small_var, large_var = float(small.var(0).sum()), float(large.var(0).sum())
    assert large_var <= small_var / factor, (small_var, large_var)


def test_amigo_gd_estimator_is_unbiased(small):
    """AmIGO-GD with a fresh batch per HVP: E[v] is the full-batch GD iterate, so the mean estimate matches the
    exact full-batch AID estimate with the same T (0 here: y fixed), Q and v-solver; the variance falls ~1/B."""
    point = _Point(small)
    bound = SOLVERS["amigo_gd"].create(inner_steps=0, v_steps=4, lr_x=1.0).bind(small, stochastic=True)
    assert bound.hessian_batch == "product"
    exact, _ = point.step(bound, full_batches())
    eta, v = bound.v_solver.eta, point.v_prev
    for _ in range(4):
        v = v - eta * (point.A @ v - point.b)
    assert torch.allclose(exact, point.direction(v), rtol=1e-12, atol=1e-12)
    ds, _ = point.draws(bound, 8, N_MEAN)
    ok, z = _within(ds, exact)
    assert ok, f"max |mean − exact| = {z:.2f} standard errors"
    _check_variance_falls(point, bound, ds, 4.0)


@pytest.mark.parametrize("name", ["stocbio", "bsa", "ttsa"])
def test_neumann_estimators_match_the_truncated_series(small, name):
    """stocBiO (fixed Q terms) and BSA/TTSA (random truncation p ~ U{0..Q−1}, scale Qη), a fresh batch per
    HVP: the mean estimate is the truncated Neumann series on the full data, E[v] = η Σ_{i<terms} (I − ηĀ)^i b̄
    (terms = Q + 1 for stocBiO, Q for BSA/TTSA), which differs from the exact AID estimate by the known
    truncation bias −Bᵀ (I − ηĀ)^terms Ā⁻¹ b̄ (not zero, many standard errors here)."""
    point = _Point(small)
    Q = 4
    if name == "ttsa":  # TTSA's estimator (its own factory needs T ≥ 1, which would move y)
        ttsa = SOLVERS["ttsa"].create(v_steps=Q).bind(small, stochastic=True)
        bound = aid(v_solver=ttsa.v_solver, hessian_batch=ttsa.hessian_batch, inner_steps=0,
                    lr_x=1.0).bind(small, stochastic=True)
    else:
        bound = SOLVERS[name].create(inner_steps=0, v_steps=Q, lr_x=1.0).bind(small, stochastic=True)
    assert bound.hessian_batch == "product"
    eta = bound.v_solver.eta
    terms = Q + 1 if name == "stocbio" else Q
    expected = point.direction(point.neumann(eta, terms))
    if name == "stocbio":  # deterministic length: the full-batch run is the truncated series itself
        exact, _ = point.step(bound, full_batches())
        assert torch.allclose(exact, expected, rtol=1e-12, atol=1e-12)
    A_inv_b = torch.linalg.solve(point.A, point.b)
    bias = -point.B.T @ torch.linalg.matrix_power(torch.eye(small.dy, dtype=torch.float64) - eta * point.A,
                                                  terms) @ A_inv_b
    assert torch.allclose(expected - point.direction(A_inv_b), bias, rtol=1e-10, atol=1e-12)
    ds, _ = point.draws(bound, 8, N_MEAN)
    ok, z = _within(ds, expected)
    assert ok, f"max |mean − truncated series| = {z:.2f} standard errors"
    ok_exact, z_exact = _within(ds, point.direction(A_inv_b))
    assert not ok_exact and z_exact > 20, z_exact  # the bias is real, and resolved by these draws
    centre = None
    if name != "stocbio":  # given p, the full-data estimate is αx + Bᵀ Qη (I − ηĀ)^p b̄
        M = torch.eye(small.dy, dtype=torch.float64) - eta * point.A
        centre = lambda p: point.direction(Q * eta * torch.linalg.matrix_power(M, p) @ point.b)
        assert set(point.ps) == set(range(Q))
    _check_variance_falls(point, bound, ds, 4.0, centre)


def test_soba_directions_are_unbiased(small):
    """SOBA: one training batch for D_y, the HVP and the cross product, one validation batch for b: the mean
    x-direction ∇_x f − J v_k and the mean new v = v_k − η (A v_k − b) match the full-batch ones."""
    point = _Point(small)
    bound = SOLVERS["soba"].create(lr_x=1.0).bind(small, stochastic=True)
    exact_d, exact_v = point.step(bound, full_batches())
    assert torch.allclose(exact_d, point.direction(point.v_prev), rtol=1e-12, atol=1e-12)
    eta = bound.v_solver.eta
    assert torch.allclose(exact_v, point.v_prev - eta * (point.A @ point.v_prev - point.b), rtol=1e-12, atol=1e-12)
    ds, vs = point.draws(bound, 8, N_MEAN)
    for samples, target in ((ds, exact_d), (vs, exact_v)):
        ok, z = _within(samples, target)
        assert ok, f"max |mean − exact| = {z:.2f} standard errors"
    _check_variance_falls(point, bound, ds, 4.0)


# ---- convergence under mini-batches ----------------------------------------------------------------------
def _budgeted(section):
    return sorted(name for name in SOLVERS if section in SOLVERS[name].checks)


def test_every_stochastic_solver_declares_budgets():
    for section in ("stochastic/quadratic", "stochastic/synthetic"):
        missing = STOCHASTIC - set(_budgeted(section))
        assert not missing, f"no {section!r} budget in checks: {sorted(missing)}"


@pytest.mark.parametrize("problem_name", ["quadratic", "synthetic"])
@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_reduces_true_hypergradient_with_mini_batches(problems, name, problem_name):
    """The budget of the solver's ``checks["stochastic/<problem>"]``: ‖∇φ(x_0)‖ over the mean of the last 5 of
    21 evaluations (the level where the sampling noise leaves it) is at least the stated reduction."""
    budget = SOLVERS[name].checks[f"stochastic/{problem_name}"]
    K = budget["max_iter"]
    solver = SOLVERS[name].create(**budget.get("options", {}))
    res = bilevel.solve(problems[problem_name], solver, max_iter=K, eval_every=K // 20, seed=0,
                        batches=MiniBatch(budget["batch_size"]), true_hypergradient=True)
    assert res.status == "max_iter", res.message
    assert res.options["stochastic"] is True
    h = res.history.column("hypergrad_norm")
    assert len(h) == 21
    reduction = h[0] / (sum(h[-5:]) / 5)
    assert reduction >= budget["reduction"], (name, problem_name, reduction, h)


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_mini_batch_runs_are_deterministic_per_seed(problems, name):
    problem = problems["quadratic"]
    budget = SOLVERS[name].checks["stochastic/quadratic"]
    run = lambda seed: bilevel.solve(problem, SOLVERS[name].create(**budget.get("options", {})), max_iter=12,
                                     eval_every=4, seed=seed, batches=MiniBatch(16))
    a, b, c = run(3), run(3), run(4)
    strip = lambda res: [{k: v for k, v in row.items() if k != "time"} for row in res.history]
    assert strip(a) == strip(b) and torch.equal(a.x, b.x)
    assert not torch.equal(a.x, c.x)  # another seed draws other batches


# ---- counts: calls, samples and draws per iteration ------------------------------------------------------
class _CountingDraws:
    """A batch source that counts the draws of each group (a wasted draw would show)."""

    def __init__(self, inner):
        self.inner, self.draws = inner, Counter()

    def start(self, roles, generator, problem=None):
        stream = self.inner.start(roles, generator, problem)

        def make(k):
            batches = stream(k)
            draw = batches._draw

            def counted(group, index):
                self.draws[group] += 1
                return draw(group, index)

            batches._draw = counted
            return batches

        return make


@pytest.fixture(scope="module")
def counts_problem():
    # large and ill-conditioned enough that no solve ends early; 600 samples hold a batch of 256
    return bilevel.problems.quadratic(dx=4, dy=60, condition=1e3, seed=1, n_samples=600, n_samples_f=300)


B_G, B_F, K_COUNTS = 256, 128, 6

#: name → (options, samples_g(K, B, counts), samples_f(K, B_f), draws per group(K, counts)) as documented
COSTS = {
    # the AmIGO-GD example: T = 6, Q = 9, B = 256: per iteration (6 + 9 + 1)·256 on g (Q − 1 HVPs in the first)
    "amigo_gd": ({"inner_steps": 6, "v_steps": 9},
                 lambda K, B, c: (16 * K - 1) * B, lambda K, Bf: 2 * Bf * K,
                 lambda K, c: {"inner": 6 * K, "upper": K, "hvp": 9 * K - 1, "cross": K}),
    "amigo_cg": ({"inner_steps": 6, "v_steps": 9},
                 lambda K, B, c: (17 * K - 1) * B, lambda K, Bf: 2 * Bf * K,
                 lambda K, c: {"inner": 6 * K, "upper": K, "hvp": K, "cross": K}),
    "stocbio": ({"inner_steps": 9, "v_steps": 9},
                lambda K, B, c: 19 * K * B, lambda K, Bf: 2 * Bf * K,
                lambda K, c: {"inner": 9 * K, "upper": K, "hvp": 9 * K, "cross": K}),
    "bsa": ({"inner_steps": 9, "v_steps": 9},
            lambda K, B, c: (10 * K + c.hvp) * B, lambda K, Bf: 2 * Bf * K,
            lambda K, c: {"inner": 9 * K, "upper": K, "hvp": c.hvp, "cross": K}),
    "ttsa": ({"v_steps": 9},
             lambda K, B, c: (2 * K + c.hvp) * B, lambda K, Bf: 2 * Bf * K,
             lambda K, c: {"inner": K, "upper": K, "hvp": c.hvp, "cross": K}),
    "soba": ({},
             lambda K, B, c: (3 * K - 1) * B, lambda K, Bf: 2 * Bf * K,
             lambda K, c: {"train": K, "upper": K}),
    "f2sa": ({"inner_steps": 3},
             lambda K, B, c: 8 * K * B, lambda K, Bf: 4 * Bf * K,
             lambda K, c: {"inner": 3 * K, "upper": 4 * K, "lower": K}),
    "bome": ({"inner_steps": 3},
             lambda K, B, c: 6 * K * B, lambda K, Bf: 2 * Bf * K,
             lambda K, c: {"inner": 3 * K, "lower": K, "upper": K}),
    "pbgd": ({"inner_steps": 3},
             lambda K, B, c: 6 * K * B, lambda K, Bf: 2 * Bf * K,
             lambda K, c: {"inner": 3 * K, "lower": K, "upper": K}),
    "stable": ({"v_steps": 3},
               lambda K, B, c: 9 * K * B, lambda K, Bf: 2 * Bf * K,
               lambda K, c: {"hvp": K, "upper": K, "cross": K}),
    "hjfbio": ({},
               lambda K, B, c: (5 * K - 4) * B, lambda K, Bf: 2 * Bf * K,
               lambda K, c: {"hvp": K - 1, "inner": K, "upper": K}),
    "itd": ({"inner_steps": 4, "backprop_steps": 3},
            lambda K, B, c: 9 * K * B, lambda K, Bf: 2 * Bf * K,
            lambda K, c: {"inner": 4 * K, "upper": K}),
}


@pytest.mark.parametrize("name", sorted(COSTS))
def test_counts_samples_and_draws_match_documentation(counts_problem, name):
    """Under MiniBatch(256, upper 128): the oracle calls equal ``expected_counts`` (p is random for BSA/TTSA:
    their samples are checked against the counted HVPs), the samples per level the documented cost exactly
    (∇_x f and ∇_y f are one grad_f call on one upper batch: 2·B_upper per iteration), and every draw is used."""
    options, samples_g, samples_f, draws = COSTS[name]
    solver = SOLVERS[name].create(**options)
    source = _CountingDraws(MiniBatch(B_G, sizes={"upper": B_F}))
    res = bilevel.solve(counts_problem, solver, max_iter=K_COUNTS, eval_every=10 ** 6, true_hypergradient=False,
                        seed=5, batches=source)
    assert res.status == "max_iter", res.message
    counts = res.counts
    expected = solver.bind(counts_problem, stochastic=True).expected_counts(K_COUNTS)
    for key, value in expected.items():
        if not (SOLVERS[name].random_cost and key == "hvp"):
            assert getattr(counts, key) == value, (name, key, getattr(counts, key), value)
    assert counts.linearize == 0  # closed-form products: no graph builds to add to the samples
    assert counts.samples_g == samples_g(K_COUNTS, B_G, counts), (name, counts)
    assert counts.samples_f == samples_f(K_COUNTS, B_F), (name, counts)
    # every lower call touches one batch of B_G samples, every upper call one of B_F
    lower_calls = counts.grad_y_g + counts.grad_x_g + counts.hvp + counts.cross + counts.cross_t
    assert counts.samples_g == B_G * lower_calls and counts.samples_f == B_F * (counts.grad_x_f + counts.grad_y_f)
    assert dict(source.draws) == draws(K_COUNTS, counts), (name, dict(source.draws))


def test_f2sa_unpaired_draws(counts_problem):
    """F2SA with paired_draws=False: the y-steps draw their own lower batches (2T inner draws per iteration),
    at the same samples cost."""
    source = _CountingDraws(MiniBatch(B_G, sizes={"upper": B_F}))
    res = bilevel.solve(counts_problem, SOLVERS["f2sa"].create(inner_steps=3, paired_draws=False),
                        max_iter=K_COUNTS, eval_every=10 ** 6, true_hypergradient=False, batches=source)
    assert dict(source.draws) == {"inner": 6 * K_COUNTS, "upper": 4 * K_COUNTS, "lower": K_COUNTS}
    assert res.counts.samples_g == 8 * K_COUNTS * B_G
