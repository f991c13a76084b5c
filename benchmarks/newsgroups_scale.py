"""Time per outer iteration and peak memory of LancBiO, AmIGO-CG, SOBA and stocBiO on the full 20 Newsgroups
problem (p = 130107, C = 20, dy = 2 602 140, the training half N = 5657; the solvers' "newsgroups" settings), and
LancBiO's memory for m = 5, 10, 20, printed as ratios in one run.

Each measurement runs in a fresh Python process (``--child``), so that no allocation of one solver is counted
for another.  In it the problem is built, then K outer iterations run by hand (``bind``, ``init``, ``step``;
no evaluation, nothing else timed); the time per iteration is the median over iterations 2…K (the first pays
one-off costs).  Memory is the resident set size (RSS) of that process, read from ``/proc/self/status``:

    peak  = VmHWM after the run, with the high-water mark reset (``/proc/self/clear_refs`` ← 5) once the problem is
            built, so the peak is the solver's run on top of the data already resident;
    extra = peak − VmRSS just before ``init``: the solver's own high-water memory (iterates, its buffers,
            the temporaries of its products).

RSS counts what torch, numpy and scipy allocate alike (``tracemalloc`` would miss torch's allocations); pages a
buffer reserves but never writes are not resident and are not counted (LancBiO preallocates its m + 2 basis rows
with ``torch.empty``; only the rows it fills become resident).  The children run with glibc's
``MALLOC_MMAP_THRESHOLD_=1048576``: every block of 1 MB or more (each dy-vector is 21 MB) is mapped on its own
and unmapped when freed, so the RSS follows the live memory; with glibc's default dynamic threshold freed
vectors stay in the heap, and the RSS (after a step: 7–15 dy-vectors for AmIGO-CG instead of 3) measures the
allocator's cache more than the solver.  Where ``clear_refs`` cannot be written the script
falls back to ``getrusage(RUSAGE_SELF).ru_maxrss`` (peak including the build) and says so.

LancBiO's memory against m is measured twice: on the settings' run (restarts after indefinite T_j keep the basis
short, so the rows actually filled are printed), and on a fixed operator (lr_x = 1e-30, inner_steps = 0: x and y stay
at x0, y0, so A and b do not change, T_j stays positive definite and the basis fills to m), where the extra
memory should grow by about dy · 8 bytes (20.8 MB) per basis vector: O(m · dy).

    python benchmarks/newsgroups_scale.py --data-dir ../shared/data         # or BILEVEL_DATA_DIR
    python benchmarks/newsgroups_scale.py --iters 4                         # a quick check that it runs

Skips with a message (exit status 0) when the 20 Newsgroups archive is not available.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings

#: the compared solvers (their "newsgroups" settings; ``--m`` varies LancBiO's subspace dimension)
SOLVERS = {"LancBiO": "lancbio", "AmIGO-CG": "amigo_cg", "SOBA": "soba", "stocBiO": "stocbio"}
MB = 1e6


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> dict:
    """One measurement in this (fresh) process; returns a JSON-able record."""
    import torch

    import bilevel
    from bilevel.oracles import Oracles
    from bilevel.sampling import full_batches

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    problem = bilevel.problems.newsgroups(seed=0, data_dir=args.data_dir)
    options = dict(json.loads(args.options))
    solver = bilevel.solvers.get_solver(args.child, **options).bind(problem)
    oracles = Oracles(problem)
    reset = _reset_peak()
    rss0 = _status_kb("VmRSS")
    state = solver.init(problem, oracles, torch.Generator().manual_seed(0))
    times, rows = [], 0
    for k in range(args.iters):
        start = time.perf_counter()
        state = solver.step(state, oracles, full_batches(k))
        float(state.x[0])  # the step's work is done (a no-op on the CPU; a device sync elsewhere)
        times.append(time.perf_counter() - start)
        v_state = getattr(state, "v_state", None)
        rows = max(rows, getattr(v_state, "j", 0))
    if reset and _status_kb("VmHWM") is not None:
        peak_kb, how = _status_kb("VmHWM"), "VmHWM (reset after the build)"
    else:
        peak_kb, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss (build included)"
    return {"solver": args.child, "options": options, "per_iter_s": statistics.median(times[1:] or times),
            "first_s": times[0], "peak_mb": peak_kb * 1024 / MB, "extra_mb": (peak_kb - (rss0 or 0)) * 1024 / MB,
            "basis_rows": rows, "memory": how, "dy": problem.dy, "threads": torch.get_num_threads(),
            "finite": bool(torch.isfinite(state.x).all() and torch.isfinite(state.y).all())}


def measure(name: str, options: dict, args: argparse.Namespace, iters: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--options", json.dumps(options),
           "--iters", str(iters), "--threads", str(args.threads)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"}  # the RSS follows the live memory (docstring)
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise SystemExit(f"the measurement of {name} {options} failed:\n{out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder holding 20newsgroups/ (default: BILEVEL_DATA_DIR)")
    parser.add_argument("--iters", type=int, default=10, help="outer iterations per solver (the median of 2…K)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (scipy's products use one)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return 0

    from bilevel.datasets import DatasetError, load_newsgroups

    try:
        load_newsgroups(data_dir=args.data_dir, download=False)  # present and verified (and cached); no download
    except DatasetError as err:
        print(f"skipped: the 20 Newsgroups archive is not available ({' '.join(str(err).split())}); pass "
              "--data-dir or set BILEVEL_DATA_DIR.")
        return 0

    runs = {label: measure(name, {}, args, args.iters) for label, name in SOLVERS.items()}
    first = runs["LancBiO"]
    print(f"20 Newsgroups, dy = {first['dy']}, {args.iters} outer iterations per solver (median of 2…K), "
          f"{first['threads']} torch thread(s); memory: RSS {first['memory']}, one fresh process per row, "
          "MALLOC_MMAP_THRESHOLD_=1048576")
    print(f"{'solver':<10} {'s/iter':>8} {'÷ LancBiO':>10} {'peak MB':>9} {'extra MB':>9} {'÷ LancBiO':>10}")
    for label, r in runs.items():
        print(f"{label:<10} {r['per_iter_s']:>8.3f} {r['per_iter_s'] / first['per_iter_s']:>10.2f} "
              f"{r['peak_mb']:>9.0f} {r['extra_mb']:>9.0f} {r['extra_mb'] / max(first['extra_mb'], 1e-9):>10.2f}"
              f"{'' if r['finite'] else '  (non-finite iterate)'}")
    cg = runs["AmIGO-CG"]
    print(f"LancBiO s/iter {first['per_iter_s']:.3f} (target < 1 s); LancBiO peak ÷ AmIGO-CG peak "
          f"{first['peak_mb'] / cg['peak_mb']:.2f}, extra ÷ extra {first['extra_mb'] / max(cg['extra_mb'], 1e-9):.2f} "
          "(target ≤ 1); LancBiO's basis reached "
          f"{first['basis_rows']} rows")

    vector_mb = first["dy"] * 8 / MB
    print(f"\nLancBiO memory against m (one dy-vector = {vector_mb:.1f} MB):")
    print(f"{'m':>3} {'run':<16} {'iters':>5} {'basis rows':>10} {'extra MB':>9} {'extra / dy-vectors':>19}")
    fixed = {}
    for m in (5, 10, 20):
        for kind, options, iters in (("settings", {"m": m}, max(args.iters, m + 2)),
                                     ("fixed operator", {"m": m, "lr_x": 1e-30, "inner_steps": 0}, m + 2)):
            r = measure("lancbio", options, args, iters)
            if kind == "fixed operator":
                fixed[m] = r
            print(f"{m:>3} {kind:<16} {iters:>5} {r['basis_rows']:>10} {r['extra_mb']:>9.0f} "
                  f"{r['extra_mb'] / vector_mb:>19.1f}")
    slope = (fixed[20]["extra_mb"] - fixed[5]["extra_mb"]) / (15 * vector_mb)
    print(f"fixed operator: extra memory grows by {slope:.2f} dy-vectors per basis vector from m = 5 to 20 "
          "(O(m·dy): about 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
