"""AmIGO-CG: warm-started linear conjugate gradients on ``A v = b`` (Arbel & Mairal, "Amortized implicit
differentiation for stochastic bilevel optimization", ICLR 2022: AmIGO with a CG inner solver).

Update rule per call (Q = ``steps``), from the warm start v (state.v, or 0 when ``warm_start=False``)::

    r ← b − A v                                   (1 matvec; skipped when v is known to be 0: r = b)
    p ← r
    repeat Q times:
        z ← A p;  a ← rᵀr / pᵀz;  v ← v + a p      (1 matvec)
        r_new ← r − a z;  β ← r_newᵀr_new / rᵀr;  p ← r_new + β p;  r ← r_new

Oracle cost per call: Q + 1 matvecs (Q when starting from zero: the first call of a run started without
v0, and every call with ``warm_start=False``).  Early stops make fewer: ``rtol`` (‖r‖ ≤ rtol‖b‖), an
exactly zero residual (event ``"converged"``), a non-positive or non-finite curvature pᵀz (event
``"indefinite"``) or a non-finite residual (event ``"nonfinite"``); the last two keep the last good v.
A finite pᵀz ≤ 0 is a Rayleigh quotient of A ≤ 0: it proves A is not positive definite and is reported
as ``SolveInfo.curvature`` (pᵀAp/‖p‖², one extra dot product on that event only).

Reference defaults of the LancBiO experiments (Yang, Gao & Yuan, ICLR 2025), Q = ``steps``:

    ======  =====  =====================================  ======================
            T / Q  λ / θ                                  B
    Syn     5 / 5  1 / 1e-5                               —
    HC      10 / 5 500 / 0.1 (Fashion-MNIST: λ = 100)     full
    Stoc    6 / 9  100 / 0.1                              256 (one Hessian batch per CG run)
    ======  =====  =====================================  ======================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Mapping, Optional

import torch
from torch import Tensor

from .._validation import check_bool, check_int, check_positive
from ..auto_steps import tridiagonal_extremes
from .base import LINEAR_SOLVERS, Curvature, LinearSolver, MatVec, SolveInfo, initial_v, known_zero


def _dot(a: Tensor, b: Tensor) -> float:
    return float(torch.dot(a.reshape(-1), b.reshape(-1)))


def _dot_t(a: Tensor, b: Tensor) -> Tensor:
    """aᵀb on the device, as float64 (the host's float of it, without the read)."""
    return torch.dot(a.reshape(-1), b.reshape(-1)).to(torch.float64)


@dataclass(frozen=True)
class CGState:
    """v: current estimate.  v_is_zero: v is exactly 0, so A v is skipped.
    residual_norm: ‖r‖ of the CG recurrence at the end of the last call (None before the first)."""

    v: Tensor
    v_is_zero: bool = True
    residual_norm: Optional[float] = None
    #: the last call's CG coefficients (a_i, β_i) of its completed steps (the Lanczos matrix of its Krylov space)
    coefficients: tuple = ()


@LINEAR_SOLVERS.register
@dataclass(frozen=True, kw_only=True)
class CG(LinearSolver):
    """Linear conjugate gradients, ``steps`` (Q) iterations per call, warm-started from ``state.v``.

    Options: ``steps`` (Q ≥ 1; presettable, library default 5); ``rtol`` (optional early stop on
    ‖r‖ ≤ rtol‖b‖, default None: always Q iterations, as in AmIGO); ``warm_start`` (default True; False
    restarts from 0 every call).
    """

    name: ClassVar[str] = "cg"
    presettable: ClassVar[tuple[str, ...]] = ("steps",)
    defaults: ClassVar[Mapping[str, Any]] = {"steps": 5}

    steps: Optional[int] = None
    rtol: Optional[float] = None
    warm_start: bool = True

    def validate(self, options: Mapping[str, Any]) -> None:
        if options["steps"] is not None:
            check_int("CG", "steps", options["steps"], minimum=1)
        if options["rtol"] is not None:
            object.__setattr__(self, "rtol", check_positive("CG", "rtol", options["rtol"]))
        check_bool("CG", "warm_start", options["warm_start"])

    def spectrum(self, state: CGState) -> Optional[tuple[float, float]]:
        """Extreme Ritz values of the Lanczos matrix of the last call's CG run (Golub & Van Loan, Matrix
        Computations, §11.3): with step sizes a_i and ratios β_i = ‖r_{i+1}‖²/‖r_i‖²,
        T_ii = 1/a_i + β_{i−1}/a_{i−1} (β_0/a_0 = 0) and T_{i,i+1} = sqrt(β_i)/a_i."""
        c = state.coefficients
        if not c:
            return None
        diag = [1.0 / c[0][0]] + [1.0 / c[i][0] + c[i - 1][1] / c[i - 1][0] for i in range(1, len(c))]
        off = [math.sqrt(max(c[i][1], 0.0)) / c[i][0] for i in range(len(c) - 1)]
        return tridiagonal_extremes(diag, off)

    def curvature_fallback(self, events: Mapping[str, int], n: int) -> str:
        return f"CG stopped at the non-positive curvature and kept its last v ({n} times)"

    def init(self, b: Tensor, v0: Optional[Tensor] = None) -> CGState:
        self.require_resolved()
        v = initial_v(b, v0)
        return CGState(v=v, v_is_zero=known_zero(v0))

    def expected_matvecs(self, k: int) -> Optional[float]:
        self.require_resolved()
        if self.rtol is not None:
            return None  # the early stop makes the count data-dependent
        # Warm-started runs pay the residual product (the very first call from v = 0 pays Q).
        return float(self.steps + 1 if self.warm_start else self.steps)

    def total_matvecs(self, iterations: int, v0_zero: bool = True) -> float:
        """(Q + 1)·K − 1 warm-started from v = 0 (the first call needs no residual product), (Q + 1)·K from
        a non-zero v0, Q·K with ``warm_start=False``.  Refused (ValueError) with ``rtol``: data-dependent."""
        self.require_resolved()
        if self.rtol is not None:
            raise ValueError(
                f"CG: with rtol={self.rtol!r} the number of CG iterations depends on the data; the product count "
                f"is only known without rtol (at most Q + 1 = {self.steps + 1} per call)."
            )
        if iterations <= 0:
            return 0.0
        if not self.warm_start:
            return float(self.steps * iterations)
        return float((self.steps + 1) * iterations - (1 if v0_zero else 0))

    def solve(
        self,
        matvec: MatVec,
        b: Tensor,
        state: CGState,
        *,
        k: int = 0,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[Tensor, CGState, SolveInfo]:
        self.require_resolved()
        b = b.detach()
        events: list[str] = []
        from_zero = state.v_is_zero or not self.warm_start
        if from_zero:
            v, r, matvecs = torch.zeros_like(b), b, 0  # A·0 = 0: no product needed
        else:
            v = state.v
            r, matvecs = b - matvec(v).detach(), 1
        # Host reads: one at the start (rᵀr, and ‖b‖ for rtol) and one per CG step (pᵀz with the new rᵀr).  Each
        # step's read decides whether the next product is spent (an indefinite or non-finite pᵀAp, a non-finite or
        # converged residual end the call without it), so the products and v are those of plain CG; the step's
        # update of r runs on the device before the read, with a = rᵀr / pᵀz in float64 as on the host.
        rr_t = _dot_t(r, r)
        if self.rtol is not None:
            rr, b_norm = torch.stack([rr_t, torch.linalg.vector_norm(b).to(torch.float64)]).tolist()
            stop = self.rtol * b_norm
        else:
            rr, stop = float(rr_t), 0.0
        moved = False
        curvature = None
        coefficients: list[tuple[float, float]] = []
        if not math.isfinite(rr):
            events.append("nonfinite")
        elif rr == 0.0 or math.sqrt(rr) <= stop:
            events.append("converged")
        else:
            p = r
            for _ in range(self.steps):
                z = matvec(p).detach()
                matvecs += 1
                pz_t = _dot_t(p, z)
                r_new = r - (rr_t / pz_t) * z  # (unused when the read below ends the call)
                rr_new_t = _dot_t(r_new, r_new)
                pz, rr_new = torch.stack([pz_t, rr_new_t]).tolist()
                if not (math.isfinite(pz) and pz > 0.0):
                    events.append("indefinite")  # A is not SPD along p: keep the last good v
                    if math.isfinite(pz):
                        pp = _dot(p, p)
                        curvature = Curvature("CG: the curvature pᵀAp/‖p‖² along a search direction",
                                              pz / pp if pp > 0 else pz)
                    break
                a = rr / pz
                if not math.isfinite(rr_new):
                    events.append("nonfinite")
                    break
                v, r, moved = v + a * p, r_new, True
                coefficients.append((a, rr_new / rr))
                if rr_new == 0.0 or math.sqrt(rr_new) <= stop:
                    rr = rr_new
                    events.append("converged")
                    break
                p = r + (rr_new / rr) * p
                rr, rr_t = rr_new, rr_new_t
        new_state = replace(
            state, v=v, v_is_zero=from_zero and not moved, residual_norm=math.sqrt(rr) if math.isfinite(rr) else rr,
            coefficients=tuple(coefficients),
        )
        return v, new_state, SolveInfo(matvecs=matvecs, events=tuple(events), curvature=curvature)


def cg(**options: Any) -> CG:
    """Configure linear conjugate gradients; see ``CG`` for the options."""
    return CG(**options)
