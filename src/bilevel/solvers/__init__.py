"""Bilevel algorithms, one file each, registered by name (``bilevel list solvers``).

Every public module of this package (except the infrastructure: base, aid) is imported by
``SOLVERS.discover()``, so adding an algorithm means adding one file: either a factory over ``aid``
decorated with ``@algorithm(name, label, checks)`` (``lancbio``, ``soba``, ...) or a ``@register``-ed
``Solver`` class plus a factory function named like it (``f2sa()`` for ``"f2sa"``).  Each becomes
``bilevel.solvers.<name>``.
"""

import sys as _sys

from .aid import AID, AIDState, Algorithm, aid, algorithm
from .base import SOLVERS, Solver, SolverState, add_events, get_solver, register

SOLVERS.discover()

__all__ = ["AID", "AIDState", "Algorithm", "SOLVERS", "Solver", "SolverState", "add_events", "aid", "algorithm",
           "get_solver", "register"]
for _name, _entry in sorted(SOLVERS.items()):
    if isinstance(_entry, Algorithm):
        globals()[_name] = _entry
        __all__.append(_name)
        continue
    _module = _sys.modules[_entry.__module__]
    globals()[_entry.__name__] = _entry
    __all__.append(_entry.__name__)
    if hasattr(_module, _name):  # the factory, e.g. f2sa(); it shadows the module attribute
        globals()[_name] = getattr(_module, _name)
        __all__.append(_name)
