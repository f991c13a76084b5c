"""PBRL: penalty-based first-order bilevel RL (Shen, Yang & Chen, "Principled penalty-based methods for
bilevel reinforcement learning and RLHF", ICML 2024; JMLR 2025)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

import torch
from torch import Tensor

from ..rl import mdp as M
from ..rl.solver import RLSolver, RLState
from .base import register


def occupancy_sweeps(o: Any, pi: Tensor, d: Tensor, sweeps: int) -> Tensor:
    """``sweeps`` sweeps of d ← ρ + γ P_πᵀ d (fixed point: the discounted occupancy ρᵀ(I − γP_π)⁻¹); each
    sweep is one adjoint product per MDP."""
    p = o.problem
    rho = p.rho * (~p.terminal)
    for _ in range(sweeps):
        d = rho + (d - o.adjoint_product(pi, d, transpose=True))  # γP_πᵀ d = d − (I − γP_π)ᵀ d
    return d


@register
@dataclass(frozen=True, kw_only=True)
class PBRL(RLSolver):
    """PBRL — penalty-based first-order bilevel RL with the value penalty (Shen, Yang & Chen, ICML 2024).

    The policy is a free variable π_θ = softmax(θ) (θ ∈ R^{|S|×|A|}, θ_0 = 0) and the lower level becomes
    the penalty p(x, θ) = V*_τ(ρ; x) − V^{π_θ}_τ(ρ; x) ≥ 0 (zero iff π_θ = π*(x)):

        minimise over (x, θ):  F(x, π_θ) + λ p(x, θ)                                       [penalty = λ]

    Gradients (Danskin for the max term; the soft policy-gradient theorem for the second):
        ∇_x p = ∇_x ⟨r(x), d_* ⊙ π* − d_θ ⊙ π_θ⟩,   d_π = ρᵀ(I − γP_π)⁻¹ (discounted occupancy)
        ∇_θ p = −d_θ(s) π_θ(a|s) (Q^θ_sa − τ log π_θ(a|s) − V^θ_s)
    Iteration k (all inner quantities warm-started and refreshed by T sweeps):

        V ← T soft value-iteration sweeps (V*);  π* = softmax((r + γPV)/τ)                 [sweeps = T]
        V^θ ← T soft policy-evaluation sweeps of π_θ;  d_*, d_θ ← T occupancy sweeps each
        x_{k+1} = x_k − β clip(∇_x F(x_k, π_θ) + λ ∇_x p)                                     [lr_x = β]
        θ_{k+1} = θ_k − α (∇_θ F(x_k, π_θ) + λ ∇_θ p)                                       [lr_theta = α]

    The x-direction is the estimate recorded against ∇φ: it is biased by O(1/λ) (the penalty solutions
    approach the bilevel ones as λ grows; Shen, Yang & Chen, Thm. on ε-approximate solutions).

    clip(D) = D·min(1, c/‖D‖) with c = ``clip`` (default 0: no clipping; FourRooms protocol: 1).

    Oracle cost per iteration (exact, counted): T soft value-iteration sweeps and T policy-evaluation sweeps
    (value of π_θ) per MDP, 2T adjoint products (occupancy sweeps of π* and π_θ) per MDP, 1 reward
    evaluation, 1 reward vector-Jacobian product, 1 upper gradient.
    """

    name: ClassVar[str] = "pbrl"
    label: ClassVar[str] = "PBRL"
    defaults: ClassVar[Mapping[str, Any]] = {"clip": 0.0, "sweeps": 10, "penalty": 10.0}
    settings: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "rl_synthetic": {"lr_x": 8e-3, "lr_theta": 5.0, "penalty": 1.0, "sweeps": 10},  # ours: stable at β = 8e-3
        "fourrooms": {"lr_x": 0.5, "clip": 1.0, "lr_theta": 0.5, "penalty": 10.0, "sweeps": 10},
    }
    checks: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    positive_options: ClassVar[tuple[str, ...]] = ("lr_x", "lr_theta", "penalty")
    required: ClassVar[tuple[str, ...]] = ("lr_x", "lr_theta")

    lr_x: Optional[float] = None
    clip: Optional[float] = None
    lr_theta: Optional[float] = None
    penalty: Optional[float] = None
    sweeps: Optional[int] = None

    def expected_counts(self, iterations: int, problem: Any = None) -> dict[str, float]:
        n = 1 if problem is None else problem.n_contexts
        return {"sweeps": iterations * self.sweeps * n, "policy_sweeps": iterations * self.sweeps * n,
                "adjoint_products": 2 * iterations * self.sweeps * n, "reward_evals": iterations,
                "reward_grads": iterations, "upper_grads": iterations}

    def init(self, problem: Any, oracles: Any, generator: torch.Generator) -> RLState:
        self._require_bound()
        shape = problem.y0.shape
        zeros = torch.zeros(shape, dtype=problem.dtype, device=problem.device)
        theta = torch.zeros(shape + (problem.n_actions,), dtype=problem.dtype, device=problem.device)
        state = self.init_state(problem, generator, w=theta)
        return dataclasses.replace(state, extra={"V_theta": zeros, "d_star": zeros, "d_theta": zeros})

    @staticmethod
    def penalty_gradients(o: Any, x: Tensor, r: Tensor, pi_star: Tensor, theta: Tensor, V_theta: Tensor,
                          d_star: Tensor, d_theta: Tensor) -> tuple[Tensor, Tensor]:
        """(∇_x p, ∇_θ p) from the current estimates of V^θ and the two occupancies."""
        p = o.problem
        live = (~p.terminal).unsqueeze(-1)
        pi = torch.softmax(theta, -1)
        logpi = torch.log_softmax(theta, -1)
        gx = o.reward_vjp(x, (d_star.unsqueeze(-1) * pi_star - d_theta.unsqueeze(-1) * pi) * live)
        Q_theta = M.soft_q(r, p.P, V_theta, p.gamma)
        gtheta = -d_theta.unsqueeze(-1) * pi * (Q_theta - p.tau * logpi - V_theta.unsqueeze(-1)) * live
        return gx, gtheta

    def step(self, state: RLState, oracles: Any, batches: Any = None) -> RLState:
        o = self.check_oracles(oracles)
        p = o.problem
        x, theta = state.x, state.w
        live = (~p.terminal).unsqueeze(-1)
        r, V, pi_star = self.best_response(o, x, state.V)
        pi = torch.softmax(theta, -1)
        # V^θ by T policy-evaluation sweeps of the soft reward r_π + τh(π) (one-dimensional vector reward)
        soft_r = (r - p.tau * torch.log_softmax(theta, -1)).unsqueeze(-1)
        V_theta = o.policy_evaluation(soft_r, pi, state.extra["V_theta"].unsqueeze(-1), self.sweeps)[0].squeeze(-1)
        d_star = occupancy_sweeps(o, pi_star, state.extra["d_star"], self.sweeps)
        d_theta = occupancy_sweeps(o, pi, state.extra["d_theta"], self.sweeps)
        px, ptheta = self.penalty_gradients(o, x, r, pi_star, theta, V_theta, d_star, d_theta)
        fx, G = o.upper_grads(x, pi)
        G = G * live
        ftheta = pi * (G - (pi * G).sum(-1, keepdim=True))
        direction = fx + self.penalty * px
        theta_new = theta - self.lr_theta * (ftheta + self.penalty * ptheta)
        return self.advance(state, x, direction, V, theta_new, pi,
                            V_theta=V_theta, d_star=d_star, d_theta=d_theta)


def pbrl(**options: Any) -> PBRL:
    """PBRL (see ``PBRL``)."""
    return PBRL(**options)
