"""Inner solvers: the lower-level loop y ← argmin_y g(x, y), warm-started across outer iterations.

An inner solver is an immutable part (``bilevel.inner.GD(steps=T, lr=θ)``) that the AID loop and the
first-order and unrolled methods (F2SA, BOME, PBGD, ITD) share.  Options left ``None`` are filled by the
owning algorithm when it is bound to a problem (``steps`` ↔ ``inner_steps``, ``lr`` ↔ ``lr_y``).
Inner solvers register in ``INNER_SOLVERS`` (``bilevel list inner-solvers``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Mapping, Optional

import torch
from torch import Tensor

from ._validation import Part, check_int
from .auto_steps import is_auto
from .registry import Registry
from .schedules import ScheduleLike, as_schedule

INNER_SOLVERS = Registry("inner solver")

#: inner steps θ‖∇_y g‖ below this many ulps of ‖y‖ are round-off: no growth is reported there
_NOISE_ULPS = 1000.0


def schedule_value(value: Any, k: int) -> float:
    """A step size at iteration k: a schedule is called, a number is a constant."""
    return value(k) if callable(value) else value


class InnerSolver(Part):
    """Base of the inner solvers: frozen dataclasses; ``presettable`` options left ``None`` are filled when
    the owning algorithm is bound (the option machinery is the parts', ``_validation.Part``)."""

    name: ClassVar[str] = "inner"

    def run(self, oracles: Any, x: Tensor, y: Tensor, batches: Any, k: int, steps: Optional[int] = None,
            first: int = 0) -> Tensor:
        raise NotImplementedError

    def run_watched(self, oracles: Any, x: Tensor, y: Tensor, batches: Any, k: int, steps: Optional[int] = None,
                    first: int = 0, grad0: Optional[Tensor] = None, any_step: bool = False, batch0: Any = None
                    ) -> tuple[Tensor, Optional[Tensor]]:
        """``run``, plus a 0-dim bool tensor (never read here: no host sync) that is True when the lower
        gradient norm grew at every step (at some step with ``any_step``), or None when the solver cannot
        tell (see ``GD.run_watched``)."""
        return self.run(oracles, x, y, batches, k, steps, first), None


@INNER_SOLVERS.register
@dataclass(frozen=True, kw_only=True)
class GD(InnerSolver):
    """Gradient descent on g(x, ·), warm-started from the previous outer iteration's y:

        y ← y − θ_k ∇_y g(x, y; ξ_t),   t = 0, …, T − 1          (steps = T, lr = θ: number or schedule of k)

    ξ_t is the ``inner`` role's draw for step t (the full data set by default).  Cost: T ∇_y g.
    """

    name: ClassVar[str] = "gd"
    presettable: ClassVar[tuple[str, ...]] = ("steps", "lr")
    examples: ClassVar[Mapping[str, Any]] = {"steps": 5, "lr": 0.1}

    steps: Optional[int] = None
    lr: Optional[ScheduleLike] = None

    def validate(self, opts: Mapping[str, Any]) -> None:
        if opts.get("steps") is not None:
            check_int("GD", "steps", opts["steps"], 0)
        if opts.get("lr") is not None and not is_auto(opts["lr"]):  # "auto": filled per step by the AID loop
            as_schedule(opts["lr"], "GD: lr")

    def run(self, oracles: Any, x: Tensor, y: Tensor, batches: Any, k: int, steps: Optional[int] = None,
            first: int = 0) -> Tensor:
        """``steps`` (default T) steps from y; ``first`` offsets the step index used for the batch draws."""
        lr = schedule_value(self.lr, k)
        for t in range(self.steps if steps is None else steps):
            y = y - lr * oracles.grad_y_g(x, y, batches("inner", first + t))
        return y

    def run_watched(self, oracles: Any, x: Tensor, y: Tensor, batches: Any, k: int, steps: Optional[int] = None,
                    first: int = 0, grad0: Optional[Tensor] = None, any_step: bool = False, batch0: Any = None
                    ) -> tuple[Tensor, Optional[Tensor]]:
        """``run`` (the same y, bit for bit), and whether ‖∇_y g(x, y_t)‖ grew at every step t.

        For g(x, ·) convex and L-smooth and θ ≤ 2/L, gradient descent never increases ‖∇_y g‖ (each step
        multiplies the gradient by an averaged I − θ∇²g with spectrum in [−1, 1]); growth at every one of at
        least two consecutive steps means θ is too large for g's curvature or g(x, ·) is not convex.  The
        flag is a 0-dim bool tensor, not read here (no host sync per step; ``solve`` reads it with its one
        finiteness read-back per iteration); None with fewer than three gradients (``grad0``: the gradient
        at y already taken by the caller) or with mini-batch draws, whose gradients differ by sampling.
        Growth is not reported while the last step θ‖∇_y g‖ is below 1000 ulps of ‖y‖: there the gradient is
        round-off (a converged y) and its norm moves at random.

        ``any_step=True`` (the automatic steps' safeguard, ``bilevel.auto_steps``): True when the norm grew at
        some step (two gradients suffice), which θ ≤ 2/L rules out for a convex g.  Under mini-batches it
        compares on one batch B, so that sampling cannot fake growth: ‖∇_y g_B(x, y_T)‖ against the last step's
        ‖∇_y g_B(x, y_{T−1})‖ (one extra ∇_y g on B, counted; when the loop makes no step, ``grad0`` and its
        batch ``batch0`` are the step before).  GD on the convex L_B-smooth g_B with θ ≤ 2/L_B cannot raise it,
        so growth means θ is too large for a batch's curvature (L_B ≥ L can be larger than the full data's:
        the safeguard is then conservative, never unsafe)."""
        lr = schedule_value(self.lr, k)
        norms = [] if grad0 is None else [torch.linalg.vector_norm(grad0)]
        watch = bool(getattr(batches, "full", False))
        last = (grad0, batch0)
        for t in range(self.steps if steps is None else steps):
            batch = batches("inner", first + t)
            grad = oracles.grad_y_g(x, y, batch)
            if watch:
                norms.append(torch.linalg.vector_norm(grad))
            last = (grad, batch)
            y = y - lr * grad
        if any_step and not watch:
            if last[0] is None:
                return y, None
            before, after = torch.linalg.vector_norm(last[0]), torch.linalg.vector_norm(oracles.grad_y_g(x, y, last[1]))
            return y, (after > before) & (lr * after > _NOISE_ULPS * torch.finfo(y.dtype).eps
                                          * torch.linalg.vector_norm(y))
        if not watch or len(norms) < (2 if any_step else 3):
            return y, None
        norms_t = torch.stack(norms)
        rose = norms_t[1:] > norms_t[:-1]
        grew = torch.any(rose) if any_step else torch.all(rose)
        # at the round-off floor (a converged y: steps of a few ulps of y) the norms are noise, not growth
        above_noise = lr * norms_t[-1] > _NOISE_ULPS * torch.finfo(y.dtype).eps * torch.linalg.vector_norm(y)
        return y, grew & above_noise


class InnerGDLoop:
    """Mixin of solvers with flat options ``inner_steps`` (T) and ``lr_y`` (θ) whose lower-level loop is the
    shared ``GD``: built once per (bound) solver, not once per iteration."""

    inner_steps: Optional[int]
    lr_y: Optional[ScheduleLike]

    @cached_property
    def inner_loop(self) -> GD:
        """T gradient steps on g(x, ·) with step θ."""
        return GD(steps=self.inner_steps, lr=self.lr_y)
