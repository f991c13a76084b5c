"""Every registered solver on the synthetic problem for the same wall-clock budget.

Prints one row per solver: iterations done, HVPs, final true hypergradient norm ‖∇φ(x_k)‖ (y* and v* solved
to 1e-10, outside the timer), and the solver time at which ‖∇φ‖ first fell to the target (default 1e-2).
Each solver runs with the problem's presets (the paper's synthetic settings).

    python benchmarks/solvers_synthetic.py                    # n=1000, κ_G=1e5, 20 s per solver
    python benchmarks/solvers_synthetic.py --budget 5 --n 300
"""

from __future__ import annotations

import argparse
import math
import warnings

import torch

import bilevel
from bilevel.solvers import SOLVERS, get_solver


def time_to(history, target):
    for row in history:
        if row.get("hypergrad_norm", math.inf) <= target:
            return row["time"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--condition", type=float, default=1e5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--budget", type=float, default=20.0, help="solver seconds per solver")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--target", type=float, default=1e-2)
    parser.add_argument("--solvers", nargs="*", default=None, help="subset of registered names")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.solvers or sorted(SOLVERS)
    problem = bilevel.problems.synthetic(n=args.n, condition=args.condition, seed=args.seed)
    print(f"synthetic n={args.n} κ_G={args.condition:g} seed={args.seed}; {args.budget:g} s of solver time each; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = f"{'solver':<10} {'status':<9} {'iters':>7} {'HVPs':>8} {'HVP/it':>7} {'‖∇φ‖ start':>11} " \
             f"{'‖∇φ‖ final':>11} {'best':>10} {'t(≤' + format(args.target, 'g') + ')':>10}"
    print(header)
    print("-" * len(header))
    for name in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = bilevel.solve(problem, get_solver(name), max_iter=10 ** 8, max_time=args.budget,
                                eval_every=args.eval_every, true_hypergradient=True, seed=args.seed)
        h = res.history.column("hypergrad_norm")
        reached = time_to(res.history, args.target)
        shown = f"{reached:.2f}s" if reached is not None else "—"
        per = res.counts.hvp / max(res.iterations, 1)
        print(f"{name:<10} {res.status:<9} {res.iterations:>7} {res.counts.hvp:>8} {per:>7.2f} {h[0]:>11.3e} "
              f"{h[-1]:>11.3e} {min(h):>10.3e} {shown:>10}")


if __name__ == "__main__":
    main()
