"""Mini-batches: stochastic LancBiO and SOBA on digits hyper-cleaning, against full-batch LancBiO.

A problem that declares its data (``n_samples`` training samples for g, ``n_samples_f`` validation samples for
f) runs stochastically when ``solve`` gets a ``MiniBatch``: every oracle call asks for the batch of its role
(``inner`` for the y-steps, ``upper`` for ∇f, ``hvp`` for the v-solver's products, ``cross`` for J v), each
draw group with its own seeded generator, batches being epoch permutations of the sample indices.  The solver
is then bound with its stochastic settings (``bilevel show lancbio``: T = 3, λ = 100, θ = 0.1 → 0.05 on
hyper-cleaning).  ``MiniBatch(B, sizes={"upper": B_f})`` sets the validation batch size separately.

The script compares test accuracy against samples seen (both levels), the budget that mini-batches save, and
draws it.

Run: ``python examples/mini_batch.py``; ``BILEVEL_EXAMPLES_QUICK=1`` for the small budget of the tests,
``BILEVEL_EXAMPLES_OUT=DIR`` for the figure's folder (default: examples/output).
"""

import os
from pathlib import Path

import torch

import bilevel

QUICK = os.environ.get("BILEVEL_EXAMPLES_QUICK", "") not in ("", "0")
OUT = Path(os.environ.get("BILEVEL_EXAMPLES_OUT", Path(__file__).resolve().parent / "output"))
torch.set_num_threads(1)

problem = bilevel.problems.hyperclean("digits", corruption=0.5, seed=0)
print(f"training samples (g): {problem.n_samples}, validation samples (f): {problem.n_samples_f}")
runs = {
    "LancBiO, B = 32": (bilevel.solvers.lancbio(), bilevel.MiniBatch(32), 50 if QUICK else 1500),
    "SOBA, B = 32": (bilevel.solvers.soba(), bilevel.MiniBatch(32), 50 if QUICK else 1500),
    # a short deterministic reference: a fixed m = 5 (the published m-schedule needs ~450 iterations to reach its cap)
    "LancBiO, full batch": (bilevel.solvers.lancbio(m=5), bilevel.FullBatch(), 10 if QUICK else 150),
}
histories = {}
for label, (solver, batches, iterations) in runs.items():
    res = bilevel.solve(problem, solver, batches=batches, max_iter=iterations, eval_every=max(iterations // 30, 1),
                        seed=0)
    histories[label] = res.history
    last = res.history.last()
    print(f"{label:20s} {res.status:9s} test accuracy {last['test_accuracy']:.3f} after {res.iterations} iterations, "
          f"{last['samples']:.3g} samples ({last['epochs_g']:.0f} passes over the training data)")

import matplotlib  # noqa: E402  (only needed for the figure)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OUT.mkdir(parents=True, exist_ok=True)
fig, ax = plt.subplots(figsize=(5.5, 3.5))
for label, history in histories.items():
    ax.plot(history.column("samples"), history.column("test_accuracy"), label=label)
ax.set_xscale("log")
ax.set_xlabel("samples seen (both levels)")
ax.set_ylabel("test accuracy")
ax.set_title("Hyper-cleaning, digits, 50 % corrupted labels", fontsize=9)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "mini_batch.png", dpi=80)
print(f"figure: {OUT / 'mini_batch.png'}")
