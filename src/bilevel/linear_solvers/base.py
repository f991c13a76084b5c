"""The v-solver interface: approximate ``v ≈ A⁻¹ b`` for SPD ``A`` given only through ``matvec``.

A v-solver is an immutable configuration (a frozen dataclass with keyword-only options).  ``init(b, v0)``
makes its state; ``solve(matvec, b, state, k=...)`` advances it by the work of one outer iteration and
returns ``(v, new_state, info)``.  The state carries whatever the method amortises across outer
iterations (the warm start, a Krylov basis, a tridiagonal matrix, restart flags); ``state.v`` is always
the current estimate.  Inside a bilevel loop ``A`` and ``b`` change between calls
(``A_k = ∇²_yy g(x_k, y_k)``, ``b_k = ∇_y f(x_k, y_k)``); on a fixed system, repeated calls converge to
``A⁻¹ b`` (``linear_solve``).

States are frozen dataclasses and ``solve`` never modifies its input state or any tensor the state holds
(it returns a new state built with ``dataclasses.replace``): a state can be kept, compared, or stepped
twice (a branch) and both branches give the same result.  Lanczos keeps a preallocated basis buffer
shared copy-on-write between consecutive states (see ``LanczosState``).

Presettable options.  Some options are normally filled by a bilevel algorithm from the problem's presets
(e.g. ``GD.eta``); they may be ``None`` at construction ("not set yet").  ``resolved(values)`` fills each
``None`` option from ``values``, else from the class's library ``defaults``, and validates the result;
``init``/``solve`` refuse a solver whose ``presettable`` options are still ``None``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Optional

import torch
from torch import Tensor

from .._validation import Part, check_int, check_positive
from ..auto_steps import is_auto
from ..registry import Registry

MatVec = Callable[[Tensor], Tensor]

#: every v-solver class registers here (``@LINEAR_SOLVERS.register``); ``bilevel.linear_solvers`` discovers them
LINEAR_SOLVERS = Registry("v-solver", package="bilevel.linear_solvers", skip=("base",))

@dataclass(frozen=True)
class Curvature:
    """Evidence, seen by a v-solver in the course of its work (no extra products), that A is not positive
    definite, or not ⪰ μ_lb·I when a lower bound μ_lb is given.

    what: the quantity measured (e.g. "the smallest Ritz value of T_3", "pᵀAp/‖p‖² along a CG direction");
    value: its value; bound: the bound it failed (0 for positive definiteness, μ_lb otherwise).
    A Rayleigh quotient uᵀAu/‖u‖² ≤ 0 (and a Ritz value of one Hessian, which lies in [λ_min, λ_max]) proves
    that A is not positive definite; in the dynamic Lanczos basis T_j mixes the Hessians of several iterates,
    so there the evidence concerns those Hessians together.
    """

    what: str
    value: float
    bound: float = 0.0

    def describe(self) -> str:
        if self.bound:
            return f"{self.what} = {self.value:.3g} < mu_lb = {self.bound:g}"
        if self.value > 0:
            return f"{self.what} = {self.value:.3g} (positive but below the solver's pivot tolerance: singular)"
        return f"{self.what} = {self.value:.3g}"


@dataclass(frozen=True)
class SolveInfo:
    """What one ``solve`` call did.

    matvecs: products with A made by this call (the HVP count inside a bilevel loop).
    events: notable things, e.g. ``"restart"``, ``"breakdown"``, ``"indefinite"``, ``"nonfinite"``.
    epoch_step: for epoch-based solvers (``has_epochs``: Lanczos), the basis size j after this call, else None.
    curvature: ``Curvature`` evidence that A is not positive definite (or below ``mu_lb``) seen by this call,
    else None.  The estimate of a call with evidence is not trusted (``solve`` never reports ``converged``
    on it), and evidence in several consecutive iterations ends a run as ``not_strongly_convex``.
    """

    matvecs: int
    events: tuple[str, ...] = ()
    epoch_step: Optional[int] = None
    curvature: Optional[Curvature] = None


class LinearSolver(Part, ABC):
    """Base class of the v-solvers.  Subclasses are frozen dataclasses with keyword-only options; the
    option machinery (``presettable``, ``defaults``, ``examples``, ``validate``, ``resolved``) is the
    parts' (``_validation.Part``).

    - ``name``: the registry name.
    - ``has_epochs``: the solver works in restart epochs and reports ``SolveInfo.epoch_step``.
    """

    name: ClassVar[str] = "linear_solver"
    has_epochs: ClassVar[bool] = False
    #: False when the estimate is rebuilt from b every call (an initial v would have no effect)
    uses_initial_v: ClassVar[bool] = True

    def _check_eta_steps(self, options: Mapping[str, Any]) -> None:
        """The step η > 0 and the number of terms/steps Q ≥ 1 shared by GD and the Neumann solvers."""
        owner = type(self).__name__
        if options["eta"] is not None and not is_auto(options["eta"]):  # "auto": filled per step by the AID loop
            object.__setattr__(self, "eta", check_positive(owner, "eta", options["eta"]))
        if options["steps"] is not None:
            check_int(owner, "steps", options["steps"], minimum=1)


    # ---- the solver ------------------------------------------------------------------------------------
    @abstractmethod
    def init(self, b: Tensor, v0: Optional[Tensor] = None) -> Any:
        """State for a run whose first right-hand side looks like ``b`` (v starts at ``v0`` or 0)."""

    @abstractmethod
    def solve(
        self, matvec: MatVec, b: Tensor, state: Any, *, k: int = 0, generator: Optional[torch.Generator] = None
    ) -> tuple[Tensor, Any, SolveInfo]:
        """One outer iteration's worth of work on ``A v = b``; ``k`` is the 0-based outer iteration.
        Returns ``(v, new_state, info)``; ``state`` and its tensors are left unchanged."""

    # ---- declared costs and properties -----------------------------------------------------------------
    @property
    def random_cost(self) -> bool:
        """Whether the number of products per call is random (compare counts with their expectation)."""
        return False

    def expected_matvecs(self, k: int) -> Optional[float]:
        """Documented (expected) products with A at iteration k, if fixed by the configuration."""
        return None

    def total_matvecs(self, iterations: int, v0_zero: bool = True) -> float:
        """Documented (expected, when ``random_cost``) total products with A over ``iterations`` calls
        from ``init`` inside a bilevel loop; ``v0_zero``: the run starts from v = 0 (no ``v0``, or a zero one).
        Raises ``ValueError`` when the count is not fixed by the configuration."""
        raise ValueError(f"{type(self).__name__}: the number of products is not fixed by the configuration.")

    def budget_warnings(self, max_iter: int) -> list[str]:
        """Configuration problems that only show with a run length (the caller prefixes its label)."""
        return []

    def starts_epoch(self, state: Any, k: int) -> bool:
        """Whether the call ``solve(…, state, k=k)`` starts a new epoch on a new operator: with mini-batches
        and ``hessian_batch="epoch"`` the AID loop draws a new HVP batch exactly then and holds it for the
        epoch's other calls.  Default True: every call is its own epoch (a Krylov solver with restarts
        overrides it, so that its basis is built on one operator)."""
        return True

    def spectrum(self, state: Any) -> Optional[tuple[float, float]]:
        """(smallest, largest) Ritz value of A from the work of the call that made ``state`` (its projected
        system), computed from scalars the solver already has (no product); None when it has none (the
        default).  The automatic steps read it (``bilevel.auto_steps``)."""
        return None

    def curvature_fallback(self, events: Mapping[str, int], n: int) -> str:
        """What this solver did in the ``n`` calls with curvature evidence (``events``: the run's event
        counts), as a clause for run messages."""
        return f"its estimate was used as computed in those {n} iterations (no fallback)"


def rayleigh(u: Tensor, au: Tensor) -> Tensor:
    """uᵀAu/‖u‖² as a 0-dim tensor, +inf when u = 0: no host sync (callers keep the smallest and read it
    with the one read-back they already make).  ≤ 0 proves that A is not positive definite."""
    u, au = u.reshape(-1), au.reshape(-1)
    uu = torch.dot(u, u)
    return torch.where(uu > 0, torch.dot(u, au) / uu, torch.full((), math.inf, dtype=u.dtype, device=u.device))


def read_back(v: Tensor, smallest: Optional[Tensor]) -> tuple[bool, bool, Optional[float]]:
    """One host read of (v finite, v ≠ 0, the smallest Rayleigh quotient if it is ≤ 0 else None)."""
    return read_back_quotients(v, smallest, None)[:3]


def track_quotients(quotients: Optional[tuple[Tensor, Tensor]], u: Tensor, au: Tensor) -> tuple[Tensor, Tensor]:
    """(smallest, largest) Rayleigh quotient uᵀAu/‖u‖² met so far, on the device (u = 0 counts for neither)."""
    q = rayleigh(u, au)
    high = torch.where(torch.isinf(q), torch.full_like(q, -math.inf), q)
    if quotients is None:
        return q, high
    return torch.minimum(quotients[0], q), torch.maximum(quotients[1], high)


def read_back_quotients(v: Tensor, smallest: Optional[Tensor], largest: Optional[Tensor]
                        ) -> tuple[bool, bool, Optional[float], tuple]:
    """``read_back``, plus (smallest, largest) Rayleigh quotient as floats when ``largest`` is given (else ()),
    in the same single host read.  Both lie in [λ_min, λ_max]: the curvature the automatic steps read."""
    parts = [torch.isfinite(v).all(), torch.any(v != 0)]
    if smallest is not None:
        parts += [smallest <= 0, smallest]
    if largest is not None:
        parts += [largest]
    vals = torch.stack([t.to(torch.float64) for t in parts]).tolist()
    curv = vals[3] if smallest is not None and vals[2] else None
    extremes = ()
    if smallest is not None and largest is not None and all(math.isfinite(t) for t in (vals[3], vals[4])):
        extremes = (vals[3], vals[4])
    return bool(vals[0]), bool(vals[1]), curv, extremes


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
    The stopping test costs one extra product per call, not included in ``matvecs``.  Options left
    ``None`` take the solver's library ``defaults`` (``solver.resolved()``).
    """
    solver = solver.resolved()
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
