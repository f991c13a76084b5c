"""SubBiO's v-solver: the Galerkin minimiser of m(v) = ½ vᵀA v − bᵀv over a two-dimensional subspace
(SubBiO: Yang, Gao & Yuan, "LancBiO: dynamic Lanczos-aided bilevel optimization via Krylov subspace",
ICLR 2025).

Per call, with η = ``eta`` and ε = ``eps``::

    p  ← v_prev − η A v_prev                       (1 matvec; p = 0 without a product when v_prev = 0)
    w1 ← b/‖b‖;  w2 ← p − (w1ᵀp) w1                (Gram–Schmidt, applied twice for accuracy)
    if p = 0 or ‖w2‖ ≤ ε‖p‖:  W = [w1]             (one-dimensional; event "collinear" when p ≠ 0)
    else:                     W = [w1, w2/‖w2‖]
    H  ← Wᵀ(A W), symmetrised (H + Hᵀ)/2            (2 matvecs; 1 in one dimension)
    z  ← H⁻¹ (‖b‖, 0)ᵀ                              (Cholesky in float64, whatever b's dtype)
    v  ← W z

The warm start enters only through p: if v_{k−1} ∈ K_n(A, b) then S_k ⊂ K_{n+1}(A, b).

Oracle cost per call (reported exactly in ``SolveInfo.matvecs``): 3 matvecs (documented cost); 2 when the
subspace is one-dimensional because p ∥ b; 1 on a call from v_prev = 0 (the first call of a run
started without v0); 0 when b = 0, where v = 0 is the exact answer (event "zero_rhs").

Guards: H not positive definite or non-finite → the one-dimensional solve if w1ᵀA w1 > 0, else
v_prev is kept; event "indefinite" in both cases, with ``SolveInfo.curvature`` = λ_min(H) (H = WᵀAW is a
compression of A, so λ_min(H) ≤ 0 proves A is not positive definite) or bᵀAb/‖b‖².  A non-finite b or p keeps v_prev (event "nonfinite").

Reference defaults of the SubBiO experiments (Yang, Gao & Yuan, ICLR 2025):

    ======  =====  ===  ==================================  =====
            η      T    λ / θ                               B
    Syn     1e-5   5    1 / 1e-5                            —
    HC      0.05   5    500 / 0.1                           full
    Stoc    0.1    3    100 / 0.1; 50 / 0.05 from k = 500   256 (one Hessian batch for all 3 HVPs)
    ======  =====  ===  ==================================  =====
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Mapping, Optional

import torch
from torch import Tensor

from .._validation import check_positive
from ..auto_steps import is_auto
from .base import LINEAR_SOLVERS, Curvature, LinearSolver, MatVec, SolveInfo, initial_v, known_zero


def _dot64_t(a: Tensor, b: Tensor) -> Tensor:
    # Entries of the 2x2 system are accumulated in float64 even for float32 vectors (kept on the device).
    return torch.dot(a.reshape(-1).to(torch.float64), b.reshape(-1).to(torch.float64))


@dataclass(frozen=True)
class Subspace2DState:
    """v: current estimate (v_prev of the next call).  v_is_zero: v is exactly 0, so p = 0 for free.
    dim: dimension of the subspace used by the last call (0 before the first call, or when no solve)."""

    v: Tensor
    v_is_zero: bool = True
    dim: int = 0
    #: the last call's projected system H = WᵀAW: (h11,) in one dimension, (h11, h12, h22) in two, () if none
    h: tuple = ()


@LINEAR_SOLVERS.register
@dataclass(frozen=True, kw_only=True)
class Subspace2D(LinearSolver):
    """Best point of span{b, (I − ηA) v_prev} for the quadratic model (SubBiO).

    Options: ``eta`` (η > 0; presettable, no library default); ``eps`` (ε ≥ 0, default 1e-10: the
    relative size of the component of p orthogonal to b below which the subspace is taken as
    one-dimensional).
    """

    name: ClassVar[str] = "subspace2d"
    presettable: ClassVar[tuple[str, ...]] = ("eta",)
    examples: ClassVar[Mapping[str, Any]] = {"eta": 0.1}

    eta: Optional[float] = None
    eps: float = 1e-10

    def validate(self, options: Mapping[str, Any]) -> None:
        if options["eta"] is not None and not is_auto(options["eta"]):  # "auto": filled per step by the AID loop
            object.__setattr__(self, "eta", check_positive("Subspace2D", "eta", options["eta"]))
        object.__setattr__(self, "eps", check_positive("Subspace2D", "eps", options["eps"], allow_zero=True))

    def spectrum(self, state: Subspace2DState) -> Optional[tuple[float, float]]:
        """The eigenvalues of the last call's H = WᵀAW (a compression of A: they lie in [λ_min, λ_max]);
        h11 = w1ᵀAw1 when the subspace was one-dimensional."""
        h = state.h
        if not h or not all(math.isfinite(t) for t in h):
            return None
        if len(h) == 1:
            return h[0], h[0]
        mean, half = 0.5 * (h[0] + h[2]), math.hypot(0.5 * (h[0] - h[2]), h[1])
        return mean - half, mean + half

    def curvature_fallback(self, events: Mapping[str, int], n: int) -> str:
        return f"SubBiO fell back to the one-dimensional solve along b, or kept the previous v ({n} times)"

    def init(self, b: Tensor, v0: Optional[Tensor] = None) -> Subspace2DState:
        self.require_resolved()
        v = initial_v(b, v0)
        return Subspace2DState(v=v, v_is_zero=known_zero(v0))

    def expected_matvecs(self, k: int) -> Optional[float]:
        return 3.0

    def total_matvecs(self, iterations: int, v0_zero: bool = True) -> float:
        """3K − 2 from v = 0 (the first call has p = 0 for free and a one-dimensional subspace: 1 product),
        3K from a non-zero v0.  (Collinear or zero right-hand sides, which make fewer, are not modelled.)"""
        if iterations <= 0:
            return 0.0
        return float(3 * iterations - (2 if v0_zero else 0))

    def solve(
        self,
        matvec: MatVec,
        b: Tensor,
        state: Subspace2DState,
        *,
        k: int = 0,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[Tensor, Subspace2DState, SolveInfo]:
        self.require_resolved()
        b = b.detach()
        # Host reads (three per call, one before each decision that spends or skips a product): ‖b‖ (b = 0 or
        # non-finite: no product at all); ‖p‖ with ‖w2‖ (p non-finite: stop; collinear: no product for w2);
        # H with its Cholesky solve.  The Gram–Schmidt coefficients and the entries of H stay on the device in
        # float64, the values the host had.
        bnorm_t = torch.linalg.vector_norm(b.to(torch.float64))
        bnorm = float(bnorm_t)
        if bnorm == 0.0:
            # The minimiser over any subspace is 0: the product for p would be wasted.
            return self._finish(state, torch.zeros_like(b), 0, 0, ("zero_rhs",))
        if not math.isfinite(bnorm):
            return self._finish(state, state.v, 0, 0, ("nonfinite",), keep=True)

        events: list[str] = []
        matvecs = 0
        curvature: Optional[Curvature] = None
        p: Optional[Tensor] = None
        if not state.v_is_zero:
            v_prev = state.v
            p = v_prev - self.eta * matvec(v_prev).detach()
            matvecs = 1
        w1 = b / bnorm
        w2: Optional[Tensor] = None
        if p is not None:
            w2 = p - _dot64_t(w1, p) * w1
            w2 = w2 - _dot64_t(w1, w2) * w1  # second pass: orthogonal to working precision
            pnorm, w2norm = torch.stack([torch.linalg.vector_norm(p.to(torch.float64)),
                                         torch.linalg.vector_norm(w2.to(torch.float64))]).tolist()
            if not math.isfinite(pnorm):
                return self._finish(state, state.v, matvecs, 0, ("nonfinite",), keep=True)
            if not pnorm > 0.0:
                w2 = None
            elif w2norm <= self.eps * pnorm or w2norm == 0.0:
                w2 = None
                events.append("collinear")
            else:
                w2 = w2 / w2norm

        aw1 = matvec(w1).detach()
        matvecs += 1
        h11_t = _dot64_t(w1, aw1)
        if w2 is not None:
            aw2 = matvec(w2).detach()
            matvecs += 1
            h12_t = 0.5 * (_dot64_t(w1, aw2) + _dot64_t(w2, aw1))  # symmetrise H
            h22_t = _dot64_t(w2, aw2)
            chol, info = torch.linalg.cholesky_ex(torch.stack([h11_t, h12_t, h12_t, h22_t]).reshape(2, 2))
            rhs = torch.stack([bnorm_t, torch.zeros_like(bnorm_t)]).reshape(2, 1)
            z_t = torch.cholesky_solve(rhs, chol).reshape(-1)  # (read only when the factorisation succeeded)
            h11, h12, h22, failed, finite, *z = torch.cat([
                torch.stack([h11_t, h12_t, h22_t, info.to(torch.float64), torch.isfinite(chol).all().to(torch.float64)]),
                z_t]).tolist()
            if failed == 0 and finite:
                if all(math.isfinite(t) for t in z):
                    return self._finish(state, z[0] * w1 + z[1] * w2, matvecs, 2, tuple(events),
                                        h=(h11, h12, h22))
            events.append("indefinite")
            if all(math.isfinite(t) for t in (h11, h12, h22)):
                h = torch.tensor([[h11, h12], [h12, h22]], dtype=torch.float64)  # host values, on the CPU
                lowest = float(torch.linalg.eigvalsh(h)[0])  # H = WᵀAW: its eigenvalues lie in [λ_min, λ_max]
                curvature = Curvature("SubBiO: the smallest eigenvalue of the 2×2 system H = WᵀAW", lowest)
        else:
            h11 = float(h11_t)
        # One-dimensional solve: the exact line search along b, z = ‖b‖ / (w1ᵀA w1).
        if math.isfinite(h11) and h11 > 0.0:
            return self._finish(state, (bnorm / h11) * w1, matvecs, 1, tuple(events), curvature=curvature, h=(h11,))
        if "indefinite" not in events:
            events.append("indefinite")
        if curvature is None and math.isfinite(h11):
            curvature = Curvature("SubBiO: the curvature bᵀAb/‖b‖² along b", h11)
        return self._finish(state, state.v, matvecs, 0, tuple(events), keep=True, curvature=curvature, h=(h11,))

    @staticmethod
    def _finish(
        state: Subspace2DState, v: Tensor, matvecs: int, dim: int, events: tuple[str, ...], keep: bool = False,
        curvature: Optional[Curvature] = None, h: tuple = (),
    ) -> tuple[Tensor, Subspace2DState, SolveInfo]:
        if keep:
            new_state = replace(state, dim=dim, h=h)
        else:
            new_state = replace(state, v=v, v_is_zero=dim == 0, dim=dim, h=h)  # only the zero_rhs answer is exactly 0
        return new_state.v, new_state, SolveInfo(matvecs=matvecs, events=events, curvature=curvature)


def subspace2d(**options: Any) -> Subspace2D:
    """Configure SubBiO's two-dimensional subspace v-solver; see ``Subspace2D`` for the options."""
    return Subspace2D(**options)
