"""Bilevel algorithms, one file each, registered by name (``bilevel list solvers``).

Every module in this package (except the infrastructure: base, aid, registry) is imported here, so adding
an algorithm means adding one file: a ``@register``-ed solver class plus a factory function named like
the registered name (``lancbio()`` for ``"lancbio"``), which becomes ``bilevel.solvers.<name>``.
"""

import importlib as _importlib
import pkgutil as _pkgutil
import sys as _sys

from .aid import AIDSolver, AIDState
from .base import Solver
from .registry import SOLVERS, get_solver, register

_INFRASTRUCTURE = {"base", "aid", "registry"}
for _info in sorted(_pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _info.name.startswith("_") and _info.name not in _INFRASTRUCTURE:
        _importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["AIDSolver", "AIDState", "SOLVERS", "Solver", "get_solver", "register"]
for _name, _cls in sorted(SOLVERS.items()):
    _module = _sys.modules[_cls.__module__]
    globals()[_cls.__name__] = _cls
    if hasattr(_module, _name):  # the factory, e.g. lancbio(); it shadows the module attribute
        globals()[_name] = getattr(_module, _name)
    __all__ += [_cls.__name__, _name]
