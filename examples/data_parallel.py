"""Data parallel: the same mini-batch LancBiO run on one process and on two ``torch.distributed`` ranks.

Every oracle is a mean over its batch, so data parallelism changes nothing but the rounding:
``bilevel.distributed.DataParallelOracles`` cuts each oracle call's batch into one shard per rank, each rank
evaluates its shard, and one all-reduce of the shard results (weighted by |shard| / |batch|) gives every rank
the whole batch's gradient, HVP or cross product.  ``solve`` takes its decisions (divergence, ``tol``,
``max_time``, callbacks) on rank 0 and shares them, and every rank returns rank 0's ``Result``.

The script runs digits hyper-cleaning with ``MiniBatch(64)`` in this process, then starts itself under
``torchrun`` with two ranks (gloo on the CPU), which rerun it with ``DataParallelOracles``; rank 0 writes its
history, and this process compares the two runs (the largest relative difference of the iterates, the oracle
counts, which are global samples on every rank) and draws test accuracy against iteration for both.  On one
small CPU problem two ranks are not faster (each all-reduce costs more than half a batch of 64 saves);
``benchmarks/data_parallel.py`` measures where they are.

Run: ``python examples/data_parallel.py``; ``BILEVEL_EXAMPLES_QUICK=1`` for the small budget of the tests,
``BILEVEL_EXAMPLES_OUT=DIR`` for the figure's folder (default: examples/output).
"""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import torch

import bilevel

QUICK = os.environ.get("BILEVEL_EXAMPLES_QUICK", "") not in ("", "0")
OUT = Path(os.environ.get("BILEVEL_EXAMPLES_OUT", Path(__file__).resolve().parent / "output"))
ITERATIONS = 20 if QUICK else 600
torch.set_num_threads(1)
if QUICK:  # 20 iterations stay below the growing subspace dimension's cap, which LancBiO warns about
    warnings.filterwarnings("ignore", message=".*never reaches its cap")


def run(oracles=None):
    problem = bilevel.problems.hyperclean("digits", corruption=0.5, seed=0)
    return bilevel.solve(problem, bilevel.solvers.lancbio(), batches=bilevel.MiniBatch(64), max_iter=ITERATIONS,
                         eval_every=max(ITERATIONS // 20, 1), seed=0,
                         oracles=None if oracles is None else oracles(problem))


if "WORLD_SIZE" in os.environ:  # a rank started by torchrun (below)
    import bilevel.distributed as bd

    rank, world = bd.init(backend="gloo")
    try:
        res = run(lambda problem: bd.DataParallelOracles(bilevel.Oracles(problem)))
    finally:
        torch.distributed.destroy_process_group()  # leave the group before exiting (gloo's threads)
    if rank == 0:
        OUT.mkdir(parents=True, exist_ok=True)
        record = {"x": res.x.tolist(), "y": res.y.tolist(), "counts": res.counts.as_dict(),
                  "history": res.history.to_dicts(), "status": res.status, "time": res.time, "world": world}
        (OUT / "data_parallel_ranks.json").write_text(json.dumps(record))
    sys.exit(0)

one = run()
print(f"1 process : {one.status}, test accuracy {one.history.last()['test_accuracy']:.3f}, "
      f"{1e3 * one.time / one.iterations:.2f} ms per iteration")
env = {**os.environ, "OMP_NUM_THREADS": "1"}
subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                str(Path(__file__).resolve())], env=env, check=True)
ranks = json.loads((OUT / "data_parallel_ranks.json").read_text())
print(f"{ranks['world']} ranks   : {ranks['status']}, test accuracy {ranks['history'][-1]['test_accuracy']:.3f}, "
      f"{1e3 * ranks['time'] / one.iterations:.2f} ms per iteration")


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


x2, y2 = torch.tensor(ranks["x"], dtype=one.x.dtype), torch.tensor(ranks["y"], dtype=one.y.dtype)
print(f"largest relative difference after {one.iterations} iterations: x {rel(x2, one.x):.1e}, y {rel(y2, one.y):.1e}")
print(f"same oracle counts (global samples): {ranks['counts'] == one.counts.as_dict()}")
assert rel(x2, one.x) < 1e-6 and rel(y2, one.y) < 1e-6, "the two-rank run left the one-process run"

import matplotlib  # noqa: E402  (only needed for the figure)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, ax = plt.subplots(figsize=(5.5, 3.5))
ax.plot(one.history.column("iteration"), one.history.column("test_accuracy"), label="1 process", lw=3, alpha=0.5)
ax.plot([r["iteration"] for r in ranks["history"]], [r["test_accuracy"] for r in ranks["history"]], "--",
        label=f"{ranks['world']} ranks (DataParallelOracles)")
ax.set_xlabel("iteration")
ax.set_ylabel("test accuracy")
ax.set_title("Digits hyper-cleaning, LancBiO, MiniBatch(64)", fontsize=9)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "data_parallel.png", dpi=80)
print(f"figure: {OUT / 'data_parallel.png'}")
