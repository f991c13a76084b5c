"""Host read-backs per outer iteration between evaluations (issue 15, item 4: measured, not yet removed).

Every read of a tensor's value on the host (``float(t)``, ``bool(t)``, ``t.item()``: ``aten._local_scalar_dense``;
``t.tolist()``) is a device synchronisation on a GPU.  Counted on the CPU by a dispatch mode and a patched
``Tensor.tolist``, attributed to the file that asked, as the difference between a 25- and a 5-iteration run with
one evaluation at each end (evaluation reads cancel).  Measured on digits hyper-cleaning:

    the solve loop (run.py)   1 per iteration: finiteness of (x, y, v) and the inner-growth flag, one read
    LancBiO's Lanczos         3 per iteration (full batch; 4 with mini-batches: the restart's two norms, the
                              Galerkin step's scalars in one read, and with mini-batches the minimal-residual
                              check)
    SOBA, stocBiO (gd, neumann v-solvers)   1 per iteration (the v-solver's bookkeeping in one read)

A data-parallel run adds one read per iteration (the ranks' agreement, ``bilevel.distributed.Coordinator``).
The test pins these numbers as upper bounds, so a new per-iteration read fails here."""

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


def _reads(solver, iterations, batches, monkeypatch):
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
            bilevel.solve(prob, getattr(bilevel.solvers, solver)(), max_iter=iterations, eval_every=10 ** 6,
                          batches=batches, true_hypergradient=False)
    monkeypatch.setattr(torch.Tensor, "tolist", original)
    return mode.by_file


#: (solver, mini-batch size or None, reads per iteration of the loop, of everything)
CASES = [("lancbio", None, 1, 4), ("lancbio", 30, 1, 5), ("soba", None, 1, 2), ("soba", 30, 1, 2),
         ("stocbio", None, 1, 2), ("stocbio", 30, 1, 2)]


@pytest.mark.parametrize("solver, size, loop, total", CASES, ids=[f"{c[0]}-{c[1] or 'full'}" for c in CASES])
def test_host_reads_per_iteration(solver, size, loop, total, monkeypatch):
    batches = (lambda: bilevel.MiniBatch(size)) if size else (lambda: None)
    short = _reads(solver, 5, batches(), monkeypatch)
    long = _reads(solver, 25, batches(), monkeypatch)
    per = {k: (long[k] - short[k]) / 20 for k in long}
    assert per.get("run.py", 0) == loop, per
    assert sum(per.values()) <= total, per
