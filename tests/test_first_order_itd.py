"""F2SA, BOME, PBGD (first-order penalty / value-function methods) and ITD (iterative differentiation).

Ground truth on the quadratic problem g = ½ yᵀAy − yᵀ(Bx + d), f = ½‖y − c‖² + (α/2)‖x‖²: a penalty
method with a constant weight γ (PBGD's γ, F2SA's constant μ) converges to the stationary point x_γ of
F_γ(x, y) = f + γ (g − g*), which is computed here in closed form, so the tolerance ‖∇φ(x_γ)‖ = O(1/γ)
is exact rather than fitted.  ITD's hypergradient is checked against torch autograd through the unrolled
loop (tests may call autograd directly; solvers may not).
"""

import dataclasses
import statistics

import pytest
import torch

import bilevel
from bilevel import BilevelProblem
from bilevel.oracles import Oracles
from bilevel.sampling import full_batches
from bilevel.solvers import BOME, F2SA, ITD, PBGD, get_solver
from bilevel.truth import true_hypergradient


@pytest.fixture(scope="module")
def quad():
    return bilevel.problems.quadratic(dx=5, dy=20, condition=100.0, seed=0)


def penalty_point(problem, gamma):
    """x_γ: the stationary point of f + γ (g − g*) on the quadratic problem, and ‖∇φ(x_γ)‖.

    ∂_y: (y − c) + γ (A y − B x − d) = 0  ⇒  y = M (c + γ (B x + d)),  M = (I + γA)⁻¹;
    ∂_x: α x + γ (∇_x g(x, y) − ∇g*(x)) = α x − γ Bᵀ (y − y*(x)) = 0,  y* = A⁻¹ (B x + d) (Danskin).
    """
    info = problem.info
    A, B, c, d, alpha = info["A"], info["B"], info["c"], info["d"], info["alpha"]
    eye_y = torch.eye(A.shape[0], dtype=A.dtype)
    M = torch.linalg.inv(eye_y + gamma * A)
    K = gamma * M - torch.linalg.inv(A)  # y − y* = M c + K (B x + d)
    lhs = alpha * torch.eye(B.shape[1], dtype=A.dtype) - gamma * B.T @ K @ B
    x = torch.linalg.solve(lhs, gamma * B.T @ (M @ c + K @ d))
    return x, float(true_hypergradient(problem, x).grad.norm())


def _run(problem, solver, K):
    res = bilevel.solve(problem, solver, max_iter=K, eval_every=K, true_hypergradient=True)
    assert res.status == "max_iter", res.message
    return res


def _rel(a, b):
    return float((a - b).norm() / b.norm())


# ---- PBGD and F2SA: the O(1/γ) neighbourhood --------------------------------------------------------


def test_pbgd_neighbourhood_shrinks_like_one_over_gamma(quad):
    # T = 1 (ŷ and y contract alike) and an x-step stable at γ = 100 (see PBGD.checks): both runs reach
    # their penalty points x_γ to 1e-6 within 3000 iterations (measured 3e-10).
    finals = {}
    for gamma in (10.0, 100.0):
        res = _run(quad, get_solver("pbgd", gamma=gamma, lr_x=0.03, inner_steps=1), 3000)
        x_gamma, floor = penalty_point(quad, gamma)
        assert _rel(res.x, x_gamma) < 1e-6, gamma
        finals[gamma] = res.history.column("hypergrad_norm")[-1]
        assert finals[gamma] == pytest.approx(floor, rel=1e-4)
    # exact floors: 2.14e-2 and 2.27e-3, ratio 9.4
    assert 5.0 <= finals[10.0] / finals[100.0] <= 20.0
    assert finals[100.0] <= 3e-3


def test_f2sa_constant_mu_reaches_the_penalty_point(quad):
    # F2SA with a constant μ has the same fixed point as PBGD with γ = μ: z → y*(x), y → argmin f/μ + g.
    finals = {}
    for mu in (100.0, 1000.0):
        res = _run(quad, get_solver("f2sa", mu0=mu, mu_growth=False), 600)
        x_mu, floor = penalty_point(quad, mu)
        assert _rel(res.x, x_mu) < 1e-6, mu
        finals[mu] = res.history.column("hypergrad_norm")[-1]
    # exact floors: 2.27e-3 and 2.28e-4
    assert 5.0 <= finals[100.0] / finals[1000.0] <= 20.0
    assert finals[1000.0] <= 3e-4


def test_f2sa_mu_schedule_and_coupled_penalised_step(quad):
    solver = get_solver("f2sa").bind(quad)  # μ_0 = 1, δ_k = 0.1/(k + 1)
    oracles = Oracles(quad)
    state = solver.init(quad, oracles, torch.Generator())
    for k in range(7):
        state = solver.step(state, oracles, full_batches(k))
    assert state.mu == pytest.approx(1.0 + 0.1 * sum(1.0 / (j + 1) for j in range(7)), rel=1e-14)
    assert state.iterate[1] is state.z  # metrics are taken on the lower copy z
    # with μ = 1e3 the coupled step θ/μ is stable; the reference's "θ for both copies" is not
    L = quad.info["L"]
    assert _run(quad, get_solver("f2sa", mu0=1e3, mu_growth=False), 50).status == "max_iter"
    res = bilevel.solve(quad, get_solver("f2sa", mu0=1e3, mu_growth=False, lr_y_penalized=1.0 / L),
                        max_iter=50, eval_every=10)
    assert res.status == "diverged"


# ---- BOME ------------------------------------------------------------------------------------------


def test_bome_settles_at_the_barrier_weight_limit(quad):
    # With fixed steps the barrier weight ω grows until the y-block step is at its stability edge,
    # ω ≈ 2/(ξ_y L) = 133 here; BOME then behaves like a penalty method with γ = ω and oscillates around
    # that floor, ‖∇φ(x_133)‖ = 1.70e-3.  Measured over k = 2500..3000: ω median 128, ‖∇φ‖ median
    # 2.5e-3, max 7.1e-3.  Tolerances: median ≤ 2 × floor, max ≤ 1.5e-2, ω median within [0.85, 1] of
    # the limit.
    xi_y, L = 1.5e-4, quad.info["L"]
    solver = get_solver("bome", lr_x=0.02, lr_y_outer=xi_y, eta_b=1.0, inner_steps=5).bind(quad)
    oracles = Oracles(quad)
    state = solver.init(quad, oracles, torch.Generator())
    norms, omegas = [], []
    for k in range(3000):
        state = solver.step(state, oracles, full_batches(k))
        if k >= 2500 and k % 10 == 0:
            norms.append(float(true_hypergradient(quad, state.iterate[0]).grad.norm()))
            omegas.append(float(state.omega))
    omega_cap = 2.0 / (xi_y * L)
    _, floor = penalty_point(quad, omega_cap)
    assert 0.85 * omega_cap <= statistics.median(omegas) <= omega_cap
    assert statistics.median(norms) <= 2.0 * floor
    assert max(norms) <= 1.5e-2


def test_bome_omega_is_zero_when_the_constraint_gradient_vanishes(quad):
    # Start on the lower-level solution with ŷ = y = y*(x): ∇q̂ = 0 up to round-off, so ω must be 0 and
    # the step is plain gradient descent on f.
    x0 = quad.x0
    y_star = quad.closed_forms.y_star(x0)
    solver = get_solver("bome", inner_steps=1).bind(quad)
    oracles = Oracles(quad)
    state = solver.init(quad, oracles, torch.Generator())
    state = dataclasses.replace(state, y=y_star, y_hat=y_star.clone())
    state = solver.step(state, oracles, full_batches(0))
    assert float(state.omega) == 0.0
    gx_f, _ = oracles.grad_f(x0, y_star)
    assert torch.allclose(state.direction, gx_f, rtol=0, atol=1e-12)


# ---- ITD against autograd ---------------------------------------------------------------------------


def _nonlinear(autodiff: bool):
    p = bilevel.problems.synthetic(n=30, condition=10.0, seed=3)
    # same f and g without closed forms: ITD then runs on Oracles' autodiff linearisations
    return BilevelProblem(p.f, p.g, p.x0, p.y0, name="synthetic-autodiff") if autodiff else p


def _unrolled_autograd(problem, x, y0, theta, T, Tb):
    """∇_x f(x, y^T(x)) by autograd through the last Tb of T steps y ← y − θ ∇_y g(x, y) from y0."""
    xr = x.detach().clone().requires_grad_(True)
    y = y0.detach().clone()
    for t in range(1, T + 1):
        tracked = t > T - Tb  # no gradient through the first T − Tb steps
        yr = y if y.requires_grad else y.detach().requires_grad_(True)
        (gy,) = torch.autograd.grad(problem.g_value(xr, yr), yr, create_graph=tracked)
        y = yr - theta * gy
        if not tracked:
            y = y.detach()
    (grad,) = torch.autograd.grad(problem.f_value(xr, y), xr)
    return grad


@pytest.mark.parametrize("autodiff", [False, True], ids=["closed-forms", "autodiff"])
@pytest.mark.parametrize("Tb", [None, 3])
def test_itd_direction_equals_autograd_through_the_unrolled_loop(autodiff, Tb):
    problem = _nonlinear(autodiff)
    T, theta = 6, 0.05
    solver = get_solver("itd", lr_x=0.1, lr_y=theta, inner_steps=T, backprop_steps=Tb).bind(problem)
    oracles = Oracles(problem)
    state = solver.init(problem, oracles, torch.Generator())
    state = solver.step(state, oracles, full_batches(0))
    x1, warm = state.x, state.y  # the second step starts from a warm y^0 ≠ y0
    state = solver.step(state, oracles, full_batches(1))
    expected = _unrolled_autograd(problem, x1, warm, theta, T, T if Tb is None else Tb)
    assert _rel(state.direction, expected) <= 1e-10
    assert state.iterate[0] is x1
    if Tb is not None:  # truncation really changes the estimate
        full = _unrolled_autograd(problem, x1, warm, theta, T, T)
        assert _rel(state.direction, full) > 1e-6


def test_itd_approaches_the_exact_hypergradient_as_T_grows(quad):
    # With y^0 = y*(x) the unrolled iterates stay at y*, and D = ∇φ(x) + J A⁻¹ (I − θA)^T ∇_y f:
    # the error decays like 0.99^T (θ = 1/L, μ_g = 1).
    x0 = quad.x0
    y_star = quad.closed_forms.y_star(x0)
    exact = true_hypergradient(quad, x0).grad
    errors = []
    for T in (1, 10, 100, 1000, 2000):
        solver = get_solver("itd", inner_steps=T).bind(quad)
        oracles = Oracles(quad)
        state = dataclasses.replace(solver.init(quad, oracles, torch.Generator()), y=y_star)
        state = solver.step(state, oracles, full_batches(0))
        errors.append(float((state.direction - exact).norm()))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-6, errors


# ---- exact oracle counts per iteration ------------------------------------------------------------

ZERO = dict(grad_x_f=0, grad_y_f=0, grad_y_g=0, grad_x_g=0, hvp=0, cross=0, cross_t=0, linearize=0)

# hand-counted calls of one outer iteration; "linearize" = autodiff graph builds (closed forms: 0)
PER_ITERATION = [
    ("f2sa", {"inner_steps": 3}, {"grad_y_g": 6, "grad_y_f": 3, "grad_x_f": 1, "grad_x_g": 2}, 0),
    ("bome", {"inner_steps": 3}, {"grad_y_g": 4, "grad_y_f": 1, "grad_x_f": 1, "grad_x_g": 2}, 0),
    ("pbgd", {"inner_steps": 3}, {"grad_y_g": 4, "grad_y_f": 1, "grad_x_f": 1, "grad_x_g": 2}, 0),
    ("itd", {"inner_steps": 4}, {"grad_y_g": 4, "grad_y_f": 1, "grad_x_f": 1, "cross": 4, "hvp": 3}, 4),
    ("itd", {"inner_steps": 4, "backprop_steps": 3},
     {"grad_y_g": 4, "grad_y_f": 1, "grad_x_f": 1, "cross": 3, "hvp": 2}, 3),
    ("itd", {"inner_steps": 4, "backprop_steps": 1},
     {"grad_y_g": 4, "grad_y_f": 1, "grad_x_f": 1, "cross": 1, "hvp": 0}, 1),
]


@pytest.mark.parametrize("closed_forms", [True, False], ids=["closed-forms", "autodiff"])
@pytest.mark.parametrize("name, options, per_iteration, graphs", PER_ITERATION)
def test_exact_counts_per_iteration(name, options, per_iteration, graphs, closed_forms):
    problem = bilevel.problems.quadratic(dx=3, dy=7, condition=10.0, seed=2, closed_forms=closed_forms)
    solver = get_solver(name, **options)
    K = 3
    res = bilevel.solve(problem, solver, max_iter=K, eval_every=10 ** 6, true_hypergradient=False)
    assert res.status == "max_iter", res.message
    expected = {**ZERO, **per_iteration, "linearize": 0 if closed_forms else graphs}
    counts = res.counts.as_dict()
    assert {key: counts[key] for key in expected} == {key: K * value for key, value in expected.items()}
    documented = solver.bind(problem).expected_counts(K)
    assert documented == {key: K * value for key, value in expected.items() if key != "linearize"}


# ---- option validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("make, error, match", [
    (lambda: PBGD(gamma=0), ValueError, "gamma"),
    (lambda: PBGD(gamma=-5.0), ValueError, "gamma"),
    (lambda: PBGD(lr_y_penalized=float("nan")), ValueError, "lr_y_penalized"),
    (lambda: BOME(eta_b=-1), ValueError, "eta_b"),
    (lambda: BOME(lr_y_outer=0.0), ValueError, "lr_y_outer"),
    (lambda: BOME(inner_steps=0), ValueError, "inner_steps"),
    (lambda: F2SA(mu0=0), ValueError, "mu0"),
    (lambda: F2SA(mu_growth=1), TypeError, "mu_growth"),
    (lambda: F2SA(mu=3.0), TypeError, "mu0"),  # unknown option: the nearest name is suggested
    (lambda: ITD(inner_steps=3, backprop_steps=5), ValueError, "backprop_steps .* cannot exceed inner_steps"),
    (lambda: ITD(backprop_steps=0), ValueError, "backprop_steps"),
    (lambda: ITD(inner_steps=2.5), TypeError, "inner_steps"),
])
def test_bad_options_raise_clearly(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_backprop_steps_checked_against_the_problems_inner_steps(quad):
    problem = bilevel.BilevelProblem(quad.f, quad.g, quad.x0, quad.y0, presets={"*": dict(quad.presets["*"])},
                                     experiment="synthetic")
    # fine on its own; ITD's published settings for the problem's experiment give T = 10
    solver = get_solver("itd", backprop_steps=12)
    with pytest.raises(ValueError, match="backprop_steps .* cannot exceed inner_steps"):
        bilevel.solve(problem, solver, max_iter=2)


def test_factories_and_registry():
    for name, cls in (("f2sa", F2SA), ("bome", BOME), ("pbgd", PBGD), ("itd", ITD)):
        assert isinstance(getattr(bilevel.solvers, name)(), cls)
        assert bilevel.solvers.SOLVERS[name] is cls
