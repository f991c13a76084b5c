"""RL runs: several seeds stepped as one batch (``solve_rl_seeds``), the vectorised samplers behind it, and
callbacks / checkpoints (``solve(..., callbacks=..., resume_from=...)``) on RL problems.  CPU, float64."""

from __future__ import annotations

import pytest
import torch

import bilevel
from bilevel.callbacks import Callback, Checkpoint, EarlyStopping
from bilevel.checkpoint import CheckpointError
from bilevel.problems import get_problem
from bilevel.rl import RLOracles, solve_rl_seeds
from bilevel.rl import mdp as M
from bilevel.rl.oracles import SeedGroups
from bilevel.solvers import get_solver

DT = torch.float64


def _rows(res):
    return [{k: v for k, v in row.items() if k != "time"} for row in res.history.to_dicts()]


@pytest.fixture(scope="module")
def fourrooms():
    return get_problem("fourrooms", lam=0.001)


# ---- seeds as one batch ---------------------------------------------------------------------------------
def test_hpgd_seed_batch_equals_each_seed_alone(fourrooms):
    seeds = [3, 0, 7]
    batch = solve_rl_seeds(fourrooms, get_solver("hpgd"), seeds, max_iter=12, eval_every=6)
    for seed, rb in zip(seeds, batch):
        ra = bilevel.solve(fourrooms, get_solver("hpgd"), max_iter=12, eval_every=6, seed=seed)
        assert torch.equal(ra.x, rb.x) and torch.equal(ra.y, rb.y)
        assert ra.counts == rb.counts and ra.status == rb.status == "max_iter" and rb.seed == seed
        assert _rows(ra) == _rows(rb)
    assert not torch.equal(batch[0].x, batch[1].x)


def test_seed_batch_of_a_solver_without_a_vectorised_step(fourrooms):
    """The default ``step_batch`` steps the runs one after another: the same results as alone."""
    p = get_problem("rl_synthetic", seed=0, dim=10)
    batch = solve_rl_seeds(p, get_solver("sobirl"), [1, 2], max_iter=6, eval_every=3)
    for seed, rb in zip([1, 2], batch):
        ra = bilevel.solve(p, get_solver("sobirl"), max_iter=6, eval_every=3, seed=seed)
        assert torch.equal(ra.x, rb.x) and _rows(ra) == _rows(rb)


def test_seed_batch_drops_a_run_that_stops(fourrooms):
    """A run stopped by its callback leaves the batch; the others go on, still equal to their runs alone."""
    def stop_seed_1(seed):
        return [lambda row: row["iteration"] >= 4] if seed == 1 else []

    batch = solve_rl_seeds(fourrooms, get_solver("hpgd"), [0, 1], max_iter=10, eval_every=2, callbacks=stop_seed_1)
    assert batch[1].status == "stopped" and batch[1].iterations == 5
    assert batch[0].status == "max_iter" and batch[0].iterations == 10
    alone = bilevel.solve(fourrooms, get_solver("hpgd"), max_iter=10, eval_every=2, seed=0)
    assert torch.equal(alone.x, batch[0].x) and _rows(alone) == _rows(batch[0])
    with pytest.raises(ValueError, match="distinct seeds"):
        solve_rl_seeds(fourrooms, get_solver("hpgd"), [0, 0])


# ---- the samplers and sweeps behind it -------------------------------------------------------------------
def test_sparse_sweeps_and_policy_match_the_dense_model(fourrooms):
    p = fourrooms
    o = RLOracles(p)
    assert o._next is not None and o._next.shape[-1] == 4  # at most 4 next cells per move
    x = 0.3 * torch.randn(p.dx, generator=torch.Generator().manual_seed(0), dtype=DT)
    r = p.reward(x)
    V0 = torch.zeros(2, p.n_states, dtype=DT)
    V = o.soft_vi(r, V0, 25)
    Vd = M.soft_vi(r, p.P, V0, p.gamma, p.tau, 25, p.terminal)
    assert torch.allclose(V, Vd, rtol=0, atol=1e-13) and o.counts.sweeps == 50
    pi = o.policy(r, V)
    assert torch.allclose(pi, M.soft_policy(M.soft_q(r, p.P, Vd, p.gamma), p.tau, p.terminal), rtol=0, atol=1e-10)


def test_sparse_next_state_draws_follow_the_kernel(fourrooms):
    """Draws among the ≤ 4 next cells: frequencies within 4.5 standard errors of P, never a cell of probability 0."""
    p, o, n = fourrooms, RLOracles(fourrooms), 20000
    S, A = p.n_states, p.n_actions
    rows = torch.tensor([0, 5 * A + 2, (S + 17) * A + 1, (2 * S - 3) * A + 3])  # (context·S + s)·A + a
    u = torch.rand((rows.numel(), n), generator=torch.Generator().manual_seed(3), dtype=DT)
    nxt = o._next_state(rows.unsqueeze(-1).expand(-1, n), u)
    freq = torch.zeros(rows.numel(), S, dtype=DT).scatter_add_(1, nxt, torch.full_like(u, 1.0 / n))
    P = p.P.reshape(-1, S)[rows]
    assert bool((freq[P == 0] == 0).all())
    se = (P * (1 - P) / n).sqrt().clamp(min=1e-12)
    assert float(((freq - P).abs() / se)[P > 0].max()) < 4.5


def test_fourrooms_reward_jacobian_matches_autodiff(fourrooms):
    x = torch.randn(fourrooms.dx, generator=torch.Generator().manual_seed(1), dtype=DT)
    J = fourrooms.reward_jacobian(x)
    Jad = torch.autograd.functional.jacobian(fourrooms.reward_fn, x)
    assert torch.allclose(J, Jad, rtol=0, atol=1e-15)


def test_coupled_visit_weights_contract_to_the_weighted_rollout_differences(fourrooms):
    """Σ_i c_i ĝ_i from the weighted visits (one VJP) equals the sum of the per-pair differences (same draws)."""
    p = fourrooms
    t = p.truth(p.x0)
    J = p.reward_jacobian(p.x0)
    n = 300
    gen = torch.Generator().manual_seed(5)
    s0 = torch.randint(p.n_states, (n,), generator=gen)
    a0, b0 = torch.randint(4, (n,), generator=gen), torch.randint(4, (n,), generator=gen)
    ctx = torch.randint(2, (n,), generator=gen)
    c = torch.randn(n, generator=gen, dtype=DT)
    o1, o2 = RLOracles(p), RLOracles(p)
    g = o1.coupled_rollout_differences(t.pi, J, s0, a0, b0, ctx, torch.Generator().manual_seed(9))
    Z = o2.coupled_visit_weights(t.pi, s0, a0, b0, ctx, c, torch.Generator().manual_seed(9))
    assert Z.shape == t.pi.shape and o1.counts == o2.counts
    assert torch.allclose(p.reward_vjp(p.x0, Z), (c.unsqueeze(-1) * g).sum(0), rtol=1e-12, atol=1e-14)


def test_seed_groups_draw_each_run_from_its_own_generator():
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    counts = [bilevel.rl.RLCounts(), bilevel.rl.RLCounts()]
    groups = SeedGroups(gens, [3, 2], counts, DT, torch.device("cpu"))
    u = groups.rand(4, active=[True, False])
    assert torch.equal(u[:, :3], torch.rand((4, 3), generator=torch.Generator().manual_seed(0), dtype=DT))
    assert torch.equal(u[:, 3:], torch.full((4, 2), 0.5, dtype=DT))
    groups.add("transitions", torch.tensor([1, 2, 3, 4, 5]), each=1)
    assert (counts[0].transitions, counts[1].transitions) == (9, 11)
    assert groups.any(torch.tensor([False, False, False, True, False])) == [False, True]


# ---- callbacks and checkpoints --------------------------------------------------------------------------
class _Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_start(self, info):
        self.calls.append(("start", info["start"], info["solver"]))

    def on_evaluation(self, row):
        self.calls.append(("eval", row["iteration"]))

    def on_iteration(self, k, run):
        self.calls.append(("it", k, run.iterations))

    def on_end(self, result):
        self.calls.append(("end", result.status))


def test_rl_run_calls_every_hook_and_early_stopping_stops_it():
    p = get_problem("rl_synthetic", seed=0, dim=10)
    rec = _Recorder()
    res = bilevel.solve(p, get_solver("m_sobirl"), max_iter=4, eval_every=2, callbacks=[rec])
    assert rec.calls == [("start", 0, "m_sobirl"), ("eval", 0), ("it", 0, 1), ("it", 1, 2), ("eval", 2), ("it", 2, 3),
                         ("eval", 3), ("it", 3, 4), ("end", "max_iter")]
    # phi cannot improve by 1e9: stops after the first evaluation plus `patience` more
    stop = EarlyStopping("phi", patience=2, min_delta=1e9)
    res = bilevel.solve(p, get_solver("m_sobirl"), max_iter=100, eval_every=5, callbacks=[stop])
    assert res.status == "stopped" and res.iterations == 11 and "phi" in res.message


def test_tensorboard_logs_an_rl_run(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from bilevel.callbacks import TensorBoard

    p = get_problem("rl_synthetic", seed=0, dim=10)
    res = bilevel.solve(p, get_solver("m_sobirl"), max_iter=7, eval_every=3, callbacks=[TensorBoard(tmp_path)])
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    events = acc.Scalars("bilevel/phi")
    assert [e.step for e in events] == [0, 3, 6]
    assert [e.value for e in events] == pytest.approx(res.history.column("phi"), rel=1e-6)
    assert "bilevel/sweeps" in acc.Tags()["scalars"]


@pytest.mark.parametrize("solver", ["hpgd", "m_sobirl"])
def test_rl_checkpoint_resume_is_bit_identical(tmp_path, fourrooms, solver):
    p = fourrooms if solver == "hpgd" else get_problem("rl_synthetic", seed=1, dim=10)
    full = bilevel.solve(p, get_solver(solver), max_iter=10, eval_every=3, seed=4)
    part = bilevel.solve(p, get_solver(solver), max_iter=6, eval_every=3, seed=4,
                         callbacks=[Checkpoint(tmp_path, every=4)])
    assert part.iterations == 6 and (tmp_path / "checkpoint-00000004.pt").exists()
    resumed = bilevel.solve(p, get_solver(solver), max_iter=10, eval_every=3, seed=4, resume_from=tmp_path)
    assert torch.equal(full.x, resumed.x) and torch.equal(full.y, resumed.y)
    assert full.counts == resumed.counts and _rows(full) == _rows(resumed) and resumed.iterations == 10
    with pytest.raises(CheckpointError, match="was written for seed 4, this run has 5"):
        bilevel.solve(p, get_solver(solver), max_iter=10, seed=5, resume_from=tmp_path)


# ---- the exact trajectory loss and its adjoint gradients -------------------------------------------------
def _reference_trajectory_loss(p, x, pi):
    """The step-by-step forward recursion (autograd reference): value += γ^t ⟨d_t, c_π⟩, d ← d P_π on
    non-terminal states."""
    c = p.trajectory.cost(x)
    alive = (~p.terminal).to(DT)
    d = p.rho * alive
    cpi = (pi * (p.P * c).sum(-1)).sum(-1) * alive
    Ppi = M.policy_matrix(p.P, pi, p.terminal)
    value, disc = 0.0, 1.0
    for _ in range(p.trajectory.horizon):
        value = value + disc * (d * cpi).sum(-1)
        d = torch.matmul(d.unsqueeze(-2), Ppi).squeeze(-2) * alive
        disc *= p.trajectory.gamma
    return value.mean()


@pytest.mark.parametrize("which", ["random", "fourrooms"])
def test_trajectory_value_and_adjoint_grads_match_autograd_of_the_recursion(which, fourrooms):
    if which == "fourrooms":
        p = fourrooms
        x = 0.5 * torch.randn(p.dx, generator=torch.Generator().manual_seed(2), dtype=DT)
    else:
        from tests.test_rl import random_problem

        p = random_problem(4, contexts=(2,), terminal=True, trajectory=True)
        x = p.x0
    pi = p.truth(x).pi
    xg, pg = x.clone().requires_grad_(True), pi.clone().requires_grad_(True)
    ref = _reference_trajectory_loss(p, xg, pg)
    gx_ref, gp_ref = torch.autograd.grad(ref, (xg, pg))
    value, gx, gp = p.trajectory_value_and_grads(x, pi)
    assert torch.allclose(value, ref.detach(), rtol=1e-12, atol=1e-14)
    assert torch.allclose(p.upper(x, pi), ref.detach(), rtol=1e-12, atol=1e-14)
    assert torch.allclose(gx, gx_ref, rtol=1e-10, atol=1e-13)
    assert torch.allclose(gp, gp_ref, rtol=1e-10, atol=1e-13)


def test_ctrl_c_stops_every_seed_of_a_batch_keeping_their_iterations(fourrooms, monkeypatch):
    from bilevel.solvers.hpgd import HPGD

    real, calls = HPGD.step_batch, []

    def interrupted(self, states, oracles):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(self, states, oracles)

    monkeypatch.setattr(HPGD, "step_batch", interrupted)
    runs = solve_rl_seeds(fourrooms, get_solver("hpgd"), [0, 1], max_iter=10, eval_every=2)
    for res in runs:
        assert res.status == "stopped" and res.interrupted and res.iterations == 3
        assert res.message.startswith("interrupted (KeyboardInterrupt) during iteration 3; the 3 completed")
