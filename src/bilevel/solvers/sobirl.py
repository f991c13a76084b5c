"""SoBiRL: model-free bilevel RL, the hypergradient from estimated soft Q and V and their x-derivatives
(Yang, Gao & Yuan, "Bilevel reinforcement learning via the development of hyper-gradient without lower-level
convexity", AISTATS 2025)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

import torch

from ..rl.solver import RLSolver, RLState
from .base import register


@register
@dataclass(frozen=True, kw_only=True)
class SoBiRL(RLSolver):
    """SoBiRL — model-free: soft Q̂, V̂ and their x-derivatives from sampled transitions, and the first-order
    hypergradient ∇_x π = τ⁻¹ π (∇_x Q − ∇_x V) (Yang, Gao & Yuan, AISTATS 2025).

    Access to the MDP is through a generative model only: each iteration draws n next states s' ~ P(·|s, a)
    for every (s, a) (an empirical kernel P̂_k, unbiased for P, fresh every iteration); P itself is never
    read.  Symbols: V the soft values (warm-started, V_0 = 0), D ≈ ∇_x V (|S| × dx, warm-started, D_0 = 0),
    D_Q ≈ ∇_x Q, J = ∂r/∂x (the reward's Jacobian: the leader knows how x enters the reward), u = π̂ ⊙ ∂F/∂π.
    Iteration k:

        P̂_k from n samples per (s, a)                                              [samples = n]
        V ← T sweeps of V ← τ logsumexp((r(x_k) + γP̂_k V)/τ)                       [sweeps = T]
        π̂ = softmax((r(x_k) + γP̂_k V)/τ)
        (D, D_Q) ← T sweeps of D_Q = J + γP̂_k D,  D_s = Σ_a π̂_sa D_Q[s, a]         (vector-reward policy evaluation)
        D_k = ∇_x F(x_k, π̂) + τ⁻¹ Σ_{s,a} u_sa (D_Q[s, a] − D_s)
        x_{k+1} = x_k − β clip(D_k)                                                     [lr_x = β]

    The fixed point of the two recursions on the true P is (V*, ∇_x V*, ∇_x Q*) (envelope theorem), where
    D_k = ∇φ(x_k) exactly.  With a finite n the soft values carry the bias of a nonlinear function of P̂
    (O(1/n)); it falls as n grows (tested).

    clip(D) = D·min(1, c/‖D‖) with c = ``clip`` (default 0: no clipping; FourRooms protocol: 1).

    Oracle cost per iteration (exact, counted): n·|S|·|A| sampled transitions per MDP, T soft value-iteration
    sweeps and T policy-evaluation sweeps (of a dx-vector reward) per MDP, 1 reward evaluation, 1 reward
    Jacobian, 1 upper gradient; no linear solves and no model reads.
    """

    name: ClassVar[str] = "sobirl"
    label: ClassVar[str] = "SoBiRL"
    defaults: ClassVar[Mapping[str, Any]] = {"clip": 0.0, "sweeps": 10, "samples": 100}
    settings: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "rl_synthetic": {"lr_x": 8e-3, "sweeps": 10, "samples": 100},
        "fourrooms": {"lr_x": 0.5, "clip": 1.0, "sweeps": 10, "samples": 10},
    }
    checks: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    int_options: ClassVar[Mapping[str, int]] = {"sweeps": 1, "samples": 1}

    lr_x: Optional[float] = None
    clip: Optional[float] = None
    sweeps: Optional[int] = None
    samples: Optional[int] = None

    def expected_counts(self, iterations: int, problem: Any = None) -> dict[str, float]:
        n = 1 if problem is None else problem.n_contexts
        sa = 1 if problem is None else problem.n_states * problem.n_actions
        return {"sweeps": iterations * self.sweeps * n, "policy_sweeps": iterations * self.sweeps * n,
                "transitions": iterations * self.samples * sa * n, "reward_evals": iterations,
                "reward_jacobians": iterations, "upper_grads": iterations}

    def init(self, problem: Any, oracles: Any, generator: torch.Generator) -> RLState:
        self._require_bound()
        return self.init_derivative_state(problem, generator)

    def step(self, state: RLState, oracles: Any, batches: Any = None) -> RLState:
        o = self.check_oracles(oracles)
        p = o.problem
        x = state.x
        Phat = o.sample_kernel(self.samples, state.generator)
        _, V, pi = self.best_response(o, x, state.V, Phat)
        J = o.reward_jacobian(x)
        D, DQ = o.policy_evaluation(J, pi, state.w, self.sweeps, Phat)
        gx, G = o.upper_grads(x, pi)
        u = pi * G * (~p.terminal).unsqueeze(-1)
        estimate = gx + torch.einsum("...sa,...sad->d", u, DQ - D.unsqueeze(-2)) / p.tau
        return self.advance(state, x, estimate, V, D, pi)


def sobirl(**options: Any) -> SoBiRL:
    """SoBiRL (see ``SoBiRL``)."""
    return SoBiRL(**options)
