"""The problem registry (kept apart from ``__init__`` so that problem modules can import it)."""

from ..registry import Registry

PROBLEMS = Registry("problem", package="bilevel.problems")
