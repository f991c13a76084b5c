"""Problem families, one file each, registered by name; the CLI and the shared tests enumerate them.

A new family is one module in this package with a factory ``name(**options) -> BilevelProblem``
decorated with ``@PROBLEMS.register``; nothing else is edited.
"""

from __future__ import annotations

import inspect
from typing import Any

from .._validation import reject_unknown
from ..problem import BilevelProblem
from ._registry import PROBLEMS

PROBLEMS.discover()

from .synthetic import SyntheticData, clear_synthetic_cache, synthetic_data  # noqa: E402

__all__ = ["PROBLEMS", "get_problem", "synthetic_data", "SyntheticData", "clear_synthetic_cache"]
for _name, _factory in sorted(PROBLEMS.items()):
    globals()[_name] = _factory  # the factory shadows its module attribute
    __all__.append(_name)


def get_problem(name: str, **options: Any) -> BilevelProblem:
    """Build the registered problem ``name`` with the factory's ``options``.

    Unknown names and unknown options raise with the nearest valid one suggested.
    """
    factory = PROBLEMS.lookup(name)
    params = inspect.signature(factory).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        reject_unknown(f"problem {name!r}", options, params)
    return factory(**options)
