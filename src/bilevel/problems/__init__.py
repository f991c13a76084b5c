"""Problem families, one file each, and the registry that the CLI and the shared tests enumerate.

A new family is a module with a factory ``name(**options) -> BilevelProblem`` plus one entry in
``PROBLEMS``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from .._validation import reject_unknown, suggest
from ..problem import BilevelProblem
from .hyperclean import hyperclean
from .quadratic import quadratic
from .synthetic import SyntheticData, clear_synthetic_cache, synthetic, synthetic_data

__all__ = [
    "PROBLEMS",
    "get_problem",
    "hyperclean",
    "quadratic",
    "synthetic",
    "synthetic_data",
    "SyntheticData",
    "clear_synthetic_cache",
]

PROBLEMS: dict[str, Callable[..., BilevelProblem]] = {
    "hyperclean": hyperclean,
    "quadratic": quadratic,
    "synthetic": synthetic,
}


def get_problem(name: str, **options: Any) -> BilevelProblem:
    """Build the registered problem ``name`` with the factory's ``options``.

    Unknown names and unknown options raise with the nearest valid one suggested.
    """
    if not isinstance(name, str) or name not in PROBLEMS:
        valid = sorted(PROBLEMS)
        raise ValueError(
            f"unknown problem {name!r}.{suggest(str(name), valid)} Registered problems: {', '.join(valid)}."
        )
    factory = PROBLEMS[name]
    params = inspect.signature(factory).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        reject_unknown(f"problem {name!r}", options, params)
    return factory(**options)
