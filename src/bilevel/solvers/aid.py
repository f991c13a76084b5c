"""The approximate-implicit-differentiation (AID) outer loop that most algorithms share.

Sequential order (default; LancBiO, SubBiO, AmIGO, stocBiO, BSA), iteration k:

    y_k ← T steps of y ← y − θ_k ∇_y g(x_k, y), warm-started at y_{k−1}        (T ∇_y g)
    b_k ← ∇_y f(x_k, y_k)                                                         (∇_x f, ∇_y f)
    v_k ← v-solver(A_k, b_k, carried state),  A_k = ∇²_yy g(x_k, y_k)             (solver's HVPs)
    x_{k+1} ← x_k − λ_k (∇_x f(x_k, y_k) − ∇²_xy g(x_k, y_k) v_k)                 (1 cross product)

Simultaneous order (SOBA, single loop): every direction at (x_k, y_k, v_k), then all updates at once:

    D_y = ∇_y g(x_k, y_k),  D_x = ∇_x f − J_k v_k,  v_{k+1} = v-solver(A_k, b_k) from v_k,
    y_{k+1} = y_k − θ D_y (then T − 1 further inner steps, if T > 1),  x_{k+1} = x_k − λ D_x.

The algorithm files subclass ``AIDSolver`` and only choose the v-solver.  ``freeze_x_first`` implements the
LancBiO theorem's variant: no x-step in the first ``freeze_x_first`` iterations of each Lanczos epoch.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Optional

import torch
from torch import Tensor

from .._validation import check_choice, check_int
from ..inner import gradient_steps
from ..linear_solvers.base import LinearSolver, SolveInfo
from ..oracles import Oracles
from ..problem import BilevelProblem
from ..schedules import ScheduleLike, as_schedule
from .base import Solver


@dataclass
class AIDState:
    x: Tensor
    y: Tensor
    v: Tensor
    v_state: Any
    v_solver: LinearSolver
    lr_x: Any
    lr_y: Any
    inner_steps: int
    generator: torch.Generator
    iterate: tuple
    resolved: dict
    last_info: Optional[SolveInfo] = None
    events: Counter = field(default_factory=Counter)


@dataclass(frozen=True, kw_only=True)
class AIDSolver(Solver):
    """Common options of the AID family.  ``None`` means: the problem's preset, else ``defaults``.

    lr_x (λ): outer step size, a number or a schedule of k.   lr_y (θ): inner step size.
    inner_steps (T): y-steps per outer iteration.   order: "sequential" or "simultaneous".
    freeze_x_first: skip the x-step in the first iterations of each v-solver epoch (theory variant).
    v_init: "zeros" (default) or "randn" (the reference's synthetic v_0 ~ N(0, I)).
    """

    name: ClassVar[str] = "aid"
    defaults: ClassVar[Mapping[str, Any]] = {"lr_x": None, "lr_y": None, "inner_steps": 5}
    default_order: ClassVar[str] = "sequential"

    lr_x: Optional[ScheduleLike] = None
    lr_y: Optional[ScheduleLike] = None
    inner_steps: Optional[int] = None
    order: Optional[str] = None
    freeze_x_first: int = 0
    v_init: str = "zeros"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name in ("lr_x", "lr_y"):
            if getattr(self, name) is not None:
                as_schedule(getattr(self, name), f"{owner}: {name}")
        if self.inner_steps is not None:
            check_int(owner, "inner_steps", self.inner_steps, 0)
        if self.order is not None:
            check_choice(owner, "order", self.order, ("sequential", "simultaneous"))
        check_int(owner, "freeze_x_first", self.freeze_x_first, 0)
        check_choice(owner, "v_init", self.v_init, ("zeros", "randn"))
        self._check_options()

    def _check_options(self) -> None:
        """Subclasses validate their own non-None options here (build a throw-away v-solver, say)."""

    def make_v_solver(self, opts: Mapping[str, Any]) -> LinearSolver:  # pragma: no cover - interface
        raise NotImplementedError

    def expected_hvps(self, opts: Mapping[str, Any], iterations: int) -> float:
        """HVPs of the v-solver over ``iterations`` calls from the start (subclasses document it)."""
        raise NotImplementedError(f"{type(self).__name__} does not document its HVP cost")

    def expected_counts(self, opts: Mapping[str, Any], iterations: int) -> dict[str, float]:
        """Per iteration: T ∇_y g, 1 ∇_x f, 1 ∇_y f, 1 cross product, the v-solver's HVPs.
        (Simultaneous order: the first of the T y-steps uses ∇_y g at the linearisation point.)"""
        K = iterations
        return {
            "grad_y_g": opts["inner_steps"] * K, "grad_x_f": K, "grad_y_f": K, "grad_x_g": 0,
            "cross": K, "cross_t": 0, "hvp": self.expected_hvps(opts, K),
        }

    # ---------------------------------------------------------------------------------------------
    def resolve(self, problem: BilevelProblem) -> dict[str, Any]:
        opts = super().resolve(problem)
        if opts["order"] is None:
            opts["order"] = self.default_order
        owner = type(self).__name__
        if opts["inner_steps"] == 0 and opts["order"] == "simultaneous":
            raise ValueError(f"{owner}: order='simultaneous' needs inner_steps >= 1; got 0.")
        return opts

    def init(self, problem: BilevelProblem, oracles: Oracles, generator: torch.Generator) -> AIDState:
        opts = self.resolve(problem)
        v_solver = self.make_v_solver(opts)
        x, y = problem.x0, problem.y0
        v0 = None
        if self.v_init == "randn":
            v0 = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
        template = torch.zeros_like(y)
        v_state = v_solver.init(template, v0)
        return AIDState(
            x=x,
            y=y,
            v=v_state.v,
            v_state=v_state,
            v_solver=v_solver,
            lr_x=as_schedule(opts["lr_x"], "lr_x"),
            lr_y=as_schedule(opts["lr_y"], "lr_y"),
            inner_steps=opts["inner_steps"],
            generator=generator,
            iterate=(x, y, v_state.v),
            resolved=opts,
        )

    def step(self, state: AIDState, oracles: Oracles, k: int) -> AIDState:
        if state.resolved["order"] == "simultaneous":
            return self._step_simultaneous(state, oracles, k)
        x, theta = state.x, state.lr_y(k)
        y = gradient_steps(oracles, x, state.y, state.inner_steps, theta)
        point = oracles.at(x, y)
        gx_f, b = oracles.grad_f(x, y)
        v, v_state, info = state.v_solver.solve(point.hvp, b, state.v_state, k=k, generator=state.generator)
        x_new = self._x_step(x, gx_f, point.cross(v), state, info, k)
        return self._advance(state, x_new, y, v, v_state, info, (x, y, v))

    def _step_simultaneous(self, state: AIDState, oracles: Oracles, k: int) -> AIDState:
        x, y, v_old = state.x, state.y, state.v
        theta = state.lr_y(k)
        point = oracles.at(x, y)
        d_y = point.grad_y_g()
        gx_f, b = oracles.grad_f(x, y)
        jv = point.cross(v_old)
        v, v_state, info = state.v_solver.solve(point.hvp, b, state.v_state, k=k, generator=state.generator)
        y_new = gradient_steps(oracles, x, y - theta * d_y, state.inner_steps - 1, theta)
        x_new = self._x_step(x, gx_f, jv, state, info, k)
        return self._advance(state, x_new, y_new, v, v_state, info, (x, y, v_old))

    def _x_step(self, x: Tensor, gx_f: Tensor, jv: Tensor, state: AIDState, info: SolveInfo, k: int) -> Tensor:
        if self.freeze_x_first and info.epoch_step is not None and info.epoch_step <= self.freeze_x_first:
            return x
        return x - state.lr_x(k) * (gx_f - jv)

    @staticmethod
    def _advance(state, x, y, v, v_state, info, iterate) -> AIDState:
        events = state.events
        for e in info.events:
            events[e] += 1
        return AIDState(
            x=x, y=y, v=v, v_state=v_state, v_solver=state.v_solver, lr_x=state.lr_x, lr_y=state.lr_y,
            inner_steps=state.inner_steps, generator=state.generator, iterate=iterate,
            resolved=state.resolved, last_info=info, events=events,
        )
