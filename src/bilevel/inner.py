"""Inner solvers: the lower-level loop y ← argmin_y g(x, y), warm-started across outer iterations.

An inner solver is an immutable part (``bilevel.inner.GD(steps=T, lr=θ)``) that the AID loop and the
first-order and unrolled methods (F2SA, BOME, PBGD, ITD) share.  Options left ``None`` are filled by the
owning algorithm when it is bound to a problem (``steps`` ↔ ``inner_steps``, ``lr`` ↔ ``lr_y``).
Inner solvers register in ``INNER_SOLVERS`` (``bilevel list inner-solvers``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

from torch import Tensor

from ._validation import CheckedOptions, check_int
from .registry import Registry
from .schedules import ScheduleLike, as_schedule

INNER_SOLVERS = Registry("inner solver")


def schedule_value(value: Any, k: int) -> float:
    """A step size at iteration k: a schedule is called, a number is a constant."""
    return value(k) if callable(value) else value


class InnerSolver(metaclass=CheckedOptions):
    """Base of the inner solvers: frozen dataclasses, ``None`` = filled when the algorithm is bound."""

    name: ClassVar[str] = "inner"
    defaults: ClassVar[Mapping[str, Any]] = {}
    #: options that must have a value once bound
    required: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self.validate(self.options())

    def validate(self, opts: Mapping[str, Any]) -> None:
        """The one check of option values (``None`` = not set yet)."""

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    def options(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.option_names()}

    def resolved(self, values: Mapping[str, Any]) -> "InnerSolver":
        """A copy with each ``None`` option taken from ``values``, else ``defaults``; checked complete."""
        filled = {}
        for name, value in self.options().items():
            if value is None:
                value = values.get(name, self.defaults.get(name))
            filled[name] = value
        for name in self.required:
            if filled[name] is None:
                raise ValueError(
                    f"{type(self).__name__}: {name} has no value; pass it (e.g. {type(self).__name__}({name}=...)) "
                    "or set the algorithm's matching option."
                )
        return dataclasses.replace(self, **filled)  # type: ignore[type-var]

    def run(self, oracles: Any, x: Tensor, y: Tensor, batches: Any, k: int, steps: Optional[int] = None) -> Tensor:
        raise NotImplementedError


@INNER_SOLVERS.register
@dataclass(frozen=True, kw_only=True)
class GD(InnerSolver):
    """Gradient descent on g(x, ·), warm-started from the previous outer iteration's y:

        y ← y − θ_k ∇_y g(x, y; ξ_t),   t = 0, …, T − 1          (steps = T, lr = θ: number or schedule of k)

    ξ_t is the ``inner`` role's draw for step t (the full data set by default).  Cost: T ∇_y g.
    """

    name: ClassVar[str] = "gd"
    required: ClassVar[tuple[str, ...]] = ("steps", "lr")

    steps: Optional[int] = None
    lr: Optional[ScheduleLike] = None

    def validate(self, opts: Mapping[str, Any]) -> None:
        if opts.get("steps") is not None:
            check_int("GD", "steps", opts["steps"], 0)
        if opts.get("lr") is not None:
            as_schedule(opts["lr"], "GD: lr")

    def run(self, oracles: Any, x: Tensor, y: Tensor, batches: Any, k: int, steps: Optional[int] = None,
            first: int = 0) -> Tensor:
        """``steps`` (default T) steps from y; ``first`` offsets the step index used for the batch draws."""
        lr = schedule_value(self.lr, k)
        for t in range(self.steps if steps is None else steps):
            y = y - lr * oracles.grad_y_g(x, y, batches("inner", first + t))
        return y


def gradient_steps(oracles: Any, x: Tensor, y: Tensor, steps: int, lr: float, batch: Any = None) -> Tensor:
    """T steps of gradient descent on g(x, ·) on one fixed batch:  y ← y − θ ∇_y g(x, y).   Cost: T ∇_y g."""
    for _ in range(steps):
        y = y - lr * oracles.grad_y_g(x, y, batch)
    return y
