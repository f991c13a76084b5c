"""AmIGO-GD: warm-started gradient descent on m(v) = ½ vᵀA v − bᵀv (Arbel & Mairal 2022, AmIGO).

Update rule per call (η = ``eta``, Q = ``steps``), from v = state.v (or 0 when ``warm_start=False``)::

    repeat Q times:  v ← v − η (A v − b)          (1 matvec each)

SOBA's v-update (Dagréou et al. 2022) is this solver with ``steps=1`` and a warm start.

Oracle cost per call: Q matvecs.  When v is known to be exactly zero (a run started without v0, or every
call with ``warm_start=False``) the first product is skipped, since A·0 = 0: that call makes Q − 1.
No product is made after the last step (the reference's discarded extra HVP is not reproduced).
A non-finite result (η too large for A) is returned as is and reported as event ``"nonfinite"``.

Reference defaults (algorithms.md §3.1 AmIGO-GD; §3.3 SOBA uses Q = 1):

    ======  =========================  =====  ===========  ====
            T / Q                      η      λ / θ        B
    Syn     5 / 5                      1e-5   1 / 1e-5     —
    HC      10 / 5                     0.05   500 / 0.1    full
    Stoc    6 / 9 (fresh batch/HVP)    0.1    100 / 0.1    256
    ======  =========================  =====  ===========  ====
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import Tensor

from .._validation import check_bool, check_int, check_positive
from .base import LinearSolver, MatVec, SolveInfo, initial_v, known_zero


@dataclass
class GDState:
    """v: current estimate.  v_is_zero: v is exactly 0, so the first A v is skipped."""

    v: Tensor
    v_is_zero: bool = True


@dataclass(frozen=True, kw_only=True)
class GD(LinearSolver):
    """Gradient descent on the quadratic model, ``steps`` (Q) steps of size ``eta`` (η) per call.

    Options: ``eta`` (η > 0, required; converges on a fixed SPD A for η < 2/λ_max); ``steps`` (Q ≥ 1,
    default 5); ``warm_start`` (default True; False restarts from 0 every call).
    """

    name: ClassVar[str] = "gd"

    eta: float
    steps: int = 5
    warm_start: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "eta", check_positive("GD", "eta", self.eta))
        check_int("GD", "steps", self.steps, minimum=1)
        check_bool("GD", "warm_start", self.warm_start)

    def init(self, b: Tensor, v0: Optional[Tensor] = None) -> GDState:
        v = initial_v(b, v0)
        return GDState(v=v, v_is_zero=known_zero(v0))

    def expected_matvecs(self, k: int) -> Optional[float]:
        # Cold starts always begin at 0, so their first product is always skipped.
        return float(self.steps if self.warm_start else self.steps - 1)

    def solve(
        self,
        matvec: MatVec,
        b: Tensor,
        state: GDState,
        *,
        k: int = 0,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[Tensor, GDState, SolveInfo]:
        b = b.detach()
        eta = self.eta
        matvecs = 0
        if state.v_is_zero or not self.warm_start:
            v = eta * b  # first step from 0: v − η(A·0 − b) = η b, no product
            first = 1
        else:
            v = state.v
            first = 0
        for _ in range(first, self.steps):
            v = v - eta * (matvec(v).detach() - b)
            matvecs += 1
        events = () if bool(torch.isfinite(v).all()) else ("nonfinite",)
        state.v = v
        # v = η b ≠ 0 unless b = 0; keep the flag honest in that corner case too.
        state.v_is_zero = not bool(torch.any(v != 0))
        return v, state, SolveInfo(matvecs=matvecs, events=events)
