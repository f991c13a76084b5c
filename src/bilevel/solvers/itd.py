"""ITD: reverse-mode differentiation of unrolled inner steps (Franceschi et al., ICML 2017 and 2018; Ji,
Yang & Liang, ICML 2021)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Optional

import torch
from torch import Tensor

from .._validation import check_int
from ..auto_steps import FirstOrderAuto, StepState
from ..inner import _NOISE_ULPS, InnerGDLoop, schedule_value
from ..outer import OuterOptimizer
from ..outer import build as build_outer
from ..outer import check_options as check_outer
from ..problem import BilevelProblem
from ..schedules import ScheduleLike, as_schedule
from .base import Solver, add_events, register


@dataclass(frozen=True)
class ITDState:
    """k: iterations done.  x: x_k.  y: y^T_{k−1}, the last unrolled iterate (the next warm start y^0).
    direction: D_{k−1}, the last step's hypergradient estimate.  iterate: (x_{k−1}, y^T_{k−1}, None).
    ITD has no v."""

    k: int
    x: Tensor
    y: Tensor
    iterate: tuple
    v: Optional[Tensor] = None
    direction: Optional[Tensor] = None
    events: Mapping[str, int] = field(default_factory=dict)
    #: the ``outer`` optimizer of x (``bilevel.outer``; mutable, like a generator), else None
    outer: Optional[OuterOptimizer] = field(default=None, compare=False)
    #: the automatic steps (``bilevel.auto_steps``), None when lr_x and lr_y are given or preset
    auto: Optional[StepState] = None


@register
@dataclass(frozen=True, kw_only=True)
class ITD(FirstOrderAuto, InnerGDLoop, Solver):
    """ITD — reverse-mode iterative differentiation of the unrolled inner loop (Franceschi, Donini,
    Frasconi & Pontil, "Forward and Reverse Gradient-Based Hyperparameter Optimization", ICML 2017, and
    "Bilevel Programming for Hyperparameter Optimization and Meta-Learning", ICML 2018; Ji, Yang & Liang,
    "Bilevel Optimization: Convergence Analysis and Enhanced Design", ICML 2021).

    Iteration k (paper symbols; our option names in brackets), A = ∇²_yy g, J = ∇²_xy g:

        y^0 = y^T_{k−1} (warm start, no gradient through y^0)
        y^t = y^(t−1) − θ ∇_y g(x_k, y^(t−1)),  t = 1..T                       [inner_steps = T, lr_y = θ]
        p = ∇_y f(x_k, y^T),  D = ∇_x f(x_k, y^T)
        for t = T down to T − T_b + 1:                                          [backprop_steps = T_b]
            D ← D − θ J(x_k, y^(t−1)) p
            if t > T − T_b + 1:  p ← p − θ A(x_k, y^(t−1)) p
        x_{k+1} = x_k − λ D                                                     [lr_x = λ]

    D is exactly the gradient of x ↦ f(x, y^T(x)) through the last T_b steps (the full unroll when
    T_b = T), as reverse-mode autodiff would compute it.  The first T − T_b steps are the shared inner
    solver ``bilevel.inner.GD`` (plain gradients: no graph is built that the backward pass would not use).
    Each of the last T_b forward steps takes its gradient from ``oracles.at(x_k, y^(t−1))``, and that same
    linearisation answers the backward products (memory: T_b linearisations per iteration, released at its
    end).  With y^0 = y*(x), D → ∇φ(x) as T → ∞ (the error is J A⁻¹ (I − θA)^T ∇_y f); a small T leaves a
    bias of that size.

    Mini-batches (stochastic ITD as in Ji, Yang & Liang 2021): forward step t takes the ``inner`` draw t
    and its backward products the same draw, so D is the exact derivative of the unrolled map of the
    sampled steps; ∇_y f and ∇_x f one ``upper`` draw.  Draws per iteration: T inner, 1 upper.  Samples
    per iteration: (T + 2T_b − 1)·B on g, 2·B_upper on f (plus B per autodiff graph build, ``linearize``).

    Options: lr_x (λ), lr_y (θ), inner_steps (T, default 10), backprop_steps (T_b ≤ T; default None = T).

    Oracle cost per iteration (exact, counted): T ∇_y g, T_b cross products, T_b − 1 HVPs, 1 joint ∇f
    (one ∇_x f and one ∇_y f); T_b = T gives T cross products and T − 1 HVPs.

    Published settings (``settings``, looked up by the problem's experiment key; the same T, θ and λ as
    stocBiO per experiment, Ji, Yang & Liang 2021): synthetic T = 10, λ = 1, θ = 1e-5; hyper-cleaning
    T = 10, λ = 500, θ = 0.1 (λ and θ the problems' scales); stochastic hyper-cleaning
    (``"stochastic/hyperclean"``, a mini-batch run) T = 9, λ = 100, θ = 0.1; 20 Newsgroups T = 10, λ = θ = 100.
    Memory: T_b points, each holding what its products need (with closed forms, e.g. 20 Newsgroups, Π on the
    training rows: N·C numbers per point; with autodiff, T_b graphs of ∇_y g).
    ``outer=`` (with ``outer_options``, ``outer_scheduler``, ``outer_scheduler_options``): a ``torch.optim``
    optimizer makes the x-step from the same direction instead of x − λ·D (``bilevel.outer``; lr_x unused);
    the oracle cost is unchanged.

    Automatic steps (lr_x and lr_y that nothing sets, or ``"auto"``; ``bilevel.auto_steps``), as the AID loop's:
    θ = 1/L̂ with L̂ from min(10, dy) Lanczos steps on HVPs at (x_0, y_0) (counted, once, full data), raised by
    the Rayleigh quotients pᵀAp/pᵀp of the backward pass's T_b − 1 HVPs (no extra oracle call; each lies in
    [λ_min, λ_max] of its A), doubled when ‖∇_y g‖ grows at some forward step or overflows (full data only:
    under mini-batches the T draws differ, so no safeguard).  Unlike the AID loop's few inner steps, a large T
    with θ > 2/L amplifies the top eigencomponent of y by |1 − θL|^T within one iteration (overflow at T = 700),
    so such an iteration is rejected: x_k and y^0 are kept (D stays the last accepted one), L̂ doubles (events
    ``auto_step_shrunk``, ``auto_step_rejected``) and the iteration's oracle calls are still counted.  λ by
    AdaGrad-norm on D.  Both fit the unrolled map:
    its forward steps are gradient descent on g(x_k, ·), stable for θ < 2/L, and D is a gradient estimate of
    x ↦ f(x, y^T(x)), whose smoothness constant AdaGrad-norm does not need.  One host read per iteration.
    """

    name: ClassVar[str] = "itd"
    label: ClassVar[str] = "ITD"
    defaults: ClassVar[Mapping[str, Any]] = {"inner_steps": 10}
    auto_hvp: ClassVar[bool] = True  # second-order already: the start estimate from HVPs, as the AID loop's
    settings: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "synthetic": {"inner_steps": 10}, "hyperclean": {"inner_steps": 10}, "newsgroups": {"inner_steps": 10},
        "stochastic/hyperclean": {"inner_steps": 9, "lr_x": 100.0, "lr_y": 0.1},
    }

    lr_x: Optional[ScheduleLike] = None
    outer: Any = None
    outer_options: Optional[Mapping[str, Any]] = None
    outer_scheduler: Any = None
    outer_scheduler_options: Optional[Mapping[str, Any]] = None
    lr_y: Optional[ScheduleLike] = None
    inner_steps: Optional[int] = None
    backprop_steps: Optional[int] = None

    # Quadratic: the fixed point's bias is ‖J A⁻¹ (I − θA)^T ∇_y f‖ ~ (1 − θ μ_g)^T = 0.99^T (κ = 100,
    # θ = 1/L): the presets' T = 5 stall at ‖∇φ‖ = 0.33 (reduction 5), T = 700 reaches 2.0e-4 within
    # 20 iterations (measured reduction 8.2e3).  Synthetic, presets (T = 10): measured 3.1e4 at K = 300.
    checks: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        # mini-batches (tests/test_stochastic_solvers.py): quadratic(dx=5, dy=20, κ=10) and
        # synthetic(n=100, κ=100), both n_samples=200, n_samples_f=100, MiniBatch(32), seed 0; reduction:
        # ‖∇φ(x_0)‖ / the mean of the last 5 of 21 evaluations (the noise floor); [measured: quadratic seeds 0–2,
        #  synthetic seeds 0–1]
        # quadratic floor: the bias of the T = 10 unroll (as without noise)
        # [27, 30]
        "stochastic/quadratic": {"max_iter": 500, "reduction": 12, "batch_size": 32, "options": {"lr_x": 0.1}},
        # [165, 184]
        "stochastic/synthetic": {"max_iter": 500, "reduction": 80, "batch_size": 32, "options": {"lr_x": 0.2}},
        "quadratic": {"max_iter": 20, "reduction": 1e3, "options": {"inner_steps": 700}},
        "synthetic": {"max_iter": 300, "reduction": 1e4},
        "counts": {"options": {"inner_steps": 4, "backprop_steps": 3}},
    }

    def validate(self, opts: Mapping[str, Any]) -> None:
        owner = "ITD"
        check_outer(owner, opts)
        for name in ("lr_x", "lr_y"):
            if opts.get(name) is not None and not self.auto_value(owner, name, opts[name]):
                as_schedule(opts[name], f"{owner}: {name}")
        T, Tb = opts.get("inner_steps"), opts.get("backprop_steps")
        if T is not None:
            check_int(owner, "inner_steps", T, 1)
        if Tb is not None:
            check_int(owner, "backprop_steps", Tb, 1)
            if T is not None and Tb > T:
                raise ValueError(
                    f"{owner}: backprop_steps (T_b = {Tb}) cannot exceed inner_steps (T = {T}): truncated "
                    "back-propagation goes through the last T_b of the T unrolled steps. Lower backprop_steps "
                    "or raise inner_steps."
                )

    @property
    def _tb(self) -> int:
        """T_b: the steps differentiated through (backprop_steps, or all T when unset)."""
        return self.inner_steps if self.backprop_steps is None else self.backprop_steps

    def expected_counts(self, iterations: int) -> dict[str, float]:
        """Per iteration: T ∇_y g, T_b cross products, T_b − 1 HVPs, 1 ∇_x f, 1 ∇_y f.  An automatic θ adds
        min(10, dy) HVPs once (the start estimate)."""
        self._require_bound()
        T, Tb, K = self.inner_steps, self._tb, iterations
        return {"grad_y_g": T * K, "cross": Tb * K, "hvp": (Tb - 1) * K + self.auto_start_hvps(), "grad_x_f": K, "grad_y_f": K,
                "grad_x_g": 0, "cross_t": 0}


    def init(self, problem: BilevelProblem, oracles: Any, generator: torch.Generator) -> ITDState:
        self._require_bound()
        x, y = problem.x0, problem.y0
        return ITDState(k=0, x=x, y=y, iterate=(x, y, None), outer=build_outer(self.label, self, x),
                        auto=self.auto_start(oracles, x, y, generator))

    def step(self, state: ITDState, oracles: Any, batches: Any) -> ITDState:
        x, y, k = state.x, state.y.detach(), state.k  # no gradient through y^0
        T, Tb = self.inner_steps, self._tb
        auto, rules = state.auto, self.auto_steps
        auto_y = rules is not None and rules.lr_y
        # with an automatic θ: the forward gradients' norms (safeguard) and the backward HVPs' Rayleigh quotients
        watch = auto_y and bool(getattr(batches, "full", False))
        norms: list[Tensor] = []
        quotients: list[Tensor] = []
        theta = auto.theta if auto_y else schedule_value(self.lr_y, k)
        # the first T − T_b steps: plain GD (nothing to differentiate through)
        if auto_y:
            for t in range(T - Tb):
                grad = oracles.grad_y_g(x, y, batches("inner", t))
                norms.append(torch.linalg.vector_norm(grad))
                y = y - theta * grad
        else:
            y = self.inner_loop.run(oracles, x, y, batches, k, steps=T - Tb)
        points = []  # linearisations at y^(t−1) for the last T_b steps, in forward order
        for t in range(T - Tb, T):  # 0-based step index; the step's draw serves its backward products too
            point = oracles.at(x, y, batches("inner", t))
            points.append(point)
            grad = point.grad_y_g()
            if auto_y:
                norms.append(torch.linalg.vector_norm(grad))
            y = y - theta * grad
        direction, p = oracles.grad_f(x, y, batches("upper"))
        for i, point in enumerate(reversed(points)):  # t = T, T − 1, …, T − T_b + 1
            direction = direction - theta * point.cross(p)
            if i < Tb - 1:
                hp = point.hvp(p)
                if auto_y:
                    quotients.append(torch.stack((torch.sum(p * hp), torch.sum(p * p))).detach())
                p = p - theta * hp
        del points  # release the T_b linearisations (and their graphs) now
        direction, y = direction.detach(), y.detach()
        events: tuple = ()
        rejected = False
        if rules is not None:
            grew = spectrum = None
            if watch and norms:
                stacked = torch.stack(norms).detach()
                # growth at some step (not at the round-off floor of a converged y), or an overflow
                grew = (torch.any(stacked[1:] > stacked[:-1]) & (
                    theta * stacked[-1] > _NOISE_ULPS * torch.finfo(y.dtype).eps * torch.linalg.vector_norm(y))
                ) | ~torch.all(torch.isfinite(stacked)) | ~torch.all(torch.isfinite(direction))
                rejected = bool(grew)  # the one host read
            if quotients and not rejected:  # pᵀAp / pᵀp where p ≠ 0 (one host read)
                q = [a / b for a, b in torch.stack(quotients).to(torch.float64).tolist() if b > 0]
                spectrum = (min(q), max(q)) if q else None
            if rules.lr_x and not rejected:
                x_new, auto = rules.x_step(auto, x, direction)
            auto, events = rules.observe(auto, grew, spectrum)
        if rejected:  # θ was too large: y^T and D are not usable; keep x_k, y^0 and the last accepted D
            x_new, y, direction = x, state.y.detach(), state.direction
            events = events + ("auto_step_rejected",)
        elif rules is not None and rules.lr_x:
            pass  # x_new from AdaGrad-norm, above
        elif state.outer is None:
            x_new = (x - schedule_value(self.lr_x, k) * direction).detach()
        else:
            x_new = state.outer.step(x, direction)
        return dataclasses.replace(
            state, k=k + 1, x=x_new, y=y,
            iterate=(x, y, None), direction=direction, auto=auto, events=add_events(state.events, events),
        )


def itd(**options: Any) -> ITD:
    """Configure ITD; see ``ITD`` for the options and defaults."""
    return ITD.create(**options)
