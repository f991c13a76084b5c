"""Solvers register here by name; the CLI and the shared tests enumerate the registry."""

from __future__ import annotations

from typing import Any

from .._validation import suggest

SOLVERS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make ``cls`` available as ``get_solver(cls.name)``; adds ``cls.create``."""
    if cls.name in SOLVERS:
        raise ValueError(f"a solver named {cls.name!r} is already registered ({SOLVERS[cls.name].__name__}).")
    SOLVERS[cls.name] = cls

    def create(klass, **options: Any):
        return klass(**options)  # unknown names are rejected, with a suggestion, by CheckedOptions

    cls.create = classmethod(create)
    return cls


def get_solver(name: str, **options: Any):
    """Instantiate the registered solver ``name`` with ``options``."""
    if name not in SOLVERS:
        raise ValueError(
            f"unknown solver {name!r}.{suggest(name, SOLVERS)} Registered: {', '.join(sorted(SOLVERS))}."
        )
    return SOLVERS[name].create(**options)
