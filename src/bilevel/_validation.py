"""Option checks shared by every configurable object: messages say what, what was received, how to fix."""

from __future__ import annotations

import dataclasses
import difflib
import math
from abc import ABCMeta
from typing import Any, Iterable


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
            reject_unknown(cls.__name__, kwargs, [f.name for f in dataclasses.fields(cls) if f.init])
        return super().__call__(*args, **kwargs)
