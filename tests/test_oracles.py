"""Oracles against finite differences, closed forms against autodiff, graph reuse and call counting."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from bilevel.oracles import CountingOracles, Counts, Oracles
from bilevel.problem import BilevelProblem
from bilevel.problems import quadratic, synthetic
from bilevel.testing import check_hypergradient, check_oracles

ORACLES = ("grad_x_f", "grad_y_f", "grad_y_g", "grad_x_g", "hvp", "cross", "cross_t")


def _random_point(problem, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(problem.dx, generator=gen, dtype=torch.float64)
    y = scale * torch.randn(problem.dy, generator=gen, dtype=torch.float64)
    return x.to(problem.dtype), y.to(problem.dtype)


def _autodiff_copy(problem):
    """The same f and g with no closed forms: every oracle then comes from autograd."""
    return BilevelProblem(problem.f, problem.g, problem.x0, problem.y0, name=problem.name + "-autodiff")


@pytest.mark.parametrize(
    "make",
    [
        lambda: quadratic(4, 7, 30.0, seed=1),
        lambda: quadratic(4, 7, 30.0, seed=1, closed_forms=False),
        lambda: synthetic(50, 100.0, seed=1),
    ],
    ids=["quadratic-closed", "quadratic-autodiff", "synthetic-50"],
)
@pytest.mark.parametrize("point", [0, 1, 2])
def test_all_oracles_match_central_differences(make, point):
    problem = make()
    x, y = (problem.x0, problem.y0) if point == 0 else _random_point(problem, point)
    result = check_oracles(problem, x, y, n_directions=3, rtol=1e-6, seed=point)
    assert set(result.reports) == set(ORACLES)
    assert result.ok
    expected = "closed form" if problem.closed_forms.linearize is not None else "autodiff"
    assert {r.source for r in result.reports.values()} == {expected}
    for r in result.reports.values():
        assert r.max_rel_error < 1e-6 and len(r.rel_errors) == 3


@pytest.mark.parametrize("seed", [0, 3])
def test_synthetic_closed_forms_equal_autodiff(seed):
    problem = synthetic(60, 100.0, seed=seed)
    auto = _autodiff_copy(problem)
    assert auto.closed_forms.linearize is None and auto.closed_forms.grad_y_g is None
    oc, oa = Oracles(problem), Oracles(auto)
    # include a point with large x ⊙ y so the softmax must be computed stably
    for x, y in (_random_point(problem, seed), _random_point(problem, seed + 10, scale=6.0)):
        gen = torch.Generator().manual_seed(seed + 1)
        u = torch.randn(problem.dy, generator=gen, dtype=torch.float64)
        w = torch.randn(problem.dx, generator=gen, dtype=torch.float64)
        for name in ("grad_x_f", "grad_y_f", "grad_y_g", "grad_x_g"):
            torch.testing.assert_close(getattr(oc, name)(x, y), getattr(oa, name)(x, y), rtol=1e-12, atol=1e-9)
        lc, la = oc.at(x, y), oa.at(x, y)
        torch.testing.assert_close(lc.hvp(u), la.hvp(u), rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(lc.cross(u), la.cross(u), rtol=1e-12, atol=1e-11)
        torch.testing.assert_close(lc.cross_t(w), la.cross_t(w), rtol=1e-12, atol=1e-11)
        torch.testing.assert_close(lc.grad_y_g(), la.grad_y_g(), rtol=1e-12, atol=1e-9)
        assert torch.isfinite(lc.hvp(u)).all()


def test_closed_form_products_are_the_documented_matrices():
    # J = ∇²_xy g = −Bᵀ (dx × dy): cross(u) = −Bᵀu, cross_t(w) = −Bw; hvp(u) = Au
    problem = quadratic(3, 6, 20.0, seed=4)
    A, B = problem.info["A"], problem.info["B"]
    lin = Oracles(problem).at(problem.x0, problem.y0)
    u, w = torch.randn(6, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    torch.testing.assert_close(lin.hvp(u), A @ u)
    torch.testing.assert_close(lin.cross(u), -B.T @ u)
    torch.testing.assert_close(lin.cross_t(w), -B @ w)
    la = Oracles(_autodiff_copy(problem)).at(problem.x0, problem.y0)
    torch.testing.assert_close(la.cross(u), -B.T @ u)
    torch.testing.assert_close(la.cross_t(w), -B @ w)


def _module_problem():
    """A user problem: y = the parameters of an nn.Module (a dict), x = log ridge weights."""
    gen = torch.Generator().manual_seed(0)
    net = torch.nn.Linear(3, 2).double()
    X_tr, X_val = torch.randn(20, 3, generator=gen, dtype=torch.float64), torch.randn(15, 3, generator=gen, dtype=torch.float64)
    T_tr, T_val = torch.randn(20, 2, generator=gen, dtype=torch.float64), torch.randn(15, 2, generator=gen, dtype=torch.float64)

    def g(x, params):
        out = functional_call(net, params, (X_tr,))
        ridge = torch.exp(x[0]) * params["weight"].square().sum() + torch.exp(x[1]) * params["bias"].square().sum()
        return (out - T_tr).square().mean() + 0.5 * ridge

    def f(x, params):
        return (functional_call(net, params, (X_val,)) - T_val).square().mean()

    y0 = {k: v.detach().clone() for k, v in net.named_parameters()}
    return BilevelProblem(f, g, torch.tensor([-1.0, 0.5], dtype=torch.float64), y0, name="module")


def test_user_problem_with_module_parameters_dict():
    problem = _module_problem()
    assert problem.dy == 3 * 2 + 2 and problem.y_spec.names == ("weight", "bias")
    result = check_oracles(problem, n_directions=2)
    assert result.ok and all(r.source == "autodiff" for r in result.reports.values())
    # trees are accepted as points too
    y_tree = {k: v + 0.1 for k, v in problem.unflatten_y(problem.y0).items()}
    assert check_oracles(problem, problem.x0, y_tree, n_directions=2).ok
    assert check_hypergradient(problem, n_directions=2, rtol=1e-6).ok


@pytest.mark.parametrize("autodiff", [True, False])
def test_linearization_reuses_one_graph(autodiff):
    base = synthetic(30, 100.0, seed=2)
    problem = _autodiff_copy(base) if autodiff else base
    counts = Counts()
    oracles = CountingOracles(Oracles(problem), counts)
    lin = oracles.at(problem.x0, problem.y0)
    assert counts.linearize == 0  # built lazily
    u = torch.ones(problem.dy, dtype=torch.float64)
    first = lin.hvp(u)
    for _ in range(3):
        lin.hvp(u)
        lin.cross(u)
    torch.testing.assert_close(lin.hvp(u), first)  # the retained graph still answers correctly
    assert counts.hvp == 5 and counts.cross == 3
    assert counts.linearize == (1 if autodiff else 0)
    lin.cross_t(torch.ones(problem.dx, dtype=torch.float64))  # needs the ∇_x g graph: one more build
    assert counts.cross_t == 1 and counts.linearize == (2 if autodiff else 0)
    oracles.at(problem.x0 + 1, problem.y0).hvp(u)  # a new point: a new graph
    assert counts.linearize == (3 if autodiff else 0)


@pytest.mark.parametrize("closed", [True, False])
def test_counts_increment_exactly_once_per_call(closed):
    base = quadratic(3, 4, 5.0, seed=0, closed_forms=closed)
    problem = BilevelProblem(base.f, base.g, base.x0, base.y0, closed_forms=base.closed_forms, n_samples=10, n_samples_f=7)
    counts = Counts()
    o = CountingOracles(Oracles(problem), counts)
    x, y = problem.x0, problem.y0
    expected = Counts()

    def check():
        assert counts.as_dict() == expected.as_dict()

    o.grad_x_f(x, y)
    expected.grad_x_f += 1
    expected.samples_f += 7
    check()
    o.grad_y_f(x, y, batch=[0, 1, 2])
    expected.grad_y_f += 1
    expected.samples_f += 3
    check()
    o.grad_f(x, y)
    expected.grad_x_f += 1
    expected.grad_y_f += 1
    expected.samples_f += 14
    check()
    o.grad_y_g(x, y)
    o.grad_x_g(x, y)
    expected.grad_y_g += 1
    expected.grad_x_g += 1
    expected.samples_g += 20
    check()
    o.grad_g(x, y)
    expected.grad_y_g += 1
    expected.grad_x_g += 1
    expected.samples_g += 20
    check()
    lin = o.at(x, y)
    check()  # building the point costs nothing yet
    lin.hvp(y)
    lin.hvp(y)
    lin.cross(y)
    lin.cross_t(x)
    expected.hvp += 2
    expected.cross += 1
    expected.cross_t += 1
    expected.samples_g += 40
    if not closed:  # two graphs (∇_y g and ∇_x g), each counted once with its samples
        expected.linearize += 2
        expected.samples_g += 20
    check()
    # uncounted oracles leave nothing behind
    Oracles(problem).grad_y_g(x, y)
    check()
