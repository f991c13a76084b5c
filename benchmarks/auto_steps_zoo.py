"""Automatic step sizes on the zoo of user problems (tests/test_auto_steps.py): every AID solver, STABLE and HJFBiO,
no step size.

Prints, per (problem, solver): status, ‖∇φ(x_0)‖ → min ‖∇φ‖ (true: closed form or bilevel.truth), the reduction,
the first evaluated iteration with a 1e3 reduction, the final estimates L̂, μ̂ and λ, and the automatic-step events;
with ``--presets``, the same for the tuned presets of the built-in quadratic (the instance the zoo's quadratics
rebuild from callables).  Iteration counts only (no timings).

    python benchmarks/auto_steps_zoo.py --problems ridge,logistic --max-iter 3000
    python benchmarks/auto_steps_zoo.py --problems quadratic1,quadratic1e2 --max-iter 1000 --presets
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import bilevel  # noqa: E402
from bilevel.solvers import get_solver  # noqa: E402
from test_auto_steps import AID_SOLVERS, SINGLE_LOOP, ZOO, hits  # noqa: E402

CONDITIONS = {"quadratic1": 1.0, "quadratic1e2": 1e2, "quadratic1e4": 1e4}


def line(label: str, res, norms) -> str:
    opts = res.options
    events = {k: v for k, v in res.events.items() if k.startswith("auto")}
    return (f"{label:40s} {res.status:10s} {norms[0]:.2e} -> {min(norms):.2e}  reduction {norms[0] / min(norms):8.1e}"
            f"  1e3 at {hits(res, norms, 1e3)!s:>5}  L̂ {opts.get('L_est', float('nan')):.3g}  "
            f"μ̂ {opts.get('mu_est', float('nan')):.3g}  λ {opts.get('lr_x')!s:.6}  {events}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default=",".join(ZOO))
    parser.add_argument("--solvers", default=",".join(AID_SOLVERS + SINGLE_LOOP))
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--evals", type=int, default=100, help="evaluations per run")
    parser.add_argument("--presets", action="store_true", help="also run the built-in quadratic's tuned presets")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    every = max(1, args.max_iter // args.evals)
    for name in args.problems.split(","):
        for solver in args.solvers.split(","):
            problem = ZOO[name]()
            res = bilevel.solve(problem, get_solver(solver), max_iter=args.max_iter, eval_every=every,
                                true_hypergradient=True)
            print(line(f"{name} {solver} auto", res, res.history.column("hypergrad_norm")), flush=True)
            if args.presets and name in CONDITIONS:
                ref = bilevel.problems.quadratic(dx=5, dy=20, condition=CONDITIONS[name], seed=0)
                res = bilevel.solve(ref, get_solver(solver), max_iter=args.max_iter, eval_every=every)
                print(line(f"{name} {solver} presets", res, res.history.column("hypergrad_norm")), flush=True)


if __name__ == "__main__":
    main()
