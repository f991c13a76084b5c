"""Data-parallel oracles (bilevel.distributed): two gloo processes on the CPU give the one-process history of
LancBiO, SOBA and stocBiO on digits hyper-cleaning (full batch and mini-batch) to 1e-10 relative in float64, with
the same global sample counts; a rank that raises stops every rank with the error (no hang: a deadline)."""

import math
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

import bilevel
from bilevel import MiniBatch, Oracles, OracleWrapper, solve
from bilevel.problems import hyperclean

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")

K = 12
#: (name, solver, batch size or None for the full data, closed forms or autodiff)
CASES = [("lancbio-full", "lancbio", None, True), ("soba-mini", "soba", 60, True),
         ("stocbio-mini", "stocbio", 60, True), ("soba-full", "soba", None, True),
         ("lancbio-full-autodiff", "lancbio", None, False), ("stocbio-mini-autodiff", "stocbio", 60, False)]


def _problem(closed_forms=True):
    return hyperclean(dataset="digits", n_train=120, n_val=90, dtype=torch.float64, closed_forms=closed_forms)


def _run(name, solver, size, oracles=None, closed_forms=True, **kw):
    problem = _problem(closed_forms)
    if oracles is not None:
        oracles = oracles(problem)
    batches = MiniBatch(size) if size else None
    return solve(problem, getattr(bilevel.solvers, solver)(), max_iter=K, eval_every=3, seed=1,
                 oracles=oracles, batches=batches, **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world,
                                         timeout=__import__("datetime").timedelta(seconds=30))


def _worker(rank, world, port, out):
    from bilevel.distributed import DataParallelOracles

    _init(rank, world, port)
    try:
        results = {}
        for name, solver, size, closed in CASES:
            wrapped = {}

            def make(problem, wrapped=wrapped):
                wrapped["o"] = DataParallelOracles(Oracles(problem))
                return wrapped["o"]

            r = _run(name, solver, size, oracles=make, closed_forms=closed)
            results[name] = {"rows": r.history.to_dicts(), "counts": r.counts.as_dict(), "x": r.x, "y": r.y,
                             "status": r.status, "message": r.message, "local": wrapped["o"].local_counts.as_dict()}
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def _spawn(fn, args, deadline):
    ctx = mp.spawn(fn, args=args, nprocs=2, join=False)
    start = time.monotonic()
    while not ctx.join(timeout=1):
        if time.monotonic() - start > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the ranks did not finish within {deadline} s (a hang)")


def _close(a, b, rel=1e-10):
    return a == b or (math.isfinite(a) and abs(a - b) <= rel * max(abs(a), abs(b), 1e-300))


def test_two_ranks_match_one_process(tmp_path):
    _spawn(_worker, (2, _free_port(), str(tmp_path)), deadline=240)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for name, solver, size, closed in CASES:
        one = _run(name, solver, size, closed_forms=closed)
        for rank, results in enumerate(ranks):
            got = results[name]
            assert got["status"] == one.status and got["message"].split()[:3] == one.message.split()[:3]
            assert got["counts"] == one.counts.as_dict(), (name, rank)  # global samples = one process's
            rows = one.history.to_dicts()
            assert len(got["rows"]) == len(rows)
            for mine, ref in zip(got["rows"], rows):
                assert set(mine) == set(ref)
                for key, val in ref.items():
                    if key == "time" or not isinstance(val, float):
                        continue
                    assert _close(mine[key], val), (name, rank, mine["iteration"], key, mine[key], val)
            scale = float(one.x.abs().max())
            assert float((got["x"] - one.x).abs().max()) <= 1e-10 * scale, name
        # every rank returns rank 0's result; each rank saw about half the samples
        assert ranks[0][name]["rows"] == ranks[1][name]["rows"]
        assert torch.equal(ranks[0][name]["x"], ranks[1][name]["x"])
        local = [ranks[r][name]["local"]["samples"] for r in range(2)]
        assert sum(local) == one.counts.samples and all(0 < n < one.counts.samples for n in local), name


class _FailOn(OracleWrapper):
    """Raises in ∇f on one rank at its n-th call."""

    def __init__(self, inner, rank, n):
        super().__init__(inner)
        self.rank, self.n, self.calls = rank, n, 0

    def grad_f(self, x, y, batch=None):
        self.calls += 1
        if torch.distributed.get_rank() == self.rank and self.calls == self.n:
            raise ValueError("boom on purpose")
        return self.inner.grad_f(x, y, batch)


class _StopsBadly:
    def on_evaluation(self, row):
        if row["iteration"] >= 3:
            raise RuntimeError("callback failed on purpose")
        return False


def _coordination_worker(rank, world, port, out):
    from bilevel.distributed import DataParallelOracles

    _init(rank, world, port)
    texts = []
    for case in ("oracle", "callback", "tiny", "stop"):
        try:
            if case == "stop":  # rank 0's callback asks to stop: rank 1 (no callbacks) stops at the same iteration
                r = _run("f", "soba", None, oracles=lambda p: DataParallelOracles(Oracles(p)),
                         callback=lambda row: row["iteration"] >= 6)
                texts.append(f"stop: {r.status} {r.iterations} {len(r.history)} {r.message}")
                continue
            if case == "tiny":  # one sample for two ranks: every rank refuses it
                _run("f", "soba", 1, oracles=lambda p: DataParallelOracles(Oracles(p)))
            elif case == "oracle":  # the failure sits below the sharding: inside one rank's shard computation
                _run("f", "soba", None, oracles=lambda p: DataParallelOracles(_FailOn(Oracles(p), 1, 5)))
            else:  # callbacks run on rank 0 only: rank 1 learns of the failure from the iteration's agreement
                _run("f", "soba", None, oracles=lambda p: DataParallelOracles(Oracles(p)), callbacks=[_StopsBadly()])
            texts.append(f"{case}: no error")
        except Exception as err:
            texts.append(f"{case}: {type(err).__name__}: {err}")
    with open(os.path.join(out, f"fail{rank}.txt"), "w") as fh:
        fh.write("\n".join(texts))
    torch.distributed.destroy_process_group()


def test_rank_0_decides_and_a_failing_rank_stops_every_rank(tmp_path):
    _spawn(_coordination_worker, (2, _free_port(), str(tmp_path)), deadline=120)
    r0, r1 = ((tmp_path / f"fail{r}.txt").read_text().splitlines() for r in range(2))
    assert r1[0] == "oracle: ValueError: boom on purpose"
    assert r0[0].startswith("oracle: DistributedError: rank 1 raised in grad_f: ValueError: boom on purpose")
    assert r0[1] == "callback: RuntimeError: callback failed on purpose"
    assert r1[1].startswith("callback: DistributedError: rank 0 raised during the iteration: RuntimeError")
    assert r0[3] == r1[3] == "stop: stopped 7 3 the callback asked to stop at iteration 6."
    for lines in (r0, r1):
        assert lines[2] == ("tiny: ValueError: DataParallelOracles: a batch of 1 sample(s) cannot give each of 2 "
                            "ranks a sample; use batches of at least as many samples as ranks.")


def test_needs_an_initialised_process_group():
    from bilevel.distributed import DataParallelOracles

    if torch.distributed.is_initialized():
        pytest.skip("a process group is initialised")
    with pytest.raises(RuntimeError, match="torch.distributed is not initialised"):
        DataParallelOracles(Oracles(_problem()))


def test_cli_nproc_runs_under_torchrun(tmp_path):
    """``bilevel run ... --nproc 2`` re-runs itself under torchrun (2 gloo ranks); rank 0 alone writes the history,
    which matches the one-process run's to 1e-10, with the per-rank counts in the metadata."""
    import csv
    import json
    import subprocess
    import sys

    common = ["run", "hyperclean", "--solver", "stocbio", "--max-iter", "6", "--eval-every", "2", "-P", "n_train=120",
              "-P", "n_val=90", "--batch-size", "60", "--no-progress", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for name, extra in (("one", []), ("two", ["--nproc", "2"])):
        proc = subprocess.run([sys.executable, "-m", "bilevel", *common, "--out", str(tmp_path / f"{name}.csv"), *extra],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.count("history written to") == 1  # rank 0 reports, the other rank is silent
    one, two = (list(csv.DictReader(open(tmp_path / f"{n}.csv"))) for n in ("one", "two"))
    assert len(one) == len(two) == 4
    for a, b in zip(one, two):
        for key in a:
            if key != "time":
                assert _close(float(a[key]), float(b[key])), (key, a[key], b[key])
    meta = json.loads((tmp_path / "two.json").read_text())
    local = meta["distributed"]["local_counts"]
    assert meta["distributed"]["world_size"] == 2 and len(local) == 2
    assert sum(c["samples"] for c in local) == meta["counts"]["samples"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.csv", "one.json", "two.csv", "two.json"]
