"""HPGD: stochastic hyper-policy gradient descent from sampled trajectories (Thoma, Pasztor, Krause, Ramponi &
Hu, "Contextual bilevel reinforcement learning for incentive alignment", NeurIPS 2024)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

import torch

from ..rl.oracles import SeedGroups, Trajectories, _draw
from ..rl.solver import RLSolver, RLState
from .base import register


@register
@dataclass(frozen=True, kw_only=True)
class HPGD(RLSolver):
    """HPGD — hyper-policy gradient descent: a stochastic hypergradient built only from sampled trajectories
    and the leader's knowledge of ∂r/∂x (Thoma et al., NeurIPS 2024).

    For a context ξ (one MDP of the batch, drawn uniformly each iteration) and the follower's soft-optimal
    policy π (∇_x log π_sa = τ⁻¹(∂_x Q_sa − ∂_x V_s), ∂_x V_s = E_{a'∼π_s} ∂_x Q_sa'):

        ∇φ_ξ(x) = E_d[∇_x l(d; x)] + τ⁻¹ E_d[ l(d; x) Σ_t (∂_x Q(s_t, a_t) − ∂_x Q(s_t, a'_t)) ],  a'_t ∼ π(s_t).

    Iteration k (V warm-started from 0; the follower's best response by T soft value-iteration sweeps on the
    model, as in the published code; J = ∂r/∂x):

        ξ ∼ U(contexts);  V ← T sweeps;  π = softmax((r + γPV)/τ)                          [sweeps = T]
        d_1 … d_N ∼ π in ξ (episodes of at most H steps)                             [trajectories = N]
        per episode i: one step t_i uniform among its T_i steps, a' ∼ π(s_t), two rollouts from (s_t, a_t)
            and (s_t, a') of one geometric length K ∼ Geom(1 − γ), coupled (the same uniforms at every step):
            ĝ_i = Σ_{k<K} J(s_k, a_k) − Σ_{k<K} J(s'_k, a'_k); a pair stops where its chains meet (the rest
            cancels exactly) or both have ended
        D_k = (1/N) Σ_i [∇_x l(d_i; x_k) + τ⁻¹ l(d_i; x_k) T_i ĝ_i]
            (the second sum as one VJP: Σ_i c_i ĝ_i = ∇_x⟨r(x), Z⟩, Z[s, a] = Σ_i c_i × (visits of (s, a) by
            the first chain of pair i − by the second), c_i = l(d_i) T_i / N)
        x_{k+1} = x_k − β clip(D_k)                        [lr_x = β; clip = the norm cap, 0 for none]

    Each factor is unbiased (T_i ĝ_{t_i} for Σ_t, the geometric length for the discounted sum; each chain of
    a coupled pair is marginally a plain rollout, so the coupling changes the variance only), and ĝ_i is
    drawn independently of l(d_i) given the episode, so D_k is unbiased for ∇φ_ξ(x_k) given a converged
    lower level (tested over many draws).  It is ∇φ_ξ for the drawn ξ: over the draws of ξ it is unbiased
    for ∇φ = mean_ξ ∇φ_ξ.  We state the estimator as above (one sampled step per episode) rather than from
    the published JAX code, which we did not read.

    Oracle cost per iteration (exact, counted): T soft value-iteration sweeps per MDP, N episodes plus N
    coupled pairs of rollouts (``trajectories`` = 3N; their sampled steps as ``transitions``), 1 reward
    evaluation, 1 reward VJP, 1 evaluation of the sampled losses and 1 upper gradient (a backward pass
    through them).  ``step_batch`` runs one iteration of several seeds as one vectorised batch (each seed's
    result equal to its run alone).
    """

    name: ClassVar[str] = "hpgd"
    label: ClassVar[str] = "HPGD"
    needs_trajectory_loss: ClassVar[bool] = True
    defaults: ClassVar[Mapping[str, Any]] = {"sweeps": 10, "trajectories": 100, "clip": 0.0}
    settings: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "fourrooms": {"lr_x": 0.5, "sweeps": 10, "trajectories": 50, "clip": 1.0},
    }
    checks: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    int_options: ClassVar[Mapping[str, int]] = {"sweeps": 1, "trajectories": 1}

    lr_x: Optional[float] = None
    sweeps: Optional[int] = None
    trajectories: Optional[int] = None
    clip: Optional[float] = None

    def expected_counts(self, iterations: int, problem: Any = None) -> dict[str, float]:
        n = 1 if problem is None else problem.n_contexts
        return {"sweeps": iterations * self.sweeps * n, "trajectories": 3 * iterations * self.trajectories,
                "reward_evals": iterations, "reward_grads": iterations, "upper_values": iterations,
                "upper_grads": iterations}

    def init(self, problem: Any, oracles: Any, generator: torch.Generator) -> RLState:
        self._require_bound()
        return self.init_state(problem, generator)

    def estimate(self, o: Any, x: torch.Tensor, pi: torch.Tensor, context: int,
                 gen: torch.Generator) -> torch.Tensor:
        """The HPGD estimate at x for the policy π in MDP ``context`` (flattened index)."""
        p = o.problem
        groups = SeedGroups.single(gen, self.trajectories, o.counts, p.dtype, p.device)
        return self._estimates([o], [x], pi.unsqueeze(0), [context], groups)[0]

    def _estimates(self, oracles: list, xs: list, pi: torch.Tensor, contexts: list, groups: SeedGroups) -> list:
        """The estimates of B runs at once (π: a leading run dimension; run b's N episodes are rows
        b·N … (b+1)·N − 1 and draw from its own generator), each equal to its estimate alone."""
        p = oracles[0].problem
        N, dev = self.trajectories, p.device
        B, C, S, A = len(xs), p.n_contexts, p.n_states, p.n_actions
        # the flattened (run, context) index of each episode, run-major
        ctx = (torch.tensor(contexts, device=dev) + C * torch.arange(B, device=dev)).repeat_interleave(N)
        d = oracles[0].trajectories(pi, B * N, p.trajectory.horizon, groups, context=ctx)
        gxs, losses = [], []
        for b, (o, x) in enumerate(zip(oracles, xs)):  # the sampled losses and their x-gradient, per run
            rows = slice(b * N, (b + 1) * N)
            db = Trajectories(d.states[rows], d.actions[rows], d.alive[rows], d.context[rows] - b * C)
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                lb = o.trajectory_losses(xg, db)
                (gx,) = torch.autograd.grad(lb.mean(), xg, allow_unused=True)
            o.counts.upper_grads += 1
            gxs.append(torch.zeros_like(x) if gx is None else gx)
            losses.append(lb.detach())
        T = d.alive.sum(1)  # steps per episode (≥ 1 unless it starts at a terminal state)
        t = torch.minimum((groups.rand() * T).long(), (T - 1).clamp(min=0))
        rows = torch.arange(B * N, device=dev)
        s, a = d.states[rows, t], d.actions[rows, t]
        cumpi = pi.reshape(B * C, S, A)[ctx, s].cumsum(-1)
        cumpi[..., -1] = 1.0
        a2 = _draw(cumpi, groups.rand())
        # (1/N) Σ_i l_i T_i ĝ_i as one VJP through r per run: the pairs' visits weighted by l_i T_i / N
        weight = torch.cat(losses) * T.to(p.dtype) / N
        Z = oracles[0].coupled_visit_weights(pi, s, a, a2, ctx, weight, groups)
        return [gx + o.reward_vjp(x, Z[b]) / p.tau for b, (o, x, gx) in enumerate(zip(oracles, xs, gxs))]

    def step(self, state: RLState, oracles: Any, batches: Any = None) -> RLState:
        o = self.check_oracles(oracles)
        p = o.problem
        x, gen = state.x, state.generator
        context = int(torch.randint(p.n_contexts, (1,), generator=gen, device=p.device))
        _, V, pi = self.best_response(o, x, state.V)
        estimate = self.estimate(o, x, pi, context, gen)
        return self.advance(state, x, estimate, V, None, pi, context=context)

    def step_batch(self, states: list, oracles: list) -> list:
        """Several runs (seeds) in one vectorised iteration: one batched soft value iteration, one batch of
        episodes and one batch of coupled rollouts for all runs (each run's rows drawn from its own
        generator), so each run's next state equals its ``step`` alone, bit for bit."""
        os_ = [self.check_oracles(o) for o in oracles]
        p = os_[0].problem
        gens = [st.generator for st in states]
        contexts = [int(torch.randint(p.n_contexts, (1,), generator=g, device=p.device)) for g in gens]
        xs = [st.x for st in states]
        _, V, pi = self.best_response_batch(os_, xs, [st.V for st in states])
        groups = SeedGroups(gens, [self.trajectories] * len(states), [o.counts for o in os_], p.dtype, p.device)
        estimates = self._estimates(os_, xs, pi, contexts, groups)
        return [self.advance(st, x, e, V[b], None, pi[b], context=c)
                for b, (st, x, e, c) in enumerate(zip(states, xs, estimates, contexts))]


def hpgd(**options: Any) -> HPGD:
    """HPGD (see ``HPGD``)."""
    return HPGD(**options)
