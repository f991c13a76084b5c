"""Dynamic Lanczos v-solver: invariants on a fixed system, guards, restarts and the dimension schedule."""

import math

import pytest
import torch

from bilevel.linear_solvers import Lanczos, linear_solve
from bilevel.linear_solvers._tridiagonal import ldl_solve, minres_solve
from bilevel.schedules import DimensionSchedule
from conftest import spd_matrix

F64 = torch.float64


def _system(n=30, condition=100.0, seed=0):
    A = spd_matrix(n, condition, seed)
    b = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    return A, b


def _cg_iterates(A, b, steps):
    x, r = torch.zeros_like(b), b.clone()
    p, out = r.clone(), []
    for _ in range(steps):
        z = A @ p
        a = (r @ r) / (p @ z)
        x = x + a * p
        r_new = r - a * z
        p = r_new + (r_new @ r_new) / (r @ r) * p
        r = r_new
        out.append(x.clone())
    return out


def _minres_iterates(A, b, steps):
    """Dense reference: argmin over K_j(A, b) of ‖b − A v‖ (orthonormal Krylov basis by QR)."""
    out, cols = [], [b / b.norm()]
    for _ in range(steps):
        K, _ = torch.linalg.qr(torch.stack(cols, 1))
        z = torch.linalg.lstsq(A @ K, b.unsqueeze(1)).solution.squeeze(1)
        out.append(K @ z)
        cols.append(A @ cols[-1] / (A @ cols[-1]).norm())
    return out


def test_galerkin_epoch_reproduces_cg_iterates():
    A, b = _system()
    solver = Lanczos(m=30)
    state = solver.init(b)
    for k, ref in enumerate(_cg_iterates(A, b, 12)):
        v, state, info = solver.solve(lambda u: A @ u, b, state, k=k)
        assert torch.allclose(v, ref, rtol=1e-9, atol=1e-11), k
        assert info.epoch_step == k + 1


def test_minres_epoch_reproduces_minres_iterates():
    A, b = _system(n=20, condition=10.0)
    solver = Lanczos(m=20, subproblem="minres")
    state = solver.init(b)
    for k, ref in enumerate(_minres_iterates(A, b, 8)):
        v, state, _ = solver.solve(lambda u: A @ u, b, state, k=k)
        assert torch.allclose(v, ref, rtol=1e-8, atol=1e-10), k


@pytest.mark.parametrize("subproblem", ["galerkin", "minres"])
@pytest.mark.parametrize("condition", [1.0, 10.0, 1e2, 1e4])
def test_exact_in_n_steps_and_invariants(subproblem, condition):
    n = 24
    A, b = _system(n, condition)
    solver = Lanczos(m=n, subproblem=subproblem, reorth="full", keep_basis=True)
    state = solver.init(b)
    v = None
    for k in range(n):
        v, state, info = solver.solve(lambda u: A @ u, b, state, k=k)
        if "breakdown" in info.events:  # condition 1: A = I, the Krylov space is one-dimensional
            break
    exact = torch.linalg.solve(A, b)
    assert torch.linalg.vector_norm(v - exact) <= 1e-8 * torch.linalg.vector_norm(exact)
    Q = state.basis()
    assert torch.allclose(Q @ Q.T, torch.eye(state.j, dtype=F64), atol=1e-12)
    assert torch.allclose(state.T(), Q @ A @ Q.T, atol=1e-9 * condition)


def test_invariants_without_reorthogonalisation_for_few_steps():
    A, b = _system(40, 50.0)
    solver = Lanczos(m=40)
    state = solver.init(b)
    for k in range(8):
        _, state, _ = solver.solve(lambda u: A @ u, b, state, k=k)
    Q = state.basis()
    assert torch.allclose(Q @ Q.T, torch.eye(8, dtype=F64), atol=1e-12)
    assert torch.allclose(state.T(), Q @ A @ Q.T, atol=1e-10)
    # the Lanczos relation A Q_jᵀ = Q_jᵀ T_j + β_{j+1} q_{j+1} e_jᵀ
    rel = A @ Q.T - Q.T @ state.T()
    rel[:, -1] -= state.beta_next * state.Q[8]
    assert rel.abs().max() < 1e-12


@pytest.mark.parametrize("condition", [1.0, 10.0, 1e2, 1e4])
@pytest.mark.parametrize("subproblem", ["galerkin", "minres"])
def test_restarted_matches_dense_solve(condition, subproblem):
    A, b = _system(30, condition)
    res = linear_solve(lambda u: A @ u, b, Lanczos(m=10, subproblem=subproblem), rtol=1e-10, max_calls=3000)
    assert res.converged, (res.residual, res.calls)
    exact = torch.linalg.solve(A, b)
    assert torch.linalg.vector_norm(res.v - exact) <= 1e-8 * condition * torch.linalg.vector_norm(exact)


def test_m1_is_steepest_descent_with_exact_line_search():
    A, b = _system(15, 20.0)
    solver = Lanczos(m=1)
    state = solver.init(b)
    v_prev = torch.zeros_like(b)
    for k in range(6):
        v, state, info = solver.solve(lambda u: A @ u, b, state, k=k)
        r = b - A @ v_prev
        assert torch.allclose(v, v_prev + (r @ r) / (r @ A @ r) * r, rtol=1e-12, atol=1e-14)
        assert info.matvecs == (1 if k == 0 else 2)  # A·v̄ is skipped while v̄ = 0
        assert "restart" in info.events
        v_prev = v


def test_restart_every_m_and_cost_one_plus_one_over_m():
    A, b = _system(30, 100.0)
    calls = []

    def matvec(u):
        calls.append(1)
        return A @ u

    solver = Lanczos(m=5)
    state = solver.init(b)
    restarts, total = [], 0
    for k in range(50):
        before = len(calls)
        _, state, info = solver.solve(matvec, b, state, k=k)
        assert info.matvecs == len(calls) - before
        total += info.matvecs
        if "restart" in info.events:
            restarts.append(k)
        assert info.epoch_step == k % 5 + 1
    assert restarts == list(range(0, 50, 5))
    assert total == 50 + len(restarts) - 1  # no HVP at the first restart (v̄ = 0)
    assert solver.expected_matvecs(7) == pytest.approx(1.2)


def test_growing_schedule_sets_epoch_lengths():
    A, b = _system(40, 100.0)
    sched = DimensionSchedule(m0=1, growth=1.5, period=4, m_max=6)
    solver = Lanczos(m=sched)
    state = solver.init(b)
    restarts = []
    for k in range(40):
        _, state, info = solver.solve(lambda u: A @ u, b, state, k=k)
        if "restart" in info.events:
            restarts.append(k)
        assert state.j <= sched(k)
    # replay the rule: restart when the basis already holds m(k) vectors
    expected, j = [], 0
    for k in range(40):
        if k == 0 or j >= sched(k):
            expected.append(k)
            j = 0
        j += 1
    assert restarts == expected
    assert state.Q.shape[0] == sched.cap + 2  # preallocated once for the largest m


def test_basis_buffer_is_preallocated_and_written_in_place_within_an_epoch():
    A, b = _system(20, 10.0)
    solver = Lanczos(m=8)
    state = solver.init(b)
    shape = state.Q.shape
    for k in range(30):
        ptr = state.Q.data_ptr()
        _, state, info = solver.solve(lambda u: A @ u, b, state, k=k)
        if solver.restarts_at(state, k + 1):
            # the next call restarts: the state lets go of its buffer (j, α, β stay)
            assert state.Q.shape[0] == 0 and state.j == 8 and state.restart_pending, k
            continue
        assert state.Q.shape == shape
        if k == 0 or "restart" not in info.events:
            # the init buffer is unused at k = 0; inside an epoch the next row is written in place
            assert state.Q.data_ptr() == ptr, k
        else:
            # a restart writes a fresh buffer (the released state had none)
            assert state.Q.data_ptr() != ptr, k


@pytest.mark.parametrize("kwargs", [{"m": 4}, {"m": DimensionSchedule(m0=1, growth=2.0, period=3, m_max=6)},
                                    {"m": 3, "subproblem": "minres"}, {"m": 3, "mode": "plain"},
                                    {"m": 5, "plain_until": 4}])
def test_a_state_due_to_restart_releases_its_basis_and_nothing_else_changes(kwargs):
    A, b = _system(30, 1e3)
    lean, kept = Lanczos(**kwargs), Lanczos(**kwargs, keep_basis=True)
    s_lean, s_kept = lean.init(b), kept.init(b)
    released = 0
    for k in range(25):
        v1, s_lean, i1 = lean.solve(lambda u: A @ u, b, s_lean, k=k)
        v2, s_kept, i2 = kept.solve(lambda u: A @ u, b, s_kept, k=k)
        assert torch.equal(v1, v2) and i1 == i2, k  # bit for bit the same run
        assert s_lean.T().equal(s_kept.T()) and s_lean.j == s_kept.j
        due = kept.restarts_at(s_kept, k + 1)
        assert (s_lean.Q.shape[0] == 0) == due, k  # released exactly when the next call restarts
        assert s_kept.Q.shape[0] > 0
        released += due
        if due:
            with pytest.raises(ValueError, match="keep_basis=True"):
                s_lean.basis()
        else:
            assert torch.equal(s_lean.basis(), s_kept.basis())
    assert released >= 3 if kwargs.get("mode") != "plain" else released == 0  # plain mode slides, never restarts


def test_a_released_state_called_with_another_k_restarts():
    A, b = _system(20, 10.0)
    solver = Lanczos(m=2)
    state = solver.init(b)
    for k in range(2):
        _, state, _ = solver.solve(lambda u: A @ u, b, state, k=k)
    assert state.Q.shape[0] == 0
    # a caller that skips ahead: the rows are gone, so the call restarts (as the next one would have)
    _, new, info = solver.solve(lambda u: A @ u, b, state, k=7)
    assert "restart" in info.events and new.j == 1 and new.Q.shape[0] > 0


def test_breakdown_is_recorded_and_solution_exact():
    n = 10
    A = 3.0 * torch.eye(n, dtype=F64)
    b = torch.arange(1.0, n + 1, dtype=F64)
    solver = Lanczos(m=5)
    state = solver.init(b)
    v, state, info = solver.solve(lambda u: A @ u, b, state, k=0)
    assert "breakdown" in info.events and state.restart_pending
    assert torch.allclose(v, b / 3.0)
    v2, state, info2 = solver.solve(lambda u: A @ u, b, state, k=1)
    assert "restart_skipped" in info2.events  # residual is already zero: keep v̄
    assert torch.allclose(v2, b / 3.0)


def test_indefinite_T_falls_back_to_minres_and_restarts():
    n = 12
    A = torch.diag(torch.tensor([1.0, -1.0] * 6, dtype=F64))
    b = torch.ones(n, dtype=F64)
    solver = Lanczos(m=6)
    state = solver.init(b)
    seen = set()
    for k in range(3):
        v, state, info = solver.solve(lambda u: A @ u, b, state, k=k)
        seen.update(info.events)
        assert torch.isfinite(v).all()
    assert "indefinite" in seen


def test_eig_fallback_clamps():
    A = torch.diag(torch.tensor([1.0, -1.0, 2.0, -2.0], dtype=F64))
    b = torch.ones(4, dtype=F64)
    solver = Lanczos(m=4, fallback="eig", mu_lb=0.5)
    state = solver.init(b)
    events = set()
    for k in range(3):
        v, state, info = solver.solve(lambda u: A @ u, b, state, k=k)
        events.update(info.events)
        assert torch.isfinite(v).all()
    assert "indefinite" in events


def test_nonfinite_correction_is_discarded():
    A, b = _system(10, 10.0)
    solver = Lanczos(m=5)
    state = solver.init(b)
    for k in range(3):
        v_good, state, _ = solver.solve(lambda u: A @ u, b, state, k=k)
    vbar = state.vbar.clone()
    v, state, info = solver.solve(lambda u: torch.full_like(u, math.nan), b, state, k=3)
    assert "discarded" in info.events or "breakdown" in info.events
    assert torch.isfinite(v).all()
    assert torch.equal(v, vbar) and state.restart_pending


def test_plain_mode_window_and_cost():
    A, b = _system(30, 50.0)
    solver = Lanczos(m=3, mode="plain")
    state = solver.init(b)
    v, state, info = solver.solve(lambda u: A @ u, b, state, k=0)
    # first iterate: the 1-D Galerkin solution on span{b}
    assert torch.allclose(v, (b @ b) / (b @ A @ b) * b)
    for k in range(1, 10):
        v, state, info = solver.solve(lambda u: A @ u, b, state, k=k)
        assert info.matvecs == 1
        assert state.j == min(k + 1, 3)
    Q = state.basis()
    assert torch.allclose(v, Q.T @ torch.linalg.solve(state.T(), Q @ b))


def test_exact_residual_costs_an_extra_hvp():
    A, b = _system(20, 10.0)
    solver = Lanczos(m=4, exact_residual=True)
    state = solver.init(b)
    counts = []
    for k in range(8):
        _, state, info = solver.solve(lambda u: A @ u, b, state, k=k)
        counts.append(info.matvecs)
    assert counts == [1, 1, 1, 1, 2, 2, 2, 2]  # v̄ = 0 in the first epoch, so w = A·0 costs nothing


def test_float32_runs_and_converges():
    A, b = _system(20, 10.0)
    A32, b32 = A.float(), b.float()
    res = linear_solve(lambda u: A32 @ u, b32, Lanczos(m=10, reorth="full"), rtol=1e-5, max_calls=200)
    assert res.converged and res.v.dtype == torch.float32


def test_inputs_not_mutated_and_deterministic():
    A, b = _system(20, 10.0)
    b0 = b.clone()
    outs = []
    for _ in range(2):
        solver = Lanczos(m=4)
        state = solver.init(b)
        for k in range(9):
            v, state, _ = solver.solve(lambda u: A @ u, b, state, k=k)
        outs.append(v)
    assert torch.equal(b, b0)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"m": 0}, "m0 must be an integer >= 1; got 0"),
        ({"m": 2.5}, "m must be an int or a DimensionSchedule"),
        ({"subproblem": "gallerkin"}, "Did you mean 'galerkin'"),
        ({"mode": "residuals"}, "Did you mean 'residual'"),
        ({"reorth": "yes"}, "reorth must be one of"),
        ({"eps_pivot": -1.0}, "eps_pivot must be finite and >= 0"),
        ({"mu_lb": 0.0}, "mu_lb must be finite and > 0"),
        ({"mode": "plain", "exact_residual": True}, "exact_residual applies to mode='residual'"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Lanczos(**kwargs)


def test_tridiagonal_guards():
    assert ldl_solve([1.0, 1.0], [2.0], [1.0, 1.0], 1e-10) is None  # indefinite: pivot 1 − 4 < 0
    assert minres_solve([0.0], [], 0.0, [1.0], 0.0) is None  # rank deficient
    s, res = minres_solve([2.0], [], 1.0, [1.0], 1.0)
    assert s[0] == pytest.approx(0.6) and res == pytest.approx(math.sqrt(0.2))


def _visible(state):
    """What a state shows: its own basis rows, the tridiagonal matrix and every other field."""
    return {
        "Q": state.Q[: state.rows].clone(), "v": state.v.clone(), "vbar": state.vbar.clone(), "w": state.w.clone(),
        **{name: getattr(state, name) for name in ("v_is_zero", "w_is_zero", "j", "alpha", "beta", "beta_next",
                                                  "has_next", "restart_pending", "restarts", "m")},
    }


def _assert_visible(state, seen):
    now = _visible(state)
    for name, value in seen.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(now[name], value), name
        else:
            assert now[name] == value, name


@pytest.mark.parametrize("kwargs", [{"m": 6}, {"m": 3, "mode": "plain"}, {"m": 5, "subproblem": "minres"}])
def test_branching_from_one_state_gives_identical_independent_runs(kwargs):
    A, b = _system(30, 100.0)
    solver = Lanczos(**kwargs)
    state = solver.init(b)
    for k in range(4):
        _, state, _ = solver.solve(lambda u: A @ u, b, state, k=k)
    root, root_seen = state, _visible(state)
    # first branch: the next row goes into the shared buffer in place (nobody wrote beyond root's rows)
    v1, s1, i1 = solver.solve(lambda u: A @ u, b, root, k=4)
    if kwargs.get("mode") != "plain" and s1.Q.shape[0]:  # plain mode's window is full here: it shifts into a
        assert s1.Q.data_ptr() == root.Q.data_ptr()      # fresh buffer; a state due to restart has none
    s1_seen = _visible(s1)
    # second branch from the same state: root's buffer row is taken, so it copies root's rows first
    v2, s2, i2 = solver.solve(lambda u: A @ u, b, root, k=4)
    assert s2.Q.data_ptr() != s1.Q.data_ptr() or not s1.Q.shape[0]
    assert torch.equal(v1, v2) and i1 == i2
    _assert_visible(s2, s1_seen)
    _assert_visible(s1, s1_seen)  # the first branch's output is unchanged by the second
    _assert_visible(root, root_seen)
    # both branches continue identically and independently, through restarts, interleaved
    for k in range(5, 20):
        v1, s1, i1 = solver.solve(lambda u: A @ u, b, s1, k=k)
        seen = _visible(s1)
        v2, s2, i2 = solver.solve(lambda u: A @ u, b, s2, k=k)
        assert torch.equal(v1, v2) and i1 == i2, k
        _assert_visible(s1, seen)
        _assert_visible(s2, seen)
    _assert_visible(root, root_seen)


def test_states_hold_tuples_and_the_input_state_is_unchanged_by_a_step():
    A, b = _system(20, 10.0)
    solver = Lanczos(m=4)
    state = solver.init(b)
    for k in range(6):
        seen = _visible(state)
        _, new, _ = solver.solve(lambda u: A @ u, b, state, k=k)
        _assert_visible(state, seen)
        assert isinstance(new.alpha, tuple) and isinstance(new.beta, tuple)
        state = new


def test_unresolved_lanczos_refuses_to_run_and_names_m():
    b = torch.ones(3, dtype=F64)
    with pytest.raises(ValueError, match=r"^Lanczos: m has no value; pass m=\.\.\. \(e\.g\. Lanczos\(m=10\)\)"):
        Lanczos().init(b)
    assert Lanczos().resolved({"m": 4}).schedule == DimensionSchedule(m0=4)
    assert Lanczos.has_epochs and not Lanczos(m=3).random_cost
