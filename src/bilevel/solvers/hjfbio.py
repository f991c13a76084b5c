"""HJFBiO: Hessian/Jacobian-free single loop with finite-difference products (Huang 2024; algorithms.md §3.9)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Optional

import torch
from torch import Tensor

from .._validation import check_bool, check_positive
from ..oracles import Oracles
from ..problem import BilevelProblem
from ..schedules import ScheduleLike, as_schedule
from .base import Solver
from .registry import register


@dataclass
class HJFBiOState:
    """x, y, v: x_{k+1}, y_{k+1}, v_{k+1}.  iterate: (x_k, y_k, v_k), the point of step k's directions."""

    x: Tensor
    y: Tensor
    v: Tensor
    lr_x: Callable[[int], float]
    lr_y: Callable[[int], float]
    iterate: tuple
    resolved: dict
    events: Counter = field(default_factory=Counter)


@register
@dataclass(frozen=True, kw_only=True)
class HJFBiO(Solver):
    """HJFBiO — Hessian/Jacobian-free bilevel optimisation, single loop (Huang 2024).

    Iteration k, every direction at (x_k, y_k, v_k), then all updates at once:

        (gx±, gy±) = (∇_x g, ∇_y g)(x_k, y_k ± h v_k)       (two joint gradients of g)
        Âv = (gy+ − gy−) / 2h ≈ A_k v_k;  Ĵv = (gx+ − gx−) / 2h ≈ J_k v_k   (A = ∇²_yy g, J = ∇²_xy g)
        v_{k+1} = v_k − η (Âv − ∇_y f(x_k, y_k))                               (eta = η)
        y_{k+1} = y_k − θ_k ∇_y g(x_k, y_k)                                     (lr_y = θ)
        x_{k+1} = x_k − λ_k (∇_x f(x_k, y_k) − Ĵv)                              (lr_x = λ; Ĵ v_k, the old v)

    The shift h: ``scaled_shift=False`` uses h = δ (y ± δ v_k, the paper's form); ``scaled_shift=True``
    uses h = δ/‖v_k‖ (a step of length δ along v_k/‖v_k‖, then rescaled by ‖v_k‖), which keeps the
    difference well scaled whatever ‖v_k‖ is.  Defaults by the problem's dtype: float64 δ = 1e-5, unscaled
    (truncation error O(δ²‖v‖²), rounding O(ε/δ) ≈ 1e-11 relative); lower precision δ = 1e-3, scaled (the
    O(ε/δ) rounding term dominates in float32, so δ must be larger and the shift length controlled).

    Oracle cost per iteration: **2 joint ∇g** (each counted as 1 ∇_y g + 1 ∇_x g) for the finite
    differences, 1 ∇_y g for the y-step, 1 ∇_y f, 1 ∇_x f; **no HVPs, no cross products**.  When v_k is
    exactly 0 (the first iteration: v_0 = 0) both products are 0 and the two joint calls are skipped.
    Totals over K ≥ 1 iterations (b_0 ≠ 0, so v stays non-zero after the first): ∇_y g 3K − 2,
    ∇_x g 2K − 2, ∇_y f K, ∇_x f K.

    η is the v-step, separate from the inner step θ (the reference used θ for both); lr_x and lr_y accept
    schedules.  There is no inner_steps: one y-step per iteration.  Step sizes and η come from the
    problem's presets or the user.

    Reference defaults (algorithms.md §3.9; HC only):

        ======  =====  =====  ===================================  ===  =====================
                λ      θ      η                                    T    K
        Syn     —      —      —                                    —    —
        HC      500    0.1    0.1 (the reference's effective one)  1    6000 (log every 50)
        Stoc    —      —      —                                    —    —
        ======  =====  =====  ===================================  ===  =====================
    """

    name: ClassVar[str] = "hjfbio"
    required: ClassVar[tuple[str, ...]] = ("lr_x", "lr_y", "eta")

    lr_x: Optional[ScheduleLike] = None
    lr_y: Optional[ScheduleLike] = None
    eta: Optional[float] = None
    delta: Optional[float] = None
    scaled_shift: Optional[bool] = None

    checks: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        # single loop: one y-step and one v-step per iteration, hence the longer budgets
        "quadratic": {"max_iter": 600, "reduction": 1e3},
        "synthetic": {"max_iter": 500, "reduction": 1e3},
    }

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name in ("lr_x", "lr_y"):
            if getattr(self, name) is not None:
                as_schedule(getattr(self, name), f"{owner}: {name}")
        if self.eta is not None:
            check_positive(owner, "eta", self.eta)
        if self.delta is not None:
            check_positive(owner, "delta", self.delta)
        if self.scaled_shift is not None:
            check_bool(owner, "scaled_shift", self.scaled_shift)

    def resolve(self, problem: BilevelProblem) -> dict[str, Any]:
        opts = super().resolve(problem)
        wide = problem.dtype == torch.float64
        if opts["delta"] is None:
            opts["delta"] = 1e-5 if wide else 1e-3
        if opts["scaled_shift"] is None:
            opts["scaled_shift"] = not wide
        return opts

    def expected_counts(self, opts: Mapping[str, Any], iterations: int) -> dict[str, float]:
        K = iterations
        fd = max(K - 1, 0)  # iterations with v_k ≠ 0: all but the first
        return {
            "grad_y_g": K + 2 * fd, "grad_x_g": 2 * fd, "grad_x_f": K, "grad_y_f": K,
            "hvp": 0, "cross": 0, "cross_t": 0,
        }

    def products(
        self, oracles: Oracles, x: Tensor, y: Tensor, v: Tensor, opts: Mapping[str, Any]
    ) -> tuple[Tensor, Tensor]:
        """(Âv, Ĵv): central differences of the joint gradient of g along v; (0, 0) without any call when
        v is exactly 0."""
        if not bool(torch.any(v != 0)):
            return torch.zeros_like(y), torch.zeros_like(x)
        h = opts["delta"]
        if opts["scaled_shift"]:
            norm = float(torch.linalg.vector_norm(v))
            # a non-finite ‖v‖ gives a non-finite h: the run then ends as "diverged" instead of raising
            h = h / norm if math.isfinite(norm) and norm > 0 else float("nan")
        gx_plus, gy_plus = oracles.grad_g(x, y + h * v)
        gx_minus, gy_minus = oracles.grad_g(x, y - h * v)
        return (gy_plus - gy_minus) / (2 * h), (gx_plus - gx_minus) / (2 * h)

    def init(self, problem: BilevelProblem, oracles: Oracles, generator: torch.Generator) -> HJFBiOState:
        opts = self.resolve(problem)
        x, y = problem.x0, problem.y0
        v = torch.zeros_like(y)
        return HJFBiOState(
            x=x, y=y, v=v, lr_x=as_schedule(opts["lr_x"], "lr_x"), lr_y=as_schedule(opts["lr_y"], "lr_y"),
            iterate=(x, y, v), resolved=opts,
        )

    def step(self, state: HJFBiOState, oracles: Oracles, k: int) -> HJFBiOState:
        x, y, v, opts = state.x, state.y, state.v, state.resolved
        av, jv = self.products(oracles, x, y, v, opts)
        d_y = oracles.grad_y_g(x, y)
        gx_f, b = oracles.grad_f(x, y)
        v_new = v - opts["eta"] * (av - b)
        y_new = y - state.lr_y(k) * d_y
        x_new = x - state.lr_x(k) * (gx_f - jv)
        return HJFBiOState(
            x=x_new, y=y_new, v=v_new, lr_x=state.lr_x, lr_y=state.lr_y, iterate=(x, y, v),
            resolved=opts, events=state.events,
        )


def hjfbio(**options: Any) -> HJFBiO:
    """Configure HJFBiO; see ``HJFBiO`` for the options and defaults."""
    return HJFBiO.create(**options)
