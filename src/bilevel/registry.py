"""One registry mechanism for everything users pick by name: solvers, v-solvers, inner solvers, problems.

A ``Registry`` maps names to *entries* (a class or a factory function).  Entries register themselves with
the ``register`` decorator when their module is imported, and ``discover(package)`` imports every public
module of a package, so adding a solver, a v-solver or a problem is one new file in the right folder:
the CLI listing, ``get``/``create`` and the shared registry-driven tests enumerate the registry.

Unknown names raise with the nearest registered name suggested.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from typing import Any, Callable, Iterator, Mapping, Optional, TypeVar

from ._validation import suggest

T = TypeVar("T")


class Registry(Mapping[str, Any]):
    """Name → entry.  An entry is a class or a factory; ``create(name, **options)`` calls
    ``entry.create(**options)`` when the entry has one (solver classes do), else ``entry(**options)``."""

    def __init__(self, kind: str, package: Optional[str] = None, skip: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.package = package
        self.skip = frozenset(skip)
        self._entries: dict[str, Any] = {}

    # ---- registration ---------------------------------------------------------------------------------
    def register(self, entry: Optional[T] = None, *, name: Optional[str] = None) -> Any:
        """Decorator (bare or with ``name=``).  The name defaults to ``entry.name``, else ``entry.__name__``."""

        def add(obj: T) -> T:
            key = name or getattr(obj, "name", None) or getattr(obj, "__name__", None)
            if not isinstance(key, str) or not key:
                raise TypeError(f"cannot register {obj!r} as a {self.kind}: give it a name (register(name=...)).")
            known = self._entries.get(key)
            if known is not None and known is not obj and _origin(known) != _origin(obj):
                raise ValueError(
                    f"a {self.kind} named {key!r} is already registered ({_origin(known)}); "
                    f"{_origin(obj)} needs another name."
                )
            self._entries[key] = obj
            return obj

        return add(entry) if entry is not None else add

    def discover(self) -> "Registry":
        """Import every public module of ``package`` (idempotent), so that its entries register."""
        if self.package is None:
            return self
        pkg = importlib.import_module(self.package)
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            if not info.name.startswith("_") and info.name not in self.skip:
                importlib.import_module(f"{self.package}.{info.name}")
        return self

    # ---- lookup -----------------------------------------------------------------------------------------
    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return self._entries.get(name, default)

    def lookup(self, name: Any) -> Any:
        """The entry registered as ``name``; an unknown name raises with the nearest one suggested."""
        if not isinstance(name, str) or name not in self._entries:
            valid = sorted(self._entries)
            raise ValueError(
                f"unknown {self.kind} {name!r}.{suggest(str(name), valid)} "
                f"Registered {self.kind}s: {', '.join(valid)}."
            )
        return self._entries[name]

    def create(self, name: str, **options: Any) -> Any:
        entry = self.lookup(name)
        make: Callable[..., Any] = getattr(entry, "create", entry)
        return make(**options)

    def __getitem__(self, name: str) -> Any:
        if name not in self._entries:
            self.lookup(name)  # raises the helpful error
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(sorted(self._entries))})"


def _origin(obj: Any) -> str:
    module = getattr(obj, "__module__", "?")
    qual = getattr(obj, "__qualname__", type(obj).__name__)
    path = getattr(sys.modules.get(module), "__file__", None)
    return f"{module}.{qual}" + (f" in {path}" if path else "")
