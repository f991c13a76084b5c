"""PBGD: penalty-based bilevel gradient descent, V-PBGD (Shen & Chen, "On Penalty-based Bilevel Gradient
Descent Method", ICML 2023)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Optional

import torch
from torch import Tensor

from .._validation import check_int
from ..auto_steps import FirstOrderAuto, StepState
from ..inner import GD, InnerGDLoop, schedule_value
from ..outer import OuterOptimizer
from ..outer import build as build_outer
from ..outer import check_options as check_outer
from ..problem import BilevelProblem
from ..schedules import ScheduleLike, as_schedule
from .base import Solver, add_events, register


@dataclass(frozen=True)
class PBGDState:
    """k: iterations done.  x, y: x_k, y_k.  y_hat: ŷ_{k−1} (T GD steps on g(x_{k−1}, ·), the next warm
    start).  direction: the last step's x-direction.  iterate: (x_{k−1}, y_{k−1}, None).  PBGD has no v."""

    k: int
    x: Tensor
    y: Tensor
    y_hat: Tensor
    iterate: tuple
    v: Optional[Tensor] = None
    direction: Optional[Tensor] = None
    events: Mapping[str, int] = field(default_factory=dict)
    #: the ``outer`` optimizer of x (``bilevel.outer``; mutable, like a generator), else None
    outer: Optional[OuterOptimizer] = field(default=None, compare=False)
    #: the automatic θ (``bilevel.auto_steps``), None when lr_y is given or preset
    auto: Optional[StepState] = None


@register
@dataclass(frozen=True, kw_only=True)
class PBGD(FirstOrderAuto, InnerGDLoop, Solver):
    """V-PBGD — gradient descent on the value-function penalty F_γ(x, y) = f(x, y) + γ (g(x, y) − g*(x))
    (Shen & Chen, "On Penalty-based Bilevel Gradient Descent Method", ICML 2023).

    g*(x) = min_y′ g(x, y′) is estimated by g(x, ŷ), and by Danskin's theorem ∇g*(x) ≈ ∇_x g(x, ŷ).
    Iteration k (paper symbols; our option names in brackets):

        ŷ_k = T GD steps y′ ← y′ − θ ∇_y g(x_k, y′) from ŷ_{k−1}              [inner_steps = T, lr_y = θ]
        x_{k+1} = x_k − α_x (∇_x f(x_k, y_k) + γ_k (∇_x g(x_k, y_k) − ∇_x g(x_k, ŷ_k)))   [lr_x = α_x]
        y_{k+1} = y_k − α_y (∇_y f(x_k, y_k) + γ_k ∇_y g(x_k, y_k))           [lr_y_penalized = α_y]

    (x and y move simultaneously from (x_k, y_k): one joint ∇f and one joint ∇g serve both blocks.)
    The ŷ loop is the shared inner solver ``bilevel.inner.GD(steps=T, lr=θ)``.
    With a constant γ the method converges to a stationary point of F_γ, whose x has ‖∇φ(x)‖ = O(1/γ):
    the neighbourhood shrinks like 1/γ (tests check the factor 10 between γ = 10 and γ = 100).  With T > 1,
    ŷ contracts faster than y and γ(∇_x g(x, y) − ∇_x g(x, ŷ)) is O(γ) until y catches up: on
    ill-conditioned g a large γ then needs a small lr_x and many iterations (T = 1 avoids the imbalance).

    Mini-batches (the stochastic V-PBGD of the paper replaces every gradient by a sampled one): ŷ-step t
    draws ``inner`` t; the joint ∇g at (x_k, y_k) and ∇_x g at (x_k, ŷ_k) share one ``lower`` draw (the
    penalty's g(x, y) − g(x, ŷ) on one batch); the joint ∇f one ``upper`` draw.  Draws per iteration:
    T inner, 1 lower, 1 upper.  Samples per iteration: (T + 3)·B on g (the joint ∇g counts one ∇_x g
    and one ∇_y g), 2·B_upper on f.

    Options: lr_x (α_x: taken as given; the curvature of F_γ in x grows like γ, so raise γ with a smaller
    lr_x), lr_y (θ, the ŷ steps), lr_y_penalized (α_y; default None = θ_k / max(γ_k, 1):
    the paper's α_y ≤ 1/(L_f + γ L_g) is roughly θ/γ for γ ≥ 1 when θ ≈ 1/L_g; below γ = 1 the
    f-term dominates and θ itself is kept), gamma (γ: a number or a slowly increasing schedule, default
    10), inner_steps (T, default 10).  The G-PBGD variant (penalty ‖∇_y g‖²) is not implemented.

    Oracle cost per iteration (exact, counted): T ∇_y g for ŷ, 1 joint ∇g at (x_k, y_k) (one ∇_x g and
    one ∇_y g), 1 ∇_x g at (x_k, ŷ_k), 1 joint ∇f; in total T + 1 ∇_y g, 2 ∇_x g, 1 ∇_x f, 1 ∇_y f,
    no HVPs.

    Suggested starting values (PBGD is not in the reference experiments; γ as in Shen & Chen 2023):
    γ ∈ {10, 100}, T = 10; steps from the problems' scales: synthetic λ = 1, θ = 1e-5; hyper-cleaning
    λ = 500, θ = 0.1.

    Automatic steps (``bilevel.auto_steps``): only θ, the ŷ loop's step (lr_y that nothing sets, or ``"auto"``),
    and with it α_y = θ/max(γ, 1) when lr_y_penalized is unset: θ = 1/L̂ with L̂ from min(10, dy) Lanczos steps
    on secant products of ∇_y g at (x_0, y_0) (min(10, dy) + 1 extra ∇_y g, once, full data; no HVP), doubled
    when ‖∇_y g‖ grows at a ŷ-step (the AID safeguard; under mini-batches one same-batch ∇_y g more per
    iteration).  The ŷ loop is gradient descent on g(x_k, ·), stable for θ < 2/L, so curvature sets it.  Not
    automatic, so still required on a problem without scales: α_x (lr_x).  Why: F_γ's curvature in x grows
    like γ (∇²_xx f + γ(∇²_xx g − ∇²g*), which no estimate of ∇²_yy g bounds), and AdaGrad-norm in its place
    fails on the method's early directions: y starts far from its target and moves by α_y ≈ θ/γ per step, so
    γ(∇_x g(x, y) − ∇_x g(x, ŷ)) is large for many iterations and the sum Σ‖D_i‖² keeps α_x tiny for good
    (measured on the zoo quadratics: reduction 3 in 1000 iterations at γ = 300, T = 1, where the checks'
    α_x = 0.03 reaches 1e3 in 2000).  The error for a missing lr_x says so.
    ``outer=`` (with ``outer_options``, ``outer_scheduler``, ``outer_scheduler_options``): a ``torch.optim``
    optimizer makes the x-step from the same direction instead of x − λ·D (``bilevel.outer``; lr_x unused);
    the oracle cost is unchanged.
    """

    name: ClassVar[str] = "pbgd"
    label: ClassVar[str] = "PBGD"
    defaults: ClassVar[Mapping[str, Any]] = {"inner_steps": 10, "gamma": 10.0}
    auto_options: ClassVar[tuple[str, ...]] = ("lr_y",)

    lr_x: Optional[ScheduleLike] = None
    outer: Any = None
    outer_options: Optional[Mapping[str, Any]] = None
    outer_scheduler: Any = None
    outer_scheduler_options: Optional[Mapping[str, Any]] = None
    lr_y: Optional[ScheduleLike] = None
    lr_y_penalized: Optional[ScheduleLike] = None
    gamma: Optional[ScheduleLike] = None
    inner_steps: Optional[int] = None

    # Quadratic: γ = 10 stalls at its O(1/γ) floor ‖∇φ‖ = 0.021 (reduction 75), so γ = 300 (floor 7.6e-4)
    # with the x-step shrunk, since the curvature of F_γ in x grows like γ (the paper's α ≤ 1/(L_f + γ L_g)
    # bounds both blocks): at γ = 300 lr_x = 0.06 converges and 0.1 diverges; 0.03 is used.  T = 1: with
    # T = 5, ŷ contracts five times faster than y, γ(∇_x g(x, y) − ∇_x g(x, ŷ)) is then O(γ) and even the
    # γ = 100 floor takes ~2e4 iterations; with T = 1 both copies contract alike.  Measured reduction 2.1e3
    # at K = 2000.  Synthetic, defaults (γ = 10, presets): measured 6.8e5 at K = 2000.
    checks: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        # mini-batches (tests/test_stochastic_solvers.py): quadratic(dx=5, dy=20, κ=10) and
        # synthetic(n=100, κ=100), both n_samples=200, n_samples_f=100, MiniBatch(32), seed 0; reduction:
        # ‖∇φ(x_0)‖ / the mean of the last 5 of 21 evaluations (the noise floor); [measured: quadratic seeds 0–2,
        #  synthetic seeds 0–1]
        # quadratic: γ = 30 (an O(1/γ) floor) with the x-step shrunk for it, T = 1 (see the quadratic check)
        "stochastic/quadratic": {"max_iter": 500, "reduction": 15, "batch_size": 32, "options": {
            "gamma": 30.0, "lr_x": 0.01, "inner_steps": 1}},  # [34, 37]
        # [83, 84]
        "stochastic/synthetic": {"max_iter": 500, "reduction": 40, "batch_size": 32, "options": {"lr_x": 0.2}},
        "quadratic": {"max_iter": 2000, "reduction": 1e3,
                      "options": {"gamma": 300.0, "lr_x": 0.03, "inner_steps": 1}},
        "synthetic": {"max_iter": 2000, "reduction": 1e4},
        "counts": {"options": {"inner_steps": 3}},
    }

    def validate(self, opts: Mapping[str, Any]) -> None:
        owner = "PBGD"
        check_outer(owner, opts)
        if isinstance(opts.get("lr_x"), str) and opts["lr_x"] == "auto":
            raise TypeError(f"{owner}: lr_x cannot be 'auto' (only lr_y is: F_γ's x-curvature grows like γ and no "
                            "curvature estimate of g bounds it); pass a number, e.g. lr_x=0.03 at gamma=300.")
        for name in ("lr_x", "lr_y", "lr_y_penalized", "gamma"):
            if opts.get(name) is not None and not self.auto_value(owner, name, opts[name]):
                as_schedule(opts[name], f"{owner}: {name}")
        if opts.get("inner_steps") is not None:
            check_int(owner, "inner_steps", opts["inner_steps"], 1)

    def expected_counts(self, iterations: int) -> dict[str, float]:
        """Per iteration: T + 1 ∇_y g, 2 ∇_x g, 1 ∇_x f, 1 ∇_y f; no second-order products.  An automatic θ adds
        min(10, dy) + 1 ∇_y g once (the secant estimate), and under mini-batches 1 ∇_y g per iteration (the
        safeguard's same-batch gradient)."""
        self._require_bound()
        T, K = self.inner_steps, iterations
        return {"grad_y_g": (T + 1) * K + self.auto_start_counts() + self.auto_watch_counts(K), "grad_x_g": 2 * K, "grad_x_f": K, "grad_y_f": K,
                "hvp": 0, "cross": 0, "cross_t": 0}


    def init(self, problem: BilevelProblem, oracles: Any, generator: torch.Generator) -> PBGDState:
        self._require_bound()
        x, y = problem.x0, problem.y0
        return PBGDState(k=0, x=x, y=y, y_hat=y.clone(), iterate=(x, y, None), outer=build_outer(self.label, self, x),
                         auto=self.auto_start(oracles, x, y, generator))

    def unset_hint(self, name: str) -> str:
        if name == "lr_x":
            return ("; PBGD sets only θ (lr_y) from curvature: α_x must stay stable on F_γ, whose x-curvature grows "
                    "like γ and no estimate of ∇²_yy g bounds — pass lr_x (e.g. 0.03 at γ = 300 with inner_steps=1)")
        return ""

    def step(self, state: PBGDState, oracles: Any, batches: Any) -> PBGDState:
        x, y, k = state.x, state.y, state.k
        auto, rules, grew, events = state.auto, self.auto_steps, None, ()
        gamma = schedule_value(self.gamma, k)
        if rules is not None and rules.lr_y:  # automatic θ: the ŷ loop also reports growth (the safeguard)
            theta = auto.theta
            y_hat, grew = GD(steps=self.inner_steps, lr=theta).run_watched(oracles, x, state.y_hat, batches, k,
                                                                             any_step=True)
        else:
            theta = schedule_value(self.lr_y, k)
            y_hat = self.inner_loop.run(oracles, x, state.y_hat, batches, k)
        penalized = self.lr_y_penalized
        alpha_y = schedule_value(penalized, k) if penalized is not None else theta / max(gamma, 1.0)
        lower = batches("lower")
        gx_g, gy_g = oracles.grad_g(x, y, lower)
        gx_g_hat = oracles.grad_x_g(x, y_hat, lower)  # same batch as gx_g
        gx_f, gy_f = oracles.grad_f(x, y, batches("upper"))
        d_x = gx_f + gamma * (gx_g - gx_g_hat)
        d_y = gy_f + gamma * gy_g
        if state.outer is None:
            x_new = (x - schedule_value(self.lr_x, k) * d_x).detach()
        else:
            x_new = state.outer.step(x, d_x)
        if rules is not None:
            auto, events = rules.observe(auto, grew, None)
        return dataclasses.replace(
            state, k=k + 1, x=x_new, y=(y - alpha_y * d_y).detach(),
            y_hat=y_hat.detach(), iterate=(x, y, None), direction=d_x.detach(), auto=auto,
            events=add_events(state.events, events),
        )


def pbgd(**options: Any) -> PBGD:
    """Configure PBGD; see ``PBGD`` for the options and defaults."""
    return PBGD.create(**options)
