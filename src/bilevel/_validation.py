"""Option checks shared by every configurable object: messages say what, what was received, how to fix."""

from __future__ import annotations

import difflib
import math
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
