"""``RLProblem``: bilevel reinforcement learning on entropy-regularised tabular MDPs.

    minimise over x:  φ(x) = F(x, π*(x)),     π*(x) = argmax over π of V^π_τ(x)  (soft-optimal policy)

The lower level is the MDP M_τ(x) = (S, A, P, r(x), γ, τ): its reward depends on the upper variable x, and
π*(x) is the unique soft-optimal policy (the policy problem is non-convex in π, so the strong-convexity
machinery of the AID solvers does not apply; ``kind = "rl"`` keeps them apart, see ``bilevel.kinds``).

The upper loss is given either as a function of the policy, ``upper(x, π)`` (a scalar, or one value per MDP
of a batch, averaged), or as a trajectory loss (``step_cost``): an episode d = (s_0, a_0, s_1, …) from ρ under
π ends at a terminal state or after ``horizon`` steps, and

    l(d; x) = Σ_{t < T_d} γ_f^t c_x(s_t, a_t, s_{t+1}),        F(x, π) = E_d[l(d; x)],

computed exactly (a forward recursion of the state distribution, ``horizon`` products with P_π) for the
ground truth, and sampled by the stochastic solvers.  Several MDPs (contexts ξ, e.g. the goal of FourRooms)
are a leading batch dimension: φ(x) = mean over ξ of F_ξ(x, π*_ξ(x)).

Exact hypergradient (first order; Yang, Gao & Yuan, "Bilevel reinforcement learning via the development of
hyper-gradient without lower-level convexity", AISTATS 2025).  With G = ∂F/∂π at π = π*(x) and
u = π ⊙ G, ∇_x π_sa = τ⁻¹ π_sa ∇_x(Q_sa − V_s), ∇_x V = (I − γP_π)⁻¹ Φ with Φ_s = Σ_a π_sa ∇_x r_sa, hence

    b(s') = Σ_{s,a} (δ_{ss'} − γ P(s'|s, a)) u_sa,      (I − γP_π)ᵀ w = b,
    ∇φ(x) = ∇_x F + τ⁻¹ ∇_x ⟨r(x), π ⊙ (G − w 1ᵀ)⟩      (one vector-Jacobian product through r).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor

from ..problem import ProblemError, UpperStart
from . import mdp as M

__all__ = ["RLProblem", "RLTruth", "TrajectoryLoss"]


@dataclass(frozen=True)
class TrajectoryLoss:
    """l(d; x) = Σ_{t < T_d} γ_f^t c_x(s_t, a_t, s_{t+1}) over episodes of at most ``horizon`` steps.

    ``cost(x) -> Tensor[..., S, A, S]`` (differentiable in x), ``gamma``: the upper discount γ_f."""

    cost: Callable[[Tensor], Tensor]
    gamma: float
    horizon: int


@dataclass(frozen=True)
class RLTruth:
    """Exact quantities at x: φ(x), ∇φ(x), V*, Q*, π*, the adjoint w and ∂F/∂π (G)."""

    phi: Tensor
    grad: Tensor
    V: Tensor
    Q: Tensor
    pi: Tensor
    w: Tensor
    G: Tensor


def _check_prob(name: str, t: Tensor, dim: int) -> None:
    if (t < 0).any() or not torch.allclose(t.sum(dim), torch.ones((), dtype=t.dtype, device=t.device)):
        raise ProblemError(f"{name} must hold probability distributions (non-negative, summing to 1 over its "
                           f"last axis); got sums in [{float(t.sum(dim).min()):.3g}, {float(t.sum(dim).max()):.3g}].")


class RLProblem(UpperStart):
    """A bilevel RL problem (``kind = "rl"``).

    Args:
        P: transition kernel, ``[..., S, A, S]`` (leading dims: a batch of MDPs / contexts).
        reward: ``x -> r(x)``, ``[..., S, A]``, differentiable in x.
        x0: initial upper variable (1-D tensor; its dtype and device are the problem's).
        gamma, tau: discount γ ∈ [0, 1) and entropy weight τ > 0 of the lower level.
        rho: initial distribution ``[..., S]``.
        upper: ``(x, π) -> F`` (scalar, or ``[...]`` one per MDP: averaged), differentiable in x and π.
        trajectory: a ``TrajectoryLoss``; when ``upper`` is None, F is its exact expectation.
        terminal: bool ``[..., S]``: episode-ending states (V = 0 there).
        reward_jacobian: optional closed form ``x -> ∂r/∂x``, ``[..., S, A, dx]`` (else autodiff).
        name, experiment, presets, info: as for ``BilevelProblem``.
        metrics: optional ``(x, truth) -> dict`` of extra columns evaluated outside the timer.
    """

    kind = "rl"

    def __init__(self, P: Tensor, reward: Callable[[Tensor], Tensor], x0: Tensor, *, gamma: float, tau: float,
                 rho: Tensor, upper: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
                 trajectory: Optional[TrajectoryLoss] = None, terminal: Optional[Tensor] = None,
                 reward_jacobian: Optional[Callable[[Tensor], Tensor]] = None, name: str = "custom_rl",
                 experiment: Optional[str] = None, presets: Optional[Mapping[str, Mapping[str, Any]]] = None,
                 info: Optional[Mapping[str, Any]] = None,
                 metrics: Optional[Callable[[Tensor, RLTruth], Mapping[str, float]]] = None) -> None:
        from ..problem import _check_presets

        if not isinstance(x0, Tensor) or x0.dim() != 1 or not x0.is_floating_point():
            raise ProblemError(f"x0 must be a 1-D floating tensor; got {type(x0).__name__}"
                               f"{tuple(x0.shape) if isinstance(x0, Tensor) else ''}.")
        if not isinstance(P, Tensor) or P.dim() < 3 or P.shape[-1] != P.shape[-3]:
            raise ProblemError(f"P must be a tensor [..., S, A, S]; got shape "
                               f"{tuple(P.shape) if isinstance(P, Tensor) else type(P).__name__}.")
        if not 0.0 <= gamma < 1.0:
            raise ProblemError(f"gamma must be in [0, 1); got {gamma!r}.")
        if not tau > 0:
            raise ProblemError(f"tau must be > 0; got {tau!r}.")
        if upper is None and trajectory is None:
            raise ProblemError("give the upper loss: upper=(x, pi) -> F, or trajectory=TrajectoryLoss(...).")
        self.P = P.to(x0)
        self.rho = rho.to(x0)
        _check_prob("P", self.P, -1)
        _check_prob("rho", self.rho, -1)
        self.reward_fn = reward
        self.reward_jacobian = reward_jacobian
        self.trajectory = trajectory
        self._upper = upper
        self.gamma, self.tau = float(gamma), float(tau)
        S = self.P.shape[-1]
        self.terminal = (torch.zeros(self.P.shape[:-3] + (S,), dtype=torch.bool, device=x0.device)
                         if terminal is None else terminal.to(device=x0.device, dtype=torch.bool)
                         .expand(self.P.shape[:-3] + (S,)).contiguous())
        self._x0 = x0.detach().clone()
        self.name = str(name)
        self.experiment = experiment
        self.presets = _check_presets(presets)
        self.info = dict(info or {})
        self.metrics = metrics
        r0 = self.reward(self._x0)
        if r0.shape != self.P.shape[:-1]:
            raise ProblemError(f"reward(x0) must have shape {tuple(self.P.shape[:-1])} (P's [..., S, A]); got "
                               f"{tuple(r0.shape)}.")

    # ---- what the run loop, the CLI and ``Solver.bind`` read --------------------------------------
    n_samples = None
    n_samples_f = None
    closed_forms = None

    @property
    def n_states(self) -> int:
        return self.P.shape[-1]

    @property
    def n_actions(self) -> int:
        return self.P.shape[-2]

    @property
    def batch_shape(self) -> torch.Size:
        """Leading dimensions of the batch of MDPs (contexts); ``()`` for one MDP."""
        return self.P.shape[:-3]

    @property
    def n_contexts(self) -> int:
        n = 1
        for d in self.batch_shape:
            n *= d
        return n

    @property
    def dy(self) -> int:
        """Size of the lower variable: one soft value per state and MDP."""
        return self.n_contexts * self.n_states

    @property
    def y0(self) -> Tensor:
        return torch.zeros(self.batch_shape + (self.n_states,), dtype=self.dtype, device=self.device)

    def unflatten_x(self, x: Tensor) -> Tensor:
        return x

    def unflatten_y(self, y: Tensor) -> Tensor:
        return y

    def experiment_keys(self) -> tuple[str, ...]:
        if self.experiment is None:
            return ()
        parts = self.experiment.split("/")
        return tuple("/".join(parts[:i]) for i in range(len(parts), 0, -1))

    def preset(self, option: str) -> Any:
        return self.presets.get("*", {}).get(option)

    def __repr__(self) -> str:
        return (f"RLProblem(name={self.name!r}, S={self.n_states}, A={self.n_actions}, contexts="
                f"{tuple(self.batch_shape)}, dx={self.dx}, gamma={self.gamma}, tau={self.tau})")

    # ---- model pieces (autodiff lives here and in the RL oracles) ---------------------------------
    def reward(self, x: Tensor) -> Tensor:
        return self.reward_fn(x)

    def reward_vjp(self, x: Tensor, Z: Tensor) -> Tensor:
        """∇_x ⟨r(x), Z⟩ (one backward pass through r, or the closed-form Jacobian)."""
        if self.reward_jacobian is not None:
            return torch.einsum("...sa,...sad->d", Z, self.reward_jacobian(x))
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad((self.reward(xg) * Z).sum(), xg, allow_unused=True)
        return torch.zeros_like(x) if g is None else g

    def reward_jac(self, x: Tensor) -> Tensor:
        """∂r/∂x, ``[..., S, A, dx]`` (closed form, else forward-mode autodiff: dx JVPs)."""
        if self.reward_jacobian is not None:
            return self.reward_jacobian(x)
        import warnings

        with warnings.catch_warnings():  # torch.func's first use trips torch's own torch.jit deprecation warning
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.func.jacfwd(self.reward)(x.detach())

    def upper(self, x: Tensor, pi: Tensor) -> Tensor:
        """F(x, π): the mean over the batch of MDPs of the per-MDP upper loss."""
        out = self._upper(x, pi) if self._upper is not None else self.expected_trajectory_loss(x, pi)
        return out.mean() if out.dim() else out

    def upper_per_context(self, x: Tensor, pi: Tensor) -> Tensor:
        out = self._upper(x, pi) if self._upper is not None else self.expected_trajectory_loss(x, pi)
        return out.expand(self.batch_shape) if out.dim() == 0 else out

    def upper_grads(self, x: Tensor, pi: Tensor) -> tuple[Tensor, Tensor]:
        """(∇_x F, ∂F/∂π) at (x, π) (a trajectory loss: by its adjoint recursion, ``trajectory_value_and_grads``)."""
        if self._upper is None:
            return self.trajectory_value_and_grads(x, pi)[1:]
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            pg = pi.detach().requires_grad_(True)
            out = self.upper(xg, pg)
            gx, gp = torch.autograd.grad(out, (xg, pg), allow_unused=True)
        return (torch.zeros_like(x) if gx is None else gx), (torch.zeros_like(pi) if gp is None else gp)

    def _occupancy(self, pi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(d_t for t < H stacked [H, ..., S], M, the discounts γ_f^t): d_0 = ρ on non-terminal states,
        d_{t+1} = d_t M with M(s, s') = Σ_a π_sa P(s'|s, a) between non-terminal states (mass at terminal
        states leaves)."""
        tr = self.trajectory
        alive = (~self.terminal).to(self.dtype)
        Mpi = M.policy_matrix(self.P, pi, self.terminal) * alive.unsqueeze(-2)
        d = (self.rho * alive).expand(self.batch_shape + (self.n_states,))
        ds = []
        for _ in range(tr.horizon):
            ds.append(d)
            d = torch.matmul(d.unsqueeze(-2), Mpi).squeeze(-2)
        disc = tr.gamma ** torch.arange(tr.horizon, dtype=self.dtype, device=self.device)
        return torch.stack(ds), Mpi, disc

    def expected_trajectory_loss(self, x: Tensor, pi: Tensor) -> Tensor:
        """E_d[l(d; x)] exactly, one value per MDP: F = Σ_s D(s) c_π(s) with the discounted occupancy
        D = Σ_{t<H} γ_f^t d_t (``_occupancy``) and c_π(s) = Σ_a π_sa Σ_s' P(s'|s, a) c_x(s, a, s') on
        non-terminal s (differentiable in x and π)."""
        tr = self.trajectory
        if tr is None:
            raise ProblemError(f"problem {self.name!r} has no trajectory loss.")
        c = tr.cost(x)
        alive = (~self.terminal).to(self.dtype)
        cpi = (pi * (self.P * c).sum(-1)).sum(-1) * alive
        dt, _, disc = self._occupancy(pi)
        D = torch.tensordot(disc, dt, dims=1)
        return (D * cpi).sum(-1)

    def trajectory_value_and_grads(self, x: Tensor, pi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(F, ∇_x F, ∂F/∂π) of the exact trajectory loss F = mean over MDPs of Σ_{t<H} γ_f^t d_t·c_π, by its
        adjoint (no autograd through the H steps): with λ_H = 0, λ_t = c_π + γ_f M λ_{t+1} (the cost-to-go)
        and G = Σ_{t<H} γ_f^{t+1} d_t λ_{t+1}ᵀ (∂F/∂M),

            ∂F/∂π_sa = [s alive] (D(s) c_sa + Σ_s' P(s'|s, a) [s' alive] G(s, s')),
            ∂F/∂c(s, a, s') = [s alive] D(s) π_sa P(s'|s, a)   (then one VJP through c_x).

        2H products with M per MDP (H = the horizon)."""
        tr = self.trajectory
        if tr is None:
            raise ProblemError(f"problem {self.name!r} has no trajectory loss.")
        x, pi = x.detach(), pi.detach()
        alive = (~self.terminal).to(self.dtype)
        with torch.enable_grad():
            xg = x.requires_grad_(True)
            c = tr.cost(xg)
        Pc = (self.P * c.detach()).sum(-1)  # c_sa
        cpi = (pi * Pc).sum(-1) * alive
        dt, Mpi, disc = self._occupancy(pi)
        D = torch.tensordot(disc, dt, dims=1)
        value = (D * cpi).sum(-1)
        lam = torch.zeros_like(cpi)
        lams = []
        for _ in range(tr.horizon):  # λ_H, …, λ_1: the cost-to-go after each step
            lams.append(lam)
            lam = cpi + tr.gamma * torch.matmul(Mpi, lam.unsqueeze(-1)).squeeze(-1)
        after = torch.stack(lams[::-1])  # [H, ..., S]: λ_{t+1} for t = 0 … H − 1
        weighted = dt * (tr.gamma * disc).view((-1,) + (1,) * (dt.dim() - 1))
        G = torch.matmul(weighted.movedim(0, -1), after.movedim(0, -2))  # [..., S, S']
        scale = 1.0 / self.n_contexts
        gp = alive.unsqueeze(-1) * (Pc * D.unsqueeze(-1)
                                    + torch.einsum("...sat,...st->...sa", self.P, G * alive.unsqueeze(-2)))
        W = (D * alive).unsqueeze(-1).unsqueeze(-1) * pi.unsqueeze(-1) * self.P
        with torch.enable_grad():
            (gx,) = torch.autograd.grad((c * W).sum(), xg, allow_unused=True)
        gx = torch.zeros_like(x) if gx is None else gx
        return value.mean() if value.dim() else value, gx * scale, gp * scale

    # ---- ground truth -----------------------------------------------------------------------------
    def solve_lower(self, x: Tensor, V: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
        """(V*, Q*, π*) at x, by soft policy iteration to convergence (float64 reaches ~1e-13)."""
        r = self.reward(x.detach()).detach()
        V = M.soft_optimal(r, self.P, self.gamma, self.tau, self.terminal, V)
        Q = M.soft_q(r, self.P, V, self.gamma)
        return V, Q, M.soft_policy(Q, self.tau, self.terminal)

    def phi(self, x: Tensor, V: Optional[Tensor] = None) -> Tensor:
        """φ(x) = F(x, π*(x)) with π* from converged soft policy iteration."""
        _, _, pi = self.solve_lower(x, V)
        with torch.no_grad():
            return self.upper(x.detach(), pi)

    def hypergradient_at(self, x: Tensor, pi: Tensor, w: Optional[Tensor] = None,
                         grads: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, Tensor, Tensor]:
        """(∇φ estimate, w, G) at x for the policy π: with w None, w solves (I − γP_π)ᵀ w = b exactly
        (exact when π = π*(x)).  ``grads``: (∇_x F, ∂F/∂π) at (x, π) when already computed."""
        gx, G = self.upper_grads(x, pi) if grads is None else grads
        live = (~self.terminal).unsqueeze(-1)
        G = G * live
        if w is None:
            b = M.adjoint_rhs(pi * G, self.P, self.gamma)
            Ppi = M.policy_matrix(self.P, pi, self.terminal)
            A = torch.eye(self.n_states, dtype=self.dtype, device=self.device) - self.gamma * Ppi
            w = torch.linalg.solve(A.transpose(-1, -2), b.unsqueeze(-1)).squeeze(-1)
        Z = pi * (G - w.unsqueeze(-1)) * live
        return gx + self.reward_vjp(x, Z) / self.tau, w, G

    def truth(self, x: Tensor, V: Optional[Tensor] = None) -> RLTruth:
        """Exact φ(x) and ∇φ(x) (converged soft policy iteration, the |S|×|S| adjoint solve)."""
        x = x.detach()
        V, Q, pi = self.solve_lower(x, V)
        if self._upper is None:  # the trajectory loss's value comes with its gradients
            phi, gx, G = self.trajectory_value_and_grads(x, pi)
            grad, w, G = self.hypergradient_at(x, pi, grads=(gx, G))
        else:
            grad, w, G = self.hypergradient_at(x, pi)
            with torch.no_grad():
                phi = self.upper(x, pi)
        return RLTruth(phi=phi, grad=grad, V=V, Q=Q, pi=pi, w=w, G=G)
