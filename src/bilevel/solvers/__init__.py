"""Bilevel algorithms, one file each, registered by name (``bilevel list solvers``)."""

from .aid import AIDSolver, AIDState
from .base import Solver
from .lancbio import LancBiO, lancbio
from .registry import SOLVERS, get_solver, register
from .subbio import SubBiO, subbio

__all__ = [
    "AIDSolver", "AIDState", "LancBiO", "SOLVERS", "Solver", "SubBiO",
    "get_solver", "lancbio", "register", "subbio",
]
