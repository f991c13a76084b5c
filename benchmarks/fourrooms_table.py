"""The FourRooms metric from a ``bilevel bench configs/fourrooms.yaml`` results folder.

Per solver: the exact upper-level value (``upper_value``, averaged over the two goals) averaged over the evaluations
of the last ``--last`` iterations of each run, then mean ± standard error over seeds (the published table's "±"),
next to HPGD's published numbers (Thoma et al., NeurIPS 2024) for the run's λ.

    python benchmarks/fourrooms_table.py results/fourrooms                # last 1000 iterations
    python benchmarks/fourrooms_table.py results/fourrooms --last 500
"""

from __future__ import annotations

import argparse
import os
import statistics

from bilevel.bench import storage

#: HPGD's published table (Thoma et al., NeurIPS 2024), as quoted in issue 14: λ → {method: value}
PUBLISHED = {0.001: {"HPGD": "0.91 ± 0.088", "zeroth-order": "0.59", "AMD": "0.58"},
             0.003: {"HPGD": "0.73", "zeroth-order": "0.40"},
             0.005: {"HPGD": "0.87", "zeroth-order": "0.79"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--last", type=int, default=1000)
    args = ap.parse_args()
    runs_dir = os.path.join(args.folder, "runs")
    per: dict[tuple, list[float]] = {}
    for name in sorted(os.listdir(runs_dir)):
        loaded = storage.load_run(os.path.join(runs_dir, name))
        if loaded is None:
            continue
        meta, hist = loaded
        if meta.get("status") == "failed":
            continue
        its, vals = hist["iteration"], hist["upper_value"]
        cut = max(its) - args.last
        window = [v for i, v in zip(its, vals) if i > cut]
        lam = float(meta["problem_info"].get("lam", float("nan")))
        per.setdefault((meta["label"] if "label" in meta else meta["solver"], lam), []).append(statistics.mean(window))
    for (solver, lam), means in sorted(per.items()):
        se = statistics.stdev(means) / len(means) ** 0.5 if len(means) > 1 else float("nan")
        print(f"λ = {lam:g}  {solver:14s} upper value over the last {args.last} iterations: {statistics.mean(means):.3f} ± "
              f"{se:.3f} (s.e., {len(means)} seeds)")
    for lam in sorted({lam for _, lam in per}):
        if lam in PUBLISHED:
            print(f"published (Thoma et al. 2024), λ = {lam:g}: " + ", ".join(f"{k} {v}" for k, v in PUBLISHED[lam].items()))


if __name__ == "__main__":
    main()
