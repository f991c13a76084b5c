"""LancBiO: AID with the dynamic Lanczos v-solver (Yang, Gao & Yuan, "LancBiO: Dynamic Lanczos-aided
Bilevel Optimization via Krylov Subspace", ICLR 2025)."""

from __future__ import annotations

from typing import Any

from ..linear_solvers.lanczos import Lanczos
from ..schedules import DimensionSchedule
from .aid import AID, aid, algorithm

#: the paper's settings per experiment key (synthetic, deterministic hyper-cleaning)
SETTINGS = {
    "synthetic": {"inner_steps": 5, "m": DimensionSchedule(m0=1, growth=1.1, period=20, m_max=80)},
    "hyperclean": {"inner_steps": 5, "m": DimensionSchedule(m0=1, growth=1.3, period=50, m_max=10)},
}


@algorithm("lancbio", "LancBiO", checks={
    "quadratic": {"max_iter": 300, "reduction": 1e3},
    "synthetic": {"max_iter": 800, "reduction": 1e3},
    "counts": {"options": {"m": 6}},
})
def lancbio(**options: Any) -> AID:
    """LancBiO — bilevel optimisation with a dynamic Lanczos subspace (Yang, Gao & Yuan, ICLR 2025).

    ``aid(v_solver=lanczos(), inner=GD())``.  Iteration k (sequential AID loop, residual mode; j = basis
    size in the current epoch):

        y_k = T GD steps on g(x_k, ·) from y_{k−1} with step θ            (lr_y = θ, inner_steps = T)
        b_k = ∇_y f(x_k, y_k);  A_k = ∇²_yy g(x_k, y_k)
        every m iterations restart: v̄ = v_{k−1}, w = A_k v̄, q_1 = (b_k − w)/‖b_k − w‖
        one Lanczos step with A_k: T_j, Q_j;   v_k = v̄ + Q_j T_j⁻¹ Q_jᵀ (b_k − w)
        x_{k+1} = x_k − λ (∇_x f(x_k, y_k) − ∇²_xy g(x_k, y_k) v_k)         (lr_x = λ)

    Oracle cost per iteration: T ∇_y g, 1 ∇_y f, 1 ∇_x f, **1 + 1/m HVPs on average** (2 while m = 1),
    1 cross product.  See ``bilevel.linear_solvers.Lanczos`` for the guards and events.

    Options: m (int or DimensionSchedule: dimension = restart period), subproblem ("galerkin" |
    "minres"), mode ("residual" | "plain" compatibility), reorth ("none" | "full"), exact_residual
    (diagnostic: recompute w each iteration), mu_lb (optional strong-convexity lower bound),
    eps_breakdown, eps_pivot, eps_restart (every Lanczos option, also as ``v_solver.<name>``), plus the AID
    options lr_x, lr_y, inner_steps, order, freeze_x_first, v_init, damping.

    mu_lb: a Ritz value of T_j below it (found by the LDLᵀ pivots of T_j − μ_lb I) is curvature evidence
    (event ``below_mu_lb``, restart next iteration); damping = δ: the Lanczos process runs on A_k + δI, i.e.
    v solves (∇²_yy g + δI) v = ∇_y f, a biased hypergradient for lower levels that are not strongly
    convex.  Curvature evidence in 5 consecutive iterations ends the run ``not_strongly_convex``
    (``solve(curvature_patience=...)``); isolated events use the indefinite-pivot fallback (minimal-residual
    solve, restart next iteration), counted in the run's message.

    Published settings (``SETTINGS``, looked up by the problem's experiment key):
        synthetic:             T = 5, λ = 1, θ = 1e-5, m = DimensionSchedule(1, 1.1, 20, 80), K = 10000
        hyper-cleaning (det.): T = 5, λ = 500, θ = 0.1, m = DimensionSchedule(1, 1.3, 50, 10), K = 3000
        hyper-cleaning (stoc): T = 3, λ = 100, θ = 0.1 → 0.05 from k = 500,
                               m = DimensionSchedule(1, 1.3, 50, 30, switch_at=500, switch_m_max=50)
    Library default when the problem has no settings: m = 10, T = 5.
    """
    return aid(name="lancbio", label="LancBiO", v_solver=Lanczos(), defaults={"inner_steps": 5, "m": 10},
               settings=SETTINGS, **options)
