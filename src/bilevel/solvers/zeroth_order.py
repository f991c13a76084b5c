"""Zeroth-order baseline for bilevel RL: two-point finite differences of the upper objective along random
directions (the zeroth-order comparison of Thoma et al., "Contextual bilevel reinforcement learning for
incentive alignment", NeurIPS 2024; Gaussian smoothing as in Nesterov & Spokoiny, Found. Comput. Math. 2017)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

import torch

from ..rl.solver import RLSolver, RLState
from .base import register


@register
@dataclass(frozen=True, kw_only=True)
class ZerothOrder(RLSolver):
    """Zeroth-order — two-point finite differences of φ̂(x) = F(x, π_T(x)) along Gaussian directions
    (Thoma et al., NeurIPS 2024, their zeroth-order baseline; Nesterov & Spokoiny, Found. Comput. Math. 2017).

    π_T(x) is the soft-greedy policy after T warm-started soft value-iteration sweeps at x (no derivative of
    the lower level is used).  Iteration k, with V the warm start (V_0 = 0):

        V ← T sweeps at x_k                                                              [sweeps = T]
        for j = 1 … K: u_j ~ N(0, I);  V_± ← T sweeps at x_k ± μ u_j from V;  F_± = F(x_k ± μ u_j, π_T)
                                                                          [directions = K, radius = μ]
        D_k = (1/K) Σ_j (F_+ − F_−)/(2μ) · u_j
        x_{k+1} = x_k − β clip(D_k)                                                        [lr_x = β]

    F is the exact upper loss from the model, or, with ``trajectories = N > 0`` (and a trajectory loss), the
    mean sampled loss of N episodes at each of x ± μu (common random numbers: the same uniforms at both
    points).  E[D_k] = ∇φ_μ(x_k), the gradient of the Gaussian smoothing φ_μ(x) = E_u φ(x + μu), which differs
    from ∇φ by O(μ²) for a smooth φ (the bias stated and tested: it falls with μ); the variance grows like dx/K.

    clip(D) = D·min(1, c/‖D‖) with c = ``clip`` (default 0: no clipping; FourRooms protocol: 1).

    Oracle cost per iteration (exact, counted): T(1 + 2K) soft value-iteration sweeps per MDP, 1 + 2K reward
    evaluations, 2K upper values (or 2K·N sampled episodes); no derivatives.
    """

    name: ClassVar[str] = "zeroth_order"
    label: ClassVar[str] = "Zeroth-order"
    defaults: ClassVar[Mapping[str, Any]] = {"clip": 0.0, "sweeps": 10, "directions": 1, "radius": 1e-3, "trajectories": 0}
    settings: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "rl_synthetic": {"lr_x": 8e-3},
        "fourrooms": {"lr_x": 0.5, "clip": 1.0, "radius": 0.1, "trajectories": 50},
    }
    checks: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    positive_options: ClassVar[tuple[str, ...]] = ("lr_x", "radius")
    int_options: ClassVar[Mapping[str, int]] = {"sweeps": 1, "directions": 1, "trajectories": 0}

    lr_x: Optional[float] = None
    clip: Optional[float] = None
    sweeps: Optional[int] = None
    directions: Optional[int] = None
    radius: Optional[float] = None
    trajectories: Optional[int] = None

    def bind(self, problem: Any, stochastic: bool = False):
        bound = super().bind(problem, stochastic)
        if bound.trajectories and getattr(problem, "trajectory", None) is None:
            raise ValueError(f"zeroth_order: trajectories={bound.trajectories} samples episode losses, but problem "
                             f"{problem.name!r} has no trajectory loss — pass trajectories=0 (exact upper values).")
        return bound

    def expected_counts(self, iterations: int, problem: Any = None) -> dict[str, float]:
        n = 1 if problem is None else problem.n_contexts
        K = self.directions
        out = {"sweeps": iterations * self.sweeps * (1 + 2 * K) * n, "reward_evals": iterations * (1 + 2 * K),
               "upper_values": iterations * 2 * K}
        if self.trajectories:
            out["trajectories"] = iterations * 2 * K * self.trajectories
        return out

    def init(self, problem: Any, oracles: Any, generator: torch.Generator) -> RLState:
        self._require_bound()
        return self.init_state(problem, generator)

    def _value(self, o: Any, x: torch.Tensor, V0: torch.Tensor, seed: int | None) -> torch.Tensor:
        p = o.problem
        _, V, pi = self.best_response(o, x, V0)
        if not self.trajectories:
            return o.upper_value(x, pi)
        gen = torch.Generator(device=p.device).manual_seed(seed)  # common random numbers at x ± μu
        d = o.trajectories(pi, self.trajectories, p.trajectory.horizon, gen)
        with torch.no_grad():
            return o.trajectory_losses(x, d).mean()

    def step(self, state: RLState, oracles: Any, batches: Any = None) -> RLState:
        o = self.check_oracles(oracles)
        x, gen = state.x, state.generator
        _, V, pi = self.best_response(o, x, state.V)
        estimate = torch.zeros_like(x)
        for _ in range(self.directions):
            u = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)
            seed = int(torch.randint(2**62, (1,), generator=gen, device=x.device)) if self.trajectories else None
            plus = self._value(o, x + self.radius * u, V, seed)
            minus = self._value(o, x - self.radius * u, V, seed)
            estimate = estimate + (plus - minus) / (2 * self.radius) * u
        estimate = estimate / self.directions
        return self.advance(state, x, estimate, V, None, pi)


def zeroth_order(**options: Any) -> ZerothOrder:
    """Zeroth-order baseline (see ``ZerothOrder``)."""
    return ZerothOrder(**options)
