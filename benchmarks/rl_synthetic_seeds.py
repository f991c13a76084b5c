"""M-SoBiRL (and the other RL solvers) on ``rl_synthetic`` over several seeds: the §4.5 target.

For each solver and seed (the seed draws the MDP, x₀ and M, and the solver's own draws), runs K iterations with
the published settings (M-SoBiRL: T = 10, ζ = 0.5, β = 8e-3) and prints, per seed and as the median over seeds:
the exact φ(x_K) and true ‖∇φ(x_K)‖ (converged soft policy iteration and the exact adjoint, outside the timer),
the first iteration with φ ≤ 1.001 and with ‖∇φ‖ ≤ 1e-2 (evaluated every iteration), and the estimate's
relative error at k = 0 and k = K − 1.

    python benchmarks/rl_synthetic_seeds.py                          # M-SoBiRL, 5 seeds, K = 800
    python benchmarks/rl_synthetic_seeds.py --solvers m_sobirl sobirl pbrl zeroth_order --seeds 0 1 2 3 4
    python benchmarks/rl_synthetic_seeds.py -O lr_x=1e-2
"""

from __future__ import annotations

import argparse
import statistics

import torch

import bilevel
from bilevel.problems import get_problem
from bilevel.solvers import get_solver


def first(history, column, target):
    for row in history:
        if row[column] <= target:
            return row["iteration"]
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--solvers", nargs="+", default=["m_sobirl"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--iters", type=int, default=800)
    ap.add_argument("-O", action="append", default=[], help="solver option name=value (float)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    extra = {k: float(v) for k, v in (o.split("=", 1) for o in args.O)}
    for name in args.solvers:
        rows = []
        for seed in args.seeds:
            problem = get_problem("rl_synthetic", seed=seed)
            res = bilevel.solve(problem, get_solver(name, **extra), max_iter=args.iters, eval_every=1, seed=seed)
            h, last = res.history, res.history.last()
            rows.append((last["phi"], last["hypergrad_norm"], first(h, "phi", 1.001), first(h, "hypergrad_norm", 1e-2),
                         h[0]["hypergrad_rel_error"], last["hypergrad_rel_error"], 1e3 * res.time / res.iterations))
            print(f"{name} seed {seed}: φ(x_K) = {rows[-1][0]:.6f}, true ‖∇φ(x_K)‖ = {rows[-1][1]:.3e}, "
                  f"φ ≤ 1.001 from k = {rows[-1][2]}, ‖∇φ‖ ≤ 1e-2 from k = {rows[-1][3]}, estimate rel. error "
                  f"{rows[-1][4]:.2g} (k = 0) → {rows[-1][5]:.2g} (k = K − 1), {rows[-1][6]:.2f} ms/iteration")

        def med(i, rows=rows):
            vals = [r[i] for r in rows]
            if any(v is None for v in vals):
                return f"{sum(v is not None for v in vals)}/{len(vals)} reached"
            return f"{statistics.median(vals):.6g}"

        print(f"{name}, median of {len(rows)} seeds, K = {args.iters}{' ' + str(extra) if extra else ''}: φ(x_K) = {med(0)}, "
              f"true ‖∇φ(x_K)‖ = {med(1)}, first k with φ ≤ 1.001: {med(2)}, with ‖∇φ‖ ≤ 1e-2: {med(3)}")


if __name__ == "__main__":
    main()
