"""Automatic step sizes on the zoo of user problems (tests/test_auto_steps.py): every AID solver, STABLE, HJFBiO and
ITD, no step size given.  PBGD only on request (``--solvers pbgd``: its checks' γ = 300, α_x = 0.03, T = 1, θ
automatic): its α_x cannot be automatic and must suit each problem (it diverges on ridge and at κ = 1).

Prints, per (problem, solver): status, ‖∇φ(x_0)‖ → min ‖∇φ‖ (true: closed form or bilevel.truth), the reduction in
the budget and within the first 100 iterations, the first evaluated iteration with a 1e3 reduction, the stated
bound for the cell (``ZOO_LIMITS`` of tests/test_auto_steps.py: the reduction due in 1000 iterations, and why it is
below 1e3 where it is, ``LIMIT_REASONS``) and whether it holds, the final estimates L̂, μ̂ and λ, and the automatic-step events;
with ``--presets``, the same for the tuned presets of the built-in quadratic (the instance the zoo's quadratics
rebuild from callables).  Iteration counts only (no timings).

The cells below 1e3 in 1000 iterations, by cause (details and measurements in ZOO_LIMITS):

  * the solver's own limit, which the tuned presets (or explicit steps) show too:
      - truncated Neumann series (stocBiO, TTSA, BSA, STABLE; Q = 10, STABLE 20): bias (1 − μ/L)^(Q+1) of v;
      - randomised truncation (TTSA, BSA): v = Qη(I − ηA)^p b is unbiased but has variance even on a
        deterministic problem (at κ = 1, ηA = I: v = Qηb with probability 1/Q, else 0); the presets diverge;
      - κ = 1e4: y lags y*(x) (T steps of θ = 1/L contract by 1 − T/κ); the presets stall alike (≤ 1e3 in 1000);
      - ITD's T = 10 unroll: bias ‖J A⁻¹ (I − θA)^T ∇_y f‖; PBGD's O(1/γ) penalty neighbourhood;
  * the automatic rule (AdaGrad-norm λ_k = 1/sqrt(Σ‖D_i‖²) settles where the early, large D_i put it): ridge
    (every solver but the Neumann and unrolled ones), where a hand-tuned constant λ = 3 (λ = 10 diverges) gives
    LancBiO 1e3 at 320 against 1260 for the rule (3.9×; 1e3 within 3000 for the AID solvers); logistic
    regression's SOBA and HJFBiO (1e3 at ≈ 1020; SOBA's best constant λ: 640); κ = 1e4 LancBiO (3.7e2 against
    the presets' 7.2e2).

    python benchmarks/auto_steps_zoo.py                       # every cell, 1000 iterations
    python benchmarks/auto_steps_zoo.py --problems ridge,logistic --max-iter 3000
    python benchmarks/auto_steps_zoo.py --problems quadratic1,quadratic1e2 --presets
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import bilevel  # noqa: E402
from test_auto_steps import LIMIT_REASONS, ZOO, ZOO_LIMITS, ZOO_SOLVERS, hits, zoo_solver  # noqa: E402

CONDITIONS = {"quadratic1": 1.0, "quadratic1e2": 1e2, "quadratic1e4": 1e4}


def line(label: str, res, norms, iterations, bound=None) -> str:
    opts = res.options
    events = {k: v for k, v in res.events.items() if k.startswith("auto")}
    early = min(v for k, v in zip(iterations, norms) if k <= 100)
    verdict = "" if bound is None else f"  bound {bound:7.2g} {'ok' if norms[0] / min(norms) >= bound else 'BELOW'}"
    return (f"{label:36s} {res.status:10s} {norms[0]:.2e} -> {min(norms):.2e}  reduction {norms[0] / min(norms):8.2g}"
            f" (≤100: {norms[0] / early:8.2g})  1e3 at {hits(res, norms, 1e3)!s:>5}{verdict}  "
            f"L̂ {opts.get('L_est', float('nan')):.3g}  μ̂ {opts.get('mu_est', float('nan')):.3g}  "
            f"λ {opts.get('lr_x')!s:.6}  {events}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default=",".join(ZOO))
    parser.add_argument("--solvers", default=",".join(ZOO_SOLVERS))
    parser.add_argument("--max-iter", type=int, default=1000, help="the bounds are stated for 1000")
    parser.add_argument("--every", type=int, default=10, help="evaluate the true ‖∇φ‖ every this many iterations")
    parser.add_argument("--presets", action="store_true", help="also run the built-in quadratic's tuned presets")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    if args.max_iter == 1000:
        print("\n".join(f"[{key}] {text}" for key, text in LIMIT_REASONS.items()), flush=True)
    for name in args.problems.split(","):
        for solver in args.solvers.split(","):
            problem = ZOO[name]()
            res = bilevel.solve(problem, zoo_solver(solver), max_iter=args.max_iter, eval_every=args.every,
                                true_hypergradient=True)
            bound, why = ZOO_LIMITS.get((name, solver), (None, None, None))[1:] if args.max_iter == 1000 else (None, None)
            print(line(f"{name} {solver} auto", res, res.history.column("hypergrad_norm"),
                       res.history.column("iteration"), bound) + (f"  [{why}]" if why else ""), flush=True)
            if args.presets and name in CONDITIONS:
                ref = bilevel.problems.quadratic(dx=5, dy=20, condition=CONDITIONS[name], seed=0)
                res = bilevel.solve(ref, zoo_solver(solver), max_iter=args.max_iter, eval_every=args.every)
                print(line(f"{name} {solver} presets", res, res.history.column("hypergrad_norm"),
                           res.history.column("iteration")), flush=True)


if __name__ == "__main__":
    main()
