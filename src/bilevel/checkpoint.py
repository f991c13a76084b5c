"""Checkpoints of a run: everything ``solve`` needs to continue it exactly, in a file that loads without
executing code.

A checkpoint is one ``torch.save`` file of plain containers, tensors and numbers, read back with
``torch.load(..., weights_only=True)`` (no pickled classes, no code).  The solver state (frozen dataclasses
of this library: ``AIDState``, ``LanczosState`` with its basis buffer, ``CGState``, ...) is encoded as
nodes ``{"kind": "dataclass", "type": "bilevel.<module>.<Class>", "fields": {...}}``; decoding rebuilds
only dataclasses defined in already-imported ``bilevel`` modules, field by field (no ``__init__`` runs).
Tensors that share storage (the Lanczos basis and its views) are saved once and share it again after
loading.  Random generators are saved as their state and rebuilt (one object per saved generator, so a
generator held in several places stays one object); an ``outer`` optimizer as its ``state_dict``, loaded
into the optimizer that the resumed run builds.

Contents: the solver state and the run's generator; the batch stream's state (each draw group's generator,
epoch permutation and position); oracle counts, solver time, the history so far, the curvature watch and
the evaluator's warm starts (so later evaluations are bit-identical too); the states of callbacks with
``state_dict``; and a header naming the solver and its resolved options, the problem (name, sizes, dtype,
x0 and y0), the seed and the sampler, which ``solve(resume_from=…)`` checks before it continues.

Not saved: the state of a user's ``OracleWrapper`` or of the problem's own objects (caches that do not
change results are fine), and callbacks without ``state_dict``.  The solver time continues from the saved
total (``max_time`` counts the whole run).  Bit-identical continuation assumes the same device, dtype and
torch thread count as the run that wrote the checkpoint (reductions may round differently otherwise).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Any, Mapping, Optional

import torch
from torch import Tensor

from .history import atomic_write

FORMAT = "bilevel-checkpoint"
VERSION = 1
#: checkpoint files written by the ``Checkpoint`` callback: ``checkpoint-<iterations done, 8 digits>.pt``
FILE_PATTERN = re.compile(r"^checkpoint-(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint cannot be written, read, or does not belong to this run (one line: what, why, fix)."""


def file_name(iterations: int) -> str:
    return f"checkpoint-{iterations:08d}.pt"


def latest(directory: str | os.PathLike) -> Optional[str]:
    """The checkpoint with the most iterations in ``directory`` (None when there is none)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return None
    found = sorted((int(m.group(1)), n) for n in names if (m := FILE_PATTERN.match(n)))
    return os.path.join(directory, found[-1][1]) if found else None


# ---- encoding ------------------------------------------------------------------------------------------
class _Encoder:
    def __init__(self) -> None:
        self.generators: dict[int, int] = {}
        self.fills: dict[int, int] = {}

    def __call__(self, obj: Any, where: str) -> Any:
        from .linear_solvers.lanczos import BasisFill
        from .outer import OuterOptimizer

        if obj is None or isinstance(obj, (bool, int, float, str, Tensor)):
            return obj
        if isinstance(obj, torch.Generator):
            gid = self.generators.setdefault(id(obj), len(self.generators))
            return {"kind": "generator", "id": gid, "device": str(obj.device), "state": obj.get_state()}
        if isinstance(obj, BasisFill):
            fid = self.fills.setdefault(id(obj), len(self.fills))
            return {"kind": "basis_fill", "id": fid, "rows": obj.rows}
        if isinstance(obj, OuterOptimizer):
            return {"kind": "outer", "state": self(obj.state_dict(), f"{where}.outer")}
        if isinstance(obj, (list, tuple)):
            return {"kind": type(obj).__name__, "items": [self(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
        if isinstance(obj, Mapping):
            return {"kind": "dict", "items": [[self(k, f"{where} key"), self(v, f"{where}[{k!r}]")]
                                              for k, v in obj.items()]}
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            cls = type(obj)
            if not cls.__module__.startswith("bilevel."):
                raise CheckpointError(f"checkpoint: {where} is a {cls.__module__}.{cls.__qualname__}, a dataclass from "
                                      "outside bilevel, which a checkpoint cannot hold; keep the solver state to "
                                      "bilevel's own types, tensors and numbers.")
            return {"kind": "dataclass", "type": f"{cls.__module__}.{cls.__qualname__}",
                    "fields": {f.name: self(getattr(obj, f.name), f"{where}.{f.name}")
                               for f in dataclasses.fields(obj)}}
        raise CheckpointError(f"checkpoint: {where} is a {type(obj).__module__}.{type(obj).__qualname__}, which a "
                              "checkpoint cannot hold (tensors, numbers, strings, containers and bilevel's "
                              "dataclasses only).")


def encode(obj: Any) -> Any:
    """``obj`` as plain containers, tensors and numbers (see the module docstring)."""
    return _Encoder()(obj, "state")


class _Decoder:
    def __init__(self, outer: Any = None) -> None:
        self.generators: dict[int, torch.Generator] = {}
        self.fills: dict[int, Any] = {}
        self.outer = outer

    def __call__(self, node: Any) -> Any:
        from .linear_solvers.lanczos import BasisFill

        if not isinstance(node, dict):
            return node
        kind = node.get("kind")
        if kind in ("list", "tuple"):
            items = [self(v) for v in node["items"]]
            return items if kind == "list" else tuple(items)
        if kind == "dict":
            return {self(k): self(v) for k, v in node["items"]}
        if kind == "generator":
            gen = self.generators.get(node["id"])
            if gen is None:
                gen = torch.Generator(device=node["device"])
                gen.set_state(node["state"].cpu())
                self.generators[node["id"]] = gen
            return gen
        if kind == "basis_fill":
            fill = self.fills.get(node["id"])
            if fill is None:
                fill = self.fills[node["id"]] = BasisFill(int(node["rows"]))
            return fill
        if kind == "outer":
            if self.outer is None:
                raise CheckpointError("checkpoint: it holds the state of an outer optimizer but this run has none; "
                                      "pass the same outer=... as the run that wrote it.")
            self.outer.load_state_dict(self(node["state"]))
            return self.outer
        if kind == "dataclass":
            return self._dataclass(node)
        raise CheckpointError(f"checkpoint: unknown node kind {kind!r}; the file was not written by this version "
                              "of bilevel.")

    def _dataclass(self, node: dict) -> Any:
        path = str(node["type"])
        module, _, name = path.rpartition(".")
        owner = sys.modules.get(module) if module.startswith("bilevel.") else None
        cls = getattr(owner, name, None) if owner is not None else None
        if cls is None or not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise CheckpointError(f"checkpoint: it names the type {path!r}, which is not a dataclass of this "
                                  "bilevel version; resume with the version that wrote it.")
        obj = object.__new__(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        fields = node["fields"]
        if set(fields) != names:
            raise CheckpointError(f"checkpoint: {path} has fields {sorted(fields)} in the file but {sorted(names)} "
                                  "in this bilevel version; resume with the version that wrote it.")
        for key, value in fields.items():
            object.__setattr__(obj, key, self(value))
        return obj


def decode(node: Any, outer: Any = None) -> Any:
    """The objects ``encode`` encoded; ``outer`` is the resumed run's optimizer object (loaded in place)."""
    return _Decoder(outer)(node)


# ---- files ---------------------------------------------------------------------------------------------
def save(payload: Mapping[str, Any], path: str | os.PathLike) -> str:
    """Write ``payload`` to ``path`` atomically (a temporary file in the same folder, then ``os.replace``)."""
    path = os.fspath(path)
    atomic_write(path, lambda fh: torch.save(dict(payload), fh), binary=True, suffix=".pt")
    return path


def load(path: str | os.PathLike, device: Any = None) -> dict:
    """Read a checkpoint (a file, or a folder: its latest ``checkpoint-*.pt``) without executing code."""
    path = os.fspath(path)
    if os.path.isdir(path):
        found = latest(path)
        if found is None:
            raise CheckpointError(f"resume_from: the folder {path!r} holds no checkpoint-*.pt file; give a "
                                  "checkpoint file or the folder a Checkpoint callback wrote to.")
        path = found
    if not os.path.exists(path):
        raise CheckpointError(f"resume_from: no checkpoint at {path!r}; give a checkpoint file or folder.")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:
        reason = " ".join(str(err).split())[:160]
        raise CheckpointError(f"resume_from: cannot read {path!r} as a checkpoint ({type(err).__name__}: {reason}); "
                              "the file is truncated, corrupted or not a bilevel checkpoint: resume from another "
                              "checkpoint.") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"resume_from: {path!r} is not a bilevel checkpoint (no '{FORMAT}' header); resume "
                              "from a file written by bilevel's Checkpoint callback.")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"resume_from: {path!r} is checkpoint format version {payload.get('version')!r}; this "
                              f"bilevel reads version {VERSION}.")
    payload["path"] = path
    return payload
