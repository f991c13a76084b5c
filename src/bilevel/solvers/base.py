"""The solver contract and the option machinery shared by every algorithm.

A solver is an immutable configuration (a frozen dataclass with keyword-only options).  Options left
``None`` are *presettable*.  ``solver.bind(problem, stochastic=False)`` returns a frozen copy with every
option resolved and checked once, in this order: the user's value, the solver's published ``settings``
for the problem's experiment (with ``stochastic=True``, a mini-batch run, the ``"stochastic/<key>"``
tables first, e.g. ``"stochastic/hyperclean/mnist"``, ``"stochastic/hyperclean"``, then the deterministic
``"hyperclean/mnist"``, ``"hyperclean"``), the problem's solver-neutral scales (``presets["*"]``), the
solver's ``defaults``.  ``solve`` binds with ``stochastic=True`` whenever its batch source is not
``FullBatch``.  A run is

    bound = solver.bind(problem, stochastic=...)
    state = bound.init(problem, oracles, generator)
    state = bound.step(state, oracles, batches)        # repeatedly; batches: sampling.Batches

States are frozen dataclasses holding only what changes (``SolverState``); a step returns a new state
(``dataclasses.replace``) and never mutates the old one, so a state kept from before a divergence is
exactly as it was.  The one mutable object a state may hold is the run's random generator.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Iterable, Mapping, Optional, Protocol, runtime_checkable

import torch
from torch import Tensor

from .._validation import CheckedOptions
from ..kinds import check_kind
from ..problem import BilevelProblem
from ..registry import Registry

#: the solver registry: every public module of ``bilevel.solvers`` is imported and registers itself
SOLVERS = Registry("solver", package="bilevel.solvers", skip=("base", "aid", "registry"))


@runtime_checkable
class SolverState(Protocol):
    """What the run loop reads from every state.

    k: outer iterations done.  x: the next upper iterate x_{k}.  y, v: the current lower iterate and
    linear-system variable (v is None for methods without one).  iterate: the triple (x_k, y_k, v_k) on
    which the last step's update was computed (what evaluation looks at).  events: counts of notable events.

    Optional attributes, read with defaults by ``solve`` (the AID loop and STABLE set them):
    ``curvature`` (the last step's ``Curvature`` evidence that ∇²_yy g is not positive definite, or None),
    ``probed`` (the last step made a product that could show it; default True), ``trusted`` (the evaluated
    v came from a solve without evidence: only then can a run end ``converged``; default True), and
    ``inner_growth`` (a 0-dim bool tensor: ‖∇_y g‖ grew at every inner step; read with the finiteness check).
    """

    k: int
    x: Tensor
    y: Tensor
    v: Optional[Tensor]
    iterate: tuple
    events: Mapping[str, int]


def add_events(events: Mapping[str, int], new: Iterable[str]) -> Mapping[str, int]:
    """A new events mapping with ``new`` counted (the old one is left unchanged)."""
    new = tuple(new)
    if not new:
        return events
    out = dict(events)
    for e in new:
        out[e] = out.get(e, 0) + 1
    return out


class Solver(ABC, metaclass=CheckedOptions):
    """Base class: ``bind(problem)``, then ``init(problem, oracles, generator)`` and ``step(state, oracles,
    batches)`` on the bound copy."""

    name: ClassVar[str] = "solver"
    #: display name (plots, reports)
    label: ClassVar[str] = ""
    #: library defaults of presettable options (used when nothing else sets one)
    defaults: ClassVar[Mapping[str, Any]] = {}
    #: published settings per experiment key (``BilevelProblem.experiment``): {"synthetic": {...}, ...};
    #: ``"stochastic/<key>"`` tables hold the settings of the mini-batch experiments (looked up first when
    #: the solver is bound with ``stochastic=True``)
    settings: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: budgets of the shared registry-driven tests, kept next to the algorithm so they stay honest:
    #: {"quadratic": {"max_iter": K, "reduction": r, "options": {...}}, "synthetic": {...},
    #:  "counts": {"options": {...}}}; a method slow by nature gets a longer budget, not a looser bound.
    #: Mini-batch budgets: "stochastic/quadratic", "stochastic/synthetic": {"max_iter": K, "reduction": r,
    #: "batch_size": B, "options": {...}} on the finite-sum forms (tests/test_stochastic_solvers.py).
    checks: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: options that must have a value once bound
    required: ClassVar[tuple[str, ...]] = ("lr_x", "lr_y")
    #: True when the per-iteration cost is random: counts are compared with their expectation
    random_cost: ClassVar[bool] = False
    #: batch role → draw group (roles of one group share a draw; see ``bilevel.sampling``)
    batch_roles: ClassVar[Mapping[str, str]] = {}
    #: problem kinds this solver supports (``bilevel.kinds``): "classic" (AID machinery), "rl"
    kinds: ClassVar[tuple[str, ...]] = ("classic",)

    # True on the copy that ``bind`` returns (an instance attribute set there)
    _bound: ClassVar[bool] = False
    # on a bound copy: whether it was bound for a mini-batch run, and the configuration it was bound from
    _stochastic: ClassVar[bool] = False
    _unbound: ClassVar[Any] = None

    # ---- the run --------------------------------------------------------------------------------------
    @abstractmethod
    def init(self, problem: BilevelProblem, oracles: Any, generator: torch.Generator) -> SolverState:
        ...

    @abstractmethod
    def step(self, state: Any, oracles: Any, batches: Any) -> SolverState:
        ...

    def expected_counts(self, iterations: int) -> dict[str, float]:
        """Oracle calls of ``iterations`` outer iterations from the start, as documented (the expectation
        when ``random_cost``), for this bound solver; keys are ``Counts`` fields."""
        raise NotImplementedError(f"{type(self).__name__} does not document its oracle cost")

    def budget_warnings(self, max_iter: int) -> list[str]:
        """Configuration problems that only show given the run length (e.g. an unreachable cap)."""
        return []

    # ---- options ------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.validate(self.options())

    def validate(self, opts: Mapping[str, Any]) -> None:
        """The one check of option values: called with the options as given (``None`` = not set yet) when
        the solver is built, and with every option filled by ``bind``."""

    @classmethod
    def option_names(cls) -> list[str]:
        if not dataclasses.is_dataclass(cls):
            return []
        return [f.name for f in dataclasses.fields(cls) if f.init]

    def options(self) -> dict[str, Any]:
        """The options (as given before ``bind``; resolved after)."""
        return {name: getattr(self, name) for name in self.option_names()}

    @property
    def bound(self) -> bool:
        return self._bound

    @property
    def stochastic(self) -> bool:
        """Whether this (bound) copy was bound for a mini-batch run (``"stochastic/…"`` settings first)."""
        return self._stochastic

    def setting_tables(self, problem: BilevelProblem, stochastic: bool = False) -> list[Mapping[str, Any]]:
        """The tables an option's value is looked up in, in order: with ``stochastic``, the settings under
        ``"stochastic/" + key`` for every key of ``problem.experiment_keys()``; then the settings under each
        key; the problem's scales; ``defaults``."""
        keys = problem.experiment_keys()
        tables = [self.settings.get("stochastic/" + e, {}) for e in keys] if stochastic else []
        tables += [self.settings.get(e, {}) for e in keys]
        return tables + [problem.presets.get("*", {}), self.defaults]

    def lookup(self, problem: BilevelProblem, keys: Iterable[str], stochastic: bool = False) -> Any:
        """The first value found for any of ``keys`` in ``setting_tables(problem, stochastic)``; None if none
        has one."""
        keys = tuple(keys)
        for table in self.setting_tables(problem, stochastic):
            for key in keys:
                if key in table and table[key] is not None:
                    return table[key]
        return None

    def _resolved_fields(self, problem: BilevelProblem, stochastic: bool = False) -> dict[str, Any]:
        """Every field with its ``None`` filled (see the module docstring), checked complete; what ``bind``
        builds the bound copy from.  Solvers with parts extend it."""
        out = {}
        for name, value in self.options().items():
            out[name] = self.lookup(problem, (name,), stochastic) if value is None else value
        if out.get("outer") is not None and "lr_x" in out:  # the optimizer's lr replaces λ: a preset is not used
            out["lr_x"] = None
        for name in self._required_options(out):
            if out.get(name) is None:
                out[name] = self.unset_value(name)
            if out.get(name) is None:
                raise ValueError(
                    f"{self.label or type(self).__name__}: {name} has no value: pass {name}=... "
                    f"(problem {problem.name!r} has no scale for it){self.unset_hint(name)}."
                )
        return out

    def _required_options(self, opts: Mapping[str, Any]) -> tuple[str, ...]:
        """The options that must have a value given the resolved ``opts``: ``required``, less lr_x when an
        ``outer`` optimizer makes the x-step (``bilevel.outer``)."""
        if opts.get("outer") is not None:
            return tuple(name for name in self.required if name != "lr_x")
        return self.required

    def unset_hint(self, name: str) -> str:
        """Text added to the one-line error for a required option that nothing set (why it is not automatic)."""
        return ""

    def unset_value(self, name: str) -> Any:
        """The value of a required option that nothing set (None: an error).  The AID loop answers
        ``"auto"`` for its step sizes (``bilevel.auto_steps``)."""
        return None

    def bind(self, problem: BilevelProblem, stochastic: bool = False):
        """A frozen copy resolved for ``problem`` and validated once.  ``stochastic=True`` (a mini-batch run)
        looks up the ``"stochastic/<key>"`` settings first.  Binding a bound solver is a no-op, unless it
        was bound with the other ``stochastic`` flag: then its configuration is bound again with this one."""
        if not isinstance(stochastic, bool):
            raise TypeError(f"{type(self).__name__}.bind: stochastic must be True or False; got {stochastic!r}.")
        check_kind(self, problem)
        if self._bound:
            if stochastic == self._stochastic or self._unbound is None:
                return self
            return self._unbound.bind(problem, stochastic=stochastic)
        opts = self._resolved_fields(problem, stochastic)
        self.validate(opts)
        bound = dataclasses.replace(self, **opts)  # type: ignore[type-var]
        object.__setattr__(bound, "_bound", True)
        object.__setattr__(bound, "_stochastic", stochastic)
        object.__setattr__(bound, "_unbound", self)
        return bound

    def resolve(self, problem: BilevelProblem, stochastic: bool = False) -> dict[str, Any]:
        """The options resolved for ``problem``, as recorded in results (``resolved_options``)."""
        return self.bind(problem, stochastic).resolved_options()

    def resolved_options(self) -> dict[str, Any]:
        """A flat record of the options (results, metadata); solvers with parts flatten them.  The outer
        optimizer's options (``bilevel.outer``) appear only when ``outer`` is set."""
        from ..outer import FIELDS, record

        opts = self.options()
        if "outer" not in opts:
            return opts
        return {**{k: v for k, v in opts.items() if k not in FIELDS}, **record(opts, type(self).__name__)}

    def _require_bound(self) -> None:
        if not self._bound:
            raise RuntimeError(
                f"{type(self).__name__}: call solver.bind(problem) first (solve() does this for you)."
            )

    def __repr__(self) -> str:
        given = ", ".join(f"{k}={v!r}" for k, v in self.options().items() if v is not None)
        return f"{type(self).__name__}({given})"


def register(cls):
    """Class decorator: register a solver class under ``cls.name``; adds ``cls.create(**options)``."""

    def create(klass, **options: Any):
        if "outer" in klass.option_names():
            from ..outer import route

            route(options, klass.__name__)  # outer.lr=… → outer_options
        return klass(**options)  # unknown names are rejected, with a suggestion, by CheckedOptions

    if "create" not in cls.__dict__:
        cls.create = classmethod(create)
    return SOLVERS.register(cls)


def get_solver(name: str, **options: Any):
    """Instantiate the registered solver ``name`` with ``options`` (dotted part options allowed)."""
    return SOLVERS.create(name, **options)
