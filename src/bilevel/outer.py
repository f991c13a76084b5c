"""A ``torch.optim`` optimizer (and learning-rate scheduler) on the upper variable x.

``lancbio(outer=torch.optim.Adam, outer_options={"lr": 1e-2})`` replaces the plain step
x_{k+1} = x_k − λ_k D_k of an AID solver by ``optimizer.step()`` with the hypergradient estimate
D_k = ∇_x f(x_k, y_k) − ∇²_xy g(x_k, y_k) v_k written into ``.grad``.  The oracle calls of an iteration
are the solver's (the optimizer only reads D_k), so counts, timing rules and the evaluation are unchanged.

Which solvers.  Every AID solver (LancBiO, SubBiO, AmIGO-GD/CG, SOBA, TTSA, stocBiO, BSA and any
``aid(...)``), and the solvers whose x-update is a plain step x − λ·D on their own direction: STABLE and
HJFBiO (hypergradient estimates), ITD (the unrolled hypergradient), F2SA and PBGD (the penalty's x-gradient).
BOME's update is a joint (x, y) step along a barrier-combined direction and does not take ``outer``.  With
``outer`` set, lr_x is not used (a problem's preset lr_x is ignored; giving both is an error).

What the optimizer sees.  The solver works on the flat vector x (``BilevelProblem.x_spec``): the optimizer
owns one flat leaf tensor of dx entries (one parameter group), whatever the structure of ``x0`` (a tensor,
a dict of tensors, an ``nn.Module``'s parameters).  Element-wise optimizers (SGD with momentum, Adam,
AdamW, RMSprop, Adagrad, NAdam, RAdam, Adamax, ...) therefore behave exactly as on the separate tensors; an
optimizer whose rule depends on a tensor's shape (Adafactor's factored second moment of a matrix) sees
one vector.  ``Result.x`` / ``Result.x_tree`` are the final iterate as for any solver (a copy; the
optimizer's own leaf is internal).

Names.  ``outer`` takes an optimizer class, a name (case-insensitive: ``"adam"``, ``"adamw"``, ``"sgd"``,
``"rmsprop"``, ``"adagrad"``, ``"nadam"``, ``"radam"``, ``"adamax"``, ``"adadelta"``, ``"asgd"``, ``"rprop"``,
``"adafactor"``) or a dotted import path (``"torch.optim.NAdam"``, ``"mypackage.MyOptimizer"``);
``outer_scheduler`` likewise a ``torch.optim.lr_scheduler`` class, its name (``"steplr"``,
``"exponentiallr"``, ``"cosineannealinglr"``, ...) or a dotted path.  The scheduler is stepped once per
outer iteration, right after the optimizer.  Optimizers that need a closure (LBFGS), sparse gradients
(SparseAdam) or a metric in the scheduler's step (ReduceLROnPlateau) are refused with a one-line error.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Mapping, Optional

import torch
from torch import Tensor

from ._validation import suggest

#: optimizers that cannot run from a gradient alone: why
_REFUSED = {
    "LBFGS": "it needs a closure that re-evaluates the objective (the upper objective φ is not available)",
    "SparseAdam": "it needs sparse gradients; the hypergradient is dense (use Adam)",
    "Muon": "it updates 2-D weight matrices only, and x is one flat vector (use Adam or SGD)",
}
_REFUSED_SCHEDULERS = {
    "ReduceLROnPlateau": "its step needs a metric; use StepLR, ExponentialLR or CosineAnnealingLR",
    "SequentialLR": "it is built from other scheduler objects; use one scheduler",
    "ChainedScheduler": "it is built from other scheduler objects; use one scheduler",
}


def _classes(module: Any, base: type) -> dict[str, type]:
    out = {}
    for name in getattr(module, "__all__", dir(module)):
        obj = getattr(module, name, None)
        if inspect.isclass(obj) and issubclass(obj, base) and obj is not base:
            out[name.lower()] = obj
    return out


def optimizer_names() -> list[str]:
    """The lower-case names ``outer`` accepts for ``torch.optim``'s optimizers."""
    return sorted(n for n, c in _classes(torch.optim, torch.optim.Optimizer).items() if c.__name__ not in _REFUSED)


def scheduler_names() -> list[str]:
    """The lower-case names ``outer_scheduler`` accepts for ``torch.optim.lr_scheduler``'s schedulers."""
    sched = torch.optim.lr_scheduler
    return sorted(n for n, c in _classes(sched, sched.LRScheduler).items() if c.__name__ not in _REFUSED_SCHEDULERS)


def qualified_name(obj: Any) -> str:
    """``module.Class`` of an optimizer or scheduler (the string given, when it is one)."""
    if isinstance(obj, str):
        return obj
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__name__)}".lstrip(".")


def _by_name(owner: str, option: str, spec: Any, module: Any, base: type, names: list[str], refused: Mapping,
             example: str) -> type:
    if isinstance(spec, str):
        if "." in spec:
            path, _, attr = spec.rpartition(".")
            try:
                found = getattr(importlib.import_module(path), attr)
            except (ImportError, AttributeError) as err:
                raise ValueError(f"{owner}: {option}={spec!r} does not import ({type(err).__name__}: {err}); give "
                                 f"a name ({', '.join(names)}) or a dotted path such as {example!r}.") from None
        else:
            table = _classes(module, base)
            found = table.get(spec.lower())
            if found is None or spec.lower() not in names:
                if found is not None:
                    raise ValueError(f"{owner}: {option}={spec!r} cannot drive x: {refused[found.__name__]}.")
                raise ValueError(f"{owner}: unknown {option} {spec!r}.{suggest(spec.lower(), names)} Names: "
                                 f"{', '.join(names)} (or a dotted path, e.g. {example!r}).")
        spec = found
    if not (inspect.isclass(spec) and issubclass(spec, base)):
        raise TypeError(f"{owner}: {option} must be a {module.__name__} class, its name or a dotted path (e.g. "
                        f"{example!r}); got {type(spec).__name__} ({spec!r}).")
    if spec.__name__ in refused:
        raise ValueError(f"{owner}: {option}={spec.__name__} cannot drive x: {refused[spec.__name__]}.")
    return spec


def optimizer_class(spec: Any, owner: str = "outer") -> type:
    """The ``torch.optim.Optimizer`` subclass that ``spec`` (class, name or dotted path) names."""
    return _by_name(owner, "outer", spec, torch.optim, torch.optim.Optimizer, optimizer_names(), _REFUSED,
                    "torch.optim.NAdam")


def scheduler_class(spec: Any, owner: str = "outer") -> type:
    """The ``torch.optim.lr_scheduler.LRScheduler`` subclass that ``spec`` names."""
    sched = torch.optim.lr_scheduler
    return _by_name(owner, "outer_scheduler", spec, sched, sched.LRScheduler, scheduler_names(),
                    _REFUSED_SCHEDULERS, "torch.optim.lr_scheduler.StepLR")


def _build(owner: str, option: str, cls: type, first: Any, options: Mapping[str, Any]) -> Any:
    try:
        return cls(first, **options)
    except TypeError as err:
        try:
            valid = [p for p in inspect.signature(cls).parameters if p not in ("self", "params", "optimizer")]
        except (TypeError, ValueError):
            valid = []
        bad = next((k for k in options if k not in valid), None) if valid else None
        if bad is not None:
            raise TypeError(f"{owner}: unknown {option} option {bad!r} for {cls.__name__}.{suggest(bad, valid)} "
                            f"Valid: {', '.join(valid)}.") from None
        raise TypeError(f"{owner}: {option} {cls.__name__}({_kwargs(options)}) failed: {err}; give its arguments in "
                        f"{option}_options (or as {option}.NAME=VALUE).") from None
    except ValueError as err:
        raise ValueError(f"{owner}: {option} {cls.__name__}({_kwargs(options)}) rejects its options: {err}.") from None


def _kwargs(options: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in options.items())


def check(owner: str, outer: Any, options: Optional[Mapping[str, Any]], scheduler: Any,
          scheduler_options: Optional[Mapping[str, Any]]) -> None:
    """Resolve the names and build both objects once on a one-entry tensor (one step with a zero
    gradient), so that a bad name or option fails when the solver is built, not mid-run."""
    for name, value in (("outer_options", options), ("outer_scheduler_options", scheduler_options)):
        if value is not None and not isinstance(value, Mapping):
            raise TypeError(f"{owner}: {name} must be a dict of keyword arguments, e.g. {{'lr': 0.01}}; got "
                            f"{type(value).__name__} ({value!r}).")
    if outer is None:
        if options or scheduler is not None or scheduler_options:
            given = [n for n, v in (("outer_options", options), ("outer_scheduler", scheduler),
                                    ("outer_scheduler_options", scheduler_options)) if v]
            raise ValueError(f"{owner}: {', '.join(given)} given without outer; pass outer=... (e.g. "
                             "outer='adam') or drop them.")
        return
    if scheduler is None and scheduler_options:
        raise ValueError(f"{owner}: outer_scheduler_options given without outer_scheduler; pass "
                         "outer_scheduler=... (e.g. 'steplr') or drop them.")
    probe = OuterOptimizer(owner, outer, options, scheduler, scheduler_options,
                           torch.zeros(1, dtype=torch.float64))
    try:
        probe.step(probe.param.detach().clone(), torch.zeros(1, dtype=torch.float64))
    except Exception as err:  # an optimizer that cannot step from a gradient alone
        raise ValueError(f"{owner}: outer={qualified_name(outer)} cannot step from the hypergradient alone: "
                         f"{type(err).__name__}: {err}.") from None


class OuterOptimizer:
    """The per-run optimizer of x: one flat leaf ``param`` (dx entries), the optimizer over it and the
    scheduler, if any.  The one mutable object of an AID state besides the run's generator (a state's x
    is never this leaf: ``step`` returns a copy, so states stay immutable)."""

    __slots__ = ("param", "optimizer", "scheduler")

    def __init__(self, owner: str, outer: Any, options: Optional[Mapping[str, Any]], scheduler: Any,
                 scheduler_options: Optional[Mapping[str, Any]], x0: Tensor) -> None:
        self.param = x0.detach().clone()
        self.optimizer = _build(owner, "outer", optimizer_class(outer, owner), [self.param], dict(options or {}))
        self.scheduler = None
        if scheduler is not None:
            self.scheduler = _build(owner, "outer_scheduler", scheduler_class(scheduler, owner), self.optimizer,
                                    dict(scheduler_options or {}))

    def step(self, x: Tensor, direction: Tensor) -> Tensor:
        """x_{k+1} from x_k and the hypergradient estimate D_k: ``.grad = D_k``, ``optimizer.step()``, then
        ``scheduler.step()``."""
        with torch.no_grad():
            self.param.copy_(x)
        self.param.grad = direction.detach()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.param.grad = None
        return self.param.detach().clone()

    def state_dict(self) -> dict:
        """The optimizer's and the scheduler's state (tensors and plain values: checkpoints)."""
        return {"optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])

    @property
    def lr(self) -> float:
        """The current learning rate (of the one parameter group)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def __repr__(self) -> str:
        sched = f", scheduler={type(self.scheduler).__name__}" if self.scheduler is not None else ""
        return f"OuterOptimizer({type(self.optimizer).__name__}, lr={self.lr:g}{sched})"


# ---- the solver side: options of any solver with an ``outer`` field ----------------------------------------
#: the options that configure the outer optimizer, in the order solvers declare them
FIELDS = ("outer", "outer_options", "outer_scheduler", "outer_scheduler_options")
#: dotted prefixes of the optimizer's and the scheduler's keyword arguments (``outer.lr``, ``outer_options.lr``)
_PREFIXES = {"outer": "outer_options", "outer_options": "outer_options",
             "outer_scheduler": "outer_scheduler_options", "outer_scheduler_options": "outer_scheduler_options"}


def route(options: dict, owner: str) -> None:
    """Fold ``outer.lr=…`` / ``outer_scheduler.step_size=…`` (CLI, YAML) into the options dicts, in place."""
    for key in [k for k in options if "." in k and k.split(".", 1)[0] in _PREFIXES]:
        prefix, arg = key.split(".", 1)
        target = _PREFIXES[prefix]
        given = options.get(target)
        if given is not None and not isinstance(given, Mapping):
            raise TypeError(f"{owner}: {target} must be a dict of keyword arguments; got {type(given).__name__}.")
        merged = dict(given or {})
        if arg in merged:
            raise ValueError(f"{owner}: {arg!r} is given twice for {target} ({key} and {target}[{arg!r}]); keep one.")
        merged[arg] = options.pop(key)
        options[target] = merged


def check_options(owner: str, opts: Mapping[str, Any]) -> None:
    """A solver's ``validate`` part for the outer options (names, keyword arguments, no lr_x beside them)."""
    check(owner, opts.get("outer"), opts.get("outer_options"), opts.get("outer_scheduler"),
          opts.get("outer_scheduler_options"))
    if opts.get("outer") is not None and opts.get("lr_x") is not None:
        raise ValueError(f"{owner}: lr_x={opts['lr_x']!r} and outer={qualified_name(opts['outer'])!r} both set the "
                         "x-step; give the optimizer's step size as outer_options={'lr': ...} (or outer.lr=...) and "
                         "drop lr_x.")


def record(opts: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """The flat record (``Result.options``, metadata) of the outer options: ``outer`` as the class's dotted
    path, its keyword arguments as ``outer.<name>``, the same for the scheduler; empty when unset."""
    out: dict[str, Any] = {}
    for name, resolve in (("outer", optimizer_class), ("outer_scheduler", scheduler_class)):
        value = opts.get(name)
        if value is not None:
            out[name] = qualified_name(resolve(value, owner))
            for option, v in (opts.get(f"{name}_options") or {}).items():
                out[f"{name}.{option}"] = v
    return out


def build(owner: str, solver: Any, x0: Tensor) -> Optional[OuterOptimizer]:
    """The run's optimizer of x for a bound solver with the outer fields (None when ``outer`` is unset)."""
    if getattr(solver, "outer", None) is None:
        return None
    return OuterOptimizer(owner, solver.outer, solver.outer_options, solver.outer_scheduler,
                          solver.outer_scheduler_options, x0)
