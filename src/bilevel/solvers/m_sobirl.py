"""M-SoBiRL: model-based bilevel RL with an amortised adjoint (Yang, Gao & Yuan, "Bilevel reinforcement
learning via the development of hyper-gradient without lower-level convexity", AISTATS 2025)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

import torch

from ..rl import mdp as M
from ..rl.solver import RLSolver, RLState
from .base import register


@register
@dataclass(frozen=True, kw_only=True)
class MSoBiRL(RLSolver):
    """M-SoBiRL — model-based SoBiRL: warm-started soft value iteration, an amortised adjoint w with one
    gradient step per iteration, and the first-order hypergradient (Yang, Gao & Yuan, AISTATS 2025; §4.5).

    Symbols: x the upper variable, V the soft values (lower iterate, V_0 = 0), w ∈ R^|S| the adjoint
    (w_0 ~ N(0, I)), P_π(s, s') = Σ_a π_sa P(s'|s, a), F the upper loss, G = ∂F/∂π, u = π ⊙ G.
    Iteration k:

        V ← T sweeps of V ← τ logsumexp((r(x_k) + γPV)/τ) from the previous V        [sweeps = T]
        π = softmax((r(x_k) + γPV)/τ)
        b(s') = Σ_{s,a} (δ_{ss'} − γP(s'|s, a)) u_sa
        w ← w − ζ (I − γP_π)((I − γP_π)ᵀ w − b)       (one step on ½‖(I − γP_π)ᵀw − b‖²)  [zeta = ζ]
        D_k = ∇_x F(x_k, π) + τ⁻¹ ∇_x ⟨r(x_k), π ⊙ (G − w 1ᵀ)⟩
        x_{k+1} = x_k − β clip(D_k)                                                       [lr_x = β]

    With V = V*(x) and w the exact adjoint, D equals ∇φ(x) (see ``bilevel.rl.problem``).  Nothing here uses
    strong convexity: the soft-optimal policy is unique, and the adjoint system is well posed because
    I − γP_π is invertible (γ < 1).

    clip(D) = D·min(1, c/‖D‖) with c = ``clip`` (default 0: no clipping; FourRooms protocol: 1).

    Oracle cost per iteration (exact, counted): T soft value-iteration sweeps per MDP, 2 adjoint products
    per MDP, 1 reward evaluation, 1 reward vector-Jacobian product, 1 upper gradient; no linear solves and no
    sampled transitions.

    Published settings (synthetic, §4.5): T = 10, ζ = 0.5, β = 8e-3 (K = 3000 in the paper; φ → 1 within
    about 800 iterations).
    """

    name: ClassVar[str] = "m_sobirl"
    label: ClassVar[str] = "M-SoBiRL"
    defaults: ClassVar[Mapping[str, Any]] = {"clip": 0.0, "sweeps": 10, "zeta": 0.5}
    settings: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "rl_synthetic": {"lr_x": 8e-3, "sweeps": 10, "zeta": 0.5},
        "fourrooms": {"lr_x": 0.5, "clip": 1.0, "sweeps": 10, "zeta": 0.5},
    }
    checks: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    positive_options: ClassVar[tuple[str, ...]] = ("lr_x", "zeta")

    lr_x: Optional[float] = None
    clip: Optional[float] = None
    zeta: Optional[float] = None
    sweeps: Optional[int] = None

    def expected_counts(self, iterations: int, problem: Any = None) -> dict[str, float]:
        n = 1 if problem is None else problem.n_contexts
        return {"sweeps": iterations * self.sweeps * n, "adjoint_products": 2 * iterations * n,
                "reward_evals": iterations, "reward_grads": iterations, "upper_grads": iterations}

    def init(self, problem: Any, oracles: Any, generator: torch.Generator) -> RLState:
        self._require_bound()
        w0 = torch.randn(problem.y0.shape, generator=generator, dtype=problem.dtype, device=problem.device)
        return self.init_state(problem, generator, w=w0)

    def step(self, state: RLState, oracles: Any, batches: Any = None) -> RLState:
        o = self.check_oracles(oracles)
        p = o.problem
        x = state.x
        _, V, pi = self.best_response(o, x, state.V)
        gx, G = o.upper_grads(x, pi)
        live = (~p.terminal).unsqueeze(-1)
        G = G * live
        b = M.adjoint_rhs(pi * G, p.P, p.gamma)
        residual = o.adjoint_product(pi, state.w, transpose=True) - b
        w = state.w - self.zeta * o.adjoint_product(pi, residual, transpose=False)
        estimate = gx + o.reward_vjp(x, pi * (G - w.unsqueeze(-1)) * live) / p.tau
        return self.advance(state, x, estimate, V, w, pi)


def m_sobirl(**options: Any) -> MSoBiRL:
    """M-SoBiRL (see ``MSoBiRL``)."""
    return MSoBiRL(**options)
