"""AmIGO-CG: AID with warm-started conjugate gradients on the v-system (Arbel & Mairal 2022; algorithms.md §3.2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

from .._validation import check_int, check_positive
from ..linear_solvers.cg import CG
from .aid import AIDSolver
from .registry import register


@register
@dataclass(frozen=True, kw_only=True)
class AmIGOCG(AIDSolver):
    """AmIGO-CG — amortised implicit gradient optimisation with a CG v-solver (Arbel & Mairal 2022).

    Iteration k (sequential AID loop):

        y_k = T GD steps on g(x_k, ·) from y_{k−1} with step θ            (lr_y = θ, inner_steps = T)
        b_k = ∇_y f(x_k, y_k);  A_k = ∇²_yy g(x_k, y_k)
        v ← v_{k−1} (warm start);  r ← b_k − A_k v;  p ← r
        repeat Q times:                                                    (v_steps = Q)
            z ← A_k p;  a ← rᵀr / pᵀz;  v ← v + a p                         (v is updated every iteration)
            r_new ← r − a z;  β ← r_newᵀr_new / rᵀr;  p ← r_new + β p;  r ← r_new
        x_{k+1} = x_k − λ (∇_x f(x_k, y_k) − ∇²_xy g(x_k, y_k) v_k)         (lr_x = λ)

    Oracle cost per iteration: T ∇_y g, 1 ∇_y f, 1 ∇_x f, **Q + 1 HVPs**, 1 cross product.  The first
    iteration makes Q: v_{−1} = 0 gives r = b_0 without a product (not with ``v_init="randn"``).  With
    ``rtol`` (optional early stop when ‖r‖ ≤ rtol‖b_k‖; default None = always Q iterations, as in AmIGO)
    the count is data-dependent and ``expected_counts`` refuses to predict it.  CG's guards (non-positive
    curvature, non-finite values) stop early and keep the last good v; they are reported as events.

    lr_x and lr_y accept schedules.  Step sizes come from the problem's presets or the user; the library
    only defaults T = 10, Q = 5 (the HC setting).

    Reference defaults (algorithms.md §3.2):

        ======  ======  ======================================  =====================================
                T / Q   λ / θ                                   B
        Syn     5 / 5   1 / 1e-5                                —
        HC      10 / 5  500 / 0.1 (Fashion-MNIST: λ = 100)      full
        Stoc    6 / 9   100 / 0.1                               256 (one Hessian batch per CG run)
        ======  ======  ======================================  =====================================
    """

    name: ClassVar[str] = "amigo_cg"
    defaults: ClassVar[Mapping[str, Any]] = {"inner_steps": 10, "v_steps": 5}

    v_steps: Optional[int] = None
    rtol: Optional[float] = None

    checks: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "quadratic": {"max_iter": 150, "reduction": 1e3},
        "synthetic": {"max_iter": 250, "reduction": 1e3},
        "counts": {"options": {"v_steps": 3}},
    }

    def _check_options(self) -> None:
        owner = type(self).__name__
        if self.v_steps is not None:
            check_int(owner, "v_steps", self.v_steps, 1)
        if self.rtol is not None:
            check_positive(owner, "rtol", self.rtol)
        if self.freeze_x_first:
            raise ValueError(f"{owner}: freeze_x_first needs an epoch-based v-solver (LancBiO); CG has no epochs.")

    def expected_hvps(self, opts: Mapping[str, Any], iterations: int) -> float:
        """Q + 1 per iteration, less the residual product of the first call when v starts at exactly 0."""
        if self.rtol is not None:
            raise ValueError(
                f"{type(self).__name__}: with rtol={self.rtol!r} the number of CG iterations depends on the data; "
                "the HVP count is only known without rtol (at most Q + 1 per iteration)."
            )
        if not iterations:
            return 0.0
        skipped = 1 if self.v_init == "zeros" else 0
        return float((opts["v_steps"] + 1) * iterations - skipped)

    def make_v_solver(self, opts: Mapping[str, Any]) -> CG:
        return CG(steps=opts["v_steps"], rtol=self.rtol, warm_start=True)


def amigo_cg(**options: Any) -> AmIGOCG:
    """Configure AmIGO-CG; see ``AmIGOCG`` for the options and defaults."""
    return AmIGOCG.create(**options)
