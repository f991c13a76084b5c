"""LancBiO: AID with the dynamic Lanczos v-solver (Yang, Gao, Yuan, ICLR 2025; algorithms.md §2.4–§2.11)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional, Union

from ..linear_solvers.lanczos import Lanczos
from ..schedules import DimensionSchedule
from .aid import AIDSolver
from .registry import register


@register
@dataclass(frozen=True, kw_only=True)
class LancBiO(AIDSolver):
    """LancBiO — bilevel optimisation with a dynamic Lanczos subspace (Yang, Gao & Yuan, ICLR 2025).

    Iteration k (sequential AID loop, residual mode; j = basis size in the current epoch):

        y_k = T GD steps on g(x_k, ·) from y_{k−1} with step θ            (lr_y = θ, inner_steps = T)
        b_k = ∇_y f(x_k, y_k);  A_k = ∇²_yy g(x_k, y_k)
        every m iterations restart: v̄ = v_{k−1}, w = A_k v̄, q_1 = (b_k − w)/‖b_k − w‖
        one Lanczos step with A_k: T_j, Q_j;   v_k = v̄ + Q_j T_j⁻¹ Q_jᵀ (b_k − w)
        x_{k+1} = x_k − λ (∇_x f(x_k, y_k) − ∇²_xy g(x_k, y_k) v_k)         (lr_x = λ)

    Oracle cost per iteration: T ∇_y g, 1 ∇_y f, 1 ∇_x f, **1 + 1/m HVPs on average** (2 while m = 1),
    1 cross product.  See ``bilevel.linear_solvers.Lanczos`` for the guards and events.

    Options: m (int or DimensionSchedule: dimension = restart period), subproblem ("galerkin" |
    "minres"), mode ("residual" | "plain" compatibility), reorth ("none" | "full"), exact_residual
    (diagnostic: recompute w each iteration), mu_lb (optional strong-convexity lower bound), plus the AID
    options lr_x, lr_y, inner_steps, order, freeze_x_first, v_init.

    Reference defaults (the problem's presets supply them; §2.11):
        synthetic:             T = 5, λ = 1, θ = 1e-5, m = DimensionSchedule(1, 1.1, 20, 80), K = 10000
        hyper-cleaning (det.): T = 5, λ = 500, θ = 0.1, m = DimensionSchedule(1, 1.3, 50, 10), K = 3000
        hyper-cleaning (stoc): T = 3, λ = 100, θ = 0.1 → 0.05 from k = 500,
                               m = DimensionSchedule(1, 1.3, 50, 30, switch_at=500, switch_m_max=50)
    Library default when the problem has no preset: m = 10, T = 5.
    """

    name: ClassVar[str] = "lancbio"
    defaults: ClassVar[Mapping[str, Any]] = {"inner_steps": 5, "m": 10}

    m: Optional[Union[int, DimensionSchedule]] = None
    subproblem: str = "galerkin"
    mode: str = "residual"
    reorth: str = "none"
    exact_residual: bool = False
    fallback: str = "minres"
    mu_lb: Optional[float] = None

    def _check_options(self) -> None:
        self.make_v_solver({"m": self.m if self.m is not None else 1})

    checks: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "quadratic": {"max_iter": 300, "reduction": 1e3},
        "synthetic": {"max_iter": 800, "reduction": 1e3},
        "counts": {"options": {"m": 6}},
    }

    def expected_hvps(self, opts: Mapping[str, Any], iterations: int) -> float:
        """One Lanczos HVP per iteration plus one at each restart except the first (v̄ = 0 there); a
        restart happens when the basis already holds m(k) vectors.  Plain mode: one per iteration.
        (Breakdowns and skipped restarts, which need an exactly solved system, are not modelled.)"""
        lanczos = self.make_v_solver(opts)
        if lanczos.mode == "plain":
            return float(iterations)
        sched, total, j, epoch = lanczos.schedule, 0, 0, -1
        for k in range(iterations):
            if k == 0 or j >= sched(k) or k == sched.switch_at:
                epoch, j = epoch + 1, 0
                total += 1 if epoch else 0  # A·v̄ (v̄ = 0 in the first epoch)
            elif self.exact_residual and epoch:
                total += 1  # diagnostic mode refreshes w = A_k v̄
            total += 1  # the Lanczos step
            j += 1
        return float(total)

    def budget_warnings(self, state: Any, max_iter: int) -> list[str]:
        sched = state.v_solver.schedule
        if sched.cap > sched.m0 and sched.first_reaching(sched.cap, max_iter) is None:
            return [
                f"LancBiO: the subspace dimension never reaches its cap {sched.cap} within max_iter={max_iter} "
                f"(it gets to {sched(max(max_iter - 1, 0))}); {sched!r}."
            ]
        return []

    def make_v_solver(self, opts: Mapping[str, Any]) -> Lanczos:
        return Lanczos(
            m=opts["m"], subproblem=self.subproblem, mode=self.mode, reorth=self.reorth,
            exact_residual=self.exact_residual, fallback=self.fallback, mu_lb=self.mu_lb,
        )


def lancbio(**options: Any) -> LancBiO:
    """Configure LancBiO; see ``LancBiO`` for the options and defaults."""
    return LancBiO.create(**options)
