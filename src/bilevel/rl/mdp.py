"""Entropy-regularised tabular MDPs: soft Bellman operators, soft value iteration and exact solves.

An MDP M_τ = (S, A, P, r, γ, τ) with initial distribution ρ is held as tensors: ``P[..., s, a, s']`` =
P(s'|s, a), ``r[..., s, a]``, ``rho[..., s]``; leading dimensions ``...`` batch several MDPs (contexts) and
every function here broadcasts over them.  A *terminal* state s (``terminal[..., s]`` True) ends the episode:
V_s = 0, its row of P is ignored, and its policy is uniform and carries no gradient.

Soft (entropy-regularised) Bellman equations, with h(π_s) = −Σ_a π_sa log π_sa:

    Q_sa = r_sa + γ Σ_s' P(s'|s, a) V_s'
    V_s  = τ log Σ_a exp(Q_sa / τ)          (stable log-sum-exp)
    π*_sa = exp((Q_sa − V_s) / τ) = softmax_a(Q_s· / τ)

One *sweep* of soft value iteration applies V ← τ logsumexp((r + γPV)/τ) once: a γ-contraction in the
sup-norm, costing one pass over the model (|S|·|A|·|S| multiply-adds per MDP).

Exact quantities (ground truth; never inside a solver's timed step) come from soft policy iteration, which
is Newton's method on V − T(V) = 0: each iteration solves the |S|×|S| system (I − γP_π) V = r_π + τ h(π),
and converges quadratically near V*.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = [
    "soft_q", "soft_v", "soft_policy", "soft_vi", "policy_matrix", "policy_reward", "entropy",
    "evaluate_policy", "soft_optimal", "adjoint_rhs", "SoftSolveError",
]


class SoftSolveError(RuntimeError):
    """An exact soft Bellman solve did not reach its tolerance (or met a non-finite value)."""


def soft_q(r: Tensor, P: Tensor, V: Tensor, gamma: float) -> Tensor:
    """Q = r + γ P V  (shape [..., S, A])."""
    return r + gamma * torch.matmul(P, V.unsqueeze(-1).unsqueeze(-3)).squeeze(-1)


def soft_v(Q: Tensor, tau: float, terminal: Optional[Tensor] = None) -> Tensor:
    """V_s = τ logsumexp_a(Q_sa/τ), and 0 at terminal states."""
    V = tau * torch.logsumexp(Q / tau, dim=-1)
    return V if terminal is None else V.masked_fill(terminal, 0.0)


def soft_policy(Q: Tensor, tau: float, terminal: Optional[Tensor] = None) -> Tensor:
    """π_sa = softmax_a(Q_s·/τ); uniform at terminal states."""
    pi = torch.softmax(Q / tau, dim=-1)
    if terminal is None:
        return pi
    return torch.where(terminal.unsqueeze(-1), torch.full_like(pi, 1.0 / pi.shape[-1]), pi)


def soft_vi(r: Tensor, P: Tensor, V: Tensor, gamma: float, tau: float, sweeps: int,
            terminal: Optional[Tensor] = None) -> Tensor:
    """``sweeps`` sweeps of soft value iteration from V (warm start); returns the new V."""
    for _ in range(sweeps):
        V = soft_v(soft_q(r, P, V, gamma), tau, terminal)
    return V


def entropy(pi: Tensor) -> Tensor:
    """h(π_s) = −Σ_a π_sa log π_sa (0·log 0 = 0)."""
    return -(pi * torch.where(pi > 0, pi.log(), torch.zeros_like(pi))).sum(-1)


def policy_matrix(P: Tensor, pi: Tensor, terminal: Optional[Tensor] = None) -> Tensor:
    """P_π(s, s') = Σ_a π_sa P(s'|s, a); zero rows at terminal states."""
    Ppi = torch.einsum("...sa,...sat->...st", pi, P)
    return Ppi if terminal is None else Ppi.masked_fill(terminal.unsqueeze(-1), 0.0)


def policy_reward(r: Tensor, pi: Tensor, tau: float, terminal: Optional[Tensor] = None) -> Tensor:
    """r_π(s) + τ h(π_s) = Σ_a π_sa r_sa + τ h(π_s); zero at terminal states."""
    out = (pi * r).sum(-1) + tau * entropy(pi)
    return out if terminal is None else out.masked_fill(terminal, 0.0)


def _eye_like(M: Tensor) -> Tensor:
    return torch.eye(M.shape[-1], dtype=M.dtype, device=M.device).expand_as(M)


def evaluate_policy(r: Tensor, P: Tensor, pi: Tensor, gamma: float, tau: float,
                    terminal: Optional[Tensor] = None) -> Tensor:
    """The soft value of π exactly: V^π = (I − γP_π)⁻¹ (r_π + τ h(π)) (one |S|×|S| solve per MDP)."""
    Ppi = policy_matrix(P, pi, terminal)
    rhs = policy_reward(r, pi, tau, terminal)
    return torch.linalg.solve(_eye_like(Ppi) - gamma * Ppi, rhs.unsqueeze(-1)).squeeze(-1)


def soft_optimal(r: Tensor, P: Tensor, gamma: float, tau: float, terminal: Optional[Tensor] = None,
                 V: Optional[Tensor] = None, tol: float = 1e-12, max_iter: int = 200) -> Tensor:
    """V* by soft policy iteration (Newton on V = T(V)), warm-started at V (default: a few VI sweeps from 0).

    Stops when the Bellman residual ‖T(V) − V‖∞ ≤ tol·max(1, ‖V‖∞) (tol at least 50 ulps of the dtype), or
    when it stops decreasing at the level of rounding (≤ 1e3·tol relative); raises ``SoftSolveError`` otherwise.
    """
    r = r.detach()
    tol = max(tol, 50 * torch.finfo(r.dtype).eps)  # float32 cannot reach 1e-12
    if V is None:
        V = soft_vi(r, P, torch.zeros(r.shape[:-1], dtype=r.dtype, device=r.device), gamma, tau, 5, terminal)
    V = V.detach()
    best = float("inf")
    for _ in range(max_iter):
        Q = soft_q(r, P, V, gamma)
        TV = soft_v(Q, tau, terminal)
        scale = max(1.0, float(V.abs().max()))
        res = float((TV - V).abs().max()) / scale
        if not res == res or res == float("inf"):
            raise SoftSolveError("the soft Bellman residual is not finite (rewards overflow?)")
        if res <= tol:
            return TV
        if res >= best and res <= 1e3 * tol:
            return TV
        best = min(best, res)
        V = evaluate_policy(r, P, soft_policy(Q, tau, terminal), gamma, tau, terminal)
    raise SoftSolveError(f"soft policy iteration did not converge in {max_iter} iterations (residual {res:.3g})")


def adjoint_rhs(u: Tensor, P: Tensor, gamma: float) -> Tensor:
    """b(s') = Σ_{s,a} (δ_{ss'} − γ P(s'|s, a)) u_sa, the right-hand side of the adjoint system
    (I − γP_π)ᵀ w = b, with u_sa = π_sa ∂f/∂π_sa (zero at terminal states)."""
    return u.sum(-1) - gamma * torch.einsum("...sa,...sat->...t", u, P)
