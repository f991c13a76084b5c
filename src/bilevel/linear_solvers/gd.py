"""AmIGO-GD: warm-started gradient descent on m(v) = ½ vᵀA v − bᵀv (Arbel & Mairal, "Amortized implicit
differentiation for stochastic bilevel optimization", ICLR 2022: AmIGO with a GD inner solver).

Update rule per call (η = ``eta``, Q = ``steps``), from v = state.v (or 0 when ``warm_start=False``)::

    repeat Q times:  v ← v − η (A v − b)          (1 matvec each)

SOBA's v-update (Dagréou, Ablin, Vaiter & Moreau, "A framework for bilevel optimization that enables
stochastic and global variance reduction algorithms", NeurIPS 2022) is this solver with ``steps=1`` and a
warm start.

Oracle cost per call: Q matvecs.  When v is known to be exactly zero (a run started without v0, or every
call with ``warm_start=False``) the first product is skipped, since A·0 = 0: that call makes Q − 1.
No product is made after the last step (the reference's discarded extra HVP is not reproduced).
A non-finite result (η too large for A) is returned as is and reported as event ``"nonfinite"``.
Curvature evidence: every product gives the Rayleigh quotient vᵀAv/‖v‖² of the iterate it is taken at; a
quotient ≤ 0 proves A is not positive definite (event ``"indefinite"``, ``SolveInfo.curvature``).  The
quotients are kept on the device and read with the call's one finiteness read-back.

Reference defaults of the LancBiO experiments (Yang, Gao & Yuan, ICLR 2025) for AmIGO-GD (SOBA uses Q = 1):

    ======  =========================  =====  ===========  ====
            T / Q                      η      λ / θ        B
    Syn     5 / 5                      1e-5   1 / 1e-5     —
    HC      10 / 5                     0.05   500 / 0.1    full
    Stoc    6 / 9 (fresh batch/HVP)    0.1    100 / 0.1    256
    ======  =========================  =====  ===========  ====
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Mapping, Optional

import torch
from torch import Tensor

from .._validation import check_bool
from .base import (
    LINEAR_SOLVERS,
    Curvature,
    LinearSolver,
    MatVec,
    SolveInfo,
    initial_v,
    known_zero,
    read_back_quotients,
    track_quotients,
)


@dataclass(frozen=True)
class GDState:
    """v: current estimate.  v_is_zero: v is exactly 0, so the first A v is skipped."""

    v: Tensor
    v_is_zero: bool = True
    #: (smallest, largest) Rayleigh quotient vᵀAv/‖v‖² of the last call's products, () if it made none
    quotients: tuple = ()


@LINEAR_SOLVERS.register
@dataclass(frozen=True, kw_only=True)
class GD(LinearSolver):
    """Gradient descent on the quadratic model, ``steps`` (Q) steps of size ``eta`` (η) per call.

    Options: ``eta`` (η > 0; presettable, no library default; converges on a fixed SPD A for
    η < 2/λ_max); ``steps`` (Q ≥ 1; presettable, library default 5); ``warm_start`` (default True; False
    restarts from 0 every call).
    """

    name: ClassVar[str] = "gd"
    presettable: ClassVar[tuple[str, ...]] = ("eta", "steps")
    defaults: ClassVar[Mapping[str, Any]] = {"steps": 5}
    examples: ClassVar[Mapping[str, Any]] = {"eta": 0.1}

    eta: Optional[float] = None
    steps: Optional[int] = None
    warm_start: bool = True

    def validate(self, options: Mapping[str, Any]) -> None:
        self._check_eta_steps(options)
        check_bool("GD", "warm_start", options["warm_start"])

    def init(self, b: Tensor, v0: Optional[Tensor] = None) -> GDState:
        self.require_resolved()
        v = initial_v(b, v0)
        return GDState(v=v, v_is_zero=known_zero(v0))

    def expected_matvecs(self, k: int) -> Optional[float]:
        self.require_resolved()
        # Cold starts always begin at 0, so their first product is always skipped.
        return float(self.steps if self.warm_start else self.steps - 1)

    def total_matvecs(self, iterations: int, v0_zero: bool = True) -> float:
        """Q·K − 1 warm-started from v = 0 (the first step from 0 needs no product; SOBA, Q = 1: K − 1),
        Q·K from a non-zero v0, (Q − 1)·K with ``warm_start=False``."""
        self.require_resolved()
        if iterations <= 0:
            return 0.0
        if not self.warm_start:
            return float((self.steps - 1) * iterations)
        return float(self.steps * iterations - (1 if v0_zero else 0))

    def spectrum(self, state: GDState) -> Optional[tuple[float, float]]:
        """The extreme Rayleigh quotients of the last call's iterates (in [λ_min, λ_max]; when η > 2/λ_max the
        iterates turn towards the top eigenvector, so the largest nears λ_max exactly when it matters)."""
        return state.quotients or None

    def solve(
        self,
        matvec: MatVec,
        b: Tensor,
        state: GDState,
        *,
        k: int = 0,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[Tensor, GDState, SolveInfo]:
        self.require_resolved()
        b = b.detach()
        eta = self.eta
        matvecs = 0
        if state.v_is_zero or not self.warm_start:
            v = eta * b  # first step from 0: v − η(A·0 − b) = η b, no product
            first = 1
        else:
            v = state.v
            first = 0
        quotients = None  # the smallest and largest vᵀAv/‖v‖² met, kept on the device
        for _ in range(first, self.steps):
            av = matvec(v).detach()
            quotients = track_quotients(quotients, v, av)
            v = v - eta * (av - b)
            matvecs += 1
        smallest, largest = quotients if quotients is not None else (None, None)
        finite, nonzero, curv, extremes = read_back_quotients(v, smallest, largest)
        events = () if finite else ("nonfinite",)
        curvature = None
        if curv is not None:
            events += ("indefinite",)
            curvature = Curvature("GD: the Rayleigh quotient vᵀAv/‖v‖² at an iterate", curv)
        # v = η b ≠ 0 unless b = 0; keep the flag honest in that corner case too.
        new_state = replace(state, v=v, v_is_zero=not nonzero, quotients=extremes)
        return v, new_state, SolveInfo(matvecs=matvecs, events=events, curvature=curvature)


def gd(**options: Any) -> GD:
    """Configure gradient descent on the quadratic model; see ``GD`` for the options."""
    return GD(**options)
