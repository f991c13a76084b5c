"""The counted oracles of a bilevel RL problem: every model access and derivative a solver makes.

RL solvers never count by hand: they call these methods and ``RLOracles`` records the cost.

| count | one unit is |
|---|---|
| ``sweeps`` | one soft value-iteration sweep V ← τ logsumexp((r + γPV)/τ) on one MDP (a pass over its model) |
| ``policy_sweeps`` | one policy-evaluation sweep of a vector reward, D ← Σ_a π (J + γ P D) on one MDP |
| ``adjoint_products`` | one product with (I − γP_π) or its transpose on one MDP |
| ``reward_evals`` / ``reward_grads`` | one evaluation of r(x) / one vector-Jacobian product through r |
| ``reward_jacobians`` | one full Jacobian ∂r/∂x |
| ``upper_grads`` / ``upper_values`` | one (∇_x F, ∂F/∂π) / one value of F or of the sampled loss |
| ``transitions`` | one sampled next state s' ~ P(·|s, a) (a generative-model query or an environment step) |
| ``trajectories`` | one sampled episode |
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Optional

import torch
from torch import Tensor

from . import mdp as M
from .problem import RLProblem

__all__ = ["RLCounts", "RLOracles", "Trajectories"]


@dataclass
class RLCounts:
    """Oracle calls of an RL run, by type (see the module table)."""

    sweeps: int = 0
    policy_sweeps: int = 0
    adjoint_products: int = 0
    reward_evals: int = 0
    reward_grads: int = 0
    reward_jacobians: int = 0
    upper_grads: int = 0
    upper_values: int = 0
    transitions: int = 0
    trajectories: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def copy(self) -> "RLCounts":
        return RLCounts(**asdict(self))

    def __sub__(self, other: "RLCounts") -> "RLCounts":
        return RLCounts(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})


@dataclass(frozen=True)
class Trajectories:
    """N sampled episodes as tensors: ``states[N, H+1]``, ``actions[N, H]``, ``alive[N, H]`` (step t was taken:
    the episode had not ended before it), ``context[N]`` (index of the MDP in the flattened batch)."""

    states: Tensor
    actions: Tensor
    alive: Tensor
    context: Tensor

    @property
    def steps(self) -> int:
        return int(self.alive.sum())


def _draw(cum: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF draws: the first index i with cum[..., i] ≥ u (cum: [..., K] cumulative probabilities ending
    in 1, u: [...] uniforms).  A comparison and a sum: for the small K of tabular MDPs this is much faster than a
    batched ``searchsorted``."""
    return (cum < u.unsqueeze(-1)).sum(-1).clamp_(max=cum.shape[-1] - 1)


class RLOracles:
    """Counted access to ``problem``'s model, reward and upper loss (``counts``: an ``RLCounts``)."""

    def __init__(self, problem: RLProblem, counts: Optional[RLCounts] = None) -> None:
        self.problem = problem
        self.counts = counts if counts is not None else RLCounts()
        p = problem
        n = p.n_contexts
        S, A = p.n_states, p.n_actions
        # flattened-context views used by the samplers; the cumulative kernel makes a draw one searchsorted
        self._cumP = p.P.reshape(n, S, A, S).cumsum(-1)
        self._cumP[..., -1] = 1.0  # exact 1 at the end guards against rounding of the sums
        self._cumrho = p.rho.expand(p.batch_shape + (S,)).reshape(n, S).cumsum(-1)
        self._cumrho[..., -1] = 1.0
        self._terminal = p.terminal.reshape(n, S)

    # ---- lower level ------------------------------------------------------------------------------
    def reward(self, x: Tensor) -> Tensor:
        self.counts.reward_evals += 1
        with torch.no_grad():
            return self.problem.reward(x)

    def reward_vjp(self, x: Tensor, Z: Tensor) -> Tensor:
        self.counts.reward_grads += 1
        return self.problem.reward_vjp(x, Z)

    def reward_jacobian(self, x: Tensor) -> Tensor:
        self.counts.reward_jacobians += 1
        return self.problem.reward_jac(x)

    def soft_vi(self, r: Tensor, V: Tensor, sweeps: int, P: Optional[Tensor] = None) -> Tensor:
        """``sweeps`` soft value-iteration sweeps from V on the model P (default: the problem's)."""
        p = self.problem
        self.counts.sweeps += sweeps * p.n_contexts
        return M.soft_vi(r, p.P if P is None else P, V, p.gamma, p.tau, sweeps, p.terminal)

    def policy_evaluation(self, J: Tensor, pi: Tensor, D: Tensor, sweeps: int,
                          P: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """``sweeps`` sweeps of D_Q ← J + γ P D, D_s ← Σ_a π_sa D_Q[s, a] (D: [..., S, d], J: [..., S, A, d]):
        policy evaluation of the vector reward J, whose fixed point is (∇_x V, ∇_x Q) when J = ∂r/∂x and π is
        the soft-optimal policy (envelope theorem: ∇_x V_s = Σ_a π_sa ∇_x Q_sa).  Returns (D, D_Q) of the
        last sweep."""
        p = self.problem
        P = p.P if P is None else P
        self.counts.policy_sweeps += sweeps * p.n_contexts
        live = (~p.terminal).to(p.dtype).unsqueeze(-1)
        DQ = J
        for _ in range(sweeps):
            DQ = J + p.gamma * torch.matmul(P, D.unsqueeze(-3))  # [..., S, A, d]
            D = torch.einsum("...sa,...sad->...sd", pi, DQ) * live
        return D, DQ

    def adjoint_product(self, pi: Tensor, w: Tensor, transpose: bool) -> Tensor:
        """(I − γP_π) w, or (I − γP_π)ᵀ w."""
        p = self.problem
        self.counts.adjoint_products += p.n_contexts
        Ppi = M.policy_matrix(p.P, pi, p.terminal)
        if transpose:
            return w - p.gamma * torch.matmul(w.unsqueeze(-2), Ppi).squeeze(-2)
        return w - p.gamma * torch.matmul(Ppi, w.unsqueeze(-1)).squeeze(-1)

    # ---- upper level ------------------------------------------------------------------------------
    def upper_grads(self, x: Tensor, pi: Tensor) -> tuple[Tensor, Tensor]:
        self.counts.upper_grads += 1
        return self.problem.upper_grads(x, pi)

    def upper_value(self, x: Tensor, pi: Tensor) -> Tensor:
        self.counts.upper_values += 1
        with torch.no_grad():
            return self.problem.upper(x, pi)

    # ---- sampling ---------------------------------------------------------------------------------
    def sample_kernel(self, n: int, generator: torch.Generator) -> Tensor:
        """An empirical kernel P̂ from ``n`` draws s' ~ P(·|s, a) for every (s, a) of every MDP (a generative
        model: n·|S|·|A| transitions per MDP); P̂ is unbiased for P."""
        p = self.problem
        C, S, A = p.n_contexts, p.n_states, p.n_actions
        self.counts.transitions += n * S * A * C
        u = torch.rand((C, S, A, n), generator=generator, dtype=p.dtype, device=p.device)
        nxt = _draw(self._cumP.unsqueeze(-2), u)
        Phat = torch.zeros((C, S, A, S), dtype=p.dtype, device=p.device)
        Phat.scatter_add_(-1, nxt, torch.full_like(u, 1.0 / n))
        return Phat.reshape(p.P.shape)

    def trajectories(self, pi: Tensor, n: int, horizon: int, generator: torch.Generator,
                     context: Optional[Tensor] = None) -> Trajectories:
        """``n`` episodes of at most ``horizon`` steps from ρ under π, all stepped together as tensors.
        ``context``: the MDP index of each episode (flattened batch; default: uniform draws)."""
        p = self.problem
        C, S, A = p.n_contexts, p.n_states, p.n_actions
        dev = p.device
        if context is None:
            context = torch.randint(C, (n,), generator=generator, device=dev)
        cumpi = pi.reshape(C, S, A).cumsum(-1)
        cumpi[..., -1] = 1.0
        u0 = torch.rand(n, generator=generator, dtype=p.dtype, device=dev)
        s = _draw(self._cumrho[context], u0)
        # all uniforms at once: one for the action, one for the next state per step
        ua = torch.rand((horizon, n), generator=generator, dtype=p.dtype, device=dev)
        us = torch.rand((horizon, n), generator=generator, dtype=p.dtype, device=dev)
        states = torch.empty((n, horizon + 1), dtype=torch.long, device=dev)
        actions = torch.zeros((n, horizon), dtype=torch.long, device=dev)
        alive = torch.zeros((n, horizon), dtype=torch.bool, device=dev)
        # flat tables: one gather per draw instead of a three-index lookup
        pi_rows = cumpi.reshape(C * S, A)
        P_rows = self._cumP.reshape(C * S * A, S)
        term = self._terminal.reshape(C * S)
        base = context * S
        live = ~term[base + s]
        states[:, 0] = s
        for t in range(horizon):
            if t % 16 == 0 and t and not bool(live.any()):  # every episode has ended: the rest stays as it is
                states[:, t:] = s.unsqueeze(1)
                break
            row = base + s
            a = _draw(pi_rows[row], ua[t])
            nxt = _draw(P_rows[row * A + a], us[t])
            s = torch.where(live, nxt, s)
            actions[:, t] = a
            alive[:, t] = live
            states[:, t + 1] = s
            live = live & ~term[base + s]
        taken = int(alive.sum())
        self.counts.transitions += taken
        self.counts.trajectories += n
        return Trajectories(states=states, actions=actions, alive=alive, context=context)

    def _rollout_tables(self, pi: Tensor, J: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The flat tables the rollout samplers index: J per (context, s, a) row, π's and P's cumulative rows
        (the last entry forced to 1 so that a uniform always lands), and the terminal flags per (context, s)."""
        p = self.problem
        C, S, A = p.n_contexts, p.n_states, p.n_actions
        cumpi = pi.reshape(C, S, A).cumsum(-1)
        cumpi[..., -1] = 1.0
        return (J.reshape(C * S * A, -1), cumpi.reshape(C * S, A), self._cumP.reshape(C * S * A, S),
                self._terminal.reshape(C * S))

    def _geometric_lengths(self, n: int, generator: torch.Generator) -> Tensor:
        """n rollout lengths K ≥ 1 with P(K > k) = γ^k: K = 1 + floor(log U / log γ) (K = 1 when γ = 0)."""
        p = self.problem
        if p.gamma > 0:
            u = torch.rand(n, generator=generator, dtype=p.dtype, device=p.device).clamp_(min=1e-300)
            return 1 + torch.floor(torch.log(u) / math.log(p.gamma)).long()
        return torch.ones(n, dtype=torch.long, device=p.device)

    def reward_rollouts(self, pi: Tensor, J: Tensor, s0: Tensor, a0: Tensor, context: Tensor,
                        generator: torch.Generator, max_steps: int = 100000) -> Tensor:
        """Σ_{k < K} J[s_k, a_k] along one rollout per start (s0[i], a0[i]) in MDP context[i] under π (a_k ~ π
        after the first action), each of geometric length K ~ Geom(1 − γ) (P(K > k) = γ^k) or until a
        terminal state: an unbiased estimate of Σ_k γ^k E[J[s_k, a_k]], i.e. of ∂_x Q(s0, a0) when J = ∂r/∂x.
        J: ``[..., S, A, d]``; returns ``[n, d]``.  Counts n rollouts (as trajectories) and their steps."""
        p = self.problem
        S, A = p.n_states, p.n_actions
        Jf, pi_rows, P_rows, term = self._rollout_tables(pi, J)
        base = context * S
        n = s0.shape[0]
        K = self._geometric_lengths(n, generator)
        out = torch.zeros(n, Jf.shape[-1], dtype=p.dtype, device=p.device)
        s, a = s0.clone(), a0.clone()
        live = ~term[base + s]
        taken = torch.zeros((), dtype=torch.long, device=p.device)
        k = 0
        while k < max_steps and bool(live.any()):
            row = (base + s) * A + a
            out += Jf[row] * live.unsqueeze(-1)
            taken += live.sum()
            us = torch.rand(n, generator=generator, dtype=p.dtype, device=p.device)
            s = torch.where(live, _draw(P_rows[row], us), s)
            k += 1
            live = live & (k < K) & ~term[base + s]
            ua = torch.rand(n, generator=generator, dtype=p.dtype, device=p.device)
            a = _draw(pi_rows[base + s], ua)
        steps = int(taken)
        self.counts.trajectories += n
        self.counts.transitions += steps
        return out

    def coupled_rollout_differences(self, pi: Tensor, J: Tensor, s0: Tensor, a0: Tensor, b0: Tensor, context: Tensor,
                                    generator: torch.Generator, max_steps: int = 100000) -> Tensor:
        """Σ_{k<K} J[s_k, a_k] − Σ_{k<K} J[s'_k, a'_k] for pairs of rollouts from (s0, a0) and (s0, b0) under π,
        coupled: one geometric length K ∼ Geom(1 − γ) and the same uniforms for both chains at every step.
        Each chain alone is a rollout of ``reward_rollouts``, so the difference is unbiased for
        ∂_x Q(s0, a0) − ∂_x Q(s0, b0); once the chains meet (same state, hence the same action from the same
        uniform) their remaining terms cancel exactly, so a pair stops there (or at a terminal state, or at
        K): far fewer sampled steps, and a lower variance than independent rollouts.  Counts 2 rollouts per
        pair (as trajectories) and the steps both chains took."""
        p = self.problem
        S, A = p.n_states, p.n_actions
        Jf, pi_rows, P_rows, term = self._rollout_tables(pi, J)
        base = context * S
        n = s0.shape[0]
        K = self._geometric_lengths(n, generator)
        out = torch.zeros(n, Jf.shape[-1], dtype=p.dtype, device=p.device)
        s, s2, a, a2 = s0.clone(), s0.clone(), a0.clone(), b0.clone()
        on1 = ~term[base + s]  # each chain runs until its own terminal state
        on2 = on1.clone()
        pair = on1 & (a != a2)  # equal first actions: identical chains, difference 0
        taken = torch.zeros((), dtype=torch.long, device=p.device)
        k = 0
        while k < max_steps and bool(pair.any()):
            m1, m2 = pair & on1, pair & on2
            row, row2 = (base + s) * A + a, (base + s2) * A + a2
            out += Jf[row] * m1.unsqueeze(-1) - Jf[row2] * m2.unsqueeze(-1)
            taken += m1.sum() + m2.sum()
            us = torch.rand(n, generator=generator, dtype=p.dtype, device=p.device)
            s = torch.where(m1, _draw(P_rows[row], us), s)
            s2 = torch.where(m2, _draw(P_rows[row2], us), s2)
            on1, on2 = on1 & ~term[base + s], on2 & ~term[base + s2]
            k += 1
            # met (same state, both running): the same uniforms make the rest identical, so it cancels
            pair = pair & (k < K) & (on1 | on2) & ~(on1 & on2 & (s == s2))
            ua = torch.rand(n, generator=generator, dtype=p.dtype, device=p.device)
            a, a2 = _draw(pi_rows[base + s], ua), _draw(pi_rows[base + s2], ua)
        self.counts.trajectories += 2 * n
        self.counts.transitions += int(taken)
        return out

    def trajectory_losses(self, x: Tensor, d: Trajectories) -> Tensor:
        """l(d_i; x) for each sampled episode (differentiable in x when x requires grad)."""
        p = self.problem
        tr = p.trajectory
        self.counts.upper_values += 1
        C, S, A = p.n_contexts, p.n_states, p.n_actions
        c = tr.cost(x).expand(p.batch_shape + (S, A, S)).reshape(C, S, A, S)
        H = d.actions.shape[1]
        step = c[d.context.unsqueeze(1), d.states[:, :-1], d.actions, d.states[:, 1:]]
        disc = tr.gamma ** torch.arange(H, dtype=p.dtype, device=p.device)
        return (step * disc * d.alive).sum(1)
