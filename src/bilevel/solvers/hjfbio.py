"""HJFBiO: Hessian/Jacobian-free single loop with finite-difference products (Huang, "Optimal
Hessian/Jacobian-Free Nonconvex-PL Bilevel Optimization", ICML 2024)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping, Optional

import torch
from torch import Tensor

from .._validation import check_bool, check_positive
from ..auto_steps import FirstOrderAuto, StepState
from ..inner import schedule_value
from ..outer import OuterOptimizer
from ..outer import build as build_outer
from ..outer import check_options as check_outer
from ..problem import BilevelProblem
from ..schedules import PowerDecay, ScheduleLike, as_schedule
from .base import Solver, add_events, register


@dataclass(frozen=True)
class HJFBiOState:
    """k: iterations done.  x, y, v: x_k, y_k, v_k (the next to update).  iterate: (x_{k−1}, y_{k−1},
    v_{k−1}), the point of the last step's directions."""

    k: int
    x: Tensor
    y: Tensor
    v: Tensor
    iterate: tuple
    events: Mapping[str, int] = field(default_factory=dict)
    #: the ``outer`` optimizer of x (``bilevel.outer``; mutable, like a generator), else None
    outer: Optional[OuterOptimizer] = field(default=None, compare=False)
    #: the automatic steps (``bilevel.auto_steps``), None when lr_x, lr_y and eta are given or preset
    auto: Optional[StepState] = None


@register
@dataclass(frozen=True, kw_only=True)
class HJFBiO(FirstOrderAuto, Solver):
    """HJFBiO — Hessian/Jacobian-free bilevel optimisation, single loop (Huang, "Optimal Hessian/Jacobian-Free
    Nonconvex-PL Bilevel Optimization", ICML 2024).

    Iteration k, every direction at (x_k, y_k, v_k), then all updates at once:

        (gx±, gy±) = (∇_x g, ∇_y g)(x_k, y_k ± h v_k)       (two joint gradients of g)
        Âv = (gy+ − gy−) / 2h ≈ A_k v_k;  Ĵv = (gx+ − gx−) / 2h ≈ J_k v_k   (A = ∇²_yy g, J = ∇²_xy g)
        v_{k+1} = v_k − η (Âv − ∇_y f(x_k, y_k))                               (eta = η)
        y_{k+1} = y_k − θ_k ∇_y g(x_k, y_k)                                     (lr_y = θ)
        x_{k+1} = x_k − λ_k (∇_x f(x_k, y_k) − Ĵv)                              (lr_x = λ; Ĵ v_k, the old v)

    The shift h: ``scaled_shift=False`` uses h = δ (y ± δ v_k, the paper's form); ``scaled_shift=True``
    uses h = δ/‖v_k‖ (a step of length δ along v_k/‖v_k‖, then rescaled by ‖v_k‖), which keeps the
    difference well scaled whatever ‖v_k‖ is.  Defaults by the problem's dtype: float64 δ = 1e-5, unscaled
    (truncation error O(δ²‖v‖²), rounding O(ε/δ) ≈ 1e-11 relative); lower precision δ = 1e-3, scaled (the
    O(ε/δ) rounding term dominates in float32, so δ must be larger and the shift length controlled).

    Oracle cost per iteration: **2 joint ∇g** (each counted as 1 ∇_y g + 1 ∇_x g) for the finite
    differences, 1 ∇_y g for the y-step, 1 ∇_y f, 1 ∇_x f; **no HVPs, no cross products**.  When v_k is
    exactly 0 (the first iteration: v_0 = 0) both products are 0 and the two joint calls are skipped.
    Totals over K ≥ 1 iterations (b_0 ≠ 0, so v stays non-zero after the first): ∇_y g 3K − 2,
    ∇_x g 2K − 2, ∇_y f K, ∇_x f K.

    Mini-batches (the paper's analysis is deterministic; this is the natural stochastic form): the two
    joint gradients of a central difference share one ``hvp`` draw (a difference of two batches would not
    be a derivative); the y-step the ``inner`` draw 0; ∇_y f and ∇_x f one ``upper`` draw.  Draws per
    iteration: 1 hvp (none while v = 0), 1 inner, 1 upper.  Samples per iteration: 5·B on g (1·B in the
    first), 2·B_upper on f.

    η is the v-step, separate from the inner step θ (the reference used θ for both); lr_x and lr_y accept
    schedules.  There is no inner_steps: one y-step per iteration.  Step sizes and η come from the
    problem's scales, the published settings or the user, else they are automatic.

    Automatic steps (lr_x, lr_y, eta that nothing sets, or ``"auto"``; ``bilevel.auto_steps``), Hessian-free
    like the method: θ = η = 1/L̂ with L̂ from min(10, dy) Lanczos steps on secant products of ∇_y g at
    (x_0, y_0) (min(10, dy) + 1 extra ∇_y g, once, full data; no HVP), raised by the Rayleigh quotient
    v_kᵀÂv_k/‖v_k‖² of each iteration's own finite difference (no extra call; one host read per iteration);
    λ by AdaGrad-norm on the x-direction.  Why these: the y-step is gradient descent on g(x_k, ·) and the
    v-step gradient descent on ½vᵀA_kv − b_kᵀv, both stable for a step < 2/L.  No growth safeguard: one
    ∇_y g per iteration, at a point whose x has moved, gives no two gradients of one g(x, ·) to compare.

    Published settings (``settings``, looked up by the problem's experiment key; hyper-cleaning only):

        ======  =====  =====  ===================================  ===  =====================
                λ      θ      η                                    T    K
        Syn     —      —      —                                    —    —
        HC      500    0.1    0.1 (the reference's effective one)  1    6000 (log every 50)
        Stoc    —      —      —                                    —    —
        ======  =====  =====  ===================================  ===  =====================
    ``outer=`` (with ``outer_options``, ``outer_scheduler``, ``outer_scheduler_options``): a ``torch.optim``
    optimizer makes the x-step from the same direction instead of x − λ·D (``bilevel.outer``; lr_x unused);
    the oracle cost is unchanged.
    """

    name: ClassVar[str] = "hjfbio"
    label: ClassVar[str] = "HJFBiO"
    required: ClassVar[tuple[str, ...]] = ("lr_x", "lr_y", "eta")
    auto_options: ClassVar[tuple[str, ...]] = ("lr_x", "lr_y", "eta")
    settings: ClassVar[Mapping[str, Mapping[str, Any]]] = {"hyperclean": {"eta": 0.1}}

    lr_x: Optional[ScheduleLike] = None
    outer: Any = None
    outer_options: Optional[Mapping[str, Any]] = None
    outer_scheduler: Any = None
    outer_scheduler_options: Optional[Mapping[str, Any]] = None
    lr_y: Optional[ScheduleLike] = None
    eta: Optional[float] = None
    delta: Optional[float] = None
    scaled_shift: Optional[bool] = None

    checks: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        # mini-batches (tests/test_stochastic_solvers.py): quadratic(dx=5, dy=20, κ=10) and
        # synthetic(n=100, κ=100), both n_samples=200, n_samples_f=100, MiniBatch(32), seed 0; reduction:
        # ‖∇φ(x_0)‖ / the mean of the last 5 of 21 evaluations (the noise floor); [measured: quadratic seeds 0–2,
        #  synthetic seeds 0–1]
        # SOBA's decaying steps (λ_k ∝ k^(−3/5), θ_k ∝ k^(−2/5)); synthetic: λ_k = k^(−0.4), K = 1000
        "stochastic/quadratic": {"max_iter": 500, "reduction": 600, "batch_size": 32, "options": {
            "lr_x": PowerDecay(0.5, 0.6), "lr_y": PowerDecay(0.1, 0.4)}},  # [1377, 1735]
        # [500, 502]
        "stochastic/synthetic": {"max_iter": 1000, "reduction": 200, "batch_size": 32,
            "options": {"lr_x": PowerDecay(1.0, 0.4)}},
        # single loop: one y-step and one v-step per iteration, hence the longer budgets
        "quadratic": {"max_iter": 600, "reduction": 1e3},
        "synthetic": {"max_iter": 500, "reduction": 1e3},
    }

    def validate(self, opts: Mapping[str, Any]) -> None:
        owner = "HJFBiO"
        check_outer(owner, opts)
        for name in ("lr_x", "lr_y"):
            if opts.get(name) is not None and not self.auto_value(owner, name, opts[name]):
                as_schedule(opts[name], f"{owner}: {name}")
        if opts.get("eta") is not None and not self.auto_value(owner, "eta", opts["eta"]):
            check_positive(owner, "eta", opts["eta"])
        if opts.get("delta") is not None:
            check_positive(owner, "delta", opts["delta"])
        if opts.get("scaled_shift") is not None:
            check_bool(owner, "scaled_shift", opts["scaled_shift"])

    def lookup(self, problem: BilevelProblem, keys: Iterable[str], stochastic: bool = False) -> Any:
        """The base lookup, then the defaults that depend on the problem's dtype: float64 δ = 1e-5 unscaled,
        lower precision δ = 1e-3 scaled."""
        keys = tuple(keys)
        found = super().lookup(problem, keys, stochastic)
        if found is not None:
            return found
        wide = problem.dtype == torch.float64
        dtype_defaults = {"delta": 1e-5 if wide else 1e-3, "scaled_shift": not wide}
        for key in keys:
            if key in dtype_defaults:
                return dtype_defaults[key]
        return None

    def expected_counts(self, iterations: int) -> dict[str, float]:
        """Per iteration after the first: 3 ∇_y g, 2 ∇_x g, 1 ∇_x f, 1 ∇_y f (the first: 1 ∇_y g); an automatic
        θ or η adds min(10, dy) + 1 ∇_y g once (the secant start estimate)."""
        self._require_bound()
        K = iterations
        fd = max(K - 1, 0)  # iterations with v_k ≠ 0: all but the first
        return {
            "grad_y_g": K + 2 * fd + self.auto_start_counts(), "grad_x_g": 2 * fd, "grad_x_f": K, "grad_y_f": K,
            "hvp": 0, "cross": 0, "cross_t": 0,
        }

    def products(self, oracles: Any, x: Tensor, y: Tensor, v: Tensor, batch: Any = None) -> tuple[Tensor, Tensor]:
        """(Âv, Ĵv): central differences of the joint gradient of g along v, both on ``batch``; (0, 0)
        without any call when v is exactly 0.  Needs a bound solver (δ and the shift mode resolved)."""
        self._require_bound()
        if not bool(torch.any(v != 0)):
            return torch.zeros_like(y), torch.zeros_like(x)
        return self._differences(oracles, x, y, v, batch)

    def _differences(self, oracles: Any, x: Tensor, y: Tensor, v: Tensor, batch: Any) -> tuple[Tensor, Tensor]:
        """(Âv, Ĵv) for a v known to be non-zero."""
        h = self.delta
        if self.scaled_shift:
            norm = float(torch.linalg.vector_norm(v))
            # a non-finite ‖v‖ gives a non-finite h: the run then ends as "diverged" instead of raising
            h = h / norm if math.isfinite(norm) and norm > 0 else float("nan")
        gx_plus, gy_plus = oracles.grad_g(x, y + h * v, batch)
        gx_minus, gy_minus = oracles.grad_g(x, y - h * v, batch)
        return (gy_plus - gy_minus) / (2 * h), (gx_plus - gx_minus) / (2 * h)

    def init(self, problem: BilevelProblem, oracles: Any, generator: torch.Generator) -> HJFBiOState:
        self._require_bound()
        x, y = problem.x0, problem.y0
        v = torch.zeros_like(y)
        return HJFBiOState(k=0, x=x, y=y, v=v, iterate=(x, y, v), outer=build_outer(self.label, self, x),
                           auto=self.auto_start(oracles, x, y, generator))

    def step(self, state: HJFBiOState, oracles: Any, batches: Any) -> HJFBiOState:
        x, y, v, k = state.x, state.y, state.v, state.k
        auto, rules = state.auto, self.auto_steps
        spectrum = None
        if bool(torch.any(v != 0)):  # the hvp draw only when the differences are taken (no unused draw)
            av, jv = self._differences(oracles, x, y, v, batches("hvp"))
            if rules is not None and rules.needs_curvature:  # vᵀÂv/‖v‖², from the difference just taken
                q = float(torch.dot(v.reshape(-1), av.reshape(-1)) / torch.dot(v.reshape(-1), v.reshape(-1)))
                spectrum = (q, q)
        else:
            av, jv = torch.zeros_like(y), torch.zeros_like(x)
        d_y = oracles.grad_y_g(x, y, batches("inner"))
        gx_f, b = oracles.grad_f(x, y, batches("upper"))
        eta = auto.eta if rules is not None and rules.eta else self.eta
        theta = auto.theta if rules is not None and rules.lr_y else schedule_value(self.lr_y, k)
        v_new = v - eta * (av - b)
        y_new = y - theta * d_y
        events = ()
        if rules is not None and rules.lr_x:
            x_new, auto = rules.x_step(auto, x, gx_f - jv)
        elif state.outer is None:
            x_new = x - schedule_value(self.lr_x, k) * (gx_f - jv)
        else:
            x_new = state.outer.step(x, gx_f - jv)
        if rules is not None:
            auto, events = rules.observe(auto, None, spectrum)
        return dataclasses.replace(state, k=k + 1, x=x_new, y=y_new, v=v_new, iterate=(x, y, v), auto=auto,
                                   events=add_events(state.events, events))


def hjfbio(**options: Any) -> HJFBiO:
    """Configure HJFBiO; see ``HJFBiO`` for the options and defaults."""
    return HJFBiO.create(**options)
