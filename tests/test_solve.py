"""End-to-end: the AID loop with LancBiO and SubBiO, oracle counts, determinism, statuses and bad inputs."""

import warnings

import pytest
import torch
from torch.func import functional_call

import bilevel
from bilevel.schedules import DimensionSchedule
from bilevel.solvers import AID, get_solver, lancbio, subbio

F64 = torch.float64


@pytest.fixture(scope="module")
def quad():
    return bilevel.problems.quadratic(dx=5, dy=20, condition=100.0, seed=0)


@pytest.fixture(scope="module")
def syn():
    return bilevel.problems.synthetic(n=100, condition=100.0, seed=0)


def _reduction(res):
    h = res.history.column("hypergrad_norm")
    return h[0] / h[-1]


@pytest.mark.parametrize("make", [lancbio, subbio])
def test_reduces_true_hypergradient_on_quadratic(quad, make):
    res = bilevel.solve(quad, make(), max_iter=300, eval_every=50, true_hypergradient=True)
    assert res.status == "max_iter"
    assert _reduction(res) >= 1e3
    assert torch.linalg.vector_norm(res.x - quad.info["x_star"]) < 1e-3


@pytest.mark.parametrize("make", [lancbio, subbio])
def test_reduces_true_hypergradient_on_synthetic(syn, make):
    res = bilevel.solve(syn, make(), max_iter=800, eval_every=100, true_hypergradient=True)
    assert _reduction(res) >= 1e3, res.history.column("hypergrad_norm")
    assert res.history.last()["residual"] < 1e-2


def test_lancbio_minres_and_theory_freeze_also_converge(quad):
    for solver in (lancbio(subproblem="minres"), lancbio(m=5, freeze_x_first=1)):
        res = bilevel.solve(quad, solver, max_iter=400, eval_every=100, true_hypergradient=True)
        assert _reduction(res) >= 1e3


def _expected_lancbio_hvps(schedule, iters):
    total, j = 0, 0
    for k in range(iters):
        if k == 0 or j >= schedule(k):
            total += 0 if k == 0 else 1  # restart product A·v̄, skipped while v̄ = 0
            j = 0
        total += 1
        j += 1
    return total


@pytest.mark.parametrize("closed", [True, False])
def test_lancbio_oracle_counts_match_documented_cost(closed):
    # big enough not to converge to machine precision within K (that would skip restarts, by design)
    prob = bilevel.problems.quadratic(dx=4, dy=60, condition=1e3, seed=1, closed_forms=closed)
    sched = DimensionSchedule(1, 1.5, 10, 8)
    K, T = 200, 3
    res = bilevel.solve(prob, lancbio(m=sched, inner_steps=T), max_iter=K, eval_every=1000)
    c = res.counts
    assert c.hvp == _expected_lancbio_hvps(sched, K) and set(res.events) == {"restart"}
    assert (c.cross, c.grad_y_g, c.grad_x_f, c.grad_y_f, c.cross_t, c.grad_x_g) == (K, T * K, K, K, 0, 0)
    assert c.linearize == (0 if closed else K)  # autodiff builds one ∇_y g graph per outer iteration
    # on average 1 + 1/m once m is at its cap
    res_fixed = bilevel.solve(prob, lancbio(m=8, inner_steps=T), max_iter=800, eval_every=1000)
    assert res_fixed.counts.hvp == 800 + 800 // 8 - 1
    assert res_fixed.counts.hvp / 800 == pytest.approx(1 + 1 / 8, abs=2e-3)


def test_subbio_oracle_counts(quad):
    K = 50
    res = bilevel.solve(quad, subbio(inner_steps=2), max_iter=K, eval_every=1000)
    # k = 0: v_prev = 0, so p = 0 costs no product and the subspace is span{b} (1 HVP); then 3 each
    assert res.counts.hvp == 3 * K - 2
    assert (res.counts.cross, res.counts.grad_y_g) == (K, 2 * K)


def test_simultaneous_order_counts_and_converges(quad):
    res = bilevel.solve(quad, lancbio(order="simultaneous", inner_steps=1, m=5), max_iter=600, eval_every=100,
                        true_hypergradient=True)
    assert res.counts.grad_y_g == 600  # D_y comes from the linearisation at (x_k, y_k)
    assert _reduction(res) >= 1e2


@pytest.mark.filterwarnings("ignore:LancBiO. the subspace dimension never reaches")
def test_same_seed_same_history_and_inputs_untouched(syn):
    x0, y0 = syn.x0, syn.y0
    runs = [bilevel.solve(syn, lancbio(v_init="randn"), max_iter=60, eval_every=20, seed=3) for _ in range(2)]
    other = bilevel.solve(syn, lancbio(v_init="randn"), max_iter=60, eval_every=20, seed=4)
    strip = lambda res: [{k: v for k, v in row.items() if k != "time"} for row in res.history]
    assert strip(runs[0]) == strip(runs[1])
    assert strip(runs[0]) != strip(other)
    assert torch.equal(syn.x0, x0) and torch.equal(syn.y0, y0)


def test_user_tensors_never_mutated():
    x0 = torch.randn(3, dtype=F64)
    y0 = {"w": torch.randn(4, 3, dtype=F64), "b": torch.zeros(4, dtype=F64)}
    keep = (x0.clone(), {k: v.clone() for k, v in y0.items()})
    data = torch.randn(20, 3, dtype=F64)

    def g(x, y):
        z = data @ y["w"].T + y["b"]
        return 0.5 * (z ** 2).mean() + 0.5 * (torch.exp(x).sum() * 0.1 + 1.0) * (y["w"] ** 2).sum() + 0.5 * (y["b"] ** 2).sum()

    def f(x, y):
        return ((data @ y["w"].T + y["b"] - 1.0) ** 2).mean() + 0.01 * (x ** 2).sum()

    prob = bilevel.BilevelProblem(f, g, x0, y0)
    res = bilevel.solve(prob, lancbio(lr_x=0.05, lr_y=0.2), max_iter=30, eval_every=10)
    assert torch.equal(x0, keep[0]) and all(torch.equal(y0[k], keep[1][k]) for k in y0)
    assert set(res.y_tree) == {"w", "b"} and res.y_tree["w"].shape == (4, 3)


def test_nn_module_lower_level_hypergradient_and_solve():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2).double()
    X = torch.randn(30, 4, dtype=F64)
    Y = torch.randn(30, 2, dtype=F64)
    Xv, Yv = torch.randn(15, 4, dtype=F64), torch.randn(15, 2, dtype=F64)
    params = {k: v.detach().clone() for k, v in net.named_parameters()}

    def g(x, p, batch):
        pred = functional_call(net, p, (X,))
        reg = sum((torch.exp(x[i]) * (w ** 2).sum()) for i, w in enumerate(p.values()))
        return ((pred - Y) ** 2).mean() + 0.5 * reg

    def f(x, p, batch):
        return ((functional_call(net, p, (Xv,)) - Yv) ** 2).mean()

    prob = bilevel.BilevelProblem(f, g, torch.full((2,), -1.0, dtype=F64), params, name="ridge-net")
    check = bilevel.testing.check_hypergradient(prob)
    assert check.ok
    res = bilevel.solve(prob, lancbio(lr_x=0.5, lr_y=0.2, m=5), max_iter=200, eval_every=50, true_hypergradient=True)
    assert res.history.last()["hypergrad_norm"] < res.history[0]["hypergrad_norm"]
    assert res.status == "max_iter"


def test_divergence_is_a_status_with_history(quad):
    res = bilevel.solve(quad, lancbio(lr_x=1e12, lr_y=1.9), max_iter=500, eval_every=1)
    assert res.status == "diverged"
    assert "lr_x" in res.message and "smaller" in res.message
    assert len(res.history) >= 1 and res.iterations < 500
    assert torch.isfinite(res.x).all() and torch.isfinite(res.y).all()


def test_tol_callback_and_max_time(quad):
    res = bilevel.solve(quad, lancbio(), max_iter=5000, eval_every=5, tol=1e-6, true_hypergradient=True)
    assert res.status == "converged" and res.history.last()["hypergrad_norm"] <= 1e-6
    res = bilevel.solve(quad, lancbio(), max_iter=5000, eval_every=5, callback=lambda row: row["iteration"] >= 20)
    assert res.status == "stopped" and res.iterations == 21
    res = bilevel.solve(quad, lancbio(), max_iter=10 ** 7, eval_every=1000, max_time=0.2)
    assert res.status == "max_time" and 0.2 <= res.time < 5.0


def test_evaluation_is_neither_counted_nor_timed(syn):
    import time

    start = time.perf_counter()
    dense = bilevel.solve(syn, lancbio(m=4), max_iter=40, eval_every=1, true_hypergradient=True)
    wall = time.perf_counter() - start
    sparse = bilevel.solve(syn, lancbio(m=4), max_iter=40, eval_every=1000)
    assert len(dense.history) == 40
    assert dense.counts == sparse.counts  # the ground-truth solves made many products, none counted
    assert dense.history.column("time") == sorted(dense.history.column("time"))
    # evaluating the ground truth every iteration costs far more than the steps; none of it is timed
    assert dense.time < wall / 3


def test_unreachable_cap_warns(quad):
    with pytest.warns(UserWarning, match="never reaches its cap 80"):
        bilevel.solve(quad, lancbio(m=DimensionSchedule(1, 1.1, 20, 80)), max_iter=100, eval_every=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bilevel.solve(quad, lancbio(m=DimensionSchedule(1, 1.3, 50, 10)), max_iter=400, eval_every=400)


@pytest.mark.filterwarnings("ignore:LancBiO. the subspace dimension never reaches")
def test_presets_fill_unset_options_and_user_values_win(syn):
    res = bilevel.solve(syn, lancbio(), max_iter=2, eval_every=10)
    assert res.options["lr_x"] == 1.0 and res.options["lr_y"] == pytest.approx(1e-2)
    assert "DimensionSchedule(m0=1, growth=1.1, period=20, m_max=80" in res.options["m"]
    res = bilevel.solve(syn, lancbio(lr_x=0.5, m=7), max_iter=2, eval_every=10)
    assert res.options["lr_x"] == 0.5 and res.options["m"] == 7


def test_registry_and_factories():
    made = get_solver("lancbio", m=3)
    assert isinstance(made, AID) and made.name == "lancbio" and made.v_solver.m == 3
    assert isinstance(get_solver("subbio"), AID) and get_solver("subbio").name == "subbio"
    assert {"lancbio", "subbio"} <= set(bilevel.solvers.SOLVERS)


def _no_preset_problem():
    return bilevel.BilevelProblem(
        lambda x, y: (y ** 2).sum() + (x ** 2).sum(), lambda x, y: ((y - x) ** 2).sum(),
        torch.ones(2, dtype=F64), torch.zeros(2, dtype=F64),
    )


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda p: bilevel.solve(p, lancbio), TypeError, "forget the parentheses"),
        (lambda p: bilevel.solve("quadratic", lancbio()), TypeError, "problem must be a bilevel.BilevelProblem; got str"),
        (lambda p: bilevel.solve(p, lancbio(), max_iter=-1), ValueError, "max_iter must be >= 0; got -1"),
        (lambda p: bilevel.solve(p, lancbio(), eval_every=0), ValueError, "eval_every must be >= 1; got 0"),
        (lambda p: bilevel.solve(p, lancbio(), max_iter=2.5), TypeError, "max_iter must be an integer"),
        (lambda p: bilevel.solve(p, lancbio(), tol=-1.0), ValueError, "tol must be finite and > 0"),
        (lambda p: bilevel.solve(p, lancbio(), callback=3), TypeError, "callback must be callable"),
        (lambda p: lancbio(m=0), ValueError, "m0 must be an integer >= 1; got 0"),
        (lambda p: lancbio(lr_x=-1.0), ValueError, "lr_x must be a positive finite number; got -1.0"),
        (lambda p: lancbio(lrx=1.0), TypeError, "unknown option 'lrx'. Did you mean 'lr_x'"),
        (lambda p: lancbio(subproblem="gallerkin"), ValueError, "Did you mean 'galerkin'"),
        (lambda p: lancbio(order="both"), ValueError, "order must be one of"),
        (lambda p: lancbio(inner_steps=-2), ValueError, "inner_steps must be >= 0; got -2"),
        (lambda p: subbio(eta=0.0), ValueError, "eta"),
        (lambda p: get_solver("lancbo"), ValueError, "Did you mean 'lancbio'"),
        (lambda p: bilevel.solve(p, lancbio(lr_x="atuo")), TypeError, "lr_x must be a number, a schedule or 'auto'"),
        (lambda p: bilevel.solve(p, lancbio(lr_x=0.1, lr_y=0.1, inner_steps=0, order="simultaneous")),
         ValueError, "needs inner_steps >= 1"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call(_no_preset_problem())


def test_history_csv_is_written_atomically_with_normal_permissions(tmp_path, quad):
    import os
    import stat

    res = bilevel.solve(quad, lancbio(), max_iter=5, eval_every=2)
    path = tmp_path / "deep" / "h.csv"
    res.history.to_csv(path)
    text = path.read_text().splitlines()
    assert text[0].startswith("iteration,time") and len(text) == 1 + len(res.history)
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o044  # readable by others, like any file the user writes
    assert not [p for p in os.listdir(path.parent) if p.startswith(".tmp-")]


def test_keyboard_interrupt_returns_what_was_done(quad):
    class Interrupting(bilevel.OracleWrapper):  # Ctrl-C arrives during the 6th upper gradient
        calls = 0

        def grad_f(self, x, y, batch=None):
            Interrupting.calls += 1
            if Interrupting.calls == 6:
                raise KeyboardInterrupt
            return self.inner.grad_f(x, y, batch)

    res = bilevel.solve(quad, lancbio(), max_iter=50, eval_every=3,
                        oracles=Interrupting(bilevel.Oracles(quad)))
    assert res.status == "stopped" and res.interrupted and res.iterations == 5
    assert "interrupted" in res.message
    assert [r["iteration"] for r in res.history.to_dicts()] == [0, 3, 4]   # the last completed one is evaluated
    full = bilevel.solve(quad, lancbio(), max_iter=5, eval_every=3)
    assert torch.equal(res.x, full.x) and not full.interrupted
