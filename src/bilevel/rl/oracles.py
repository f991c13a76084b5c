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
from typing import Any, Optional

import torch
from torch import Tensor

from . import mdp as M
from .problem import RLProblem

__all__ = ["RLCounts", "RLOracles", "SeedGroups", "Trajectories"]


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


class SeedGroups:
    """The random draws and sample counts of several runs (seeds) sampled together as one batch of rows.

    Run b owns ``sizes[b]`` consecutive rows of every batched draw (run 0's first); its uniforms come from its own
    generator, in the order and amounts a run alone would draw them, and its samples are added to its own
    counts.  So a batch of runs samples exactly what each run samples alone (``RLSolver.step_batch``); one
    group is the plain single-run case (``SeedGroups.single``)."""

    def __init__(self, generators: list, sizes: list, counts: list, dtype: torch.dtype, device: torch.device) -> None:
        if not len(generators) == len(sizes) == len(counts):
            raise ValueError(f"SeedGroups: one generator, size and counts per run; got {len(generators)}, "
                             f"{len(sizes)} and {len(counts)}.")
        self.generators, self.sizes, self.counts = list(generators), [int(n) for n in sizes], list(counts)
        self.dtype, self.device = dtype, device
        self.n = sum(self.sizes)
        # the run of each row, for per-run sums
        self.owner = torch.repeat_interleave(torch.arange(len(self.sizes), device=device),
                                             torch.tensor(self.sizes, device=device))

    @classmethod
    def single(cls, generator: torch.Generator, n: int, counts: RLCounts, dtype: torch.dtype,
               device: torch.device) -> "SeedGroups":
        return cls([generator], [n], [counts], dtype, device)

    def __len__(self) -> int:
        return len(self.sizes)

    def rand(self, *lead: int, active: Optional[list] = None) -> Tensor:
        """Uniforms ``[*lead, n]``: run b's rows from its generator (``torch.rand((*lead, n_b))``).  With
        ``active`` (one bool per run), a run that is not active draws nothing (its rows are 0.5)."""
        parts = []
        for b, (g, n) in enumerate(zip(self.generators, self.sizes)):
            if active is None or active[b]:
                parts.append(torch.rand((*lead, n), generator=g, dtype=self.dtype, device=self.device))
            else:
                parts.append(torch.full((*lead, n), 0.5, dtype=self.dtype, device=self.device))
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)

    def any(self, mask: Tensor) -> list:
        """Per run: whether any of its rows is True in ``mask`` ([n] bool), as Python bools (one host read)."""
        if len(self.sizes) == 1:
            return [bool(mask.any())]
        hits = torch.zeros(len(self.sizes), dtype=torch.long, device=self.device).index_add_(0, self.owner, mask.long())
        return [bool(h) for h in hits.tolist()]

    def add(self, name: str, per_row: Optional[Tensor] = None, each: int = 0) -> None:
        """Add to each run's count ``name``: the sum of ``per_row`` over its rows (one host read), plus ``each``
        per row it owns."""
        if per_row is None:
            sums = [0] * len(self.sizes)
        elif len(self.sizes) == 1:
            sums = [int(per_row.sum())]
        else:
            sums = torch.zeros(len(self.sizes), dtype=torch.long, device=self.device).index_add_(
                0, self.owner, per_row.long()).tolist()
        for c, total, n in zip(self.counts, sums, self.sizes):
            setattr(c, name, getattr(c, name) + int(total) + each * n)


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
        # a sparse kernel (FourRooms: at most 4 next states per (s, a)) as K next states and their probabilities
        # per row, so that a sweep gathers K values instead of a dense |S|-long product; dense kernels keep the
        # product (rl_synthetic: the same numbers as before)
        Pf = p.P.reshape(n, S, A, S)
        K = int((Pf > 0).sum(-1).max())
        self._next: Optional[Tensor] = None
        if 4 * K <= S:
            order = torch.argsort((Pf > 0).to(torch.int8), dim=-1, descending=True, stable=True)[..., :K]
            self._prob = Pf.gather(-1, order)
            self._next = order + S * torch.arange(n, device=p.device).view(n, 1, 1, 1)
            # the samplers draw s' among the K next states only (their cumulative probabilities, in the order of s')
            # exact 1 from the last positive entry on: a uniform never lands on a padding entry of probability 0
            cum = self._prob.cumsum(-1)
            last = (self._prob > 0).sum(-1, keepdim=True) - 1
            cum = cum.masked_fill(torch.arange(K, device=p.device) >= last, 1.0)
            self._cum_rows, self._next_rows = cum.reshape(n * S * A, K), order.reshape(n * S * A, K)

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

    def soft_vi(self, r: Tensor, V: Tensor, sweeps: int, P: Optional[Tensor] = None, count: bool = True) -> Tensor:
        """``sweeps`` soft value-iteration sweeps from V on the model P (default: the problem's).  r and V may
        carry several runs as an extra leading dimension; ``count=False`` leaves their counts to the caller."""
        p = self.problem
        if count:
            self.counts.sweeps += sweeps * p.n_contexts
        if P is not None or self._next is None:
            return M.soft_vi(r, p.P if P is None else P, V, p.gamma, p.tau, sweeps, p.terminal)
        for _ in range(sweeps):
            V = M.soft_v(r + p.gamma * self._expected_next(V), p.tau, p.terminal)
        return V

    def policy(self, r: Tensor, V: Tensor, P: Optional[Tensor] = None) -> Tensor:
        """π = softmax((r + γPV)/τ) (uniform at terminal states), on the kernel P (default: the problem's)."""
        p = self.problem
        if P is not None or self._next is None:
            return M.soft_policy(M.soft_q(r, p.P if P is None else P, V, p.gamma), p.tau, p.terminal)
        return M.soft_policy(r + p.gamma * self._expected_next(V), p.tau, p.terminal)

    def _expected_next(self, V: Tensor) -> Tensor:
        """Σ_s' P(s'|s, a) V_s' from the sparse kernel (V: [..., contexts, S] -> [..., contexts, S, A])."""
        p = self.problem
        lead = V.shape[:V.dim() - len(p.batch_shape) - 1]
        Vf = V.reshape(*lead, p.n_contexts * p.n_states)
        return (self._prob * Vf[..., self._next]).sum(-1).reshape(*lead, *p.batch_shape, p.n_states, p.n_actions)

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

    def _next_state(self, row: Tensor, u: Tensor) -> Tensor:
        """s' ~ P(·|s, a) for the flat model rows ``row`` = (context·S + s)·A + a, by inverse CDF at u."""
        if self._next is None:
            C, S, A = self.problem.n_contexts, self.problem.n_states, self.problem.n_actions
            return _draw(self._cumP.reshape(C * S * A, S)[row], u)
        return self._next_rows[row, _draw(self._cum_rows[row], u)]

    def _groups(self, generator: "torch.Generator | SeedGroups", n: int) -> SeedGroups:
        if isinstance(generator, SeedGroups):
            if generator.n != n:
                raise ValueError(f"RLOracles: the seed groups hold {generator.n} rows; got n={n}.")
            return generator
        p = self.problem
        return SeedGroups.single(generator, n, self.counts, p.dtype, p.device)

    def _model_context(self, context: Tensor, pi: Tensor) -> Tensor:
        """The MDP of each row: ``context`` indexes π's flattened leading dimensions (a batch of runs × the
        problem's contexts, run-major), the model has the problem's contexts only."""
        return context % self.problem.n_contexts

    def trajectories(self, pi: Tensor, n: int, horizon: int, generator: "torch.Generator | SeedGroups",
                     context: Optional[Tensor] = None) -> Trajectories:
        """``n`` episodes of at most ``horizon`` steps from ρ under π, all stepped together as tensors.
        ``context``: the MDP index of each episode (flattened batch; default: uniform draws).  With
        ``generator`` a ``SeedGroups`` (several runs at once), π carries the runs as extra leading dimensions,
        ``context`` (required) indexes π's flattened leading dimensions and each run's rows draw from its own
        generator: each run gets exactly the episodes it would sample alone."""
        p = self.problem
        C, S, A = p.n_contexts, p.n_states, p.n_actions
        dev = p.device
        groups = self._groups(generator, n)
        if context is None:
            if len(groups) != 1:
                raise ValueError("RLOracles.trajectories: give context= when sampling for several runs.")
            context = torch.randint(C, (n,), generator=groups.generators[0], device=dev)
        model = self._model_context(context, pi)
        cumpi = pi.reshape(-1, S, A).cumsum(-1)
        cumpi[..., -1] = 1.0
        s = _draw(self._cumrho[model], groups.rand())
        # all uniforms at once: one for the action, one for the next state per step
        ua = groups.rand(horizon)
        us = groups.rand(horizon)
        states = torch.empty((n, horizon + 1), dtype=torch.long, device=dev)
        actions = torch.zeros((n, horizon), dtype=torch.long, device=dev)
        alive = torch.zeros((n, horizon), dtype=torch.bool, device=dev)
        # flat tables: one gather per draw instead of a three-index lookup
        pi_rows = cumpi.reshape(-1, A)
        term = self._terminal.reshape(C * S)
        base, mbase = context * S, model * S
        live = ~term[mbase + s]
        states[:, 0] = s
        for t in range(horizon):
            if t % 16 == 0 and t and not bool(live.any()):  # every episode has ended: the rest stays as it is
                states[:, t:] = s.unsqueeze(1)
                break
            a = _draw(pi_rows[base + s], ua[t])
            nxt = self._next_state((mbase + s) * A + a, us[t])
            s = torch.where(live, nxt, s)
            actions[:, t] = a * live  # 0 after the end, whether or not the loop has stopped yet
            alive[:, t] = live
            states[:, t + 1] = s
            live = live & ~term[mbase + s]
        groups.add("transitions", alive.sum(1))
        groups.add("trajectories", each=1)
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

    #: steps of uniforms a coupled-rollout loop draws at once (per run, while any of its pairs runs)
    CHUNK = 32

    def coupled_rollout_differences(self, pi: Tensor, J: Tensor, s0: Tensor, a0: Tensor, b0: Tensor, context: Tensor,
                                    generator: "torch.Generator | SeedGroups", max_steps: int = 100000) -> Tensor:
        """Σ_{k<K} J[s_k, a_k] − Σ_{k<K} J[s'_k, a'_k] for pairs of rollouts from (s0, a0) and (s0, b0) under π,
        coupled: one geometric length K ∼ Geom(1 − γ) and the same uniforms for both chains at every step.
        Each chain alone is a rollout of ``reward_rollouts``, so the difference is unbiased for
        ∂_x Q(s0, a0) − ∂_x Q(s0, b0); once the chains meet (same state, hence the same action from the same
        uniform) their remaining terms cancel exactly, so a pair stops there (or at a terminal state, or at
        K): far fewer sampled steps, and a lower variance than independent rollouts.  Counts 2 rollouts per
        pair (as trajectories) and the steps both chains took.  The uniforms come ``CHUNK`` steps at a time.
        With ``generator`` a ``SeedGroups``, π and J carry the runs as extra leading dimensions and
        ``context`` indexes their flattened leading dimensions (as for ``trajectories``)."""
        Jf = J.reshape(-1, J.shape[-1])
        out = torch.zeros(s0.shape[0], Jf.shape[-1], dtype=J.dtype, device=J.device)

        def visit(m1: Tensor, row1: Tensor, m2: Tensor, row2: Tensor) -> None:
            out.add_(Jf[row1] * m1.unsqueeze(-1) - Jf[row2] * m2.unsqueeze(-1))

        self._coupled(pi, s0, a0, b0, context, generator, visit, max_steps)
        return out

    def coupled_visit_weights(self, pi: Tensor, s0: Tensor, a0: Tensor, b0: Tensor, context: Tensor,
                              weight: Tensor, generator: "torch.Generator | SeedGroups",
                              max_steps: int = 100000) -> Tensor:
        """The same coupled pairs as ``coupled_rollout_differences``, summed against the weights c_i of the
        pairs: Z[s, a] = Σ_i c_i (visits of (s, a) by chain 1 − by chain 2 of pair i), shaped like π, so that
        Σ_i c_i ĝ_i = Σ_{s,a} Z[s, a] J[s, a] = ∇_x⟨r(x), Z⟩: one vector-Jacobian product through r instead of
        the Jacobian's rows along every step."""
        Z = torch.zeros(pi.numel(), dtype=pi.dtype, device=pi.device)

        def visit(m1: Tensor, row1: Tensor, m2: Tensor, row2: Tensor) -> None:
            Z.index_add_(0, row1, weight * m1).index_add_(0, row2, -(weight * m2))

        self._coupled(pi, s0, a0, b0, context, generator, visit, max_steps)
        return Z.reshape(pi.shape)

    def _coupled(self, pi: Tensor, s0: Tensor, a0: Tensor, b0: Tensor, context: Tensor,
                 generator: "torch.Generator | SeedGroups", visit: Any, max_steps: int) -> None:
        """The coupled pairs' loop: ``visit(m1, row1, m2, row2)`` at each step with the running chains' masks
        and their rows (context·S + s)·A + a of π's flattened table."""
        p = self.problem
        C, S, A = p.n_contexts, p.n_states, p.n_actions
        n = s0.shape[0]
        groups = self._groups(generator, n)
        cumpi = pi.reshape(-1, S, A).cumsum(-1)
        cumpi[..., -1] = 1.0
        pi_rows, term = cumpi.reshape(-1, A), self._terminal.reshape(C * S)
        base, mbase = context * S, self._model_context(context, pi) * S
        if p.gamma > 0:  # K = 1 + floor(log U / log γ): P(K > k) = γ^k
            K = 1 + torch.floor(torch.log(groups.rand().clamp_(min=1e-300)) / math.log(p.gamma)).long()
        else:
            K = torch.ones(n, dtype=torch.long, device=p.device)
        s, s2, a, a2 = s0.clone(), s0.clone(), a0.clone(), b0.clone()
        on1 = ~term[mbase + s]  # each chain runs until its own terminal state
        on2 = on1.clone()
        pair = on1 & (a != a2)  # equal first actions: identical chains, difference 0
        taken = torch.zeros(n, dtype=torch.long, device=p.device)
        k = 0
        while k < max_steps and bool(pair.any()):
            j = k % self.CHUNK
            if j == 0:  # a run whose pairs have all stopped draws no more (as it would alone)
                u = groups.rand(2, self.CHUNK, active=groups.any(pair))
            m1, m2 = pair & on1, pair & on2
            visit(m1, (base + s) * A + a, m2, (base + s2) * A + a2)
            taken += m1.long() + m2.long()
            s = torch.where(m1, self._next_state((mbase + s) * A + a, u[0, j]), s)
            s2 = torch.where(m2, self._next_state((mbase + s2) * A + a2, u[0, j]), s2)
            on1, on2 = on1 & ~term[mbase + s], on2 & ~term[mbase + s2]
            k += 1
            # met (same state, both running): the same uniforms make the rest identical, so it cancels
            pair = pair & (k < K) & (on1 | on2) & ~(on1 & on2 & (s == s2))
            a, a2 = _draw(pi_rows[base + s], u[1, j]), _draw(pi_rows[base + s2], u[1, j])
        groups.add("trajectories", each=2)
        groups.add("transitions", taken)

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
