"""STABLE, matrix-free: single timescale with a y-correction tracking y*(x) (Chen et al. 2022; algorithms.md §3.7)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Optional

import torch
from torch import Tensor

from .._validation import check_int, check_positive
from ..linear_solvers.neumann import Neumann, NeumannState
from ..oracles import Oracles
from ..problem import BilevelProblem
from ..schedules import ScheduleLike, as_schedule
from .base import Solver
from .registry import register


@dataclass
class StableState:
    """x: x_{k+1}.  y: y_{k+1}.  v: v_k, the Neumann estimate used by the last x-step.
    correction: z_k = η Σ_{i=0..Q} (I − ηA_k)^i Jₖᵀ(x_{k+1} − x_k), the last y-correction (None before)."""

    x: Tensor
    y: Tensor
    v: Optional[Tensor]
    neumann: Neumann
    v_state: NeumannState
    z_state: NeumannState
    lr_x: Callable[[int], float]
    lr_y: Callable[[int], float]
    iterate: tuple
    resolved: dict
    correction: Optional[Tensor] = None
    events: Counter = field(default_factory=Counter)


@register
@dataclass(frozen=True, kw_only=True)
class STABLE(Solver):
    """STABLE — single-timescale bilevel optimisation, matrix-free variant (Chen et al. 2022).

    The published method keeps recursive (parameter τ) estimates of ∇²_yy g and ∇²_xy g; this variant (the
    reference's and the library's) replaces their inverses by Q-term Neumann sums at the current point and
    drops the averaging, so it has no τ.  Iteration k, all second-order products at (x_k, y_k):

        b_k = ∇_y f(x_k, y_k);  A_k = ∇²_yy g(x_k, y_k);  J_k = ∇²_xy g(x_k, y_k)
        v_k = η Σ_{i=0..Q} (I − ηA_k)^i b_k                                    (eta = η, v_steps = Q)
        x_{k+1} = x_k − λ_k (∇_x f(x_k, y_k) − J_k v_k)                         (lr_x = λ)
        z_k = η Σ_{i=0..Q} (I − ηA_k)^i J_kᵀ (x_{k+1} − x_k)          (z_k ≈ −(y*(x_{k+1}) − y*(x_k)))
        y_{k+1} = y_k − θ_k ∇_y g(x_k, y_k) − z_k                               (lr_y = θ)

    Oracle cost per iteration: 1 ∇_y g (at the linearisation point), 1 ∇_y f, 1 ∇_x f, **2Q HVPs**,
    1 cross product (J v), 1 transposed cross product (Jᵀ(x_{k+1} − x_k)).  Totals over K iterations:
    2QK HVPs, K cross, K cross_t, K ∇_y g.  With autodiff the point is linearised twice (the ∇_y g graph for
    A and J, the ∇_x g graph for Jᵀ).  Both Neumann sums are rebuilt from scratch every iteration (y is the
    only warm start); no dense buffers are allocated.

    Options: lr_x, lr_y (numbers or schedules of k), eta (constant), v_steps.  There is no τ (nothing to
    average) and no inner_steps (single loop: one y-step per iteration); passing them is an error.
    Step sizes come from the problem's presets or the user; the library only defaults Q = 20 (HC).

    Reference defaults (algorithms.md §3.7; HC only, not in the paper's figures):

        ======  =======  =====  =====  =====  ===
                Q        η      θ      λ      T
        Syn     —        —      —      —      —
        HC      20       0.05   0.1    500    1
        Stoc    —        —      —      —      —
        ======  =======  =====  =====  =====  ===
    """

    name: ClassVar[str] = "stable"
    required: ClassVar[tuple[str, ...]] = ("lr_x", "lr_y", "eta")
    defaults: ClassVar[Mapping[str, Any]] = {"v_steps": 20}

    lr_x: Optional[ScheduleLike] = None
    lr_y: Optional[ScheduleLike] = None
    eta: Optional[float] = None
    v_steps: Optional[int] = None

    checks: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        # floor: the Q = 5 Neumann sums' truncation bias at κ = 100, η = 1/L (‖∇φ‖ stalls at 0.32 from 1.6)
        "quadratic": {"max_iter": 100, "reduction": 4.0},
        "synthetic": {"max_iter": 500, "reduction": 1e3},
        "counts": {"options": {"v_steps": 3}},
    }

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name in ("lr_x", "lr_y"):
            if getattr(self, name) is not None:
                as_schedule(getattr(self, name), f"{owner}: {name}")
        if self.eta is not None:
            check_positive(owner, "eta", self.eta)
        if self.v_steps is not None:
            check_int(owner, "v_steps", self.v_steps, 1)

    def expected_counts(self, opts: Mapping[str, Any], iterations: int) -> dict[str, float]:
        K = iterations
        return {
            "grad_y_g": K, "grad_x_f": K, "grad_y_f": K, "grad_x_g": 0,
            "hvp": 2 * opts["v_steps"] * K, "cross": K, "cross_t": K,
        }

    def init(self, problem: BilevelProblem, oracles: Oracles, generator: torch.Generator) -> StableState:
        opts = self.resolve(problem)
        neumann = Neumann(eta=opts["eta"], steps=opts["v_steps"], randomized=False)
        x, y = problem.x0, problem.y0
        v_state = neumann.init(torch.zeros_like(y))
        return StableState(
            x=x, y=y, v=v_state.v, neumann=neumann, v_state=v_state,
            z_state=neumann.init(torch.zeros_like(y)),
            lr_x=as_schedule(opts["lr_x"], "lr_x"), lr_y=as_schedule(opts["lr_y"], "lr_y"),
            iterate=(x, y, v_state.v), resolved=opts,
        )

    def step(self, state: StableState, oracles: Oracles, k: int) -> StableState:
        x, y, neumann = state.x, state.y, state.neumann
        point = oracles.at(x, y)
        d_y = point.grad_y_g()
        gx_f, b = oracles.grad_f(x, y)
        v, v_state, info_v = neumann.solve(point.hvp, b, state.v_state, k=k)
        x_new = x - state.lr_x(k) * (gx_f - point.cross(v))
        # The correction uses the actual move of x, so it tracks y* along the step just taken.
        t = point.cross_t(x_new - x)
        z, z_state, info_z = neumann.solve(point.hvp, t, state.z_state, k=k)
        y_new = y - state.lr_y(k) * d_y - z
        events = state.events
        for e in info_v.events + info_z.events:
            events[e] += 1
        return StableState(
            x=x_new, y=y_new, v=v, neumann=neumann, v_state=v_state, z_state=z_state,
            lr_x=state.lr_x, lr_y=state.lr_y, iterate=(x, y, v), resolved=state.resolved,
            correction=z, events=events,
        )


def stable(**options: Any) -> STABLE:
    """Configure STABLE (matrix-free); see ``STABLE`` for the options and defaults."""
    return STABLE.create(**options)
