"""Stoc-SoBiRL: the trajectory-sampled SoBiRL hypergradient estimator (Yang, Gao & Yuan, "Bilevel
reinforcement learning via the development of hyper-gradient without lower-level convexity", AISTATS 2025)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

import torch

from ..rl.solver import RLSolver, RLState
from .base import register


def score_function_estimate(o: Any, x: torch.Tensor, d: Any, DQ: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """(1/N) Σ_i [∇_x l(d_i; x) + τ⁻¹ l(d_i; x) Σ_t (DQ[s_t, a_t] − D[s_t])] over the episodes d (one backward
    pass through the sampled losses for the first term)."""
    p = o.problem
    C, S, A = p.n_contexts, p.n_states, p.n_actions
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        losses = o.trajectory_losses(xg, d)
        (gx,) = torch.autograd.grad(losses.mean(), xg, allow_unused=True)
    o.counts.upper_grads += 1
    gx = torch.zeros_like(x) if gx is None else gx
    DQf = DQ.reshape(C, S, A, -1)
    Df = D.reshape(C, S, -1)
    ctx = d.context.unsqueeze(1)
    s, a = d.states[:, :-1], d.actions
    score = ((DQf[ctx, s, a] - Df[ctx, s]) * d.alive.unsqueeze(-1)).sum(1)  # Σ_t ∇_x log π(a_t|s_t)·τ
    return gx + (losses.detach().unsqueeze(-1) * score).mean(0) / p.tau


@register
@dataclass(frozen=True, kw_only=True)
class StocSoBiRL(RLSolver):
    """Stoc-SoBiRL — the trajectory-sampled SoBiRL hypergradient for a trajectory loss (Yang, Gao & Yuan,
    AISTATS 2025):

        ∇φ(x) = E_d[∇_x l(d; x)] + τ⁻¹ E_d[ l(d; x) · Σ_t ∇_x(Q*_{s_t a_t}(x) − V*_{s_t}(x)) ],

    d an episode from ρ under π*(x) (a context drawn uniformly per episode for a batch of MDPs).  The identity
    is the score-function form of ∇_x E_{d∼π*(x)}[l(d; x)] with ∇_x log π*_sa = τ⁻¹ ∇_x(Q*_sa − V*_s).
    Iteration k (V, D ≈ ∇_x V warm-started from 0; J = ∂r/∂x):

        V ← T soft value-iteration sweeps on the model;  π = softmax((r + γPV)/τ)          [sweeps = T]
        (D, D_Q) ← T sweeps of D_Q = J + γPD,  D_s = Σ_a π_sa D_Q[s, a]
        d_1 … d_N ~ π (vectorised episodes of at most H steps)                    [trajectories = N]
        D_k = (1/N) Σ_i [∇_x l(d_i; x_k) + τ⁻¹ l(d_i; x_k) Σ_t (D_Q[s_t, a_t] − D[s_t])]
        x_{k+1} = x_k − β clip(D_k)                                                        [lr_x = β]

    Unbiased for ∇φ(x_k) when V, D have converged (tested over many draws); its variance is that of a
    REINFORCE estimator (no baseline is subtracted, so the estimate stays exactly the formula above).

    clip(D) = D·min(1, c/‖D‖) with c = ``clip`` (default 0: no clipping; FourRooms protocol: 1).

    Oracle cost per iteration (exact, counted): T soft value-iteration sweeps and T policy-evaluation sweeps
    per MDP, N sampled episodes (their steps counted as transitions), 1 reward evaluation, 1 reward Jacobian,
    1 evaluation of the sampled losses and 1 upper gradient (a backward pass through them).
    """

    name: ClassVar[str] = "stoc_sobirl"
    label: ClassVar[str] = "Stoc-SoBiRL"
    needs_trajectory_loss: ClassVar[bool] = True
    defaults: ClassVar[Mapping[str, Any]] = {"clip": 0.0, "sweeps": 10, "trajectories": 100}
    settings: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "fourrooms": {"lr_x": 0.5, "clip": 1.0, "sweeps": 10, "trajectories": 50},
    }
    checks: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    int_options: ClassVar[Mapping[str, int]] = {"sweeps": 1, "trajectories": 1}

    lr_x: Optional[float] = None
    clip: Optional[float] = None
    sweeps: Optional[int] = None
    trajectories: Optional[int] = None

    def expected_counts(self, iterations: int, problem: Any = None) -> dict[str, float]:
        n = 1 if problem is None else problem.n_contexts
        return {"sweeps": iterations * self.sweeps * n, "policy_sweeps": iterations * self.sweeps * n,
                "trajectories": iterations * self.trajectories, "reward_evals": iterations,
                "reward_jacobians": iterations, "upper_values": iterations, "upper_grads": iterations}

    def init(self, problem: Any, oracles: Any, generator: torch.Generator) -> RLState:
        self._require_bound()
        return self.init_derivative_state(problem, generator)

    def step(self, state: RLState, oracles: Any, batches: Any = None) -> RLState:
        o = self.check_oracles(oracles)
        p = o.problem
        x = state.x
        _, V, pi = self.best_response(o, x, state.V)
        D, DQ = o.policy_evaluation(o.reward_jacobian(x), pi, state.w, self.sweeps)
        d = o.trajectories(pi, self.trajectories, p.trajectory.horizon, state.generator)
        estimate = score_function_estimate(o, x, d, DQ, D)
        return self.advance(state, x, estimate, V, D, pi)


def stoc_sobirl(**options: Any) -> StocSoBiRL:
    """Stoc-SoBiRL (see ``StocSoBiRL``)."""
    return StocSoBiRL(**options)
