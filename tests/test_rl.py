"""Bilevel RL: exact soft solves and hypergradients against independent truth, problem kinds, the solvers.

Truth: soft policy iteration against plain value iteration run to convergence, the exact hypergradient
against central finite differences of φ(x) (φ from converged solves), float64 throughout.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch

import bilevel
from bilevel.cli import main
from bilevel.kinds import problems_for, solvers_for
from bilevel.problems import get_problem
from bilevel.rl import RLOracles, RLProblem, TrajectoryLoss
from bilevel.rl import mdp as M
from bilevel.solvers import get_solver

DT = torch.float64


def random_problem(seed, S=6, A=3, dx=4, contexts=(), terminal=False, trajectory=False, gamma=0.8, tau=0.5,
                   horizon=25):
    """A random small MDP with a nonlinear reward r(x) = 2 tanh(Bx) and an upper loss that couples x and π."""
    g = torch.Generator().manual_seed(seed)
    P = torch.rand(contexts + (S, A, S), generator=g, dtype=DT) ** 3
    P /= P.sum(-1, keepdim=True)
    B = torch.randn(contexts + (S, A, dx), generator=g, dtype=DT)
    rho = torch.rand(S, generator=g, dtype=DT)
    rho /= rho.sum()
    C = torch.randn(S, A, generator=g, dtype=DT)
    x0 = torch.randn(dx, generator=g, dtype=DT)
    term = torch.zeros(S, dtype=torch.bool)
    term[-1] = terminal
    cost = torch.randn(contexts + (S, A, S), generator=g, dtype=DT)

    def reward(x):
        return 2 * torch.tanh(B @ x)

    def upper(x, pi):
        return 0.5 * x.square().sum() + (C * pi.square()).sum((-1, -2)) + x.sum() * pi[..., 0, 0]

    kw = dict(gamma=gamma, tau=tau, rho=rho, terminal=term)
    if trajectory:
        return RLProblem(P, reward, x0, trajectory=TrajectoryLoss(lambda x: cost * (1 + x[0]), 0.9, horizon), **kw)
    return RLProblem(P, reward, x0, upper=upper, **kw)


def central_differences(problem, x, h=1e-5):
    return torch.stack([(problem.phi(x + h * e) - problem.phi(x - h * e)) / (2 * h)
                        for e in torch.eye(x.numel(), dtype=DT)])


# ---- exact solves ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("terminal", [False, True])
def test_soft_policy_iteration_matches_value_iteration_to_convergence(terminal):
    p = random_problem(1, terminal=terminal, gamma=0.9)
    r = p.reward(p.x0)
    V_pi = M.soft_optimal(r, p.P, p.gamma, p.tau, p.terminal)
    V_vi = M.soft_vi(r, p.P, torch.zeros(p.n_states, dtype=DT), p.gamma, p.tau, 600, p.terminal)
    assert torch.allclose(V_pi, V_vi, rtol=0, atol=1e-12)
    # the soft Bellman equation holds, and V* is the soft value of its own greedy policy
    Q = M.soft_q(r, p.P, V_pi, p.gamma)
    assert torch.allclose(M.soft_v(Q, p.tau, p.terminal), V_pi, atol=1e-12)
    pi = M.soft_policy(Q, p.tau, p.terminal)
    assert torch.allclose(M.evaluate_policy(r, p.P, pi, p.gamma, p.tau, p.terminal), V_pi, atol=1e-11)
    if terminal:
        assert V_pi[-1] == 0


def test_soft_value_iteration_is_batched_over_mdps():
    p = random_problem(2, contexts=(3,))
    r = p.reward(p.x0)
    V = M.soft_vi(r, p.P, torch.zeros(3, p.n_states, dtype=DT), p.gamma, p.tau, 7)
    for c in range(3):
        one = M.soft_vi(r[c], p.P[c], torch.zeros(p.n_states, dtype=DT), p.gamma, p.tau, 7)
        assert torch.allclose(V[c], one, atol=1e-14)


def test_log_sum_exp_is_stable_for_large_rewards():
    p = get_problem("rl_synthetic", seed=0)  # rewards of order 10² at x0, τ = 1
    r = p.reward(p.x0)
    assert float(r.abs().max()) > 50
    V, Q, pi = p.solve_lower(p.x0)
    assert torch.isfinite(V).all() and torch.allclose(pi.sum(-1), torch.ones(p.n_states, dtype=DT))


@pytest.mark.parametrize("case", [
    {"seed": 0}, {"seed": 1, "terminal": True}, {"seed": 2, "trajectory": True},
    {"seed": 3, "trajectory": True, "terminal": True}, {"seed": 4, "contexts": (2,)},
])
def test_exact_hypergradient_equals_central_differences(case):
    p = random_problem(**case)
    x = p.x0
    t = p.truth(x)
    fd = central_differences(p, x)
    assert float((fd - t.grad).norm() / t.grad.norm()) < 1e-6


def test_exact_hypergradient_on_rl_synthetic():
    p = get_problem("rl_synthetic", seed=0, dim=8)
    x = p.x0 * 0.3  # moderate rewards: a policy far from deterministic, so the reward term matters
    t = p.truth(x)
    fd = central_differences(p, x, h=1e-6)
    assert float((fd - t.grad).norm() / t.grad.norm()) < 1e-6
    assert float((t.grad - x).norm()) > 1e-2 * float(t.grad.norm())  # the policy term is not negligible


def test_trajectory_loss_expectation_equals_the_mean_of_sampled_losses():
    p = random_problem(5, trajectory=True, terminal=True)
    _, _, pi = p.solve_lower(p.x0)
    o = RLOracles(p)
    d = o.trajectories(pi, 20000, p.trajectory.horizon, torch.Generator().manual_seed(0))
    losses = o.trajectory_losses(p.x0, d)
    exact = float(p.expected_trajectory_loss(p.x0, pi))
    assert abs(float(losses.mean()) - exact) < 4 * float(losses.std()) / 20000 ** 0.5
    assert o.counts.trajectories == 20000 and o.counts.transitions == d.steps


# ---- problem kinds --------------------------------------------------------------------------------------
def test_kinds_are_declared():
    assert "rl_synthetic" in problems_for("rl") and "rl_synthetic" not in problems_for("classic")
    assert {"m_sobirl"} <= set(solvers_for("rl"))
    assert not set(solvers_for("rl")) & set(solvers_for("classic"))


@pytest.mark.parametrize("solver", ["lancbio", "amigo_cg", "f2sa", "itd"])
def test_classic_solvers_refuse_an_rl_problem(solver):
    p = get_problem("rl_synthetic", seed=0, dim=5)
    for call in (lambda: bilevel.solve(p, get_solver(solver), max_iter=1),
                 lambda: get_solver(solver).bind(p)):
        with pytest.raises(ValueError) as err:
            call()
        text = str(err.value)
        assert "\n" not in text and "bilevel RL problem" in text and "m_sobirl" in text


def test_rl_solvers_refuse_a_classic_problem():
    q = bilevel.problems.quadratic(seed=0)
    for name in solvers_for("rl"):
        with pytest.raises(ValueError) as err:
            bilevel.solve(q, get_solver(name, lr_x=0.1), max_iter=1)
        text = str(err.value)
        assert "\n" not in text and "classic bilevel problem" in text and "lancbio" in text


# ---- M-SoBiRL -------------------------------------------------------------------------------------------
def test_m_sobirl_solves_rl_synthetic():
    """§4.5 with the published settings (T = 10, ζ = 0.5, β = 8e-3), one seed: φ → 1 (the global minimum),
    the amortised estimate converges to the exact hypergradient, and the counts are exactly as documented."""
    p = get_problem("rl_synthetic", seed=0)
    solver = get_solver("m_sobirl")
    res = bilevel.solve(p, solver, max_iter=800, eval_every=100, seed=0)
    first, last = res.history[0], res.history.last()
    assert first["phi"] > 40
    assert last["phi"] <= 1.001 and last["hypergrad_norm"] < 2e-2
    assert last["hypergrad_rel_error"] < 1e-6  # w and V have converged to the exact adjoint and V*
    assert last["value_error"] < 1e-6
    assert res.counts.as_dict() == {**{k: 0 for k in res.counts.as_dict()},
                                    **solver.bind(p).expected_counts(800, p)}


def test_m_sobirl_is_deterministic_given_the_seed():
    p = get_problem("rl_synthetic", seed=3, dim=10)
    a = bilevel.solve(p, get_solver("m_sobirl"), max_iter=20, eval_every=5, seed=1)
    b = bilevel.solve(p, get_solver("m_sobirl"), max_iter=20, eval_every=5, seed=1)
    assert torch.equal(a.x, b.x) and a.history.last() == b.history.last() | {"time": a.history.last()["time"]}


def test_cli_runs_m_sobirl_and_prints_truth_next_to_the_estimate(tmp_path, capsys):
    out = tmp_path / "run.csv"
    code = main(["run", "rl_synthetic", "--solver", "m_sobirl", "--max-iter", "30", "--eval-every", "10",
                 "-P", "dim=20", "--no-progress", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "phi=" in text and "hypergrad_norm=" in text and "hypergrad_est_norm=" in text
    rows = list(csv.DictReader(open(out)))
    assert {"phi", "hypergrad_norm", "hypergrad_est_norm", "sweeps"} <= set(rows[0])
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["counts"]["sweeps"] == 300 and meta["options"]["lr_x"] == 8e-3


# ---- estimators against the exact hypergradient ---------------------------------------------------------
def exact_grad_V(p, x, pi):
    """∇_x V* = (I − γP_π)⁻¹ Φ, Φ_s = Σ_a π_sa ∇_x r_sa (dense solve: independent of the solvers' sweeps)."""
    J = torch.autograd.functional.jacobian(p.reward, x)
    Phi = torch.einsum("...sa,...sad->...sd", pi, J) * (~p.terminal).unsqueeze(-1)
    A = torch.eye(p.n_states, dtype=DT) - p.gamma * M.policy_matrix(p.P, pi, p.terminal)
    return torch.linalg.solve(A, Phi)


def estimates(name, p, x, draws, **options):
    """``draws`` estimates at x from one state at the exact lower solution (V*, and ∇_x V* or the exact
    adjoint as the solver's auxiliary variable), each step with its own generator."""
    import dataclasses

    bound = get_solver(name, lr_x=1e-3, **options).bind(p)
    t = p.truth(x)
    o = RLOracles(p)
    state = bound.init(p, o, torch.Generator().manual_seed(0))
    aux = {"m_sobirl": t.w, "sobirl": exact_grad_V(p, x, t.pi), "stoc_sobirl": exact_grad_V(p, x, t.pi)}.get(name)
    state = dataclasses.replace(state, x=x, V=t.V, w=aux)
    out = []
    for i in range(draws):
        s = dataclasses.replace(state, generator=torch.Generator().manual_seed(1000 + i))
        out.append(bound.step(s, o).iterate[3])
    return torch.stack(out), t.grad, o.counts


def test_m_sobirl_estimate_at_the_exact_lower_solution_is_exact():
    p = random_problem(0)
    est, grad, counts = estimates("m_sobirl", p, p.x0, 1, sweeps=50)
    assert float((est[0] - grad).norm() / grad.norm()) < 1e-10


def test_stoc_sobirl_is_unbiased():
    p = random_problem(3, trajectory=True, terminal=True)
    x = p.x0
    est, grad, counts = estimates("stoc_sobirl", p, x, 300, sweeps=60, trajectories=100)
    mean = est.mean(0)
    spread = float(est.var(0).sum() / est.shape[0]) ** 0.5  # the standard error of the mean, in norm
    assert float((mean - grad).norm()) < 3 * spread
    assert spread < 0.1 * float(grad.norm())  # the check has power: the noise is small next to ∇φ
    assert counts.trajectories == 300 * 100


def test_hpgd_is_unbiased():
    """Over draws of the episodes, the sampled step, the second action and the geometric rollout lengths (and
    of the context, for a batch of two MDPs)."""
    for case in ({"seed": 3, "terminal": True}, {"seed": 6, "contexts": (2,)}):
        # short episodes and γ = 0.5 (short geometric rollouts) keep the REINFORCE-type variance testable
        p = random_problem(trajectory=True, gamma=0.5, horizon=8, **case)
        est, grad, counts = estimates("hpgd", p, p.x0, 200, sweeps=60, trajectories=500)
        spread = float(est.var(0).sum() / est.shape[0]) ** 0.5
        assert float((est.mean(0) - grad).norm()) < 3 * spread, case
        # the power of the check (the context draw adds the spread of the per-context gradients)
        assert spread < (0.15 if "contexts" not in case else 0.4) * float(grad.norm()), case
        assert counts.trajectories == 200 * 3 * 500


def test_sobirl_bias_falls_with_the_number_of_samples():
    p = random_problem(0, S=5, A=2, dx=3)
    x = p.x0
    errors = []
    for n in (3, 30, 300):
        est, grad, _ = estimates("sobirl", p, x, 200, sweeps=40, samples=n)
        errors.append(float((est.mean(0) - grad).norm() / grad.norm()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.02, errors


def test_zeroth_order_difference_is_second_order_accurate_and_unbiased_for_smoothing():
    from bilevel.solvers.zeroth_order import ZerothOrder

    p = random_problem(1)
    x = p.x0
    t = p.truth(x)
    bound = get_solver("zeroth_order", lr_x=1e-3, sweeps=200).bind(p)
    o = RLOracles(p)
    u = torch.randn(p.dx, generator=torch.Generator().manual_seed(0), dtype=DT)
    errs = []
    for mu in (0.01, 0.005, 0.0025):  # φ is strongly curved here: the asymptotic regime starts near μ = 0.01
        diff = (ZerothOrder._value(bound, o, x + mu * u, t.V, None) - ZerothOrder._value(bound, o, x - mu * u, t.V, None))
        errs.append(abs(float(diff) / (2 * mu) - float(u @ t.grad)))
    # the bias of the two-point difference is O(μ²): halving μ divides it by about 4
    assert 3.0 < errs[0] / errs[1] < 5.0 and 3.0 < errs[1] / errs[2] < 5.0, errs
    est, grad, _ = estimates("zeroth_order", p, x, 400, sweeps=60, radius=1e-3)
    spread = float(est.var(0).sum() / est.shape[0]) ** 0.5
    assert float((est.mean(0) - grad).norm()) < 3 * spread


@pytest.mark.parametrize("name,options", [
    ("sobirl", {"samples": 20}), ("zeroth_order", {"directions": 2}),
    ("stoc_sobirl", {"trajectories": 7}), ("hpgd", {"trajectories": 5}), ("pbrl", {"lr_theta": 0.1}),
])
def test_counts_are_exactly_as_documented(name, options):
    p = random_problem(0, trajectory=name in ("stoc_sobirl", "hpgd"), contexts=(2,))
    solver = get_solver(name, lr_x=1e-2, **options)
    res = bilevel.solve(p, solver, max_iter=6, eval_every=3)
    expected = solver.bind(p).expected_counts(6, p)
    got = {k: v for k, v in res.counts.as_dict().items() if v}
    if name in ("stoc_sobirl", "hpgd"):  # episode lengths are random: their steps are counted as they happen (see
        got.pop("transitions")  # test_trajectory_loss_expectation_equals_the_mean_of_sampled_losses)
    assert got == {k: v for k, v in expected.items() if v}


def test_pbrl_penalty_gradients_equal_central_differences():
    """∇_x p and ∇_θ p of p(x, θ) = ρᵀV*(x) − ρᵀV^{softmax θ}(x), from exact inner quantities, against central
    differences of p computed with exact solves."""
    from bilevel.solvers.pbrl import PBRL

    p = random_problem(2, terminal=True)
    x = p.x0
    theta = torch.randn(p.n_states, p.n_actions, generator=torch.Generator().manual_seed(1), dtype=DT)
    live = ~p.terminal

    def penalty(x, theta):
        r = p.reward(x)
        V = M.soft_optimal(r, p.P, p.gamma, p.tau, p.terminal)
        V_theta = M.evaluate_policy(r, p.P, torch.softmax(theta, -1), p.gamma, p.tau, p.terminal)
        return p.rho @ V - p.rho @ V_theta

    def occupancy(pi):
        A = torch.eye(p.n_states, dtype=DT) - p.gamma * M.policy_matrix(p.P, pi, p.terminal)
        return torch.linalg.solve(A.T, p.rho * live)

    r = p.reward(x)
    V, _, pi_star = p.solve_lower(x)
    pi = torch.softmax(theta, -1)
    V_theta = M.evaluate_policy(r, p.P, pi, p.gamma, p.tau, p.terminal)
    gx, gtheta = PBRL.penalty_gradients(RLOracles(p), x, r, pi_star, theta, V_theta, occupancy(pi_star), occupancy(pi))
    h = 1e-6
    fd_x = torch.stack([(penalty(x + h * e, theta) - penalty(x - h * e, theta)) / (2 * h) for e in torch.eye(p.dx, dtype=DT)])
    E = torch.eye(theta.numel(), dtype=DT).reshape(-1, *theta.shape)
    fd_t = torch.stack([(penalty(x, theta + h * e) - penalty(x, theta - h * e)) / (2 * h) for e in E]).reshape(theta.shape)
    assert float((gx - fd_x).norm() / fd_x.norm()) < 1e-6
    assert float((gtheta - fd_t).norm() / fd_t.norm()) < 1e-6


def test_pbrl_and_sobirl_reduce_phi_on_rl_synthetic():
    p = get_problem("rl_synthetic", seed=0)
    for name, phi_max in (("sobirl", 1.001), ("pbrl", 1.5)):  # PBRL keeps its O(1/λ) penalty bias (λ = 1)
        res = bilevel.solve(p, get_solver(name), max_iter=800, eval_every=400, seed=0)
        assert res.history[0]["phi"] > 40 and res.history.last()["phi"] < phi_max, name


# ---- FourRooms ------------------------------------------------------------------------------------------
def test_fourrooms_layout_and_kernel():
    from bilevel.problems.fourrooms import DOORS, GOALS, START, TARGET, fourrooms_grid

    free = fourrooms_grid()
    assert int(free.sum()) == 104
    assert all(free[r, c] for r, c in (*DOORS, START, TARGET, *GOALS))
    p = get_problem("fourrooms", lam=0.003)
    assert p.tau == 0.003 and p.info["beta_reg"] == 3.0 and p.batch_shape == (2,)
    cells = [tuple(map(int, rc)) for rc in free.nonzero()]
    s = cells.index((2, 2))  # an open cell: each move lands on a different free neighbour
    right = cells.index((2, 3))
    assert abs(float(p.P[0, s, 1, right]) - 0.67) < 1e-12 and abs(float(p.P[0, s, 0, right]) - 0.11) < 1e-12
    corner = cells.index((1, 1))  # up and left hit walls: the agent stays
    assert abs(float(p.P[0, corner, 0, corner]) - (0.67 + 0.11)) < 1e-12
    assert int(p.terminal[0].sum()) == 1 and int(p.terminal[1].sum()) == 1


def test_fourrooms_exact_hypergradient_along_random_directions():
    p = get_problem("fourrooms", lam=0.005)
    g = torch.Generator().manual_seed(0)
    x = 0.5 * torch.randn(p.dx, generator=g, dtype=DT)
    t = p.truth(x)
    h = 1e-5
    for _ in range(2):
        u = torch.randn(p.dx, generator=g, dtype=DT)
        fd = float((p.phi(x + h * u) - p.phi(x - h * u)) / (2 * h))
        assert abs(fd - float(u @ t.grad)) < 1e-6 * float(u.norm() * t.grad.norm())
    # the logged metric is the exact upper value, the negative of φ
    assert abs(-float(t.phi) - float(p.metrics(x, t)["upper_value"])) == 0


def test_cli_runs_hpgd_on_fourrooms(tmp_path, capsys):
    out = tmp_path / "fr.csv"
    code = main(["run", "fourrooms", "--solver", "hpgd", "--max-iter", "2", "--eval-every", "1",
                 "-O", "trajectories=5", "--no-progress", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "upper_value=" in text and "hypergrad_norm=" in text and "hypergrad_est_norm=" in text
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["options"]["clip"] == 1.0 and meta["counts"]["trajectories"] == 2 * 3 * 5


def test_rollout_estimates_of_q_derivatives_are_unbiased():
    """Independent and coupled rollouts of geometric length against ∂_x Q(s, a) − ∂_x Q(s, b) from the exact
    ∇_x V* (dense solve)."""
    p = random_problem(3, terminal=True)
    x = p.x0
    t = p.truth(x)
    J = torch.autograd.functional.jacobian(p.reward, x)
    DQ = J + p.gamma * torch.matmul(p.P, exact_grad_V(p, x, t.pi).unsqueeze(-3))
    o = RLOracles(p)
    g = torch.Generator().manual_seed(0)
    n = 20000
    for s0, a0, b0 in ((0, 0, 1), (4, 1, 2)):
        S, A0, B0 = (torch.full((n,), v) for v in (s0, a0, b0))
        C = torch.zeros(n, dtype=torch.long)
        exact = DQ[s0, a0] - DQ[s0, b0]
        coupled = o.coupled_rollout_differences(t.pi, J, S, A0, B0, C, g)
        both = o.reward_rollouts(t.pi, J, torch.cat([S, S]), torch.cat([A0, B0]), torch.cat([C, C]), g)
        for est in (coupled, both[:n] - both[n:]):
            z = (est.mean(0) - exact) / (est.std(0) / n ** 0.5)
            assert float(z.abs().max()) < 4, z


def test_float32_runs_and_agrees_with_float64():
    rows = {}
    for dtype in (torch.float32, torch.float64):
        p = get_problem("rl_synthetic", seed=0, dim=20, dtype=dtype)
        res = bilevel.solve(p, get_solver("m_sobirl"), max_iter=50, eval_every=25)
        assert res.status == "max_iter" and res.x.dtype == dtype
        rows[dtype] = res.history.last()
    for key in ("phi", "hypergrad_norm", "hypergrad_est_norm"):  # the exact solves converge in float32 too
        assert abs(rows[torch.float32][key] - rows[torch.float64][key]) < 1e-4 * abs(rows[torch.float64][key])


def test_soft_value_iteration_inner_solver_counts_sweeps_per_mdp():
    from bilevel.rl import SoftValueIteration

    p = random_problem(2, contexts=(3,))
    o = RLOracles(p)
    r = p.reward(p.x0)
    V0 = torch.zeros(3, p.n_states, dtype=DT)
    inner = SoftValueIteration(sweeps=7)
    V = inner.run(o, r, V0)
    assert torch.equal(V, M.soft_vi(r, p.P, V0, p.gamma, p.tau, 7)) and o.counts.sweeps == 21
    pi = inner.policy(p, r, V)
    assert torch.allclose(pi, torch.softmax(M.soft_q(r, p.P, V, p.gamma) / p.tau, -1), atol=1e-15)
    with pytest.raises(ValueError, match="sweeps must be >= 1"):
        SoftValueIteration(sweeps=0)
