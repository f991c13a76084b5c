"""The FourRooms protocol for one λ with the seeds stepped as one batch (``bilevel.rl.solve_rl_seeds``).

Runs ``--solver`` (HPGD by default, its FourRooms settings) for every seed, 10 000 outer iterations each, the
exact upper-level value evaluated every ``--eval-every`` iterations, and stores each seed's run as
``bilevel bench`` does (``OUT/runs/<solver>-seed<k>/meta.json`` and its history), so that

    python benchmarks/fourrooms_protocol.py --out results/fourrooms_hpgd            # λ = 0.001, 10 seeds
    python benchmarks/fourrooms_protocol.py --out results/fourrooms_hpgd_003 --lam 0.003
    python benchmarks/fourrooms_table.py results/fourrooms_hpgd                       # the published metric

Each seed's run is the one ``bilevel run fourrooms --solver hpgd --seed k`` makes alone (same iterates and
history; tested in tests/test_rl_runs.py); only the solver time is shared: a batched step's time is split
equally between its seeds.  Prints the wall time, the solver time per seed-iteration and the evaluation time.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import time

import torch

from bilevel.bench import storage
from bilevel.problems import get_problem
from bilevel.rl import solve_rl_seeds
from bilevel.solvers import get_solver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--solver", default="hpgd")
    ap.add_argument("--lam", type=float, default=0.001)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--iters", type=int, default=10_000)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    problem = get_problem("fourrooms", lam=args.lam)
    solver = get_solver(args.solver)
    start = time.perf_counter()
    results = solve_rl_seeds(problem, solver, args.seeds, max_iter=args.iters, eval_every=args.eval_every)
    wall = time.perf_counter() - start
    info = {k: v for k, v in problem.info.items() if isinstance(v, (int, float, str, bool))}
    for seed, res in zip(args.seeds, results):
        run_id = f"{args.solver}-lam{args.lam:g}-seed{seed}"
        folder = storage.run_dir(args.out, run_id)
        rows = res.history.to_dicts()
        meta = {"run_id": run_id, "label": args.solver, "solver": args.solver, "seed": seed, "problem": "fourrooms",
                "problem_options": {"lam": args.lam}, "status": res.status, "message": res.message,
                "iterations": res.iterations, "time": res.time, "counts": res.counts.as_dict(),
                "options": res.options, "problem_info": info, "rows": len(rows), "batched_seeds": list(args.seeds),
                "history_file": storage.write_history(folder, rows, res.history.columns),
                "finished": _dt.datetime.now(_dt.timezone.utc).isoformat()}
        storage.write_meta(folder, meta)
    solver_time = sum(r.time for r in results)
    seed_iters = sum(r.iterations for r in results)
    print(f"{args.solver} on fourrooms λ={args.lam:g}: {len(args.seeds)} seeds × {args.iters} iterations in "
          f"{wall:.0f} s wall ({torch.get_num_threads()} thread(s)); solver {solver_time / seed_iters * 1e3:.2f} ms "
          f"per seed-iteration, evaluations and bookkeeping {wall - solver_time:.0f} s; runs in "
          f"{os.path.join(args.out, 'runs')}")
    if args.iters < 10_000:
        print(f"  at this pace 10 000 iterations would take ≈ {wall * 10_000 / args.iters / 60:.0f} min wall")


if __name__ == "__main__":
    main()
