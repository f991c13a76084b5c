"""Time per outer iteration of stochastic LancBiO (its ``stochastic/hyperclean`` settings, and the one-draw
variant: T = 1 with the HVPs and the cross product on the y-step's batch) against SOBA at the same batch size,
on mini-batch MNIST hyper-cleaning (N = 20000, 5000 validation, p = 0.5, B = 256 for every role), one torch
thread.  The solvers run in interleaved repeats (order reversed every other repeat) so that a drift of the
machine's speed hits all alike; the time is ``solve``'s solver time (evaluation excluded), per
iteration, and the ratio of the medians is printed (target: LancBiO ≤ 1.2 × SOBA).

    python benchmarks/stochastic_speed.py --data-dir ../shared/data          # or BILEVEL_DATA_DIR
    python benchmarks/stochastic_speed.py --iters 20 --repeats 1             # a quick check that it runs

Skips with a message (exit status 0) when the MNIST files are not available.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings

import torch

import bilevel
from bilevel.sampling import MiniBatch

#: LancBiO's one-draw variant: one y-step per iteration, its batch shared by the HVPs and the cross product (SOBA's
#: sampling); the default draws the T = 3 y-steps, the HVPs and the cross product separately
SHARED = {"hvp": "inner", "cross": "inner"}


def per_iteration(problem, solver, iters: int, batch: int, seed: int, share=None) -> float:
    """Solver seconds per iteration of one run (evaluated once, at the end: nothing else is timed)."""
    res = bilevel.solve(problem, solver, max_iter=iters, eval_every=iters, seed=seed,
                        batches=MiniBatch(batch, share=share), true_hypergradient=False)
    return res.history.last()["time"] / iters


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder holding mnist/ (default: BILEVEL_DATA_DIR)")
    parser.add_argument("--iters", type=int, default=300, help="outer iterations per timed run")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per solver (interleaved)")
    parser.add_argument("--batch-size", type=int, default=256, help="B for every role, both solvers")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # the m-schedule cap warning of short runs

    from bilevel.datasets import DatasetError, load_dataset

    try:
        load_dataset("mnist", data_dir=args.data_dir, download=False)  # present and verified; never downloads
    except DatasetError as err:
        print(f"skipped: MNIST is not available ({err}); pass --data-dir or set BILEVEL_DATA_DIR.")
        return 0
    problem = bilevel.problems.hyperclean(dataset="mnist", n_train=20000, n_val=5000, corruption=0.5, seed=1,
                                          data_dir=args.data_dir)

    solvers = {"LancBiO": (bilevel.solvers.lancbio(), None),
               "LancBiO-1": (bilevel.solvers.lancbio(inner_steps=1), SHARED),
               "SOBA": (bilevel.solvers.soba(), None)}
    for solver, share in solvers.values():  # warm-up (allocator, first-call costs), not timed
        per_iteration(problem, solver, min(args.iters, 20), args.batch_size, seed=0, share=share)
    times: dict[str, list[float]] = {name: [] for name in solvers}
    names = list(solvers)
    for r in range(args.repeats):
        for name in names if r % 2 == 0 else names[::-1]:  # interleaved, alternating order
            solver, share = solvers[name]
            times[name].append(per_iteration(problem, solver, args.iters, args.batch_size, seed=r + 1, share=share))

    bound = solvers["LancBiO"][0].bind(problem, stochastic=True)
    print(f"mini-batch hyper-cleaning MNIST (N={problem.dx}, dy={problem.dy}), B={args.batch_size} for every role, "
          f"{args.iters} iterations × {args.repeats} interleaved repeats; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"LancBiO options: {bound.resolved_options()}")
    print(f"{'solver':<9} {'median ms/iter':>15} {'min':>8} {'max':>8}")
    for name, ts in times.items():
        print(f"{name:<9} {statistics.median(ts) * 1e3:>15.3f} {min(ts) * 1e3:>8.3f} {max(ts) * 1e3:>8.3f}")
    print("LancBiO-1: lancbio(inner_steps=1) with MiniBatch(B, share={'hvp': 'inner', 'cross': 'inner'})")
    for name in ("LancBiO", "LancBiO-1"):
        ratio = statistics.median(times[name]) / statistics.median(times["SOBA"])
        print(f"{name} ÷ SOBA (median time per iteration): {ratio:.2f}  (target ≤ 1.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
