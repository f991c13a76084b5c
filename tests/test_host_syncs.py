"""Host read-backs per outer iteration between evaluations (issue 15, item 4).

Every read of a tensor's value on the host (``float(t)``, ``bool(t)``, ``t.item()``: ``aten._local_scalar_dense``;
``t.tolist()``) is a device synchronisation on a GPU.  Counted on the CPU by a dispatch mode and a patched
``Tensor.tolist``, attributed to the file that asked, as the difference between a 25- and a 5-iteration run with
one evaluation at each end (evaluation reads cancel), on digits hyper-cleaning.  Per iteration (before → now):

    the solve loop (run.py)          1 → 0: finiteness and the inner-growth flag wait on the device and are read
                                     once per evaluation chunk (``solve``'s docstring, "Host reads")
    LancBiO, Lanczos (plain phase)   1: the step's scalars for the host tridiagonal solve
    LancBiO, residual mode, m = 1    3 → 2 (full batch; 4 → 3 with rescale_base): a restart reads ‖r‖ and ‖b‖
                                     together, then the step's read
    SubBiO (2-D subspace)            12 → 3: ‖b‖; ‖p‖ with ‖w2‖; H with its Cholesky solve
    AmIGO-CG (Q steps)               1 + 2Q → 1 + Q (11 → 6 full batch, Q = 5; 19 → 10 mini-batch, Q = 9)
    SOBA, stocBiO (gd, neumann)      1: the v-solver's bookkeeping in one read

Each remaining v-solver read decides whether a product is spent next (or feeds a host-side float64 solve whose
bits the golden histories pin); the comments at each read say which.  A data-parallel run adds one read per
iteration (the ranks' agreement, ``bilevel.distributed.Coordinator``); per-iteration callbacks make the loop read
after every step.  The counts are pinned exactly: a new read, or one that comes back, fails here."""

import collections
import traceback
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import bilevel


class _Reads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.by_file = collections.Counter()

    def note(self):
        frames = [f for f in traceback.extract_stack() if "/bilevel/" in f.filename.replace("\\", "/")]
        self.by_file[frames[-1].filename.replace("\\", "/").split("/bilevel/")[-1] if frames else "?"] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func.overloadpacket) == "aten._local_scalar_dense":
            self.note()
        return func(*args, **(kwargs or {}))


def _reads(solver, options, iterations, batches, monkeypatch, eval_every=10 ** 6):
    prob = bilevel.problems.hyperclean("digits", n_train=120, n_val=90)
    mode = _Reads()
    original = torch.Tensor.tolist

    def tolist(self):
        mode.note()
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mode:
            bilevel.solve(prob, getattr(bilevel.solvers, solver)(**options), max_iter=iterations,
                          eval_every=eval_every, batches=batches, true_hypergradient=False)
    monkeypatch.setattr(torch.Tensor, "tolist", original)
    return mode.by_file


RESIDUAL = {"preset": "hyperclean-residual"}  # residual mode from k = 0; m(k) = 1 for k < 50: a restart every call
#: (solver, options, mini-batch size or None, {file: reads per iteration})
CASES = [
    ("lancbio", {}, None, {"linear_solvers/lanczos.py": 1}),
    ("lancbio", {}, 30, {"linear_solvers/lanczos.py": 1}),
    ("lancbio", RESIDUAL, None, {"linear_solvers/lanczos.py": 2}),
    ("lancbio", RESIDUAL, 30, {"linear_solvers/lanczos.py": 3}),
    ("subbio", {}, None, {"linear_solvers/subspace2d.py": 3}),
    ("subbio", {}, 30, {"linear_solvers/subspace2d.py": 3}),
    ("amigo_cg", {}, None, {"linear_solvers/cg.py": 6}),
    ("amigo_cg", {}, 30, {"linear_solvers/cg.py": 10}),
    ("soba", {}, None, {"linear_solvers/base.py": 1}),
    ("soba", {}, 30, {"linear_solvers/base.py": 1}),
    ("stocbio", {}, None, {"linear_solvers/base.py": 1}),
    ("stocbio", {}, 30, {"linear_solvers/base.py": 1}),
]


def _id(case):
    return f"{case[0]}{'-residual' if case[1] else ''}-{case[2] or 'full'}"


@pytest.mark.parametrize("solver, options, size, expected", CASES, ids=[_id(c) for c in CASES])
def test_host_reads_per_iteration(solver, options, size, expected, monkeypatch):
    batches = (lambda: bilevel.MiniBatch(size)) if size else (lambda: None)
    short = _reads(solver, options, 5, batches(), monkeypatch)
    long = _reads(solver, options, 25, batches(), monkeypatch)
    per = {k: (long[k] - short[k]) / 20 for k in long if long[k] != short[k]}
    assert "run.py" not in per, per  # the loop: zero between evaluations
    assert per == expected, per


def test_the_loop_reads_once_per_evaluation_chunk(monkeypatch):
    """run.py's reads grow with the evaluations, not with the iterations: 40 iterations evaluated every 10 read
    as often as 80 evaluated every 20 (5 chunks each: iterations 0, 1–10, …)."""
    a = _reads("soba", {}, 41, None, monkeypatch, eval_every=10)
    b = _reads("soba", {}, 81, None, monkeypatch, eval_every=20)
    assert a["run.py"] == b["run.py"] and a["run.py"] > 0


def _cuda_syncs(solver, iterations):
    """Synchronising calls on CUDA per file, from torch.cuda.set_sync_debug_mode("warn") (one warning per
    synchronising call, attributed to the Python line that made it)."""
    prob = bilevel.problems.hyperclean("digits", n_train=120, n_val=90, device="cuda")
    found = collections.Counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            bilevel.solve(prob, getattr(bilevel.solvers, solver)(), max_iter=iterations, eval_every=10 ** 6,
                          true_hypergradient=False)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    for w in caught:
        name = str(w.filename).replace("\\", "/")
        if "synchroniz" in str(w.message) and "/bilevel/" in name:
            found[name.split("/bilevel/")[-1]] += 1
    return found


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("solver", ["lancbio", "subbio", "amigo_cg", "soba"])
def test_cuda_loop_makes_no_synchronising_call_between_evaluations(solver):
    """The CUDA counterpart of the CPU count: set_sync_debug_mode flags every synchronising call (reads, and
    copies of host values to the device); the loop (run.py) makes none per iteration.  The v-solvers' own
    per-iteration syncs are printed (pytest -s), not pinned: a host value copied to the device (Lanczos' s,
    SubBiO's z) synchronises on CUDA but is no read on the CPU."""
    short, long = _cuda_syncs(solver, 5), _cuda_syncs(solver, 25)
    per = {k: (long[k] - short[k]) / 20 for k in long if long[k] != short[k]}
    print(solver, "CUDA synchronising calls per iteration:", per)
    assert "run.py" not in per, per
