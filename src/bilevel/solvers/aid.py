"""The approximate-implicit-differentiation (AID) loop, assembled from parts: ``aid(inner=…, v_solver=…)``.

Sequential order (default; LancBiO, SubBiO, AmIGO, stocBiO, BSA, TTSA), iteration k:

    y_k ← inner solver from y_{k−1}:  T steps y ← y − θ_k ∇_y g(x_k, y)          (T ∇_y g; role "inner")
    b_k ← ∇_y f(x_k, y_k)                                                         (∇_x f, ∇_y f; "upper")
    v_k ← v-solver(A_k, b_k, carried state),  A_k = ∇²_yy g(x_k, y_k)             (its HVPs; "hvp")
    x_{k+1} ← x_k − λ_k (∇_x f(x_k, y_k) − ∇²_xy g(x_k, y_k) v_k)                 (1 cross; "cross")

Simultaneous order (SOBA, single loop): every direction at (x_k, y_k, v_k), then all updates at once:

    D_y = ∇_y g(x_k, y_k),  D_x = ∇_x f − J_k v_k,  v_{k+1} = v-solver(A_k, b_k) from v_k,
    y_{k+1} = y_k − θ D_y (then T − 1 further inner steps, if T > 1),  x_{k+1} = x_k − λ D_x.

Any inner solver pairs with any registered v-solver.  The named algorithms (``lancbio``, ``subbio``,
``amigo_gd``, ``amigo_cg``, ``soba``, ``ttsa``, ``stocbio``, ``bsa``) are short factories over ``aid``
(one file each) that pick the v-solver, the defaults and the published settings.

Options reach the parts by dotted names (``v_solver.m=20``, ``inner.steps=3``) and by the short forms of
the papers: ``inner_steps`` (T) → ``inner.steps``, ``lr_y`` (θ) → ``inner.lr``, ``v_steps`` (Q) →
``v_solver.steps``, and any other option of the v-solver by its own name (``m``, ``eta``, ``rtol``, …).

Step sizes that nothing sets — no user value, no published setting for the problem's experiment, no problem
scale (a problem built from callables) — or that are given as ``"auto"`` (θ = ``lr_y``, η = the v-solver's
``eta``, λ = ``lr_x``) are automatic: ``bilevel.auto_steps`` (θ = η = 1/L̂ from a counted Lanczos estimate
kept current by the v-solver's Ritz values, AdaGrad-norm λ); ``AIDState.auto`` holds the values.

``damping=δ`` makes every v-solver product (A_k + δI)u (see ``AID``).  Each step exposes the v-solver's
curvature evidence (``AIDState.curvature``) and whether the evaluated v is trusted; ``solve`` turns them
into statuses (``not_strongly_convex``, no ``converged`` on an untrusted estimate).

``freeze_x_first`` implements the LancBiO theorem's variant (no x-step in the first iterations of each
v-solver epoch); only a v-solver with restart epochs (``has_epochs``) accepts it.

Mini-batches (``bilevel.sampling``).  Each oracle call names the role of its data: the y-steps
``batches("inner", t)`` (a fresh draw per inner step t), b and ∇_x f one ``batches("upper")`` draw (one
joint ∇f call), the cross product ``batches("cross")``, the v-solver's products ``batches("hvp", i)`` as
``hessian_batch`` says:

    "iteration"  (default) every product of iteration k on one draw, batches("hvp"): one operator A_k per
                 v-solve (AmIGO-CG: CG keeps its conjugacy; SOBA; SubBiO's three products)
    "product"    the i-th product of iteration k on batches("hvp", i): each product an independent
                 estimate of A_k (AmIGO-GD, stocBiO, TTSA, BSA, whose papers sample every HVP afresh)
    "epoch"      one draw per restart epoch of the v-solver, held in ``AIDState.hvp_batch``: drawn at the
                 iterations where ``v_solver.starts_epoch(v_state, k)`` is True (every iteration by
                 default; a Krylov solver's restarts), so a basis is built on one operator

A solver's ``batch_roles`` (set by its factory) groups roles that share a draw (SOBA: the y-step, the HVP
and the cross product on one training batch).  With ``FullBatch`` every mode gives the same products,
bit for bit (the point is reused whenever the batch is the same object), and no draw is made that no
oracle call uses.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor

from .._validation import check_choice, check_int, check_positive, suggest
from ..auto_steps import AUTO, PROBES, AutoSteps, StepState, is_auto
from ..inner import GD as InnerGD
from ..inner import InnerSolver, schedule_value
from ..linear_solvers.base import Curvature, LinearSolver, SolveInfo
from ..oracles import point_on
from ..outer import FIELDS as OUTER_FIELDS
from ..outer import OuterOptimizer
from ..outer import build as build_outer
from ..outer import check_options as check_outer
from ..outer import record as record_outer
from ..outer import route as route_outer
from ..problem import BilevelProblem
from ..schedules import ScheduleLike, as_schedule
from .base import SOLVERS, Solver, add_events

#: short option names of the papers → dotted part options
ALIASES = {"inner_steps": "inner.steps", "lr_y": "inner.lr", "v_steps": "v_solver.steps"}
_SHORT = {dotted: short for short, dotted in ALIASES.items()}
_IDENTITY = {"identity": True}


@dataclass(frozen=True)
class AIDState:
    """k: iterations done.  x: x_k (next to update).  y, v: the current lower iterate and v.  v_state: the
    v-solver's carried state.  iterate: (x_k, y_k, v_k) of the last step.  last_info: its ``SolveInfo``.

    curvature: the v-solver's curvature evidence in the last step (``SolveInfo.curvature``), else None.
    probed: whether the last step's v-solve made any product (a solve without one, e.g. a Neumann draw
    p = 0, can neither show nor clear curvature evidence).
    trusted: whether the v of ``iterate`` came from a solve without curvature evidence (``solve`` reports
    ``converged`` only then).  inner_growth: a 0-dim bool tensor, True when ‖∇_y g‖ grew at every inner
    step of the last iteration (read by ``solve`` with its finiteness check; None when not judged)."""

    k: int
    x: Tensor
    y: Tensor
    v: Tensor
    v_state: Any
    iterate: tuple
    generator: torch.Generator
    last_info: Optional[SolveInfo] = None
    events: Mapping[str, int] = field(default_factory=dict)
    curvature: Optional[Curvature] = None
    probed: bool = False
    trusted: bool = True
    inner_growth: Optional[Tensor] = None
    #: hessian_batch="epoch": (batch,), the HVP draw held for the current v-solver epoch (None before the first)
    hvp_batch: Optional[tuple] = None
    #: the ``outer`` optimizer of x (``bilevel.outer.OuterOptimizer``; mutable, like the generator), else None
    outer: Optional[OuterOptimizer] = field(default=None, compare=False)
    #: the automatic step sizes and curvature estimates L̂, μ̂ (``bilevel.auto_steps``); None when no step is "auto"
    auto: Optional[StepState] = None


#: where the v-solver's products take their batch (see the module docstring)
HESSIAN_BATCH = ("iteration", "product", "epoch")


@dataclass(frozen=True, kw_only=True)
class AID(Solver):
    """AID: any inner solver with any v-solver.  ``None`` options are filled at ``bind``.

    lr_x (λ): outer step, a number, a schedule of k, or "auto" (AdaGrad-norm, ``bilevel.auto_steps``; what an
    lr_x that nothing sets becomes).   inner: the inner solver (``GD(steps=T, lr=θ)``).
    v_solver: the linear-system solver for v ≈ A⁻¹b (``bilevel.linear_solvers``).
    order: "sequential" or "simultaneous".   freeze_x_first: skip the x-step in the first iterations of
    each v-solver epoch (epoch-based v-solvers only).   v_init: "zeros" (default) or "randn" (v_0 ~ N(0, I)).
    damping (δ ≥ 0, default None = 0): the v-solver solves (A_k + δI) v = b_k, every product being
    A_k u + δu (no extra HVP).  For g(x, ·) that is not strongly convex (a singular or indefinite A_k, run
    status ``not_strongly_convex``) this regularises the v-system; the hypergradient
    ∇_x f − J_k (A_k + δI)⁻¹ b_k is then biased: for SPD A_k, (A_k + δI)⁻¹b − A_k⁻¹b = −δ (A_k + δI)⁻¹ A_k⁻¹ b,
    a relative error of v of at most δ / (λ_min(A_k) + δ).  It does not regularise the inner problem: y
    still follows gradient descent on g (add ½δ‖y‖² to g for that).  Unset or 0: the plain HVP, bit for bit.
    hessian_batch: "iteration" (default), "product" or "epoch": which draw of the ``hvp`` role each of the
    v-solver's products takes under mini-batches (module docstring); no effect with ``FullBatch``.
    outer: a ``torch.optim`` optimizer for x instead of the plain step (a class, a name such as ``"adam"``, or a
    dotted path; ``bilevel.outer``), built with ``outer_options`` (e.g. ``{"lr": 1e-2}``; also ``outer.lr=…``)
    over one flat leaf holding x.  Each iteration writes D_k = ∇_x f − J_k v_k into its ``.grad`` and calls
    ``step()``; ``outer_scheduler`` (a ``torch.optim.lr_scheduler`` class or name, with
    ``outer_scheduler_options``; also ``outer_scheduler.step_size=…``) is stepped once per iteration after
    it.  lr_x is then unused (giving both is an error).  The oracle cost is unchanged.  Unset: the plain
    step, bit for bit.

    Oracle cost per iteration: T ∇_y g, 1 ∇_y f, 1 ∇_x f, the v-solver's HVPs, 1 cross product; with automatic θ
    or η, min(10, dy) HVPs once at the start (the curvature estimate; under mini-batches on the first
    iteration's ``hvp`` draw, its samples counted) and one host read per iteration; with an automatic θ under
    mini-batches, 1 ∇_y g more per iteration (the safeguard's same-batch comparison, ``GD.run_watched``).
    Samples per iteration with mini-batches (B_r: the batch size of role r): T·B_inner + (HVPs)·B_hvp +
    B_cross on g, 2·B_upper on f (∇_x f and ∇_y f are one call on one batch, counted once each); an
    autodiff graph build (``linearize``, none on problems with closed-form products) adds its batch again.
    """

    # identity: which algorithm this configures (set by the named factories, not options)
    name: str = field(default="aid", metadata=_IDENTITY)
    label: str = field(default="AID", metadata=_IDENTITY, repr=False)
    defaults: Mapping[str, Any] = field(default_factory=lambda: {"inner_steps": 5}, metadata=_IDENTITY,
                                        repr=False, compare=False)
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, metadata=_IDENTITY, repr=False,
                                                      compare=False)
    #: defaults that replace ``defaults`` when λ (lr_x) is automatic (looked up just before ``defaults``): a
    #: part option whose library default suits tuned steps but not AdaGrad-norm's long early x-steps
    auto_defaults: Mapping[str, Any] = field(default_factory=dict, metadata=_IDENTITY, repr=False, compare=False)
    required: tuple[str, ...] = field(default=("lr_x",), metadata=_IDENTITY, repr=False)
    default_order: str = field(default="sequential", metadata=_IDENTITY, repr=False)
    min_inner_steps: int = field(default=0, metadata=_IDENTITY, repr=False)
    batch_roles: Mapping[str, str] = field(default_factory=dict, metadata=_IDENTITY, repr=False,
                                           compare=False)
    #: set by ``bind``: which steps are automatic (``bilevel.auto_steps``), None when none is
    auto_steps: Optional[AutoSteps] = field(default=None, metadata=_IDENTITY, repr=False, compare=False)

    # options
    lr_x: Optional[ScheduleLike] = None
    inner: InnerSolver = field(default_factory=InnerGD)
    v_solver: Optional[LinearSolver] = None
    order: Optional[str] = None
    freeze_x_first: int = 0
    v_init: str = "zeros"
    damping: Optional[float] = None
    hessian_batch: Optional[str] = None
    outer: Any = None
    outer_options: Optional[Mapping[str, Any]] = None
    outer_scheduler: Any = None
    outer_scheduler_options: Optional[Mapping[str, Any]] = None

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.init and not f.metadata.get("identity")]

    @property
    def random_cost(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.v_solver, "random_cost", False))

    # ---- checks -----------------------------------------------------------------------------------------
    def validate(self, opts: Mapping[str, Any]) -> None:
        owner = self.label
        if isinstance(opts.get("lr_x"), str) and not is_auto(opts["lr_x"]):
            raise TypeError(f"{owner}: lr_x must be a number, a schedule or 'auto'; got str ({opts['lr_x']!r}).")
        if opts.get("lr_x") is not None and not is_auto(opts["lr_x"]):
            as_schedule(opts["lr_x"], f"{owner}: lr_x")
        _check_part(owner, "inner", opts.get("inner"))
        v_solver = _check_part(owner, "v_solver", opts.get("v_solver"))
        if opts.get("order") is not None:
            check_choice(owner, "order", opts["order"], ("sequential", "simultaneous"))
        check_int(owner, "freeze_x_first", opts["freeze_x_first"], 0)
        check_choice(owner, "v_init", opts["v_init"], ("zeros", "randn"))
        if opts.get("damping") is not None:
            check_positive(owner, "damping", opts["damping"], allow_zero=True)
        if opts.get("hessian_batch") is not None:
            check_choice(owner, "hessian_batch", opts["hessian_batch"], HESSIAN_BATCH)
        if opts["freeze_x_first"] and not getattr(v_solver, "has_epochs", False):
            raise ValueError(
                f"{owner}: freeze_x_first needs an epoch-based v-solver (Lanczos); {type(v_solver).__name__} "
                "has no epochs."
            )
        if opts["v_init"] != "zeros" and not getattr(v_solver, "uses_initial_v", True):
            raise ValueError(
                f"{owner}: v_init={opts['v_init']!r} would have no effect: the {type(v_solver).__name__} estimate "
                "is rebuilt from b every iteration (no warm start). Leave v_init='zeros'."
            )
        check_outer(owner, opts)
        steps = getattr(opts["inner"], "steps", None)
        if steps is not None and self.min_inner_steps:
            check_int(owner, "inner_steps", steps, self.min_inner_steps)
        if steps == 0 and (opts.get("order") or self.default_order) == "simultaneous":
            raise ValueError(f"{owner}: order='simultaneous' needs inner_steps >= 1; got 0.")

    # ---- binding -----------------------------------------------------------------------------------------
    def _resolved_fields(self, problem: BilevelProblem, stochastic: bool = False) -> dict[str, Any]:
        """The base resolution, then the order's and hessian_batch's defaults and each part's ``None``
        options, looked up by dotted and short name (``inner.steps`` / ``inner_steps``, ``v_solver.m`` /
        ``m``)."""
        opts = super()._resolved_fields(problem, stochastic)
        auto_x = is_auto(opts["lr_x"])
        by_rule: list[str] = []  # part options that auto_defaults filled (listed in Result.options["auto"])
        if opts["order"] is None:
            opts["order"] = self.default_order
        if opts["hessian_batch"] is None:
            opts["hessian_batch"] = "iteration"
        for part in ("inner", "v_solver"):
            obj = opts[part]
            if obj is None:
                continue
            values = {}
            for option, value in obj.options().items():
                if value is None:
                    short = short_name(part, option)
                    keys = (f"{part}.{option}",) + ((short,) if short else ())
                    found = self._lookup_part(problem, keys, stochastic, auto_x)
                    if found is not None:
                        values[option] = found
                        if auto_x and self._lookup_part(problem, keys, stochastic, False) is not found:
                            by_rule.append(short or f"{part}.{option}")  # filled by auto_defaults
                    elif (part, option) in _AUTO_PARTS and option in obj.presettable:
                        values[option] = AUTO  # nothing sets it: from curvature (bilevel.auto_steps)
            try:
                opts[part] = obj.resolved(values)
            except ValueError as err:
                hint = {"inner": "inner_steps/lr_y", "v_solver": "its option"}[part]
                raise ValueError(f"{self.label}: {err} (set it as {part}.<option> or {hint}).") from None
        flags = {"lr_x": is_auto(opts["lr_x"]), "lr_y": is_auto(getattr(opts["inner"], "lr", None)),
                 "eta": is_auto(getattr(opts["v_solver"], "eta", None))}
        opts["auto_steps"] = AutoSteps(**flags, probes=min(PROBES, problem.dy), from_defaults=tuple(by_rule)) \
            if any(flags.values()) else None
        return opts

    def _lookup_part(self, problem: BilevelProblem, keys: tuple[str, ...], stochastic: bool, auto_x: bool) -> Any:
        """``lookup``, with ``auto_defaults`` consulted just before ``defaults`` when λ is automatic."""
        tables = self.setting_tables(problem, stochastic)
        if auto_x and self.auto_defaults:
            tables = tables[:-1] + [self.auto_defaults, tables[-1]]
        for table in tables:
            for key in keys:
                if key in table and table[key] is not None:
                    return table[key]
        return None

    def unset_value(self, name: str) -> Any:
        """``lr_x`` left unset with nothing to fill it: automatic (``bilevel.auto_steps``)."""
        return AUTO if name == "lr_x" else None

    def resolved_options(self) -> dict[str, Any]:
        """Flat record of every option (results, metadata): the parts' options by the papers' short names
        (``inner_steps``, ``lr_y``, ``v_steps``, ``m``, ``eta``, …), else by dotted name; ``inner`` and
        ``v_solver`` name the parts."""
        out: dict[str, Any] = {}
        for name, value in self.options().items():
            if name in ("inner", "v_solver"):
                out[name] = getattr(value, "name", type(value).__name__)
                for option, v in value.options().items():
                    dotted = f"{name}.{option}"
                    short = short_name(name, option) or dotted
                    out[short if short not in out else dotted] = v
            elif name not in OUTER_FIELDS:  # (recorded below, and only when set)
                out[name] = value
        out.update(record_outer(self.options(), self.label))
        return out

    # ---- cost -------------------------------------------------------------------------------------------
    def expected_counts(self, iterations: int) -> dict[str, float]:
        """Per iteration: T ∇_y g, 1 ∇_x f, 1 ∇_y f, 1 cross product, the v-solver's HVPs (+ 1 ∇_y g with an
        automatic θ under mini-batches: the safeguard's same-batch gradient).
        (Simultaneous order: the first of the T y-steps uses ∇_y g at the linearisation point.)"""
        self._require_bound()
        K = iterations
        probes = self.auto_steps.probes if self.auto_steps is not None and self.auto_steps.needs_curvature else 0
        # the mini-batch safeguard's same-batch gradient (GD.run_watched), once per iteration that makes a y-step
        watched = (self.auto_steps is not None and self.auto_steps.lr_y and self.stochastic
                   and (self.inner.steps > 0 or self.order == "simultaneous"))
        return {
            "grad_y_g": (self.inner.steps + watched) * K, "grad_x_f": K, "grad_y_f": K, "grad_x_g": 0,
            "cross": K, "cross_t": 0,
            "hvp": self._counted_v_solver.total_matvecs(K, v0_zero=self.v_init == "zeros") + probes,
        }

    @property
    def _counted_v_solver(self) -> LinearSolver:
        """The v-solver for cost questions: an automatic η (which no count depends on) stood in for by 1."""
        if self.auto_steps is not None and self.auto_steps.eta:
            return dataclasses.replace(self.v_solver, eta=1.0)
        return self.v_solver

    def budget_warnings(self, max_iter: int) -> list[str]:
        return [f"{self.label}: {text}" for text in self._counted_v_solver.budget_warnings(max_iter)]

    # ---- the run ----------------------------------------------------------------------------------------
    def init(self, problem: BilevelProblem, oracles: Any, generator: torch.Generator) -> AIDState:
        self._require_bound()
        x, y = problem.x0, problem.y0
        v0 = None
        if self.v_init == "randn":
            v0 = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
        auto = None
        if self.auto_steps is not None and self.stochastic and self.auto_steps.needs_curvature:
            # under mini-batches the start estimate waits for the first iteration's own hvp draw (_auto_ready)
            auto = self._auto_start(oracles, x, y, generator, None, probe=False)
        elif self.auto_steps is not None:  # the start estimate of L̂, μ̂: probes HVPs at (x_0, y_0), full data
            auto = self._auto_start(oracles, x, y, generator, None)
        pending = auto is not None and self.auto_steps.needs_curvature and not math.isfinite(auto.L)
        v_state = (self.v_solver if pending else self._parts(auto)[1]).init(torch.zeros_like(y), v0)
        outer = build_outer(self.label, self, x)
        return AIDState(k=0, x=x, y=y, v=v_state.v, v_state=v_state, iterate=(x, y, v_state.v),
                        generator=generator, outer=outer, auto=auto)

    def step(self, state: AIDState, oracles: Any, batches: Any) -> AIDState:
        state = self._auto_ready(state, oracles, batches)
        if self.order == "simultaneous":
            return self._step_simultaneous(state, oracles, batches)
        x, k = state.x, state.k
        inner, v_solver = self._parts(state.auto)
        y, grew = inner.run_watched(oracles, x, state.y, batches, k, **self._watch)
        hessian = _Hessian(self, oracles, x, y, batches, state)
        gx_f, b = oracles.grad_f(x, y, batches("upper"))
        v, v_state, info = v_solver.solve(hessian.matvec, b, state.v_state, k=k, generator=state.generator)
        del b  # not needed for the x-step: one dy-vector less at the cross product
        x_new, auto = self._x_update(x, gx_f, hessian.on(batches("cross")).cross(v), info, k, state.auto,
                                     state.outer)
        return self._advance(state, x_new, y, v, v_state, info, (x, y, v), grew, info.curvature is None,
                             hessian.kept(), self._observe(auto, grew, v_state))

    def _step_simultaneous(self, state: AIDState, oracles: Any, batches: Any) -> AIDState:
        x, y, v_old, k = state.x, state.y, state.v, state.k
        inner, v_solver = self._parts(state.auto)
        theta = schedule_value(inner.lr, k)
        hessian = _Hessian(self, oracles, x, y, batches, state)
        d_y = hessian.point().grad_y_g()
        gx_f, b = oracles.grad_f(x, y, batches("upper"))
        jv = hessian.on(batches("cross")).cross(v_old)
        v, v_state, info = v_solver.solve(hessian.matvec, b, state.v_state, k=k, generator=state.generator)
        y_new, grew = inner.run_watched(oracles, x, y - theta * d_y, batches, k, steps=inner.steps - 1,
                                        first=1, grad0=d_y, batch0=hessian.batch(), **self._watch)
        x_new, auto = self._x_update(x, gx_f, jv, info, k, state.auto, state.outer)
        # the iterate's v is v_k, made by the previous iteration's solve
        return self._advance(state, x_new, y_new, v, v_state, info, (x, y, v_old), grew, state.curvature is None,
                             hessian.kept(), self._observe(auto, grew, v_state))

    # ---- automatic steps (bilevel.auto_steps) --------------------------------------------------------------
    def _auto_start(self, oracles: Any, x: Tensor, y: Tensor, generator: Any, batch: Any, probe: bool = True
                    ) -> StepState:
        """The start estimate of L̂, μ̂: ``probes`` HVPs at (x_0, y_0) on ``batch`` (None: the full data);
        ``probe=False``: the state without an estimate yet (L̂ = NaN), for mini-batch runs."""
        rules = self.auto_steps if probe else dataclasses.replace(self.auto_steps, lr_y=False, eta=False)
        point = oracles.at(x, y, batch) if probe else None
        try:
            return rules.start(point, x, y, generator, float(self.damping or 0.0))
        except ValueError as err:
            raise ValueError(f"{self.label}: {err}") from None

    def _auto_ready(self, state: AIDState, oracles: Any, batches: Any) -> AIDState:
        """Under mini-batches, the first iteration makes the start estimate on its own ``hvp`` draw (the draw
        its v-solver then uses: its samples are counted like every other call's)."""
        auto = state.auto
        if auto is None or not self.auto_steps.needs_curvature or math.isfinite(auto.L):
            return state
        start = self._auto_start(oracles, state.x, state.y, state.generator, batches("hvp"))
        return dataclasses.replace(state, auto=dataclasses.replace(start, lam=auto.lam, sumsq=auto.sumsq))

    def _parts(self, auto: Optional[StepState]) -> tuple[InnerSolver, LinearSolver]:
        """The inner solver and the v-solver with the automatic θ, η of ``auto`` filled in (the configured
        parts themselves when nothing is automatic)."""
        inner, v_solver = self.inner, self.v_solver
        if auto is None:
            return inner, v_solver
        if self.auto_steps.lr_y:
            inner = dataclasses.replace(inner, lr=auto.theta)
        if self.auto_steps.eta:
            v_solver = dataclasses.replace(v_solver, eta=auto.eta)
        return inner, v_solver

    @property
    def _watch(self) -> dict:
        """With an automatic θ the inner loop reports growth of ‖∇_y g‖ at any step (the safeguard's signal;
        the run then gets no every-step ``inner_growth`` flag)."""
        return {"any_step": True} if self.auto_steps is not None and self.auto_steps.lr_y else {}

    def _x_update(self, x: Tensor, gx_f: Tensor, jv: Tensor, info: SolveInfo, k: int,
                  auto: Optional[StepState], outer: Optional[OuterOptimizer] = None
                  ) -> tuple[Tensor, Optional[StepState]]:
        """The x-step: ``_x_step`` (λ, or an ``outer`` optimizer), or with an automatic λ the rule of
        ``bilevel.auto_steps`` (never both: with ``outer`` lr_x is not used, so it is not automatic)."""
        if auto is None or not self.auto_steps.lr_x:
            return self._x_step(x, gx_f, jv, info, k, outer), auto
        if self.freeze_x_first and info.epoch_step is not None and info.epoch_step <= self.freeze_x_first:
            return x, auto
        return self.auto_steps.x_step(auto, x, gx_f - jv)

    def _observe(self, auto: Optional[StepState], grew: Optional[Tensor], v_state: Any) -> tuple:
        """(the updated estimates, their events) after a step: the v-solver's Ritz values, the growth flag."""
        if auto is None:
            return None, ()
        return self.auto_steps.observe(auto, grew if self.auto_steps.lr_y else None,
                                       self.v_solver.spectrum(v_state))

    def _matvec(self, point: Any) -> Callable[[Tensor], Tensor]:
        """u ↦ A u, or (A + δI) u with ``damping`` δ > 0."""
        if not self.damping:
            return point.hvp
        delta = float(self.damping)
        return lambda u: point.hvp(u) + delta * u

    def _x_step(self, x: Tensor, gx_f: Tensor, jv: Tensor, info: SolveInfo, k: int,
                outer: Optional[OuterOptimizer] = None) -> Tensor:
        if self.freeze_x_first and info.epoch_step is not None and info.epoch_step <= self.freeze_x_first:
            return x  # (an outer optimizer and its scheduler are not stepped either)
        if outer is not None:
            return outer.step(x, gx_f - jv)
        return x - schedule_value(self.lr_x, k) * (gx_f - jv)

    def _advance(self, state: AIDState, x, y, v, v_state, info: SolveInfo, iterate, grew, trusted: bool,
                 held: Optional[tuple], observed: tuple = (None, ())) -> AIDState:
        auto, auto_events = observed
        if auto is not None and self.auto_steps.lr_y:
            grew = None  # the any-step flag fed the safeguard; it is not the every-step flag solve reports
        return dataclasses.replace(
            state, k=state.k + 1, x=x, y=y, v=v, v_state=v_state, iterate=iterate, last_info=info,
            events=add_events(state.events, info.events + auto_events), curvature=info.curvature,
            probed=info.matvecs > 0, trusted=trusted,
            inner_growth=grew, hvp_batch=held, auto=auto,
        )


class _Hessian:
    """The second-order oracles of one AID iteration at (x_k, y_k), on the ``hvp`` draws that
    ``hessian_batch`` prescribes.  The point is built lazily, so a solve without products (a Neumann draw
    p = 0) draws no HVP batch; ``on(batch)`` reuses the point when ``batch`` is its own (``point_on``)."""

    __slots__ = ("aid", "oracles", "x", "y", "batches", "held", "_point", "_products", "_delta", "_draw")

    def __init__(self, aid: AID, oracles: Any, x: Tensor, y: Tensor, batches: Any, state: AIDState) -> None:
        self.aid, self.oracles, self.x, self.y, self.batches = aid, oracles, x, y, batches
        self._point = None
        self._products = 0
        self._delta = float(aid.damping) if aid.damping else 0.0
        self.held = state.hvp_batch
        self._draw = True
        if aid.hessian_batch == "epoch":
            # a new epoch (or nothing held yet): draw the operator's batch; else keep the held one
            self._draw = state.hvp_batch is None or bool(aid.v_solver.starts_epoch(state.v_state, state.k))

    def _hvp_batch(self, index: int = 0) -> Any:
        if self.aid.hessian_batch == "epoch":
            if self._draw:
                self.held, self._draw = (self.batches("hvp"),), False
            return self.held[0]
        return self.batches("hvp", index)

    def batch(self) -> Any:
        """The iteration's first ``hvp`` draw (the held one in ``"epoch"`` mode): the point's batch."""
        return self._hvp_batch()

    def point(self) -> Any:
        """The point on the iteration's first ``hvp`` draw (the held one in ``"epoch"`` mode)."""
        if self._point is None:
            self._point = self.oracles.at(self.x, self.y, self._hvp_batch())
        return self._point

    def on(self, batch: Any) -> Any:
        """The second-order oracles at (x_k, y_k) on ``batch`` (the point itself when it is its batch)."""
        if self._point is None:
            return self.oracles.at(self.x, self.y, batch)
        return point_on(self.oracles, self._point, batch)

    def kept(self) -> Optional[tuple]:
        """The held draw for the next iteration: None when a new epoch's draw was due but no product was made
        (so the next iteration draws)."""
        return None if self._draw and self.aid.hessian_batch == "epoch" else self.held

    def matvec(self, u: Tensor) -> Tensor:
        """A u (plus δu with ``damping``): the i-th product of the iteration on its draw."""
        i = self._products
        self._products += 1
        if self.aid.hessian_batch == "product" and i > 0:
            out = point_on(self.oracles, self.point(), self._hvp_batch(i)).hvp(u)
        else:
            out = self.point().hvp(u)
        return out + self._delta * u if self._delta else out


_IDENTITY_NAMES = frozenset(f.name for f in dataclasses.fields(AID) if f.metadata.get("identity"))
#: part options filled with "auto" when nothing sets them (θ of the inner loop, η of a v-solver that has one)
_AUTO_PARTS = (("inner", "lr"), ("v_solver", "eta"))


# ---- assembling ------------------------------------------------------------------------------------------
def _route(options: Mapping[str, Any], v_solver: Optional[LinearSolver], inner: InnerSolver, owner: str):
    """Split flat/dotted/short options into the loop's own options and each part's."""
    own_names = set(AID.option_names()) - {"inner", "v_solver"}
    own: dict[str, Any] = {}
    parts: dict[str, dict[str, Any]] = {"inner": {}, "v_solver": {}}
    v_names = set(v_solver.option_names()) if v_solver is not None else set()
    if v_solver is None and any(ALIASES.get(k, k).startswith("v_solver.") for k in options):
        raise TypeError(f"{owner}: v-solver options given but no v_solver; pass v_solver=... .")
    inner_names = set(inner.option_names())
    for key, value in options.items():
        target = ALIASES.get(key, key)
        if "." in target:
            part, option = target.split(".", 1)
            if part not in parts:
                raise TypeError(f"{owner}: unknown part {part!r} in {key!r}.{suggest(part, parts)} Parts: inner, v_solver.")
            names = v_names if part == "v_solver" else inner_names
            if option not in names:
                valid = sorted(f"{part}.{n}" for n in names)
                raise TypeError(f"{owner}: unknown option {key!r}.{suggest(target, valid)} Valid: {', '.join(valid)}.")
            parts[part][option] = value
        elif target in own_names:
            own[target] = value
        elif target in v_names:
            parts["v_solver"][target] = value
        elif target in inner_names:
            parts["inner"][target] = value
        else:
            valid = sorted(own_names | set(ALIASES) | v_names | {f"v_solver.{n}" for n in v_names}
                           | {f"inner.{n}" for n in inner_names})
            raise TypeError(f"{owner}: unknown option {key!r}.{suggest(key, valid)} Valid options: {', '.join(valid)}.")
    return own, parts


def aid(*, inner: Optional[InnerSolver] = None, v_solver: Optional[LinearSolver] = None, **options: Any) -> AID:
    """Assemble an AID algorithm: ``aid(inner=GD(steps=5, lr=0.1), v_solver=lanczos(m=20), lr_x=1.0)``.

    ``options`` are the loop's own (lr_x, order, freeze_x_first, v_init, damping), the identity fields the named
    factories set (name, label, defaults, settings, required, default_order, min_inner_steps), and part
    options by dotted or short names (see the module docstring).
    """
    identity = {k: options.pop(k) for k in list(options) if k in _IDENTITY_NAMES}
    owner = identity.get("label") or identity.get("name") or "aid"
    route_outer(options, owner)
    inner = _check_part(owner, "inner", InnerGD() if inner is None else inner)
    if v_solver is not None:
        _check_part(owner, "v_solver", v_solver)
    own, parts = _route(options, v_solver, inner, owner)
    if parts["inner"]:
        inner = _replace_part(inner, parts["inner"], "inner", owner)
    if parts["v_solver"]:
        if v_solver is None:
            raise TypeError(f"{owner}: v-solver options {sorted(parts['v_solver'])} given but no v_solver.")
        v_solver = _replace_part(v_solver, parts["v_solver"], "v_solver", owner)
    return AID(inner=inner, v_solver=v_solver, **identity, **own)


_PART_TYPES = {"inner": (InnerSolver, "an inner solver such as bilevel.inner.GD(steps=5, lr=0.1)"),
               "v_solver": (LinearSolver, "a v-solver such as bilevel.linear_solvers.lanczos(m=10)")}


def _check_part(owner: str, where: str, part: Any) -> Any:
    kind, example = _PART_TYPES[where]
    if not isinstance(part, kind):
        raise TypeError(f"{owner}: {where} must be {example}; got {type(part).__name__} ({part!r}).")
    return part


def short_name(part: str, option: str) -> Optional[str]:
    """The papers' short name of a part option (``inner.steps`` → ``inner_steps``, ``v_solver.m`` → ``m``),
    None when it has only its dotted name."""
    return _SHORT.get(f"{part}.{option}") or (option if part == "v_solver" else None)


def _replace_part(part: Any, values: Mapping[str, Any], where: str, owner: str) -> Any:
    """The part with ``values`` set; a rejected value is reported under the name the user gave."""
    try:
        return dataclasses.replace(part, **values)
    except (TypeError, ValueError) as err:
        text = str(err)
        prefix = f"{type(part).__name__}: "
        for option in values:
            if text.startswith(f"{prefix}{option} "):
                dotted = f"{where}.{option}"
                name = short_name(where, option) or dotted
                note = "" if name == dotted else f" ({name} sets {dotted})"
                raise type(err)(f"{owner}: {name} {text[len(prefix) + len(option) + 1:]}{note}") from None
        raise type(err)(f"{owner}: {text}") from None


class Algorithm:
    """A registered named algorithm built by a factory (``lancbio(**options) -> AID``).

    Carries what the registry, the CLI and the shared tests need without building one: the name, the
    display label, the test budgets (``checks``) and the docstring (the factory's).
    """

    def __init__(self, factory: Callable[..., Solver], name: str, label: str,
                 checks: Mapping[str, Mapping[str, Any]]) -> None:
        self.factory, self.name, self.label, self.checks = factory, name, label, checks
        self.__doc__ = factory.__doc__
        self.__module__ = factory.__module__
        self.__qualname__ = factory.__qualname__
        self.__wrapped__ = factory

    def create(self, **options: Any) -> Solver:
        return self.factory(**options)

    __call__ = create

    @property
    def random_cost(self) -> bool:
        return bool(self.factory().random_cost)

    def __repr__(self) -> str:
        return f"<algorithm {self.name!r} ({self.factory.__module__}.{self.factory.__qualname__})>"


def algorithm(name: str, label: str, checks: Mapping[str, Mapping[str, Any]]):
    """Decorator: register a factory function as the named algorithm ``name``."""

    def wrap(factory: Callable[..., Solver]) -> Algorithm:
        entry = Algorithm(factory, name, label, checks)
        SOLVERS.register(entry, name=name)
        return entry

    return wrap

