"""The v-solver interface: approximate ``v ≈ A⁻¹ b`` for SPD ``A`` given only through ``matvec``.

A v-solver is an immutable configuration.  ``init(b, v0)`` makes its state; ``solve(matvec, b, state,
k=...)`` advances it by the work of one outer iteration and returns ``(v, state, info)``.  The state
carries whatever the method amortises across outer iterations (the warm start, a Krylov basis, a
tridiagonal matrix, restart flags); ``state.v`` is always the current estimate.  Inside a bilevel loop
``A`` and ``b`` change between calls (``A_k = ∇²_yy g(x_k, y_k)``, ``b_k = ∇_y f(x_k, y_k)``); on a fixed
system, repeated calls converge to ``A⁻¹ b`` (``linear_solve``).

States may hold preallocated buffers that ``solve`` updates in place: a state belongs to one run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import Tensor

from .._validation import CheckedOptions

MatVec = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class SolveInfo:
    """What one ``solve`` call did.

    matvecs: products with A made by this call (the HVP count inside a bilevel loop).
    events: notable things, e.g. ``"restart"``, ``"breakdown"``, ``"indefinite"``, ``"nonfinite"``.
    epoch_step: for epoch-based solvers (Lanczos), the basis size j after this call, else None.
    """

    matvecs: int
    events: tuple[str, ...] = ()
    epoch_step: Optional[int] = None


class LinearSolver(ABC, metaclass=CheckedOptions):
    """Base class of the v-solvers.  Subclasses are frozen dataclasses with keyword-only options."""

    name: ClassVar[str] = "linear_solver"

    @abstractmethod
    def init(self, b: Tensor, v0: Optional[Tensor] = None) -> Any:
        """State for a run whose first right-hand side looks like ``b`` (v starts at ``v0`` or 0)."""

    @abstractmethod
    def solve(
        self, matvec: MatVec, b: Tensor, state: Any, *, k: int = 0, generator: Optional[torch.Generator] = None
    ) -> tuple[Tensor, Any, SolveInfo]:
        """One outer iteration's worth of work on ``A v = b``; ``k`` is the 0-based outer iteration."""

    def expected_matvecs(self, k: int) -> Optional[float]:
        """Documented (expected) products with A at iteration k, if fixed by the configuration."""
        return None


def known_zero(v0: Optional[Tensor]) -> bool:
    """Whether the initial v is exactly zero (then the first product with it can be skipped)."""
    return v0 is None or not bool(torch.any(v0 != 0))


def initial_v(b: Tensor, v0: Optional[Tensor]) -> Tensor:
    """A fresh copy of ``v0`` (checked against ``b``), or zeros like ``b``."""
    if v0 is None:
        return torch.zeros_like(b)
    if v0.shape != b.shape or v0.dtype != b.dtype or v0.device != b.device:
        raise ValueError(
            f"v0 must match b in shape, dtype and device; got v0 {tuple(v0.shape)} {v0.dtype} on {v0.device}, "
            f"b {tuple(b.shape)} {b.dtype} on {b.device}."
        )
    return v0.detach().clone()


@dataclass(frozen=True)
class LinearSolveResult:
    v: Tensor
    calls: int
    matvecs: int
    residual: float
    converged: bool
    events: tuple[str, ...]


def linear_solve(
    matvec: MatVec,
    b: Tensor,
    solver: LinearSolver,
    v0: Optional[Tensor] = None,
    *,
    rtol: float = 1e-10,
    max_calls: int = 1000,
    generator: Optional[torch.Generator] = None,
) -> LinearSolveResult:
    """Solve a *fixed* SPD system ``A v = b`` by calling ``solver.solve`` until ``‖A v − b‖ ≤ rtol‖b‖``.

    The front door for using a v-solver on its own (``solve(matvec, b, init)`` in jaxopt's style).
    The stopping test costs one extra product per call, not included in ``matvecs``.
    """
    state = solver.init(b, v0)
    bnorm = float(torch.linalg.vector_norm(b))
    matvecs, events, res = 0, [], float("inf")
    for call in range(1, max_calls + 1):
        v, state, info = solver.solve(matvec, b, state, k=call - 1, generator=generator)
        matvecs += info.matvecs
        events.extend(info.events)
        res = float(torch.linalg.vector_norm(matvec(v) - b))
        if res <= rtol * bnorm:
            return LinearSolveResult(v, call, matvecs, res, True, tuple(events))
    return LinearSolveResult(v, max_calls, matvecs, res, False, tuple(events))
