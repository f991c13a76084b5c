"""Option checks shared by every configurable object: messages say what, what was received, how to fix."""

from __future__ import annotations

import dataclasses
import difflib
import math
from abc import ABCMeta
from typing import Any, ClassVar, Iterable, Mapping, TypeVar


def suggest(name: str, valid: Iterable[str]) -> str:
    """' Did you mean 'x'?' when a close valid name exists, else ''."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def reject_unknown(owner: str, given: Iterable[str], valid: Iterable[str]) -> None:
    valid = sorted(valid)
    for name in given:
        if name not in valid:
            raise TypeError(
                f"{owner}: unknown option {name!r}.{suggest(name, valid)} Valid options: {', '.join(valid)}."
            )


def check_int(owner: str, name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an integer >= {minimum}; got {type(value).__name__} ({value!r}).")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}; got {value}.")
    return value


def check_positive(owner: str, name: str, value: Any, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {name} must be a number; got {type(value).__name__} ({value!r}).")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{owner}: {name} must be finite and {bound}; got {value!r}.")
    return float(value)


def check_choice(owner: str, name: str, value: Any, choices: Iterable[str]) -> str:
    choices = list(choices)
    if value not in choices:
        hint = suggest(str(value), choices)
        raise ValueError(f"{owner}: {name} must be one of {choices}; got {value!r}.{hint}")
    return value


def check_bool(owner: str, name: str, value: Any) -> bool:
    """A bool option; 1/0 and strings such as 'yes' are rejected rather than guessed."""
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be True or False; got {type(value).__name__} ({value!r}).")
    return value


class CheckedOptions(ABCMeta):
    """Metaclass of configurable dataclasses: an unknown keyword gets the nearest valid name suggested
    (``CG(step=5)`` → "CG: unknown option 'step'. Did you mean 'steps'?") instead of Python's bare error."""

    def __call__(cls, *args: Any, **kwargs: Any):
        if dataclasses.is_dataclass(cls):
            label = getattr(cls, "label", None)  # a solver's display name (M-SoBiRL), else the class name
            owner = label if isinstance(label, str) and label else cls.__name__
            reject_unknown(owner, kwargs, [f.name for f in dataclasses.fields(cls) if f.init])
        return super().__call__(*args, **kwargs)


P = TypeVar("P", bound="Part")


class Part(metaclass=CheckedOptions):
    """Option machinery of the parts an algorithm is assembled from (inner solvers, v-solvers): frozen
    dataclasses whose ``presettable`` options may be ``None`` ("not set yet") until ``resolved``.

    - ``presettable``: options that must have a value before the part is used (filled by ``resolved``).
    - ``defaults``: library defaults for options that neither the user nor ``resolved``'s values set.
    - ``examples``: example values quoted in "has no value" errors for options without a default.
    - ``validate(options)``: the one check of option values, run at construction (hence also after every
      ``dataclasses.replace``); ``None`` in a presettable option must be accepted.
    """

    presettable: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[Mapping[str, Any]] = {}
    examples: ClassVar[Mapping[str, Any]] = {}

    def __post_init__(self) -> None:
        self.validate(self.options())

    def validate(self, options: Mapping[str, Any]) -> None:
        """Check (and possibly normalise, via ``object.__setattr__``) the options."""

    def options(self) -> dict[str, Any]:
        """The option values, by name (the dataclass fields)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    @property
    def missing(self) -> tuple[str, ...]:
        """The ``presettable`` options that are still ``None``."""
        return tuple(n for n in self.presettable if getattr(self, n) is None)

    @property
    def is_resolved(self) -> bool:
        return not self.missing

    def resolved(self: P, values: Mapping[str, Any] = {}) -> P:
        """A copy with every ``None`` option taken from ``values`` (entries that are not options of this
        part, or are ``None``, are ignored), else from ``defaults``; options already set are kept.
        Raises ``ValueError`` if a ``presettable`` option still has no value; the result is validated."""
        filled = {}
        for name in self.option_names():
            if getattr(self, name) is None:
                if values.get(name) is not None:
                    filled[name] = values[name]
                elif self.defaults.get(name) is not None:
                    filled[name] = self.defaults[name]
        for name in self.presettable:
            if filled.get(name, getattr(self, name)) is None:
                raise ValueError(self._no_value(name))
        return dataclasses.replace(self, **filled) if filled else self  # type: ignore[type-var]

    def _no_value(self, name: str) -> str:
        owner = type(self).__name__
        example = self.defaults.get(name, self.examples.get(name))
        hint = f" (e.g. {owner}({name}={example!r}))" if example is not None else ""
        return f"{owner}: {name} has no value; pass {name}=...{hint}"

    def require_resolved(self) -> None:
        """Raise a one-line ``ValueError`` naming the first option that is still ``None``."""
        missing = self.missing
        if missing:
            raise ValueError(f"{self._no_value(missing[0])}, or call .resolved(presets) before using it.")
        for name in self.presettable:
            value = getattr(self, name)
            if isinstance(value, str) and value == "auto":
                raise ValueError(
                    f"{type(self).__name__}: {name}='auto' is filled at every step by an AID solver (bilevel.solvers.aid); "
                    f"on its own pass a number, e.g. {type(self).__name__}({name}=0.1)."
                )


def check_run_budget(owner: str, max_iter: Any, eval_every: Any, max_time: Any, tol: Any) -> None:
    """The run-length arguments every solve loop takes: integers max_iter ≥ 0, eval_every ≥ 1, and a positive
    max_time and tol when given."""
    check_int(owner, "max_iter", max_iter, 0)
    check_int(owner, "eval_every", eval_every, 1)
    if max_time is not None:
        check_positive(owner, "max_time", max_time)
    if tol is not None:
        check_positive(owner, "tol", tol)
