"""AmIGO-GD: AID with warm-started gradient descent on the v-system (Arbel & Mairal 2022; algorithms.md §3.1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

from .._validation import check_int, check_positive
from ..linear_solvers.gd import GD
from .aid import AIDSolver
from .registry import register


@register
@dataclass(frozen=True, kw_only=True)
class AmIGOGD(AIDSolver):
    """AmIGO-GD — amortised implicit gradient optimisation with a GD v-solver (Arbel & Mairal 2022).

    Iteration k (sequential AID loop):

        y_k = T GD steps on g(x_k, ·) from y_{k−1} with step θ            (lr_y = θ, inner_steps = T)
        b_k = ∇_y f(x_k, y_k);  A_k = ∇²_yy g(x_k, y_k)
        v ← v_{k−1} (warm start);  repeat Q times: v ← v − η (A_k v − b_k)  (eta = η, v_steps = Q)
        x_{k+1} = x_k − λ (∇_x f(x_k, y_k) − ∇²_xy g(x_k, y_k) v_k)         (lr_x = λ)

    Oracle cost per iteration: T ∇_y g, 1 ∇_y f, 1 ∇_x f, **Q HVPs**, 1 cross product.  The first
    iteration makes Q − 1 HVPs: v_{−1} = 0, so its first GD step is η b_0 without a product (not with
    ``v_init="randn"``).  No HVP follows the last GD step (the reference's discarded one is not made).

    η is a constant (GD's step); lr_x and lr_y accept schedules.  η and the step sizes come from the
    problem's presets or the user; the library only defaults T = 10, Q = 5 (the HC setting).

    Reference defaults (algorithms.md §3.1):

        ======  =========================  =====  ===========  ====
                T / Q                      η      λ / θ        B
        Syn     5 / 5                      1e-5   1 / 1e-5     —
        HC      10 / 5                     0.05   500 / 0.1    full
        Stoc    6 / 9 (fresh batch/HVP)    0.1    100 / 0.1    256
        ======  =========================  =====  ===========  ====
    """

    name: ClassVar[str] = "amigo_gd"
    required: ClassVar[tuple[str, ...]] = ("lr_x", "lr_y", "eta")
    defaults: ClassVar[Mapping[str, Any]] = {"inner_steps": 10, "v_steps": 5}

    eta: Optional[float] = None
    v_steps: Optional[int] = None

    checks: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "quadratic": {"max_iter": 200, "reduction": 1e3},
        "synthetic": {"max_iter": 250, "reduction": 1e3},
        "counts": {"options": {"v_steps": 4}},
    }

    def _check_options(self) -> None:
        owner = type(self).__name__
        if self.eta is not None:
            check_positive(owner, "eta", self.eta)
        if self.v_steps is not None:
            check_int(owner, "v_steps", self.v_steps, 1)
        if self.freeze_x_first:
            raise ValueError(f"{owner}: freeze_x_first needs an epoch-based v-solver (LancBiO); GD has no epochs.")


    def expected_hvps(self, opts: Mapping[str, Any], iterations: int) -> float:
        """Q per iteration, less the skipped product of the first call when v starts at exactly 0."""
        if not iterations:
            return 0.0
        skipped = 1 if self.v_init == "zeros" else 0
        return float(opts["v_steps"] * iterations - skipped)

    def make_v_solver(self, opts: Mapping[str, Any]) -> GD:
        return GD(eta=opts["eta"], steps=opts["v_steps"], warm_start=True)


def amigo_gd(**options: Any) -> AmIGOGD:
    """Configure AmIGO-GD; see ``AmIGOGD`` for the options and defaults."""
    return AmIGOGD.create(**options)
