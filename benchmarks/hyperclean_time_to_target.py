"""Time to target on deterministic MNIST hyper-cleaning (issue 12): LancBiO (optionally other solvers) on MNIST,
N = 5000 training samples, p = 0.8 label noise, problem seeds 1–3, float32 and float64.

For every (configuration, dtype, seed) one run of K outer iterations (default 3000, evaluated every
``--eval-every`` iterations; evaluation is excluded from the solver time) gives:

- ms/iteration: solver time ÷ K;
- the first evaluated iteration with test accuracy ≥ ``--target`` (default 0.885) and the solver seconds
  until then (the ``time`` column of that history row);
- the final test accuracy at K;

and a shorter run (``--ratio-iters``, default 100) gives the in-loop ÷ isolated-oracle ratio: the same
iterations' oracle calls recorded and replayed on their own (``overhead.measure``, record-and-replay; target ≤
1.10).  Medians over the seeds are printed per configuration and dtype.

Configurations: ``lancbio:<preset>`` for each name in ``bilevel.solvers.lancbio.PRESETS`` (``--presets``), and
any registered solver with its defaults (``--solvers``).  Run it alone on an idle machine, one torch thread per
core you mean to measure (``--threads``):

    python benchmarks/hyperclean_time_to_target.py --data-dir /path/to/data --threads 2
    python benchmarks/hyperclean_time_to_target.py --quick            # a smoke check: K = 60, seed 1, float64
    python benchmarks/hyperclean_time_to_target.py --presets hyperclean-published --dtypes float32 --no-ratio
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import warnings

import torch

import bilevel
from bilevel.solvers.lancbio import PRESETS

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import measure  # noqa: E402  (same folder: the record-and-replay measurement)

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def configurations(presets: list[str], solvers: list[str]) -> dict[str, tuple[str, dict]]:
    out = {f"lancbio:{name}": ("lancbio", {"preset": name}) for name in presets}
    out.update({name: (name, {}) for name in solvers})
    return out


def one_run(problem, solver, iters: int, eval_every: int, target: float) -> dict:
    res = bilevel.solve(problem, solver, max_iter=iters, eval_every=eval_every, true_hypergradient=False)
    hit = next((row for row in res.history if row.get("test_accuracy", 0.0) >= target), None)
    last = res.history.last()
    return {
        "status": res.status, "iterations": res.iterations, "time": res.time,
        "ms_per_iter": 1e3 * res.time / max(res.iterations, 1),
        "iters_to_target": None if hit is None else hit["iteration"],
        "time_to_target": None if hit is None else hit["time"],
        "final_accuracy": last.get("test_accuracy"),
        "final_residual": last.get("residual"),
        "hvp_per_iter": res.counts.hvp / max(res.iterations, 1),
    }


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(value, spec):
    if value is None:  # no value (target not reached, ratio skipped): a dash, right-aligned to the width
        width = spec.split(".")[0].rstrip("df")
        return format("—", f">{width}") if width else "—"
    return format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="MNIST files (default: BILEVEL_DATA_DIR or the cache)")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--corruption", type=float, default=0.8)
    parser.add_argument("--iters", type=int, default=3000, help="K (default 3000)")
    parser.add_argument("--eval-every", type=int, default=10, help="evaluation period (default 10)")
    parser.add_argument("--target", type=float, default=0.885, help="test accuracy target (default 0.885)")
    parser.add_argument("--seeds", default="1,2,3", help="problem seeds (default 1,2,3)")
    parser.add_argument("--dtypes", default="float32,float64", help="float32,float64 (default both)")
    parser.add_argument("--presets", default=",".join(PRESETS),
                        help=f"LancBiO presets, comma-separated (default {','.join(PRESETS)}; '' for none)")
    parser.add_argument("--solvers", default="", help="further solvers with their defaults, comma-separated")
    parser.add_argument("--ratio-iters", type=int, default=100, help="iterations of the ratio measurement")
    parser.add_argument("--ratio-repeats", type=int, default=3)
    parser.add_argument("--no-ratio", action="store_true", help="skip the in-loop ÷ isolated-oracle ratio")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke check: K = 60, seed 1, float64, ratio over 20 iterations × 1")
    parser.add_argument("--json", default=None, help="also write every run's numbers to this JSON file")
    args = parser.parse_args()
    if args.quick:
        args.iters, args.seeds, args.dtypes = 60, "1", "float64"
        args.ratio_iters, args.ratio_repeats = 20, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    dtypes = [d for d in args.dtypes.split(",") if d]
    for d in dtypes:
        if d not in DTYPES:
            parser.error(f"--dtypes: unknown dtype {d!r}; use float32 and/or float64.")
    configs = configurations([p for p in args.presets.split(",") if p], [s for s in args.solvers.split(",") if s])
    for name, (solver_name, _) in configs.items():
        if solver_name == "lancbio" and name.split(":", 1)[1] not in PRESETS:
            parser.error(f"--presets: unknown preset {name.split(':', 1)[1]!r}; choose from {', '.join(PRESETS)}.")

    print(f"hyperclean {args.dataset} p={args.corruption}, K={args.iters}, target test accuracy ≥ {args.target}, "
          f"seeds {seeds}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    records, summary = [], []
    for name, (solver_name, options) in configs.items():
        for dtype in dtypes:
            runs = []
            for seed in seeds:
                problem = bilevel.problems.hyperclean(args.dataset, corruption=args.corruption, seed=seed,
                                                      dtype=DTYPES[dtype], data_dir=args.data_dir)
                solver = bilevel.solvers.get_solver(solver_name, **options)
                out = one_run(problem, solver, args.iters, args.eval_every, args.target)
                if not args.no_ratio:
                    ratio, _, _, _, _ = measure(problem, bilevel.solvers.get_solver(solver_name, **options),
                                                args.ratio_iters, args.ratio_repeats)
                    out["ratio"] = ratio
                out.update(config=name, dtype=dtype, seed=seed)
                runs.append(out)
                records.append(out)
                print(f"  {name} {dtype} seed {seed}: {out['ms_per_iter']:.2f} ms/iter, "
                      f"ratio {_fmt(out.get('ratio'), '.3f')}, to target {_fmt(out['iters_to_target'], 'd')} it / "
                      f"{_fmt(out['time_to_target'], '.2f')} s, final acc {_fmt(out['final_accuracy'], '.4f')}, "
                      f"HVP/it {out['hvp_per_iter']:.3f}", flush=True)
            summary.append((name, dtype, {key: _median([r.get(key) for r in runs]) for key in
                                          ("ms_per_iter", "ratio", "iters_to_target", "time_to_target",
                                           "final_accuracy", "final_residual")},
                            sum(r["iters_to_target"] is not None for r in runs), len(runs)))
    print(f"\nmedians over seeds {seeds}")
    print(f"{'configuration':<30} {'dtype':<8} {'ms/iter':>8} {'ratio':>6} {'it→tgt':>7} {'s→tgt':>7} "
          f"{'reached':>8} {'acc@K':>7} {'resid@K':>9}")
    for name, dtype, med, reached, n in summary:
        print(f"{name:<30} {dtype:<8} {_fmt(med['ms_per_iter'], '8.2f')} {_fmt(med['ratio'], '6.3f')} "
              f"{_fmt(med['iters_to_target'], '7.0f')} {_fmt(med['time_to_target'], '7.2f')} "
              f"{f'{reached}/{n}':>8} {_fmt(med['final_accuracy'], '7.4f')} {_fmt(med['final_residual'], '9.2e')}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(records, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
