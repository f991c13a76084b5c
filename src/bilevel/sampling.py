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
    order with its final partial batch), cut into batches of ``size``.

    Permutation mode: every index appears exactly once per epoch (the concatenated draws, cut into chunks of
    n, are permutations).  A batch that crosses an epoch end takes the rest of the old epoch and the start
    of a freshly shuffled one; that new epoch is reordered so that its first entries avoid the old epoch's
    tail (the first ``rest`` entries not in the tail move to its front, the others keep their shuffled
    order), so no batch ever holds an index twice.  Everything stays on ``device``: no host-device copy
    per draw (positions are Python ints, the indices never leave the device)."""

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

    def _front_avoiding(self, head: torch.Tensor, rest: int) -> None:
        """Move the first ``rest`` entries of the new epoch that are not in ``head`` to its front."""
        assert self.order is not None
        order = self.order
        free = torch.ones(self.n, dtype=torch.bool, device=self.device)
        free[head] = False
        free = free[order]  # per position of the new epoch: its index is not in head
        chosen = free & (torch.cumsum(free, 0) <= rest)
        position = torch.arange(self.n, device=self.device)
        self.order = order[torch.argsort(torch.where(chosen, position - self.n, position))]

    def state_dict(self) -> dict:
        """What continues this stream exactly: its generator's state, the epoch's order, the position."""
        return {"generator": self.generator.get_state(), "order": self.order, "pos": self.pos, "epoch": self.epoch,
                "n": self.n, "size": self.size, "mode": self.mode}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if (state["n"], state["size"], state["mode"]) != (self.n, self.size, self.mode):
            raise ValueError(f"the saved stream draws {state['size']} of {state['n']} samples ({state['mode']}); this "
                             f"one {self.size} of {self.n} ({self.mode})")
        self.generator.set_state(state["generator"].cpu())
        order = state["order"]
        self.order = None if order is None else order.to(self.device)
        self.pos, self.epoch = int(state["pos"]), int(state["epoch"])

    def draw(self) -> torch.Tensor:
        if self.pos >= self.n:
            self._new_epoch()
        assert self.order is not None
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
        self._front_avoiding(head, rest)
        self.pos = rest
        return torch.cat([head, self.order[:rest]])


MODES = ("permutation", "fixed_slices")
#: the keys of ``MiniBatch.to_dict()`` / ``from_dict()`` (the YAML ``batches:`` section)
FIELDS = ("size", "sizes", "share", "mode")


class MiniBatch:
    """Seeded mini-batches of sample indices, one independent stream per draw group.

    Args:
        batch_size: B for every role (an int), or ``None`` with ``sizes`` for all of them.
        sizes: per-role batch sizes, e.g. ``{"upper": 128}`` (overrides ``batch_size`` for those roles).
        share: per-role "share a draw with role R", e.g. ``{"cross": "hvp"}``: the cross product reuses the
            HVP batch.  Overrides the solver's own ``batch_roles`` grouping for those roles; chains resolve
            (``{"lower": "cross", "cross": "hvp"}`` puts all three on the HVP draw).  ``upper`` reads the
            upper level's data and cannot share with a lower-level role.
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
    The roles of one group draw one batch, so they need one size: a role without a size of its own
    (``sizes``) takes the size given to another role of its group; two different sizes in one group are an
    error.  A size above the level's data size is the full data set, reshuffled.

    Index batches are made on the problem's device (``problem.device``), with no host-device copy per draw;
    a level given as a ``Dataset`` draws its indices on the CPU (they index a Python object).

    ``to_dict()`` / ``from_dict()`` give the plain form ``{"size": B, "sizes": {...}, "share": {...},
    "mode": ...}`` (the YAML ``batches:`` section, the CLI's metadata); ``MiniBatch`` objects compare and
    hash by their settings (and by the identity of ``data`` and ``collate``).
    """

    def __init__(self, batch_size: Optional[int] = None, *, sizes: Optional[Mapping[str, int]] = None,
                 share: Optional[Mapping[str, str]] = None, mode: str = "permutation",
                 data: Optional[Mapping[str, Any]] = None, collate: Optional[Callable[[list], Any]] = None) -> None:
        owner = "MiniBatch"
        if batch_size is not None:
            check_int(owner, "batch_size", batch_size, 1)
        if sizes is not None and not isinstance(sizes, Mapping):
            raise TypeError(f"{owner}: sizes must map roles to batch sizes, e.g. {{'upper': 128}}; "
                            f"got {type(sizes).__name__} ({sizes!r}).")
        sizes = dict(sizes or {})
        for role, size in sizes.items():
            if role not in ROLES:
                raise _unknown_role(role, owner)
            check_int(owner, f"sizes[{role!r}]", size, 1)
        if batch_size is None and set(sizes) != set(ROLES):
            missing = [r for r in ROLES if r not in sizes]
            raise ValueError(f"{owner}: give batch_size (every role) or a size for each role; missing sizes for "
                             f"{', '.join(missing)}. E.g. MiniBatch(256) or MiniBatch(256, sizes={{'upper': 128}}).")
        if share is not None and not isinstance(share, Mapping):
            raise TypeError(f"{owner}: share must map a role to the role whose draw it shares, e.g. "
                            f"{{'cross': 'hvp'}}; got {type(share).__name__} ({share!r}).")
        share = {role: other for role, other in (share or {}).items() if role != other}
        for role, other in share.items():
            for name in (role, other):
                if name not in ROLES:
                    raise _unknown_role(name, owner)
            if level_of(role) != level_of(other):
                raise ValueError(f"{owner}: share {{{role!r}: {other!r}}} joins roles that read different levels' "
                                 "data ('upper' reads the upper level's samples, every other role the lower "
                                 "level's); share 'upper' with no other role.")
        for role in share:  # chains must end: a cycle has no role to take the draw from
            chain, r = [role], share[role]
            while r in share:
                if r in chain:
                    raise ValueError(f"{owner}: share forms a cycle ({' → '.join(chain + [r])}); let one of "
                                     "these roles keep its own draw (drop its share entry).")
                chain.append(r)
                r = share[r]
        check_choice(owner, "mode", mode, MODES)
        if data is not None:
            if not isinstance(data, Mapping) or not set(data) <= {"f", "g"} or not data:
                raise ValueError(f"{owner}: data must map 'f' and/or 'g' to a torch Dataset; got {data!r}.")
            for level, ds in data.items():
                if not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__"):
                    raise TypeError(f"{owner}: data[{level!r}] must be a map-style Dataset (len and indexing); "
                                    f"got {type(ds).__name__}.")
        if collate is not None and not callable(collate):
            raise TypeError(f"{owner}: collate must be callable(list of samples) -> batch; got "
                            f"{type(collate).__name__}.")
        self.batch_size, self.sizes, self.share, self.mode = batch_size, sizes, share, mode
        self.data, self.collate = (dict(data) if data else None), collate

    def size(self, role: str) -> int:
        """The batch size a role asks for (its own size, else ``batch_size``; see the class docstring for
        roles that share a draw)."""
        return self.sizes.get(role, self.batch_size)  # type: ignore[return-value]

    # ---- plain form, equality ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """``{"size": B, "sizes": {role: B}, "share": {role: role}, "mode": ...}``, every key present (so
        two equal samplers give equal dicts: the form recorded in metadata and hashed into run ids)."""
        if self.data is not None or self.collate is not None:
            raise TypeError("MiniBatch.to_dict: this MiniBatch holds Python objects (data=/collate=), which have "
                            "no plain form; record the Datasets yourself.")
        return {"size": self.batch_size,
                "sizes": {r: self.sizes[r] for r in ROLES if r in self.sizes},
                "share": {r: self.share[r] for r in ROLES if r in self.share},
                "mode": self.mode}

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], where: str = "MiniBatch.from_dict") -> "MiniBatch":
        """The sampler of a plain form (``to_dict``'s, or a YAML ``batches:`` mapping); keys ``size``,
        ``sizes``, ``share``, ``mode`` (all optional but a size); unknown keys are rejected with the nearest
        valid one suggested, ``where`` prefixes the messages."""
        if isinstance(spec, MiniBatch):
            return spec
        if not isinstance(spec, Mapping):
            raise TypeError(f"{where}: expected a mapping like {{size: 256, sizes: {{upper: 128}}, share: "
                            f"{{cross: hvp}}, mode: permutation}}; got {type(spec).__name__} ({spec!r}).")
        for key in spec:
            if key not in FIELDS:
                raise ValueError(f"{where}: unknown key {key!r}.{suggest(str(key), FIELDS)} Valid keys: "
                                 f"{', '.join(FIELDS)}.")
        size = spec.get("size")
        if size is not None:
            check_int(where, "size", size, 1)
        for key in ("sizes", "share"):
            if spec.get(key) is not None and not isinstance(spec[key], Mapping):
                example = "{upper: 128}" if key == "sizes" else "{cross: hvp}"
                raise TypeError(f"{where}: {key} must be a mapping of roles, e.g. {example}; got "
                                f"{type(spec[key]).__name__} ({spec[key]!r}).")
        if size is None:
            missing = [r for r in ROLES if r not in (spec.get("sizes") or {})]
            if missing:
                raise ValueError(f"{where}: give size (B for every role) or sizes for each role; missing sizes for "
                                 f"{', '.join(missing)}. E.g. {{size: 256, sizes: {{upper: 128}}}}.")
        mode = spec.get("mode")
        try:
            return cls(size, sizes=spec.get("sizes"), share=spec.get("share"),
                       mode="permutation" if mode is None else mode)
        except (TypeError, ValueError) as err:  # the constructor names itself; say where the values came from
            raise type(err)(f"{where}: {str(err).removeprefix('MiniBatch: ')}") from None

    def _key(self) -> tuple:
        data = tuple((k, id(v)) for k, v in sorted((self.data or {}).items()))
        return (self.batch_size, tuple(sorted(self.sizes.items())), tuple(sorted(self.share.items())),
                self.mode, data, id(self.collate) if self.collate is not None else None)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MiniBatch):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        parts = [repr(self.batch_size)] if self.batch_size is not None else []
        for name in ("sizes", "share"):
            if getattr(self, name):
                parts.append(f"{name}={getattr(self, name)!r}")
        if self.mode != "permutation":
            parts.append(f"mode={self.mode!r}")
        if self.data:
            shown = ", ".join(f"{k!r}: {type(v).__name__}({len(v)})" for k, v in self.data.items())
            parts.append(f"data={{{shown}}}")
        if self.collate is not None:
            parts.append(f"collate={getattr(self.collate, '__name__', repr(self.collate))}")
        return f"MiniBatch({', '.join(parts)})"

    # ---- the run -----------------------------------------------------------------------------------------
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

    def groups(self, roles: Mapping[str, str]) -> dict[str, str]:
        """role → draw group for a solver's ``batch_roles``, after ``share``."""
        own = _check_roles("MiniBatch", roles)
        out = {}
        for role in ROLES:
            r = role
            while r in self.share:
                r = self.share[r]
            out[role] = own[r]
        return out

    def start(self, roles: Mapping[str, str], generator: torch.Generator, problem: Any = None
              ) -> Callable[[int], Batches]:
        groups = self.groups(roles)
        device = getattr(problem, "device", None) or torch.device("cpu")
        base = int(generator.initial_seed())
        members: dict[str, list[str]] = {}
        for role, group in groups.items():
            members.setdefault(group, []).append(role)
        streams: dict[str, _Permutation] = {}
        levels: dict[str, str] = {}
        for group, rs in members.items():
            lv = {level_of(r) for r in rs}
            if len(lv) > 1:
                raise ValueError(f"MiniBatch: roles {', '.join(rs)} share a draw but read different levels' data "
                                 "(upper reads f's samples, the others g's); do not share 'upper' with a lower role.")
            own = {self.sizes[r] for r in rs if r in self.sizes}
            if len(own) > 1:
                raise ValueError(f"MiniBatch: roles {', '.join(rs)} share a draw but have different batch sizes "
                                 f"{sorted(own)}; give them one size.")
            size = own.pop() if own else self.batch_size
            level = lv.pop()
            n = self._n(level, problem)
            on = torch.device("cpu") if self.data is not None and level in self.data else torch.device(device)
            gen = torch.Generator(device=on)
            gen.manual_seed((base * 1_000_003 + zlib.crc32(group.encode())) % (2 ** 63))
            streams[group] = _Permutation(n, min(int(size), n), self.mode, gen, on)  # type: ignore[arg-type]
            levels[group] = level
        data, collate = self.data, self.collate
        if data is not None and collate is None:
            from torch.utils.data import default_collate as collate

        def draw(group: str, index: int) -> Any:
            idx = streams[group].draw()
            if data is not None and levels[group] in data:
                ds = data[levels[group]]
                return collate([ds[i] for i in idx.tolist()])
            return idx

        return _MiniBatchStream(groups, draw, streams)


class _MiniBatchStream:
    """``stream(iteration) -> Batches`` of a ``MiniBatch`` run; ``state_dict()`` / ``load_state_dict()``
    save and restore every draw group's stream (checkpoints: a resumed run draws the same batches)."""

    __slots__ = ("groups", "draw", "streams")

    def __init__(self, groups: dict, draw: Callable[[str, int], Any], streams: dict) -> None:
        self.groups, self.draw, self.streams = groups, draw, streams

    def __call__(self, iteration: int) -> Batches:
        return Batches(iteration, self.groups, self.draw)

    def state_dict(self) -> dict:
        return {group: stream.state_dict() for group, stream in self.streams.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state) != set(self.streams):
            raise ValueError(f"the saved draw groups {sorted(state)} differ from this run's {sorted(self.streams)}")
        for group, stream in self.streams.items():
            try:
                stream.load_state_dict(state[group])
            except ValueError as err:
                raise ValueError(f"draw group {group!r}: {err}") from None
