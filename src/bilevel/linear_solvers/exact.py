"""Exact dense solve of A v = b: a diagnostic and ground truth for small problems.

Per call::

    A ← [A e_1, …, A e_n]            (n = dy matvecs with the unit vectors; symmetrised (A + Aᵀ)/2)
    v ← A⁻¹ b                        (Cholesky; if A is not numerically SPD, a general LU solve,
                                      event "indefinite"; if A is singular, the pseudo-inverse, "singular";
                                      ``SolveInfo.curvature`` = λ_min(A) in both cases)

The dense matrix and its factorisation are formed in float64 whatever b's dtype (then cast back), so
the answer is as accurate as the products allow.  Cost per call: dy matvecs, O(dy²) memory and O(dy³)
time, nothing amortised: use it to check other v-solvers or on problems with a few thousand y-entries
at most (``max_dim``).  No published bilevel algorithm uses it and it has no reference defaults per
experiment; it is the dense answer that the other v-solvers are checked against on small test problems
(the full-size synthetic ground truth uses tolerance-driven CG instead).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Mapping, Optional

import torch
from torch import Tensor

from .._validation import check_int
from .base import LINEAR_SOLVERS, Curvature, LinearSolver, MatVec, SolveInfo, initial_v


@dataclass(frozen=True)
class ExactState:
    """v: the last solution (not used as a start)."""

    v: Tensor


@LINEAR_SOLVERS.register
@dataclass(frozen=True, kw_only=True)
class Exact(LinearSolver):
    """Build A densely with dy matvecs and solve by Cholesky.

    Options: ``max_dim`` (default 4096): ``solve`` refuses right-hand sides with more entries.
    """

    name: ClassVar[str] = "exact"

    max_dim: int = 4096

    def validate(self, options: Mapping[str, Any]) -> None:
        check_int("Exact", "max_dim", options["max_dim"], minimum=1)

    def curvature_fallback(self, events: Mapping[str, int], n: int) -> str:
        return f"the dense solve used LU (or the pseudo-inverse) instead of Cholesky ({n} times)"

    def init(self, b: Tensor, v0: Optional[Tensor] = None) -> ExactState:
        return ExactState(v=initial_v(b, v0))

    def expected_matvecs(self, k: int) -> Optional[float]:
        return None  # dy products: fixed by the problem, not by the configuration

    def total_matvecs(self, iterations: int, v0_zero: bool = True) -> float:
        """Refused (ValueError): every call makes dy products, fixed by the problem, not the configuration."""
        raise ValueError(
            "Exact: every call makes dy products (one per entry of b), so the total depends on the problem, "
            "not on the configuration: it is iterations × dy."
        )

    def solve(
        self,
        matvec: MatVec,
        b: Tensor,
        state: ExactState,
        *,
        k: int = 0,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[Tensor, ExactState, SolveInfo]:
        n = b.numel()
        if n > self.max_dim:
            raise ValueError(
                f"Exact: b has {n} entries, more than max_dim = {self.max_dim}; the dense solve needs {n} "
                f"matvecs and a {n}x{n} float64 matrix ({readable_bytes(8.0 * n * n)}). Use CG or Lanczos for a "
                f"system this large, or raise max_dim if you really want the dense solve."
            )
        b = b.detach()
        cols = []
        for j in range(n):
            e = torch.zeros(n, dtype=b.dtype, device=b.device)
            e[j] = 1
            cols.append(matvec(e.reshape(b.shape)).detach().reshape(-1).to(torch.float64))
        a = torch.stack(cols, dim=1)
        a = 0.5 * (a + a.T)  # autodiff HVPs are symmetric only up to rounding
        rhs = b.reshape(-1, 1).to(torch.float64)
        events: tuple[str, ...] = ()
        if not bool(torch.isfinite(a).all()):
            # Nothing sensible can be solved: keep the previous answer.
            return state.v, replace(state), SolveInfo(matvecs=n, events=("nonfinite",))
        chol, info = torch.linalg.cholesky_ex(a)
        curvature = None
        if int(info) == 0:
            x = torch.cholesky_solve(rhs, chol)
        else:
            curvature = Curvature("Exact: the smallest eigenvalue of A", float(torch.linalg.eigvalsh(a)[0]))
            try:
                x = torch.linalg.solve(a, rhs)
                events = ("indefinite",)
            except RuntimeError:  # torch.linalg.LinAlgError: exactly singular
                x = torch.linalg.pinv(a) @ rhs
                events = ("indefinite", "singular")
        v = x.reshape(b.shape).to(b.dtype)
        return v, replace(state, v=v), SolveInfo(matvecs=n, events=events, curvature=curvature)


def readable_bytes(size: float) -> str:
    """``size`` bytes in decimal units, three significant digits: 5.42e+13 → "54.2 TB"."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if size < 1000:
            return f"{size:.3g} {unit}"
        size /= 1000
    return f"{size:.3g} PB"


def exact(**options: Any) -> Exact:
    """Configure the dense exact solve (diagnostics, small problems); see ``Exact`` for the options."""
    return Exact(**options)
