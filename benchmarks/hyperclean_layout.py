"""The hyper-cleaning closed forms' two layouts (``hyperclean(..., layout=...)``), timed side by side.

For each dtype: the median time of one forward product Z = X Pᵀ, one backward product Rᵀ X and one row softmax on
an MNIST-sized matrix (5000 × 785, C = 10) in the "plain" and "padded" layouts, then LancBiO's ms per outer
iteration on MNIST p = 0.8 (the published preset) with each layout, runs interleaved, and the padded ÷ plain
ratios.  The layout changes rounding only (tests/test_fused_products.py); "auto" picks padded for float32 on the
CPU because of what this script prints on the project's machine.  Run it alone on an idle machine:

    python benchmarks/hyperclean_layout.py --data-dir /path/to/data --threads 2
    python benchmarks/hyperclean_layout.py --no-solver          # products only (synthetic data, no files)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch

import bilevel

layout_module = sys.modules["bilevel.problems.hyperclean"]


def median_ms(fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def products(dtype: torch.dtype, repeats: int) -> None:
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(5000, 785, generator=gen, dtype=dtype)
    P = torch.randn(10, 785, generator=gen, dtype=dtype)
    R = torch.randn(5000, 10, generator=gen, dtype=dtype)
    row = {}
    for name in ("plain", "padded"):
        lay = layout_module._Layout(X, 10, name == "padded")
        lay.rtx(R)  # the padded layout's Xᵀ copy is made on first use, outside the timing
        row[name] = [median_ms(fn, repeats) for fn in (lambda lay=lay: lay.logits(P), lambda lay=lay: lay.rtx(R),
                                                       lambda lay=lay: lay.softmax(R))]
    print(f"{str(dtype):14s} " + " ".join(
        f"{what}: plain {a:.3f} ms, padded {b:.3f} ms (×{b / a:.2f});"
        for what, a, b in zip(("X Pᵀ", "Rᵀ X", "softmax"), row["plain"], row["padded"])))


def solver(dtype: torch.dtype, data_dir: str, iters: int, rounds: int) -> None:
    probs = {name: bilevel.problems.hyperclean("mnist", 0.8, seed=1, data_dir=data_dir, dtype=dtype, layout=name)
             for name in ("plain", "padded")}
    ms = {name: [] for name in probs}
    for _ in range(rounds):
        for name, prob in probs.items():  # interleaved: a slow spell hits both layouts
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = bilevel.solve(prob, bilevel.solvers.lancbio(preset="hyperclean-published"), max_iter=iters,
                                    eval_every=iters, true_hypergradient=False)
            ms[name].append(1e3 * res.time / res.iterations)
    a, b = statistics.median(ms["plain"]), statistics.median(ms["padded"])
    print(f"{str(dtype):14s} LancBiO ms/iteration (median of {rounds}): plain {a:.2f}, padded {b:.2f} "
          f"(×{b / a:.2f})  runs: plain {[round(t, 1) for t in ms['plain']]} padded {[round(t, 1) for t in ms['padded']]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=200, help="timings per product")
    ap.add_argument("--iters", type=int, default=200, help="outer iterations per solver run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved solver runs per layout")
    ap.add_argument("--no-solver", action="store_true", help="time the products only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}")
    for dtype in (torch.float32, torch.float64):
        products(dtype, args.repeats)
    if not args.no_solver:
        for dtype in (torch.float32, torch.float64):
            solver(dtype, args.data_dir, args.iters, args.rounds)


if __name__ == "__main__":
    main()
