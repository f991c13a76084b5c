"""The solver interface and the option machinery shared by every algorithm.

A solver is an immutable configuration (a frozen dataclass with keyword-only options).  Options the
user leaves as ``None`` are *presettable*: at ``init`` they are taken from the problem's presets for this
solver (``BilevelProblem.presets``), else from the solver's documented ``defaults``.  The resolved values
live in the run's state, never in the configuration, so one solver object can serve many problems.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping

import torch

from .._validation import CheckedOptions
from ..oracles import Oracles
from ..problem import BilevelProblem


class Solver(ABC, metaclass=CheckedOptions):
    """Base class: ``init(problem, oracles, generator) -> state``, ``step(state, oracles, k) -> state``.

    Every state exposes ``x`` (the next upper iterate), ``iterate`` (the triple (x_k, y_k, v_k) on which
    step k's update was computed: what evaluation looks at; v_k is None for methods without v) and
    ``events`` (a dict of event counts).
    """

    name: ClassVar[str] = "solver"
    #: library defaults of presettable options (used when neither the user nor the problem sets one)
    defaults: ClassVar[Mapping[str, Any]] = {}
    #: budgets of the shared registry-driven tests, kept next to the algorithm so they stay honest:
    #: {"quadratic": {"max_iter": K, "reduction": r, "options": {...}}, "synthetic": {...},
    #:  "counts": {"options": {...}}}; a method slow by nature gets a longer budget, not a looser bound.
    checks: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: options that must have a value after resolution (user, problem preset or default)
    required: ClassVar[tuple[str, ...]] = ("lr_x", "lr_y")
    #: True when the per-iteration cost is random (e.g. TTSA's truncation): counts are then compared
    #: with their expectation statistically.
    random_cost: ClassVar[bool] = False

    @abstractmethod
    def init(self, problem: BilevelProblem, oracles: Oracles, generator: torch.Generator) -> Any:
        ...

    @abstractmethod
    def step(self, state: Any, oracles: Oracles, k: int) -> Any:
        ...

    def expected_counts(self, opts: Mapping[str, Any], iterations: int) -> dict[str, float]:
        """Oracle calls of ``iterations`` outer iterations from the start, as documented (the expectation
        when ``random_cost``), given resolved options ``opts``; keys are ``Counts`` fields."""
        raise NotImplementedError(f"{type(self).__name__} does not document its oracle cost")

    def budget_warnings(self, state: Any, max_iter: int) -> list[str]:
        """Configuration problems that only show given the run length (e.g. an unreachable cap)."""
        return []

    # ---- options ------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.validate(self.options())

    def validate(self, opts: Mapping[str, Any]) -> None:
        """Check option values.  Called with the options as given (``None`` = not set yet) when the solver
        is built, and again by ``resolve`` once presets and defaults have filled them."""

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []

    def options(self) -> dict[str, Any]:
        """The options as given (None = 'from the problem's presets or the defaults')."""
        return {name: getattr(self, name) for name in self.option_names()}

    def resolve(self, problem: BilevelProblem) -> dict[str, Any]:
        """Options with every ``None`` filled from ``problem`` presets, then ``defaults``."""
        out = {}
        for name, value in self.options().items():
            if value is None:
                value = problem.preset(self.name, name)
            if value is None:
                value = self.defaults.get(name)
            out[name] = value
        for name in self.required:
            if out.get(name) is None:
                raise ValueError(
                    f"{type(self).__name__}: {name} has no value: pass {name}=... "
                    f"(problem {problem.name!r} has no preset for it)."
                )
        self.validate(out)
        return out

    def __repr__(self) -> str:
        given = ", ".join(f"{k}={v!r}" for k, v in self.options().items() if v is not None)
        return f"{type(self).__name__}({given})"
