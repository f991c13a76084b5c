"""Data-parallel oracles on ``torch.distributed``: every oracle call sharded across ranks, results all-reduced.

Every oracle of a data-backed problem is a mean over its batch 𝓑 (a regulariser R, e.g. ρ‖P‖², added once):

    ∇g_𝓑(x, y) = (1/|𝓑|) Σ_{i∈𝓑} ∇ℓ_i(x, y) + ∇R(y),

and the same for ∇f, the HVP ∇²_yy g·u and the cross products ∇²_xy g·v, ∇²_yx g·w.  Split 𝓑 into W disjoint
shards 𝓑_0 … 𝓑_{W−1} (rank r holds 𝓑_r) and each rank evaluates the problem's own oracle on its shard, a mean
over 𝓑_r plus ∇R; then

    Σ_r (|𝓑_r| / |𝓑|) · oracle_{𝓑_r} = oracle_𝓑        (the weights sum to 1, so ∇R is counted once),

so one all-reduce (sum) of the weighted shard results gives every rank the whole batch's result: the data
parallelism is exact (up to the order of floating-point summation).

Sharding is deterministic and needs no communication: the full data set of a level (``batch=None``) is its index
range 0 … n−1 cut into W contiguous shards (the first n mod W one longer); a mini-batch (a 1-D index tensor drawn by
``MiniBatch``, identical on every rank because every rank seeds the same stream) is cut into W contiguous pieces
of the drawn order (``torch.tensor_split``); collated ``Dataset`` batches (a mapping, tuple or list of tensors)
are cut along their leading dimension.  A problem with no per-sample data at a level (``n_samples`` /
``n_samples_f`` unset) and batches of any other type are *replicated*: every rank computes the whole oracle and
nothing is reduced (correct, no speed-up).  Each rank needs at least one sample of every batch it shards.

Per iteration a solver's oracle cost is unchanged; each rank does 1/W of the sample work of every call and one
all-reduce of dx or dy numbers (plus W flags) per call.

Counts: ``solve`` counts on top of this wrapper, so ``Result.counts`` holds the *global* samples (the whole
batch per call, as in one process: equal on every rank and to a one-process run); ``DataParallelOracles
.local_counts`` holds this rank's calls and the samples of its shards.

Errors: every all-reduce carries one flag per rank.  A rank whose shard computation raises contributes zeros and
its flag; every rank then raises (the failing rank its own exception, the others ``DistributedError`` naming the
rank and its message), so no rank waits forever for the failed one.  ``solve`` agrees once per iteration on the
same terms for errors outside the oracles (see ``Coordinator``); ``init`` sets a process-group timeout as the
last resort for a rank that dies between collectives.

Evaluation (metrics, the true hypergradient) is *replicated*: every rank evaluates the full data with uncounted,
unsharded oracles, so the rows agree on every rank without communication; rank 0's history is the run's.

Limits: the iterates stay identical on every rank because an all-reduce hands every rank the same sum (gloo, NCCL);
the agreement costs one host read per iteration.  Ctrl-C is for one process: under torchrun stop a run with
``max_time`` or a callback (rank 0's decision), since an interrupt reaches the ranks at different points of an
iteration.  A rank that dies between collectives (killed, out of memory) leaves the others waiting until the
process group's timeout (``init(timeout=...)``), which then fails them.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Mapping, Optional

import torch
from torch import Tensor

from .oracles import Counts, OracleWrapper, PointWrapper, _batch_size


class DistributedError(RuntimeError):
    """Another rank failed; this rank stops with the message of the rank that raised."""


def _dist():
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "bilevel.distributed: torch.distributed is not initialised; got no default process group. Call "
            "bilevel.distributed.init() (under torchrun) or torch.distributed.init_process_group first.")
    return dist


def _comm_device(group: Any) -> torch.device:
    """Where the collectives' buffers live: the current CUDA device for NCCL, else the CPU."""
    dist = _dist()
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init(backend: Optional[str] = None, timeout: float = 600.0) -> tuple[int, int]:
    """Initialise the default process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``; ``LOCAL_RANK`` picks the CUDA device) and return (rank, world size).

    backend: ``"gloo"`` on CPU, ``"nccl"`` when CUDA is available (default).  timeout: seconds a collective may
    wait for a missing rank before every rank fails (the last resort; errors are normally flagged, see the
    module docstring).  A process group already initialised is kept."""
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("bilevel.distributed.init: this torch build has no torch.distributed; install a build "
                           "with distributed support.")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise RuntimeError(f"bilevel.distributed.init: environment variable {key} is not set; launch with "
                               "torchrun --nproc-per-node N -m bilevel run ... (or set RANK, WORLD_SIZE, MASTER_ADDR, "
                               "MASTER_PORT).")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    return dist.get_rank(), dist.get_world_size()


def _raise_flagged(flags: Tensor, error: Optional[BaseException], group: Any, where: str) -> None:
    """After an all-reduce: if any rank set its flag, every rank raises (collectively: all reach here)."""
    failed = [r for r, f in enumerate(flags.tolist()) if f]
    if not failed:
        return
    dist = _dist()
    texts: list = [None] * dist.get_world_size(group)
    mine = None if error is None else f"{type(error).__name__}: {error}"
    dist.all_gather_object(texts, mine, group=group)
    if error is not None:
        raise error
    r = failed[0]
    raise DistributedError(f"rank {r} raised {where}: {texts[r]}; every rank stops. Fix the error on rank {r} "
                           "(its traceback has the details).")


class Coordinator:
    """One decision per iteration for every rank: ``agree(stop, error)`` all-reduces the ranks' error flags and
    rank 0's stop decision (W + 1 numbers, one host read); a flagged error raises on every rank.  ``share`` sends
    rank 0's Python objects to every rank, ``broadcast`` rank 0's tensor."""

    def __init__(self, group: Any = None) -> None:
        dist = _dist()
        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.device = _comm_device(group)

    def agree(self, stop: bool, error: Optional[BaseException] = None) -> bool:
        buf = torch.zeros(self.world + 1, dtype=torch.float64, device=self.device)
        if error is not None:
            buf[self.rank] = 1.0
        if self.rank == 0 and stop:
            buf[self.world] = 1.0
        _dist().all_reduce(buf, group=self.group)
        _raise_flagged(buf[:self.world], error, self.group, "during the iteration")
        return bool(buf[self.world])

    def share(self, obj: Any) -> Any:
        box = [obj if self.rank == 0 else None]
        _dist().broadcast_object_list(box, src=0, group=self.group, device=self.device)
        return box[0]

    def broadcast(self, t: Optional[Tensor]) -> Optional[Tensor]:
        if t is None:
            return None
        out = t.detach().clone().to(self.device)
        _dist().broadcast(out, src=0, group=self.group)
        return out.to(t.device)


def _split(n: int, world: int, rank: int) -> tuple[int, int]:
    q, r = divmod(n, world)
    start = rank * q + min(rank, r)
    return start, start + q + (1 if rank < r else 0)


class DataParallelOracles(OracleWrapper):
    """Shards every oracle call's batch across the ranks of ``group`` and all-reduces the weighted shard results
    (module docstring).  Wrap the oracles and pass them to ``solve`` on every rank::

        bilevel.distributed.init()
        oracles = DataParallelOracles(bilevel.Oracles(problem))
        result = bilevel.solve(problem, solver, oracles=oracles, batches=...)   # the same Result on every rank

    ``local_counts``: this rank's oracle calls and the samples of its shards.  ``bytes_reduced``: bytes this rank
    has all-reduced (the payload), ``reductions``: how many all-reduces."""

    def __init__(self, inner: Any, group: Any = None) -> None:
        super().__init__(inner)
        dist = _dist()
        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.device = _comm_device(group)
        self.local_counts = Counts()
        self.bytes_reduced = 0
        self.reductions = 0
        self._full: dict[str, Any] = {}
        self._memo: list = []  # (global batch, its shard), newest first: the same shard object for the same batch

    @property
    def coordinator(self) -> Coordinator:
        return Coordinator(self.group)

    # ---- sharding ----------------------------------------------------------------------------------------
    def _cut(self, batch: Any) -> Any:
        if isinstance(batch, Tensor):
            return torch.tensor_split(batch, self.world)[self.rank]
        if isinstance(batch, Mapping):
            return {k: self._cut(v) for k, v in batch.items()}
        return type(batch)(self._cut(v) for v in batch)

    def shard(self, batch: Any, level: str) -> tuple[Any, int, int]:
        """(this rank's batch, its size, the whole batch's size); size 0 = replicated (the whole batch)."""
        if batch is None:
            if level not in self._full:
                n = getattr(self.problem, "n_samples_f" if level == "f" else "n_samples", None) or 0
                if n:
                    lo, hi = _split(int(n), self.world, self.rank)
                    self._full[level] = (torch.arange(lo, hi, device=self.problem.device), hi - lo, int(n))
                else:
                    self._full[level] = (None, 0, 0)
            return self._full[level]
        for held, out in self._memo:
            if held is batch:
                return out
        lead = batch
        if isinstance(batch, Mapping):
            lead = next(iter(batch.values()), None)
        elif isinstance(batch, (tuple, list)) and batch and all(isinstance(t, Tensor) for t in batch):
            lead = batch[0]
        elif not isinstance(batch, Tensor):
            return batch, 0, 0
        if not isinstance(lead, Tensor) or lead.dim() == 0:
            return batch, 0, 0
        n = int(lead.shape[0])
        lo, hi = _split(n, self.world, self.rank)
        if n < self.world:  # every rank sees n, so every rank raises here: no rank is left in a collective
            raise ValueError(f"DataParallelOracles: a batch of {n} sample(s) cannot give each of {self.world} ranks "
                             "a sample; use batches of at least as many samples as ranks.")
        out = (self._cut(batch), hi - lo, n)
        self._memo.insert(0, (batch, out))
        del self._memo[16:]
        return out

    def _tick(self, kind: str, level: str, n_local: int, n: int, batch: Any) -> None:
        c = self.local_counts
        setattr(c, kind, getattr(c, kind) + 1)
        size = n_local if n else _batch_size(self.problem, batch, level)  # replicated: the whole batch
        if level == "f":
            c.samples_f += size
        else:
            c.samples_g += size

    # ---- the reduction -----------------------------------------------------------------------------------
    def reduce(self, compute, shapes: tuple, like: Tensor, n_local: int, n: int, where: str) -> tuple:
        """Run ``compute()`` (tensors of ``shapes``) on this rank's shard and sum ``n_local/n`` × it over the
        ranks (replicated when n = 0: only the error flags are reduced)."""
        error, outs = None, None
        try:
            outs = compute()
            outs = outs if isinstance(outs, tuple) else (outs,)
        except Exception as err:  # reported to every rank below, then re-raised here
            error = err
        flags = torch.zeros(self.world, dtype=like.dtype, device=self.device)
        if error is not None:
            flags[self.rank] = 1.0
        dist = _dist()
        if not n:
            dist.all_reduce(flags, group=self.group)
            _raise_flagged(flags, error, self.group, where)
            return outs
        if error is None:
            w = n_local / n
            parts = [(o.reshape(-1) * w).to(self.device) for o in outs]
        else:
            parts = [torch.zeros(int(torch.Size(s).numel()), dtype=like.dtype, device=self.device) for s in shapes]
        buf = torch.cat([*parts, flags])
        dist.all_reduce(buf, group=self.group)
        self.reductions += 1
        self.bytes_reduced += buf.numel() * buf.element_size()
        _raise_flagged(buf[-self.world:], error, self.group, where)
        result, pos = [], 0
        for s in shapes:
            size = int(torch.Size(s).numel())
            result.append(buf[pos:pos + size].view(s).to(like.device))
            pos += size
        return tuple(result)

    def _call(self, name: str, level: str, x: Tensor, y: Tensor, batch: Any, shapes: tuple) -> tuple:
        local, n_local, n = self.shard(batch, level)
        for kind in _KINDS[name]:
            self._tick(kind, level, n_local, n, batch)
        fn = getattr(self.inner, name)
        return self.reduce(lambda: fn(x, y, local), shapes, x, n_local, n, f"in {name}")

    def grad_x_f(self, x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        return self._call("grad_x_f", "f", x, y, batch, (x.shape,))[0]

    def grad_y_f(self, x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        return self._call("grad_y_f", "f", x, y, batch, (y.shape,))[0]

    def grad_f(self, x: Tensor, y: Tensor, batch: Any = None) -> tuple[Tensor, Tensor]:
        gx, gy = self._call("grad_f", "f", x, y, batch, (x.shape, y.shape))
        return gx, gy

    def grad_y_g(self, x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        return self._call("grad_y_g", "g", x, y, batch, (y.shape,))[0]

    def grad_x_g(self, x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        return self._call("grad_x_g", "g", x, y, batch, (x.shape,))[0]

    def grad_g(self, x: Tensor, y: Tensor, batch: Any = None) -> tuple[Tensor, Tensor]:
        gx, gy = self._call("grad_g", "g", x, y, batch, (x.shape, y.shape))
        return gx, gy

    def at(self, x: Tensor, y: Tensor, batch: Any = None) -> "DataParallelPoint":
        return DataParallelPoint(self, x, y, batch)


#: the Counts fields one call ticks
_KINDS = {"grad_x_f": ("grad_x_f",), "grad_y_f": ("grad_y_f",), "grad_f": ("grad_x_f", "grad_y_f"),
          "grad_y_g": ("grad_y_g",), "grad_x_g": ("grad_x_g",), "grad_g": ("grad_x_g", "grad_y_g"),
          "hvp": ("hvp",), "cross": ("cross",), "cross_t": ("cross_t",)}


class DataParallelPoint(PointWrapper):
    """The second-order oracles at (x, y) on a batch: this rank's point on its shard (built lazily, inside the
    flagged reduction, so a failing build stops every rank), each product all-reduced.  ``batch`` is the whole
    batch, so solvers reuse the point for it (``point_on``)."""

    def __init__(self, owner: DataParallelOracles, x: Tensor, y: Tensor, batch: Any) -> None:
        self._owner = owner
        self.x, self.y, self.batch = x.detach(), y.detach(), batch
        self._local, self._n_local, self._n = owner.shard(batch, "g")
        self._inner: Any = None

    @property
    def inner(self) -> Any:  # type: ignore[override]
        if self._inner is None:
            self._inner = self._owner.inner.at(self.x, self.y, self._local)
        return self._inner

    @property
    def graph_builds(self) -> int:
        return getattr(self._inner, "graph_builds", 0) if self._inner is not None else 0

    def _product(self, name: str, arg: Any, shape: torch.Size) -> Tensor:
        owner = self._owner
        owner._tick(name, "g", self._n_local, self._n, self.batch)

        def compute():
            point = self.inner
            return getattr(point, name)() if arg is None else getattr(point, name)(arg)

        builds = self.graph_builds
        out = owner.reduce(compute, (shape,), self.x, self._n_local, self._n, f"in {name}")[0]
        if self.graph_builds != builds:  # autodiff graphs built on this rank's shard
            c, n = owner.local_counts, self.graph_builds - builds
            c.linearize += n
            c.samples_g += n * (self._n_local if self._n else _batch_size(owner.problem, self.batch, "g"))
        return out

    def grad_y_g(self) -> Tensor:
        return self._product("grad_y_g", None, self.y.shape)

    def hvp(self, u: Tensor) -> Tensor:
        return self._product("hvp", u, self.y.shape)

    def cross(self, u: Tensor) -> Tensor:
        return self._product("cross", u, self.x.shape)

    def cross_t(self, w: Tensor) -> Tensor:
        return self._product("cross_t", w, self.y.shape)


def coordinator_of(oracles: Any) -> Optional[Coordinator]:
    """The ``Coordinator`` of the first ``DataParallelOracles`` in a chain of wrappers (``.inner``), else None."""
    seen = 0
    while oracles is not None and seen < 32:
        if isinstance(oracles, DataParallelOracles):
            return oracles.coordinator
        oracles, seen = getattr(oracles, "inner", None), seen + 1
    return None
