"""SubBiO: AID with a two-dimensional subspace v-solver (Yang, Gao, Yuan, ICLR 2025; algorithms.md §2.3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

from ..linear_solvers.subspace2d import Subspace2D
from .aid import AIDSolver
from .registry import register


@register
@dataclass(frozen=True, kw_only=True)
class SubBiO(AIDSolver):
    """SubBiO — the best v in a two-dimensional subspace (Yang, Gao & Yuan, ICLR 2025).

    Iteration k (sequential AID loop):

        y_k = T GD steps on g(x_k, ·) from y_{k−1} with step θ            (lr_y = θ, inner_steps = T)
        b_k = ∇_y f(x_k, y_k);  A_k = ∇²_yy g(x_k, y_k)
        S_k = span{ b_k, (I − η A_k) v_{k−1} }                               (eta = η)
        v_k = argmin_{v ∈ S_k} ½ vᵀ A_k v − b_kᵀ v                          (2 × 2 solve in float64)
        x_{k+1} = x_k − λ (∇_x f(x_k, y_k) − ∇²_xy g(x_k, y_k) v_k)         (lr_x = λ)

    Oracle cost per iteration: T ∇_y g, 1 ∇_y f, 1 ∇_x f, **3 HVPs** (2 while v_{k−1} = 0),
    1 cross product.  All HVPs use the Hessian at (x_k, y_k).

    Reference defaults (§2.3): synthetic η = 1e-5, T = 5, λ = 1, θ = 1e-5; hyper-cleaning η = 0.05, T = 5,
    λ = 500, θ = 0.1; stochastic η = 0.1, T = 3, λ = 100 → 50 and θ = 0.1 → 0.05 from k = 500.
    """

    name: ClassVar[str] = "subbio"
    required: ClassVar[tuple[str, ...]] = ("lr_x", "lr_y", "eta")
    defaults: ClassVar[Mapping[str, Any]] = {"inner_steps": 5}

    eta: Optional[float] = None
    eps: float = 1e-10

    checks: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "quadratic": {"max_iter": 300, "reduction": 1e3},
        "synthetic": {"max_iter": 800, "reduction": 1e3},
    }

    def expected_hvps(self, opts: Mapping[str, Any], iterations: int) -> float:
        """3 per iteration, except the first: v_{-1} = 0 makes p = 0 (no product) and S = span{b} (1)."""
        return float(3 * iterations - 2) if iterations else 0.0

    def _check_options(self) -> None:
        if self.eta is not None:
            self.make_v_solver({"eta": self.eta})

    def make_v_solver(self, opts: Mapping[str, Any]) -> Subspace2D:
        return Subspace2D(eta=opts["eta"], eps=self.eps)


def subbio(**options: Any) -> SubBiO:
    """Configure SubBiO; see ``SubBiO`` for the options and defaults."""
    return SubBiO.create(**options)
