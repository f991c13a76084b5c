"""Speed of the bilevel-RL solvers against the issue-14 reference measurements.

- M-SoBiRL on ``rl_synthetic`` (§4.5 settings): solver ms per outer iteration (evaluation excluded), against the
  authors' loop, measured at ≈ 23 ms per iteration (float64, 1 thread) on the same machine class.
- HPGD on ``fourrooms`` (λ = 0.001, its FourRooms settings): solver seconds per seed-iteration, one seed alone
  and ``--seeds`` seeds stepped as one batch (``bilevel.rl.solve_rl_seeds``), against the published JAX code's
  ≈ 0.15 s; the cost of one exact evaluation (φ and ∇φ, outside the timer); and the projected full protocol for
  one λ: 10 seeds × 10 000 iterations evaluated every 10 (against ≤ 30 min asked by the issue, ≈ 4 h for the
  JAX code).  ``benchmarks/fourrooms_protocol.py`` runs that protocol.

    python benchmarks/rl_speed.py                  # 1 thread, 300 M-SoBiRL and 30 HPGD iterations
    python benchmarks/rl_speed.py --hpgd-iters 100 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

import bilevel
from bilevel.problems import get_problem
from bilevel.rl import solve_rl_seeds
from bilevel.rl.run import RLEvaluator
from bilevel.solvers import get_solver

AUTHORS_MSOBIRL_MS = 23.0
HPGD_JAX_S = 0.15


def per_iteration(problem, solver, iters: int) -> float:
    res = bilevel.solve(problem, solver, max_iter=iters, eval_every=iters, seed=0, true_hypergradient=False)
    return res.time / res.iterations


def per_seed_iteration_batched(problem, solver, iters: int, seeds: int) -> float:
    runs = solve_rl_seeds(problem, solver, list(range(seeds)), max_iter=iters, eval_every=iters,
                          true_hypergradient=False)
    return sum(r.time for r in runs) / sum(r.iterations for r in runs)


def evaluation_seconds(problem, n: int = 10) -> float:
    """One exact evaluation (φ(x), ∇φ(x), the solver-policy value) at nearby points, warm-started."""
    evaluate = RLEvaluator(problem, True)
    x = problem.x0
    V = torch.zeros(problem.batch_shape + (problem.n_states,), dtype=problem.dtype)
    pi = problem.truth(x).pi
    evaluate(x, V, None, None, None)
    start = time.perf_counter()
    for i in range(n):
        xi = x + 0.01 * i
        evaluate(xi, V, None, xi, pi)
    return (time.perf_counter() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--msobirl-iters", type=int, default=300)
    ap.add_argument("--hpgd-iters", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p = get_problem("rl_synthetic", seed=0, device=args.device)
    per_iteration(p, get_solver("m_sobirl"), 20)  # warm-up
    ms = 1e3 * per_iteration(p, get_solver("m_sobirl"), args.msobirl_iters)
    print(f"M-SoBiRL on rl_synthetic ({args.device}, {args.threads} thread(s)): {ms:.3f} ms/iteration "
          f"(authors' loop ≈ {AUTHORS_MSOBIRL_MS:g} ms: {AUTHORS_MSOBIRL_MS / ms:.1f}× faster)")
    fr = get_problem("fourrooms", lam=0.001, device=args.device)
    per_iteration(fr, get_solver("hpgd"), 2)
    alone = per_iteration(fr, get_solver("hpgd"), args.hpgd_iters)
    batched = per_seed_iteration_batched(fr, get_solver("hpgd"), args.hpgd_iters, args.seeds)
    ev = evaluation_seconds(fr)
    print(f"HPGD on fourrooms ({args.device}): solver {alone * 1e3:.2f} ms per seed-iteration alone, "
          f"{batched * 1e3:.2f} ms with {args.seeds} seeds as one batch (JAX code ≈ {HPGD_JAX_S * 1e3:g} ms: "
          f"{HPGD_JAX_S / batched:.0f}× faster); one exact evaluation {ev * 1e3:.1f} ms")
    for name, s in (("one seed after another", alone), (f"{args.seeds} seeds batched", batched)):
        solver_min = s * 10 * 10_000 / 60
        eval_min = ev * 10 * 1000 / 60
        print(f"  projected protocol for one λ (10 seeds × 10 000 iterations, evaluated every 10), {name}: "
              f"solver {solver_min:.1f} min + evaluations {eval_min:.1f} min = {solver_min + eval_min:.1f} min "
              f"(target ≤ 30 min; JAX code ≈ {HPGD_JAX_S * 1e5 / 3600:.1f} h)")


if __name__ == "__main__":
    main()
