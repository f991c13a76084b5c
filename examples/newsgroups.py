"""20 Newsgroups: one ℓ2-regularisation strength per feature, selected on validation documents (dy = 2.6 × 10⁶).

    y = W ∈ R^(p×C) (p = 130107 features, C = 20 classes),  x ∈ R^p (log regularisation strength per feature)
    g(x, W) = training cross-entropy + (1/(2pC)) Σ_j e^(x_j) ‖W_j,:‖²,    f(x, W) = validation cross-entropy

``bilevel.problems.newsgroups()`` keeps the documents sparse and supplies every oracle in closed form.  It
needs the "bydate" archive (``20newsgroups/20news-bydate.tar.gz``, ≈ 14 MB) under a data root: ``--data-dir
DIR``, else ``$BILEVEL_DATA_DIR``, else ``~/.cache/bilevel/datasets``.  Without it the script says so and
exits with status 0 (a fresh clone has no data); ``--download`` lets the loader fetch and verify it
(unless ``BILEVEL_OFFLINE=1``).

Runs LancBiO and AmIGO-CG with the experiment's settings (Ji, Yang & Liang, ICML 2021: T = 10, λ = θ = 100)
and prints test loss and accuracy, HVPs and solver time.  ``BILEVEL_EXAMPLES_QUICK=1`` (the tests' budget)
keeps the 500 most frequent features and runs LancBiO for 2 iterations.

Run: ``python examples/newsgroups.py [--data-dir DIR] [--download]``.
"""

import argparse
import os

import torch

import bilevel
from bilevel.datasets import data_dir

QUICK = os.environ.get("BILEVEL_EXAMPLES_QUICK", "") not in ("", "0")
ARCHIVE = "20newsgroups/20news-bydate.tar.gz"

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data-dir", default=None, help="data root holding 20newsgroups/ (default: $BILEVEL_DATA_DIR, "
                    "else ~/.cache/bilevel/datasets)")
parser.add_argument("--download", action="store_true", help="download the archive when it is missing")
args = parser.parse_args()

root = data_dir(args.data_dir)
if not (root / ARCHIVE).is_file() and not args.download:
    print(f"skipped: no {ARCHIVE} under {root} — pass --data-dir DIR (or set BILEVEL_DATA_DIR), or --download")
    raise SystemExit(0)

torch.set_num_threads(2)
problem = bilevel.problems.newsgroups(seed=1, data_dir=str(root), n_features=500 if QUICK else None)
print(f"dx = {problem.dx}, dy = {problem.dy}: {problem.n_samples} training and {problem.n_samples_f} validation documents")
iterations = 2 if QUICK else 50
for name in ("lancbio",) if QUICK else ("lancbio", "amigo_cg"):
    res = bilevel.solve(problem, getattr(bilevel.solvers, name)(), max_iter=iterations, eval_every=iterations, seed=1)
    last = res.history.last()
    print(f"{name:9s} {res.status:9s} test loss {last['test_loss']:.3f}, test accuracy {last['test_accuracy']:.3f}, "
          f"HVPs {res.counts.hvp}, solver time {res.time:.1f} s")
