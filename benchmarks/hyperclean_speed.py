"""Per-outer-iteration time of LancBiO on data hyper-cleaning (MNIST, 5000 training samples, p = 0.8):
the closed-form path of the linear model vs the generic autodiff path, and each vs the standalone time of
the oracle calls an iteration makes (record-and-replay, as in ``overhead.py``).

    python benchmarks/hyperclean_speed.py --data-dir ../shared/data      # or BILEVEL_DATA_DIR
    python benchmarks/hyperclean_speed.py --dataset digits               # no files needed
"""

from __future__ import annotations

import argparse
import warnings

import torch

import bilevel
from overhead import measure  # same folder: the record-and-replay measurement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    rows = {}
    for label, closed in (("closed form", True), ("autodiff", False)):
        prob = bilevel.problems.hyperclean(args.dataset, corruption=0.8, seed=1, closed_forms=closed,
                                           data_dir=args.data_dir)
        med, lo, hi, per, res = measure(prob, bilevel.solvers.lancbio(), args.iters, args.repeats)
        rows[label] = (per, med, lo, hi, res)
    print(f"LancBiO, hyperclean {args.dataset} (N={prob.dx}, dy={prob.dy}), {args.iters} iterations × "
          f"{args.repeats}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'path':<12} {'ms/iter':>9} {'iteration ÷ oracle-only (median)':>34} {'min':>6} {'max':>6}")
    for label, (per, med, lo, hi, _) in rows.items():
        print(f"{label:<12} {per * 1e3:>9.2f} {med:>34.3f} {lo:>6.3f} {hi:>6.3f}")
    ratio = rows["autodiff"][0] / rows["closed form"][0]
    print(f"autodiff ÷ closed form (per iteration): {ratio:.2f}")


if __name__ == "__main__":
    main()
