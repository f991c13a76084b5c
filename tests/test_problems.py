"""Problem families against dense solves; ground truth (truth.py) against finite differences."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bilevel.oracles import Oracles
from bilevel.problem import BilevelProblem
from bilevel.problems import PROBLEMS, get_problem, hyperclean, newsgroups, quadratic, synthetic, synthetic_data
from bilevel.problems.synthetic import clear_synthetic_cache
from bilevel.schedules import DimensionSchedule
from bilevel.solvers import SOLVERS
from bilevel.testing import check_hypergradient, check_oracles
from bilevel.truth import Truth, solve_adjoint, solve_lower, true_hypergradient


def _dense_truth(problem, x):
    A, B, c, d, alpha = (problem.info[k] for k in ("A", "B", "c", "d", "alpha"))
    y_star = torch.linalg.solve(A, B @ x + d)
    v_star = torch.linalg.solve(A, y_star - c)  # A v = ∇_y f(x, y*)
    grad = alpha * x + B.T @ v_star  # ∇_x f − J v* with J = −Bᵀ
    phi = 0.5 * (y_star - c).square().sum() + 0.5 * alpha * x.square().sum()
    return y_star, v_star, grad, float(phi)


def _without(problem, **changes):
    """The same problem with some closed forms replaced (None removes one)."""
    cf = dataclasses.replace(problem.closed_forms, **changes)
    return BilevelProblem(problem.f, problem.g, problem.x0, problem.y0, closed_forms=cf, name=problem.name)


# ---- quadratic -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,condition,alpha", [(0, 10.0, 1.0), (2, 1e3, 0.1)])
def test_quadratic_closed_forms_match_dense_solves(seed, condition, alpha):
    closed = quadratic(4, 9, condition, seed, alpha=alpha)
    auto = quadratic(4, 9, condition, seed, alpha=alpha, closed_forms=False)
    x = torch.randn(4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y_star, v_star, grad, phi = _dense_truth(closed, x)
    cf = closed.closed_forms
    torch.testing.assert_close(cf.y_star(x, closed.y0), y_star, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cf.hypergradient(x), grad, rtol=1e-10, atol=1e-12)
    t_closed = true_hypergradient(closed, x)
    torch.testing.assert_close(t_closed.grad, grad, rtol=1e-10, atol=1e-12)
    assert t_closed.v_star is None and t_closed.phi == pytest.approx(phi, rel=1e-12)
    # the pure autodiff path: Newton–CG for y*, CG for v*
    t_auto = true_hypergradient(auto, x)
    assert isinstance(t_auto, Truth)
    torch.testing.assert_close(t_auto.y_star, y_star, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(t_auto.v_star, v_star, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(t_auto.grad, grad, rtol=1e-8, atol=1e-10)
    assert t_auto.phi == pytest.approx(phi, rel=1e-10)


def test_quadratic_x_star_is_stationary_and_minimal():
    problem = quadratic(5, 10, 50.0, seed=3, alpha=0.5)
    x_star = problem.info["x_star"]
    hyper = problem.closed_forms.hypergradient
    assert hyper(x_star).norm() <= 1e-10 * hyper(problem.x0).norm()
    auto = quadratic(5, 10, 50.0, seed=3, alpha=0.5, closed_forms=False)
    assert true_hypergradient(auto, x_star).grad.norm() <= 1e-8 * hyper(problem.x0).norm()
    phi_star = problem.info["phi_star"]
    assert true_hypergradient(problem, x_star).phi == pytest.approx(phi_star, rel=1e-12)
    for k in range(3):
        d = torch.randn(5, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
        assert true_hypergradient(problem, x_star + 1e-2 * d).phi > phi_star


def test_quadratic_presets_and_constants():
    problem = quadratic(3, 6, 40.0, seed=1, alpha=0.2)
    A, B = problem.info["A"], problem.info["B"]
    eig = torch.linalg.eigvalsh(A)
    torch.testing.assert_close(eig, torch.linspace(1, 40, 6, dtype=torch.float64), rtol=1e-10, atol=1e-10)
    Ainv_B = torch.linalg.solve(A, B)
    L_phi = float(torch.linalg.eigvalsh(0.2 * torch.eye(3, dtype=torch.float64) + Ainv_B.T @ Ainv_B).max())
    assert problem.preset("lr_x") == pytest.approx(1 / L_phi, rel=1e-10)
    assert problem.preset("lr_y") == pytest.approx(1 / 40)
    assert problem.preset("eta") == pytest.approx(1 / 40)
    # T and Q are structural: the solvers' own defaults, not problem presets
    assert problem.preset("inner_steps") is None and problem.preset("v_steps") is None
    assert problem.name == "quadratic" and problem.dx == 3 and problem.dy == 6


def test_quadratic_follows_dtype_and_is_seeded():
    p32 = quadratic(3, 5, 10.0, seed=7, dtype=torch.float32)
    p64 = quadratic(3, 5, 10.0, seed=7)
    assert p32.dtype == torch.float32 and p32.info["A"].dtype == torch.float32
    torch.testing.assert_close(p32.x0, p64.x0.float())
    assert not torch.equal(quadratic(3, 5, 10.0, seed=8).x0, p64.x0)
    assert p32.closed_forms.hypergradient(p32.x0).dtype == torch.float32


# ---- synthetic -------------------------------------------------------------------------------------


def test_synthetic_data_follow_the_documented_draw_order():
    n, kappa, seed = 12, 50.0, 5
    clear_synthetic_cache()
    data = synthetic_data(n, kappa, seed)
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    torch.testing.assert_close(data.d1, 10 * (torch.rand(n, generator=gen, dtype=f64) - 0.5), rtol=0, atol=0)
    torch.testing.assert_close(data.d2, torch.rand(n, generator=gen, dtype=f64) + 0.1, rtol=0, atol=0)
    torch.testing.assert_close(data.d3, 0.5 * torch.rand(n, generator=gen, dtype=f64), rtol=0, atol=0)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=f64))
    torch.testing.assert_close(data.Q, Q, rtol=0, atol=0)
    torch.testing.assert_close(data.x0, torch.randn(n, generator=gen, dtype=f64), rtol=0, atol=0)
    torch.testing.assert_close(data.y0, torch.randn(n, generator=gen, dtype=f64), rtol=0, atol=0)
    assert data.d1.min() >= -5 and data.d1.max() < 5 and data.d2.min() >= 0.1 and data.d3.max() < 0.5


def test_synthetic_is_deterministic_per_seed_and_differs_across_seeds():
    clear_synthetic_cache()
    a = synthetic(40, 100.0, seed=1)
    a_data = synthetic_data(40, 100.0, 1)
    clear_synthetic_cache()  # regenerate from scratch, not from the cache
    b = synthetic(40, 100.0, seed=1)
    b_data = synthetic_data(40, 100.0, 1)
    assert a_data is not b_data
    for field in ("d1", "d2", "d3", "G", "x0", "y0"):
        assert torch.equal(getattr(a_data, field), getattr(b_data, field))
    assert torch.equal(a.x0, b.x0) and torch.equal(a.y0, b.y0)
    assert synthetic_data(40, 100.0, 1) is b_data  # cached
    c_data = synthetic_data(40, 100.0, 2)
    for field in ("d1", "d2", "d3", "G", "x0", "y0"):
        assert not torch.allclose(getattr(a_data, field), getattr(c_data, field))


def test_synthetic_spectrum_and_values():
    n, kappa = 50, 100.0
    data = synthetic_data(n, kappa, 0)
    eye = torch.eye(n, dtype=torch.float64)
    torch.testing.assert_close(data.Q.T @ data.Q, eye, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        torch.linalg.eigvalsh(data.G), torch.linspace(1, kappa, n, dtype=torch.float64), rtol=1e-10, atol=1e-10
    )
    # f and g are the §4.1 formulas (dense diagonal matrices, c₀ = 0.5, c₁ = 0.1)
    problem = synthetic(n, kappa, 0)
    x, y = torch.randn(n, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
    D1, D2, D3 = torch.diag(data.d1), torch.diag(data.d2), torch.diag(data.d3)
    f = 0.1 * torch.cos(x @ D1 @ y) + 0.5 * (D2 @ x - y).square().sum()
    g = 0.5 * torch.sin(x + y).sum() + torch.log(torch.exp(x * y).sum()) + 0.5 * y @ (D3 + data.G) @ y
    torch.testing.assert_close(problem.f_value(x, y), f)
    torch.testing.assert_close(problem.g_value(x, y), g)


def test_synthetic_presets_and_info():
    problem = synthetic(20, 1e5, seed=3)
    assert problem.preset("lr_y") == pytest.approx(1e-5)
    assert problem.preset("eta") == pytest.approx(1e-5)
    assert problem.preset("lr_x") == 1.0
    assert problem.preset("inner_steps") is None  # the paper's per-solver settings live with the solvers
    assert problem.experiment == "synthetic"
    opts = {name: SOLVERS[name].create().resolve(problem) for name in ("amigo_gd", "stocbio", "soba", "ttsa", "lancbio")}
    assert opts["amigo_gd"]["inner_steps"] == 5 and opts["amigo_gd"]["v_steps"] == 5
    assert opts["stocbio"]["inner_steps"] == 10 and opts["stocbio"]["v_steps"] == 10
    assert opts["soba"]["inner_steps"] == 1 and opts["ttsa"]["v_steps"] == 10
    assert opts["ttsa"]["lr_x"](0) == 1.0 and opts["ttsa"]["lr_x"](10 ** 9) == 0.01
    m = opts["lancbio"]["m"]
    assert isinstance(m, DimensionSchedule) and m(0) == 1 and m(19) == 2 and m(10_000) == 80
    assert problem.info == {"n": 20, "condition": 1e5, "seed": 3, "c0": 0.5, "c1": 0.1, "ground_truth": True}


@pytest.mark.parametrize("n,seed", [(50, 0), (200, 3)])
def test_synthetic_true_hypergradient_matches_finite_differences(n, seed):
    problem = synthetic(n, 100.0, seed=seed)
    for x in (problem.x0, 0.5 * torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)):
        result = check_hypergradient(problem, x, n_directions=3, rtol=1e-6, seed=seed)
        assert result.ok and result.max_rel_error < 1e-6
        assert result.hypergradient.norm() > 1e-3  # a non-trivial point


def test_truth_solvers_reach_their_tolerance():
    problem = synthetic(150, 1e5, seed=2)  # ill-conditioned: κ(A) ≈ 2e5
    o = Oracles(problem)
    x, y0 = problem.x0, problem.y0
    y_star = solve_lower(problem, x, y0, tol=1e-10)
    assert o.grad_y_g(x, y_star).norm() <= 1e-10 * max(1.0, float(o.grad_y_g(x, y0).norm()))
    b = o.grad_y_f(x, y_star)
    lin = o.at(x, y_star)
    v_star = solve_adjoint(problem, x, y_star, rtol=1e-10)
    assert (lin.hvp(v_star) - b).norm() <= 1e-10 * b.norm()
    # plain CG (no preconditioner) reaches the same v*, within its iteration cap
    plain = _without(problem, preconditioner=None)
    v_plain = solve_adjoint(plain, x, y_star, rtol=1e-10)
    assert (lin.hvp(v_plain) - b).norm() <= 1e-10 * b.norm()
    torch.testing.assert_close(v_plain, v_star, rtol=1e-6, atol=1e-9)
    # Newton–CG without preconditioner, and warm starts change nothing
    y_plain = solve_lower(plain, x, y0)
    # both within ‖∇_y g‖ ≤ target of y*, and ∇²_yy g ⪰ 0.5 I: ‖y − y*‖ ≤ 2·target each
    target = 1e-10 * max(1.0, float(o.grad_y_g(x, y0).norm()))
    assert (y_plain - y_star).norm() <= 4 * target
    t = true_hypergradient(problem, x)
    t_warm = true_hypergradient(problem, x, t.y_star, t.v_star)
    torch.testing.assert_close(t_warm.grad, t.grad, rtol=1e-7, atol=1e-9)
    # an absolute 1e-15 is below round-off: the solver stops at working precision, not raising
    y_tight = solve_lower(problem, x, y_star, tol=1e-15)
    assert o.grad_y_g(x, y_tight).norm() <= o.grad_y_g(x, y_star).norm() * 10


def test_truth_solvers_raise_when_they_cannot_converge():
    problem = _without(synthetic(60, 1e4, seed=1), preconditioner=None)
    with pytest.raises(RuntimeError, match=r"did not converge in 1 iterations.*achieved.*wanted"):
        solve_lower(problem, problem.x0, problem.y0, max_iter=1)
    y_star = solve_lower(problem, problem.x0, problem.y0)
    with pytest.raises(RuntimeError, match=r"achieved relative residual.*wanted"):
        solve_adjoint(problem, problem.x0, y_star, max_iter=3)


def test_check_hypergradient_fails_on_a_wrong_closed_form_gradient():
    good = quadratic(4, 8, 20.0, seed=1)
    alpha = good.info["alpha"]
    # ∇_x f off by 1 %: the AID hypergradient is then wrong and FD must notice
    bad = _without(good, grad_x_f=lambda x, y, batch: 1.01 * alpha * x, hypergradient=None)
    assert check_hypergradient(_without(good, hypergradient=None)).ok  # the control passes
    with pytest.raises(AssertionError, match="hypergradient check: FAILED"):
        check_hypergradient(bad)
    result = check_hypergradient(bad, raise_on_failure=False)
    assert not result.ok and result.max_rel_error > 1e-4
    assert "too large" in result.report()


def test_check_oracles_fails_on_a_wrong_hvp():
    good = quadratic(4, 8, 20.0, seed=1)
    A, B, d = (good.info[k] for k in ("A", "B", "d"))

    class WrongHvp:
        def __init__(self, x, y, batch):
            pass

        def hvp(self, u):
            return 1.001 * (A @ u)  # 0.1 % too large

        def cross(self, u):
            return -(B.T @ u)

    bad = _without(good, linearize=WrongHvp)
    result = check_oracles(bad, raise_on_failure=False)
    assert not result.ok and result.failed() == ["hvp"]
    assert result["hvp"].max_rel_error > 1e-4 and result["hvp"].source == "closed form"
    assert result["cross_t"].source == "autodiff" and result["cross"].ok
    with pytest.raises(AssertionError, match=r"hvp .*FAILED"):
        check_oracles(bad)


def test_registry():
    from bilevel.problems import fourrooms, rl_synthetic

    assert PROBLEMS == {"hyperclean": hyperclean, "newsgroups": newsgroups, "quadratic": quadratic,
                        "synthetic": synthetic, "rl_synthetic": rl_synthetic, "fourrooms": fourrooms}
    p = get_problem("quadratic", dx=2, dy=3, condition=5.0)
    assert (p.dx, p.dy, p.name) == (2, 3, "quadratic")
    s = get_problem("synthetic", n=8, condition=10.0, seed=1)
    assert (s.dx, s.dy, s.name) == (8, 8, "synthetic")
