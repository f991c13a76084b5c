"""The data path: a seeded stream of batches with named roles.

Each outer iteration a solver asks ``batches(role, index)`` for the data of one oracle call.  Roles name
*what the data is for*, so that an algorithm's paper decides which calls share a draw:

    ``inner``   the lower-level gradient steps ∇_y g (index = the inner step t, one draw per step)
    ``upper``   ∇_y f and ∇_x f (the right-hand side b and the direct term)
    ``hvp``     the products A·q with ∇²_yy g (the v-solver)
    ``cross``   the cross product ∇²_xy g·v (and ∇²_yx g·w)
    ``lower``   other lower-level first-order calls (∇_x g, ∇_y g of first-order penalty methods)

A solver declares ``batch_roles``: role → draw group.  Roles mapped to the same group share one draw per
iteration (e.g. ``{"hvp": "hessian", "cross": "hessian"}``: the cross product reuses the HVP batch); the
default is one independent draw per role.  A *batch* is whatever the problem's ``f``/``g`` accept as their
third argument; ``None`` means the full data set.

``FullBatch`` (the default) hands every role the full data set, so deterministic algorithms are
unchanged.  Mini-batch samplers implement the same ``BatchSource`` protocol.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Protocol, runtime_checkable

import torch

from ._validation import suggest

ROLES = ("inner", "upper", "hvp", "cross", "lower")


def _unknown_role(role: str, owner: str = "") -> ValueError:
    prefix = f"{owner}: " if owner else ""
    return ValueError(f"{prefix}unknown batch role {role!r}.{suggest(role, ROLES)} Roles: {', '.join(ROLES)}.")


def _check_roles(owner: str, roles: Mapping[str, str]) -> dict[str, str]:
    for role in roles:
        if role not in ROLES:
            raise _unknown_role(role, owner)
    return {role: roles.get(role, role) for role in ROLES}


class Batches:
    """The draws of one outer iteration: ``batches(role, index=0)`` → a batch (``None`` = full data).

    Draws are memoised per (group, index) within the iteration, so roles of one group share a draw and a
    role asked twice with the same index gets the same batch.
    """

    __slots__ = ("iteration", "_groups", "_draw", "_memo")

    def __init__(self, iteration: int, groups: Mapping[str, str], draw: Optional[Callable[[str, int], Any]]) -> None:
        self.iteration = iteration
        self._groups = groups
        self._draw = draw
        self._memo: dict[tuple[str, int], Any] = {}

    def __call__(self, role: str, index: int = 0) -> Any:
        if self._draw is None:
            return None
        group = self._groups.get(role)
        if group is None:
            raise _unknown_role(role)
        key = (group, index)
        if key not in self._memo:
            self._memo[key] = self._draw(group, index)
        return self._memo[key]

    @property
    def full(self) -> bool:
        """True when every role gets the full data set."""
        return self._draw is None


@runtime_checkable
class BatchSource(Protocol):
    """Makes the per-iteration ``Batches``; ``start`` is called once per run."""

    def start(self, roles: Mapping[str, str], generator: torch.Generator) -> "BatchStream": ...


class BatchStream(Protocol):
    def __call__(self, iteration: int) -> Batches: ...


class FullBatch:
    """Every role, every iteration: the full data set (``batch=None``).  Draws nothing."""

    def start(self, roles: Mapping[str, str], generator: torch.Generator) -> Callable[[int], Batches]:
        groups = _check_roles("FullBatch", roles)
        return lambda iteration: Batches(iteration, groups, None)

    def __repr__(self) -> str:
        return "FullBatch()"


def full_batches(iteration: int = 0) -> Batches:
    """A ``Batches`` of full-data draws, for calling a solver's ``step`` by hand."""
    return Batches(iteration, {role: role for role in ROLES}, None)
