"""The data path: a seeded stream of batches with named roles.

Each outer iteration a solver asks ``batches(role, index)`` for the data of one oracle call.  Roles name
*what the data is for*, so that an algorithm's paper decides which calls share a draw:

    ``inner``   the lower-level gradient steps ∇_y g (index = the inner step t, one draw per step)
    ``upper``   ∇_y f and ∇_x f (the right-hand side b and the direct term)
    ``hvp``     the products A·q with ∇²_yy g (the v-solver)
    ``cross``   the cross product ∇²_xy g·v (and ∇²_yx g·w)
    ``lower``   other lower-level first-order calls (∇_x g, ∇_y g of first-order penalty methods)

A solver declares ``batch_roles``: role → draw group.  Roles mapped to the same group share one draw per
iteration (e.g. ``{"hvp": "hessian", "cross": "hessian"}``: the cross product reuses the HVP batch); the
default is one independent draw per role.  A *batch* is whatever the problem's ``f``/``g`` accept as their
third argument; ``None`` means the full data set.

``FullBatch`` (the default) hands every role the full data set, so deterministic algorithms are
unchanged.  ``MiniBatch`` draws mini-batches of sample indices: the ``upper`` role from the upper level's
data (``problem.n_samples_f`` samples, e.g. validation), every other role from the lower level's
(``problem.n_samples``, e.g. training).  A batch is then a 1-D ``torch.long`` tensor of indices on the
problem's device, which the problem's ``f``/``g`` and closed forms evaluate on (the batch's mean); with
``data=`` (``torch.utils.data.Dataset`` per level) the batch is instead the collated samples.
"""

from __future__ import annotations

import zlib
from typing import Any, Callable, Mapping, Optional, Protocol, runtime_checkable

import torch

from ._validation import check_choice, check_int, suggest

ROLES = ("inner", "upper", "hvp", "cross", "lower")


def _unknown_role(role: str, owner: str = "") -> ValueError:
    prefix = f"{owner}: " if owner else ""
    return ValueError(f"{prefix}unknown batch role {role!r}.{suggest(role, ROLES)} Roles: {', '.join(ROLES)}.")


def _check_roles(owner: str, roles: Mapping[str, str]) -> dict[str, str]:
    for role in roles:
        if role not in ROLES:
            raise _unknown_role(role, owner)
    return {role: roles.get(role, role) for role in ROLES}


class Batches:
    """The draws of one outer iteration: ``batches(role, index=0)`` → a batch (``None`` = full data).

    Draws are memoised per (group, index) within the iteration, so roles of one group share a draw and a
    role asked twice with the same index gets the same batch.
    """

    __slots__ = ("iteration", "_groups", "_draw", "_memo")

    def __init__(self, iteration: int, groups: Mapping[str, str], draw: Optional[Callable[[str, int], Any]]) -> None:
        self.iteration = iteration
        self._groups = groups
        self._draw = draw
        self._memo: dict[tuple[str, int], Any] = {}

    def __call__(self, role: str, index: int = 0) -> Any:
        if self._draw is None:
            return None
        group = self._groups.get(role)
        if group is None:
            raise _unknown_role(role)
        key = (group, index)
        if key not in self._memo:
            self._memo[key] = self._draw(group, index)
        return self._memo[key]

    @property
    def full(self) -> bool:
        """True when every role gets the full data set."""
        return self._draw is None


@runtime_checkable
class BatchSource(Protocol):
    """Makes the per-iteration ``Batches``; ``start(roles, generator, problem)`` is called once per run."""

    def start(self, roles: Mapping[str, str], generator: torch.Generator, problem: Any = None) -> "BatchStream": ...


class BatchStream(Protocol):
    def __call__(self, iteration: int) -> Batches: ...


class FullBatch:
    """Every role, every iteration: the full data set (``batch=None``).  Draws nothing."""

    def start(self, roles: Mapping[str, str], generator: torch.Generator, problem: Any = None
              ) -> Callable[[int], Batches]:
        groups = _check_roles("FullBatch", roles)
        return lambda iteration: Batches(iteration, groups, None)

    def __repr__(self) -> str:
        return "FullBatch()"


def full_batches(iteration: int = 0) -> Batches:
    """A ``Batches`` of full-data draws, for calling a solver's ``step`` by hand."""
    return Batches(iteration, {role: role for role in ROLES}, None)


def level_of(role: str) -> str:
    """The level whose data a role draws: ``"f"`` for ``upper``, ``"g"`` for every other role."""
    return "f" if role == "upper" else "g"


class _Permutation:
    """One group's index stream: an epoch permutation of range(n) (or, with ``fixed_slices``, the contiguous
    order with its final partial batch), cut into batches of ``size``.  A batch never repeats an index within
    an epoch; a permutation batch that crosses an epoch end takes the rest of the old epoch and the start of
    a freshly shuffled one."""

    __slots__ = ("n", "size", "mode", "generator", "device", "order", "pos", "epoch")

    def __init__(self, n: int, size: int, mode: str, generator: torch.Generator, device: torch.device) -> None:
        self.n, self.size, self.mode, self.generator, self.device = n, size, mode, generator, device
        self.order: Optional[torch.Tensor] = None
        self.pos, self.epoch = n, -1  # the first draw starts epoch 0

    def _new_epoch(self) -> None:
        self.epoch += 1
        self.pos = 0
        if self.mode == "permutation":
            self.order = torch.randperm(self.n, generator=self.generator, device=self.device)
        elif self.order is None:
            self.order = torch.arange(self.n, device=self.device)

    def draw(self) -> torch.Tensor:
        if self.pos >= self.n:
            self._new_epoch()
        if self.mode == "fixed_slices":  # the reference's slicing: the last batch of an epoch may be short
            out = self.order[self.pos:self.pos + self.size]
            self.pos += out.numel()
            return out
        take = min(self.size, self.n - self.pos)
        head = self.order[self.pos:self.pos + take]
        self.pos += take
        if take == self.size:
            return head
        self._new_epoch()
        rest = self.size - take
        tail = self.order[:rest]
        self.pos = rest
        return torch.cat([head, tail])


class MiniBatch:
    """Seeded mini-batches of sample indices, one independent stream per draw group.

    Args:
        batch_size: B for every role (an int), or ``None`` with ``sizes`` for all of them.
        sizes: per-role batch sizes, e.g. ``{"upper": 128}`` (overrides ``batch_size`` for those roles).
        share: per-role "share a draw with role R", e.g. ``{"cross": "hvp"}``: the cross product reuses the
            HVP batch.  Overrides the solver's own ``batch_roles`` grouping for those roles.
        mode: ``"permutation"`` (default: without replacement within an epoch, reshuffled every epoch) or
            ``"fixed_slices"`` (the reference's contiguous slices i·B … (i+1)·B − 1 in data order, a final
            partial batch included, no shuffling).
        data: optional ``{"f": Dataset, "g": Dataset}`` (``torch.utils.data.Dataset``s): the batch handed to
            ``f``/``g`` is then ``collate([dataset[i] for i in indices])`` instead of the index tensor, and
            the level's size is ``len(dataset)``.   collate: default ``torch.utils.data.default_collate``.

    Draw groups: the solver's ``batch_roles`` (role → group, per its paper; by default every role draws
    independently), then ``share``.  Each group has its own generator, seeded from the run's seed and the
    group's name, so adding a role or changing one batch size never shifts another group's draws.  A role
    asked with several indices in one iteration (inner step t, Neumann term i) gets a fresh batch per index.
    """

    def __init__(self, batch_size: Optional[int] = None, *, sizes: Optional[Mapping[str, int]] = None,
                 share: Optional[Mapping[str, str]] = None, mode: str = "permutation",
                 data: Optional[Mapping[str, Any]] = None, collate: Optional[Callable[[list], Any]] = None) -> None:
        owner = "MiniBatch"
        if batch_size is not None:
            check_int(owner, "batch_size", batch_size, 1)
        sizes = dict(sizes or {})
        for role, size in sizes.items():
            if role not in ROLES:
                raise _unknown_role(role, owner)
            check_int(owner, f"sizes[{role!r}]", size, 1)
        if batch_size is None and set(sizes) != set(ROLES):
            missing = [r for r in ROLES if r not in sizes]
            raise ValueError(f"{owner}: give batch_size (every role) or a size for each role; missing sizes for "
                             f"{', '.join(missing)}. E.g. MiniBatch(256) or MiniBatch(256, sizes={{'upper': 128}}).")
        share = dict(share or {})
        for role, other in share.items():
            for name in (role, other):
                if name not in ROLES:
                    raise _unknown_role(name, owner)
        check_choice(owner, "mode", mode, ("permutation", "fixed_slices"))
        if data is not None:
            if not isinstance(data, Mapping) or not set(data) <= {"f", "g"} or not data:
                raise ValueError(f"{owner}: data must map 'f' and/or 'g' to a torch Dataset; got {data!r}.")
            for level, ds in data.items():
                if not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__"):
                    raise TypeError(f"{owner}: data[{level!r}] must be a map-style Dataset (len and indexing); "
                                    f"got {type(ds).__name__}.")
        self.batch_size, self.sizes, self.share, self.mode = batch_size, sizes, share, mode
        self.data, self.collate = (dict(data) if data else None), collate

    def size(self, role: str) -> int:
        return self.sizes.get(role, self.batch_size)  # type: ignore[return-value]

    def __repr__(self) -> str:
        parts = [repr(self.batch_size)] if self.batch_size is not None else []
        for name in ("sizes", "share"):
            if getattr(self, name):
                parts.append(f"{name}={getattr(self, name)!r}")
        if self.mode != "permutation":
            parts.append(f"mode={self.mode!r}")
        return f"MiniBatch({', '.join(parts)})"

    def _n(self, level: str, problem: Any) -> int:
        if self.data is not None and level in self.data:
            return len(self.data[level])
        n = getattr(problem, "n_samples_f" if level == "f" else "n_samples", None)
        if not n:
            name = getattr(problem, "name", "the problem")
            raise ValueError(
                f"MiniBatch: {name} declares no {'upper' if level == 'f' else 'lower'}-level data size "
                f"(n_samples{'_f' if level == 'f' else ''}), so there is nothing to sample; build it with "
                "n_samples=/n_samples_f= and f/g that evaluate a batch of indices, or pass data={'f': ..., 'g': ...}.")
        return int(n)

    def start(self, roles: Mapping[str, str], generator: torch.Generator, problem: Any = None
              ) -> Callable[[int], Batches]:
        groups = _check_roles("MiniBatch", roles)
        for role, other in self.share.items():
            groups[role] = groups[other]
        device = getattr(problem, "device", None) or torch.device("cpu")
        base = int(generator.initial_seed())
        members: dict[str, list[str]] = {}
        for role, group in groups.items():
            members.setdefault(group, []).append(role)
        streams: dict[str, _Permutation] = {}
        levels: dict[str, str] = {}
        for group, rs in members.items():
            lv = {level_of(r) for r in rs}
            bs = {self.size(r) for r in rs}
            if len(lv) > 1:
                raise ValueError(f"MiniBatch: roles {', '.join(rs)} share a draw but read different levels' data "
                                 "(upper reads f's samples, the others g's); do not share 'upper' with a lower role.")
            if len(bs) > 1:
                raise ValueError(f"MiniBatch: roles {', '.join(rs)} share a draw but have different batch sizes "
                                 f"{sorted(bs)}; give them one size.")
            level = lv.pop()
            n = self._n(level, problem)
            gen = torch.Generator(device=device)
            gen.manual_seed((base * 1_000_003 + zlib.crc32(group.encode())) % (2 ** 63))
            streams[group] = _Permutation(n, min(bs.pop(), n), self.mode, gen, device)
            levels[group] = level
        data, collate = self.data, self.collate
        if data is not None and collate is None:
            from torch.utils.data import default_collate as collate

        def draw(group: str, index: int) -> Any:
            idx = streams[group].draw()
            if data is not None and levels[group] in data:
                ds = data[levels[group]]
                return collate([ds[int(i)] for i in idx.tolist()])
            return idx

        return lambda iteration: Batches(iteration, groups, draw)
