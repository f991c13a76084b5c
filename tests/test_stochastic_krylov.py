"""Stochastic LancBiO and SubBiO: the Lanczos operator epochs (``starts_epoch``), the Hessian batch held within
an epoch (``hessian_batch="epoch"``), exact counts under mini-batches, descent on a finite-sum quadratic, and
full-batch runs unchanged."""

import warnings

import pytest
import torch

import bilevel
from bilevel.linear_solvers import Lanczos
from bilevel.oracles import OracleWrapper, PointWrapper
from bilevel.problem import BilevelProblem, ClosedForms
from bilevel.sampling import MiniBatch
from bilevel.schedules import DimensionSchedule
from bilevel.solvers import get_solver
from conftest import spd_matrix

F64 = torch.float64


def finite_sum_quadratic(n=64, n_f=32, dx=4, dy=6, mu=0.5, alpha=0.1, seed=0):
    """g(x, y; B) = mean_{i∈B} ½(a_iᵀy − c_iᵀx − t_i)² + (μ/2)‖y‖²,  f(x, y; B) = mean_{j∈B} ½(u_jᵀy − s_j)²
    + (α/2)‖x‖²: the batch Hessian A_B = mean_{i∈B} a_i a_iᵀ + μI depends on the batch only, J_B = −mean c_i a_iᵀ.
    Closed forms on a batch of indices (no autodiff graph: no ``linearize`` counts); exact full-data truth."""
    gen = torch.Generator().manual_seed(seed)
    a, c, t = (torch.randn(n, d, generator=gen, dtype=F64) for d in (dy, dx, 1))
    u, s = (torch.randn(n_f, d, generator=gen, dtype=F64) for d in (dy, 1))
    t, s = t[:, 0], s[:, 0]
    x0, y0 = torch.randn(dx, generator=gen, dtype=F64), torch.randn(dy, generator=gen, dtype=F64)

    def rows(M, batch):
        return M if batch is None else M[batch]

    class Point:
        def __init__(self, x, y, batch):
            self.a, self.c, self.t, self.x, self.y = rows(a, batch), rows(c, batch), rows(t, batch), x, y

        def grad_y_g(self):
            return self.a.T @ (self.a @ self.y - self.c @ self.x - self.t) / self.t.numel() + mu * self.y

        def hvp(self, v):
            return self.a.T @ (self.a @ v) / self.t.numel() + mu * v

        def cross(self, v):
            return -(self.c.T @ (self.a @ v)) / self.t.numel()

    def g(x, y, batch):
        r = rows(a, batch) @ y - rows(c, batch) @ x - rows(t, batch)
        return 0.5 * r.square().mean() + 0.5 * mu * y.square().sum()

    def f(x, y, batch):
        return 0.5 * (rows(u, batch) @ y - rows(s, batch)).square().mean() + 0.5 * alpha * x.square().sum()

    def grad_y_f(x, y, batch):
        ub, sb = rows(u, batch), rows(s, batch)
        return ub.T @ (ub @ y - sb) / sb.numel()

    A = a.T @ a / n + mu * torch.eye(dy, dtype=F64)

    def y_star(x, y_init=None):
        return torch.linalg.solve(A, a.T @ (c @ x + t) / n)

    def hypergradient(x):
        v = torch.linalg.solve(A, grad_y_f(x, y_star(x), None))
        return alpha * x + c.T @ (a @ v) / n

    cf = ClosedForms(grad_x_f=lambda x, y, batch: alpha * x, grad_y_f=grad_y_f,
                     grad_y_g=lambda x, y, batch: Point(x, y, batch).grad_y_g(),
                     linearize=lambda x, y, batch: Point(x, y, batch), y_star=y_star, hypergradient=hypergradient)
    L = float(torch.linalg.eigvalsh(A).max())
    return BilevelProblem(f, g, x0, y0, name="finite_sum_quadratic", closed_forms=cf, n_samples=n, n_samples_f=n_f,
                          presets={"*": {"lr_y": 1.0 / L, "eta": 1.0 / L, "lr_x": 0.2}},
                          info={"ground_truth": True})


@pytest.fixture(scope="module")
def fsq():
    return finite_sum_quadratic()


def _quiet_solve(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the m-schedule cap warnings of short runs
        return bilevel.solve(*args, **kwargs)


# ---- starts_epoch ------------------------------------------------------------------------------------------
def _drive(solver, A, rhs, K):
    """(starts_epoch before each call, the call's events) for K calls on the fixed matrix A."""
    solver = solver.resolved()
    state = solver.init(rhs(0))
    out = []
    for k in range(K):
        before = solver.starts_epoch(state, k)
        assert solver.starts_epoch(state, k) == before  # a pure function of (state, k)
        _, state, info = solver.solve(lambda u: A @ u, rhs(k), state, k=k)
        out.append((before, info.events))
    return out


@pytest.mark.parametrize("m", [3, DimensionSchedule(1, 2.0, 3, 5), DimensionSchedule(2, 1.5, 4, 6, switch_at=9,
                                                                                          switch_m_max=2)])
def test_residual_mode_epoch_starts_exactly_at_restarts(m):
    A = spd_matrix(12, 50.0, 0)
    gen = torch.Generator().manual_seed(1)
    bs = [torch.zeros(12, dtype=F64)] + [torch.randn(12, generator=gen, dtype=F64) for _ in range(29)]
    seen = _drive(Lanczos(m=m), A, lambda k: bs[k], 30)
    assert seen[0] == (True, ("restart_skipped",))  # b = 0: nothing to correct, the restart stays pending
    for k, (starts, events) in enumerate(seen):
        assert starts == ("restart" in events or "restart_skipped" in events), (k, events)
    assert sum(starts for starts, _ in seen) > 5


def test_epoch_follows_breakdowns():
    # A = I: every Krylov space is one-dimensional, each Lanczos step breaks down and the next call restarts
    seen = _drive(Lanczos(m=5), torch.eye(6, dtype=F64), lambda k: torch.full((6,), float(k + 1), dtype=F64), 6)
    assert all(starts for starts, _ in seen)
    assert all("breakdown" in events for _, events in seen)


def test_plain_mode_epochs_are_blocks_of_m_steps():
    A = spd_matrix(20, 50.0, 2)
    gen = torch.Generator().manual_seed(3)
    bs = [torch.randn(20, generator=gen, dtype=F64) for _ in range(14)]
    seen = _drive(Lanczos(m=3, mode="plain"), A, lambda k: bs[k], 14)
    assert [k for k, (starts, _) in enumerate(seen) if starts] == [0, 3, 6, 9, 12]
    assert [k for k, (_, events) in enumerate(seen) if "restart" in events] == [0]  # the window slides
    sched = DimensionSchedule(2, 1.0, None, None)
    switched = DimensionSchedule(3, 1.5, 4, 6, switch_at=7, switch_m_max=2)
    assert [k for k, (s, _) in enumerate(_drive(Lanczos(m=sched, mode="plain"), A, lambda k: bs[k], 14)) if s] == [
        0, 2, 4, 6, 8, 10, 12]
    # m(k) = 3, 3, 3, 5, 5, 5, 5, then 2 from the switch at k = 7, which restarts the basis
    starts = [k for k, (s, _) in enumerate(_drive(Lanczos(m=switched, mode="plain"), A, lambda k: bs[k], 14)) if s]
    assert starts == [0, 5, 7, 9, 11, 13]  # an epoch ends once its steps reach the current m(k)


# ---- the Hessian batch of each product ---------------------------------------------------------------------
class _Recording(OracleWrapper):
    """Records (outer iteration, role, sample indices) of every product; the iteration is counted by the one
    ∇f call each iteration makes."""

    def __init__(self, inner):
        super().__init__(inner)
        self.k, self.calls = -1, []

    def grad_f(self, x, y, batch=None):
        self.k += 1
        return self.inner.grad_f(x, y, batch)

    def at(self, x, y, batch=None):
        owner, point = self, self.inner.at(x, y, batch)

        class Point(PointWrapper):
            def hvp(self, u):
                owner.calls.append((owner.k, "hvp", tuple(batch.tolist())))
                return self.inner.hvp(u)

            def cross(self, u):
                owner.calls.append((owner.k, "cross", tuple(batch.tolist())))
                return self.inner.cross(u)

        return Point(point)


def _hvp_batches(problem, solver, K, B=8):
    rec = _Recording(bilevel.Oracles(problem))
    _quiet_solve(problem, solver, max_iter=K, eval_every=K, batches=MiniBatch(B), oracles=rec,
                 true_hypergradient=False)
    per_k = {}
    for k, kind, batch in rec.calls:
        if kind == "hvp":
            per_k.setdefault(k, set()).add(batch)
    return per_k


@pytest.mark.parametrize("mode", ["residual", "plain"])
def test_epoch_batches_hold_one_hessian_batch_per_epoch(fsq, mode):
    m, K = 3, 12
    per_k = _hvp_batches(fsq, get_solver("lancbio", m=m, mode=mode, hessian_batch="epoch"), K)
    assert sorted(per_k) == list(range(K))
    assert all(len(batches) == 1 for batches in per_k.values())  # the restart product and the Lanczos step too
    epochs = [set().union(*(per_k[k] for k in range(e, e + m))) for e in range(0, K, m)]
    assert all(len(batches) == 1 for batches in epochs), epochs  # one operator per epoch of m iterations
    firsts = [next(iter(batches)) for batches in epochs]
    assert len(set(firsts)) == len(firsts)  # a fresh batch at every epoch (4 draws of 8 out of 64: disjoint)


def test_iteration_batches_draw_one_hessian_batch_per_iteration(fsq):
    for solver in (get_solver("lancbio", m=3, hessian_batch="iteration"),
                   get_solver("lancbio", m=3, mode="plain", hessian_batch="iteration"), get_solver("subbio")):
        per_k = _hvp_batches(fsq, solver, 8)
        assert all(len(batches) == 1 for batches in per_k.values()), solver  # SubBiO: its 3 HVPs on one batch
        batches = [next(iter(per_k[k])) for k in sorted(per_k)]
        assert len(set(batches)) == len(batches)


# ---- counts -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,options", [
    ("lancbio", {"m": 3, "hessian_batch": "epoch"}),
    ("lancbio", {"m": DimensionSchedule(1, 2.0, 4, 4), "hessian_batch": "iteration"}),
    ("lancbio", {"m": 3, "mode": "plain", "hessian_batch": "iteration"}),
    ("lancbio", {"m": 3, "mode": "plain", "hessian_batch": "epoch"}),
    ("subbio", {}),
])
def test_counts_per_iteration_including_samples(fsq, name, options):
    B, B_f, T, K = 8, 4, 2, 20
    solver = get_solver(name, inner_steps=T, **options)
    res = _quiet_solve(fsq, solver, max_iter=K, eval_every=1, batches=MiniBatch(B, sizes={"upper": B_f}),
                       true_hypergradient=False)
    bound = solver.bind(fsq)
    rows = list(res.history)
    prev = {key: 0 for key in rows[0]}
    for k, row in enumerate(rows):
        d = {key: row[key] - prev[key] for key in ("grad_y_g", "grad_x_f", "grad_y_f", "hvp", "cross", "linearize",
                                                   "samples_f", "samples_g")}
        hvp = bound.v_solver.total_matvecs(k + 1) - bound.v_solver.total_matvecs(k)
        assert d == {"grad_y_g": T, "grad_x_f": 1, "grad_y_f": 1, "hvp": hvp, "cross": 1, "linearize": 0,
                     "samples_f": 2 * B_f, "samples_g": B * (T + hvp + 1)}, (k, d)
        assert row["epochs_g"] == pytest.approx(row["samples_g"] / 64)
        assert row["epochs_f"] == pytest.approx(row["samples_f"] / 32)
        prev = row


# ---- descent ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,options,reduction", [
    ("lancbio", {"m": 4, "hessian_batch": "epoch"}, 8.0),
    ("lancbio", {"m": 4, "mode": "plain", "hessian_batch": "iteration"}, 4.0),
    ("subbio", {}, 8.0),
])
def test_stochastic_solvers_reduce_the_true_hypergradient(fsq, name, options, reduction):
    res = _quiet_solve(fsq, get_solver(name, **options), max_iter=400, eval_every=20, batches=MiniBatch(16),
                       seed=1)
    h = res.history.column("hypergrad_norm")
    tail = sum(h[-5:]) / 5  # the noise floor: mean over the last 100 iterations
    assert h[0] / tail >= reduction, (name, options, h)


def test_epoch_batches_keep_the_tridiagonal_definite(fsq):
    # A_B depends on the batch only: with one batch per epoch T_j is the Lanczos projection of one SPD matrix
    res = _quiet_solve(fsq, get_solver("lancbio", m=4, hessian_batch="epoch"), max_iter=300, eval_every=300,
                       batches=MiniBatch(8), seed=1, curvature_patience=None)
    assert "indefinite" not in res.events and res.events.get("restart", 0) >= 70


# ---- full batch: unchanged -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,options", [("lancbio", {"m": 3}), ("lancbio", {"m": 3, "mode": "plain"}),
                                          ("lancbio", {"m": 3, "subproblem": "minres"}), ("subbio", {})])
def test_full_batch_runs_do_not_depend_on_the_hessian_batch_option(fsq, name, options):
    ref = _quiet_solve(fsq, get_solver(name, **options), max_iter=30, eval_every=1, seed=2)
    for hessian_batch in ("iteration", "epoch"):
        got = _quiet_solve(fsq, get_solver(name, hessian_batch=hessian_batch, **options), max_iter=30,
                           eval_every=1, seed=2)
        for r, g in zip(ref.history, got.history):
            assert {k: v for k, v in r.items() if k != "time"} == {k: v for k, v in g.items() if k != "time"}
        assert torch.equal(ref.x, got.x)


# ---- rescale_base -------------------------------------------------------------------------------------------
def test_rescale_base_is_a_shrink_only_line_search_along_the_base_point():
    A = spd_matrix(15, 100.0, 4)
    b = torch.randn(15, generator=torch.Generator().manual_seed(5), dtype=F64)
    exact = torch.linalg.solve(A, b)

    def model(v):
        return float(0.5 * v @ A @ v - b @ v)

    solver = Lanczos(m=3, rescale_base=True).resolved()
    plain = Lanczos(m=3).resolved()
    # a base point ten times too long: t = bᵀv̄ / v̄ᵀAv̄ = 0.1 gives v* itself, and nothing is left to correct
    v, state, info = solver.solve(lambda u: A @ u, b, solver.init(b, 10 * exact), k=0)
    assert info.events == ("base_rescaled", "restart_skipped") and info.matvecs == 1
    assert torch.allclose(v, exact, rtol=1e-12, atol=1e-12) and v is state.v
    # in general the line search only lowers the model: m(t v̄) <= min(m(v̄), m(0)), at no extra product
    v0 = 10 * exact + torch.randn(15, generator=torch.Generator().manual_seed(6), dtype=F64)
    _, state, info = solver.solve(lambda u: A @ u, b, solver.init(b, v0), k=0)
    _, ref_state, ref_info = plain.solve(lambda u: A @ u, b, plain.init(b, v0), k=0)
    assert "base_rescaled" in info.events and info.matvecs == ref_info.matvecs == 2
    assert model(state.vbar) <= min(model(ref_state.vbar), 0.0)
    assert torch.allclose(state.w, A @ state.vbar, rtol=1e-12, atol=1e-12)
    # a base point pointing away from v*: t clipped at 0, the epoch starts from v̄ = 0 (as from b alone)
    _, state, info = solver.solve(lambda u: A @ u, b, solver.init(b, -exact), k=0)
    assert "base_rescaled" in info.events and not torch.any(state.vbar != 0)
    # t ≥ 1 (an optimal or too short base point) is never stretched: the solve is the unscaled one, bit for bit
    for v0 in (exact, 0.5 * exact):
        got = solver.solve(lambda u: A @ u, b, solver.init(b, v0), k=0)
        ref = plain.solve(lambda u: A @ u, b, plain.init(b, v0), k=0)
        assert "base_rescaled" not in got[2].events and torch.equal(got[0], ref[0])


def test_rescale_base_needs_a_base_point():
    with pytest.raises(ValueError, match="rescale_base applies to mode='residual' only"):
        Lanczos(m=3, mode="plain", rescale_base=True)
    with pytest.raises(TypeError, match="rescale_base"):
        Lanczos(m=3, rescale_base="yes")


# ---- stochastic settings ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return bilevel.problems.hyperclean(dataset="digits", corruption=0.5, seed=0)


def test_stochastic_hyperclean_settings(digits):
    from bilevel.schedules import Piecewise

    sto = get_solver("lancbio").bind(digits, stochastic=True).resolved_options()
    assert sto["inner_steps"] == 3 and sto["lr_x"] == 100.0 and sto["lr_y"] == Piecewise((0.1, 0.05), (500,))
    assert sto["m"] == DimensionSchedule(1, 1.3, 50, 30, switch_at=500, switch_m_max=50)
    assert sto["mode"] == "residual" and sto["hessian_batch"] == "iteration" and sto["rescale_base"] is True
    det = get_solver("lancbio").bind(digits).resolved_options()
    assert det["inner_steps"] == 5 and not det["rescale_base"]
    # without stochastic settings: one Hessian batch per Lanczos epoch (a no-op under the full batch)
    assert det["hessian_batch"] == "epoch" and get_solver("subbio").bind(digits).resolved_options()[
        "hessian_batch"] == "iteration"
    # (a) the reference's plain variant on fresh batches: the same settings, no base point to rescale
    plain = get_solver("lancbio", mode="plain").bind(digits, stochastic=True).resolved_options()
    assert plain["mode"] == "plain" and plain["hessian_batch"] == "iteration" and not plain["rescale_base"]
    assert plain["inner_steps"] == 3 and plain["m"] == sto["m"]
    with pytest.raises(ValueError, match="rescale_base applies to mode='residual' only"):
        get_solver("lancbio", mode="plain", rescale_base=True)
    sub = get_solver("subbio").bind(digits, stochastic=True).resolved_options()
    assert sub["inner_steps"] == 3 and sub["eta"] == 0.1 and sub["hessian_batch"] == "iteration"
    assert sub["lr_x"] == Piecewise((100.0, 50.0), (500,)) and sub["lr_y"] == Piecewise((0.1, 0.05), (500,))


def test_stochastic_hyperclean_runs_with_its_settings(digits):
    # a short mini-batch run of each preset on the digits problem, recorded as stochastic
    for solver in (get_solver("lancbio"), get_solver("lancbio", mode="plain"), get_solver("subbio")):
        res = _quiet_solve(digits, solver, max_iter=30, eval_every=30, batches=MiniBatch(64), true_hypergradient=False)
        assert res.status == "max_iter" and res.options["stochastic"] is True, res.message
        assert res.history.last()["test_accuracy"] > 0.3


# ---- the declared mini-batch budgets (as tests/test_stochastic_solvers.py does for the other solvers) ---------
@pytest.mark.parametrize("problem_name", ["quadratic", "synthetic"])
@pytest.mark.parametrize("name", ["lancbio", "subbio"])
def test_declared_mini_batch_budgets(name, problem_name):
    from bilevel.solvers import SOLVERS

    problem = {"quadratic": lambda: bilevel.problems.quadratic(dx=5, dy=20, condition=10.0, seed=0, n_samples=200,
                                                                 n_samples_f=100),
               "synthetic": lambda: bilevel.problems.synthetic(n=100, condition=100.0, seed=0, n_samples=200,
                                                                 n_samples_f=100)}[problem_name]()
    budget = SOLVERS[name].checks[f"stochastic/{problem_name}"]
    K = budget["max_iter"]
    res = _quiet_solve(problem, SOLVERS[name].create(**budget.get("options", {})), max_iter=K, eval_every=K // 20,
                       seed=0, batches=MiniBatch(budget["batch_size"]), true_hypergradient=True)
    assert res.status == "max_iter" and res.options["stochastic"] is True, res.message
    h = res.history.column("hypergrad_norm")
    assert len(h) == 21 and h[0] / (sum(h[-5:]) / 5) >= budget["reduction"], (name, problem_name, h)
