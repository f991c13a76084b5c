"""Bilevel reinforcement learning: M-SoBiRL, SoBiRL, PBRL and a zeroth-order baseline on the SoBiRL random MDP.

The lower level is an entropy-regularised MDP M_τ(x) = (S, A, P, r(x), γ, τ) whose reward depends on the upper
variable x; its solution is the soft-optimal policy π*(x), which is unique although the policy problem is not
convex.  The upper level is f(x, π) = ½‖x‖² + ½‖π‖²_F.  ``rl_synthetic`` is the SoBiRL paper's instance
(|S| = 10, |A| = 5, γ = 0.5, τ = 1, r_sa(x) = c_sa xᵀ M x, x ∈ R^100; Yang, Gao & Yuan, AISTATS 2025), seeded.

``solve`` takes RL problems as it takes the others; the AID solvers refuse them (the lower level is not strongly
convex in π) and the RL solvers refuse classic problems.  Every evaluation reports the exact φ(x_k) and ∇φ(x_k)
(converged soft value iteration and the |S|×|S| adjoint solve, outside the timer) next to the estimate the solver
used, and the counts are model accesses (value-iteration sweeps, adjoint products, transitions).  The script
prints each run's final φ, ‖∇φ‖ and counts, and draws φ − 1 and ‖∇φ‖ against iteration (φ → 1 is the paper's
target for M-SoBiRL).

Run: ``python examples/bilevel_rl.py``; ``BILEVEL_EXAMPLES_QUICK=1`` for the small budget of the tests,
``BILEVEL_EXAMPLES_OUT=DIR`` for the figure's folder (default: examples/output).
"""

import os
from pathlib import Path

import torch

import bilevel

QUICK = os.environ.get("BILEVEL_EXAMPLES_QUICK", "") not in ("", "0")
OUT = Path(os.environ.get("BILEVEL_EXAMPLES_OUT", Path(__file__).resolve().parent / "output"))
ITERATIONS = 20 if QUICK else 800
torch.set_num_threads(1)

problem = bilevel.problems.rl_synthetic(seed=0)
print(f"{problem.name}: kind {problem.kind!r}, dx = {problem.dx}")
try:
    bilevel.solve(problem, bilevel.solvers.lancbio(), max_iter=1)
except Exception as err:  # an AID solver on an RL problem: refused in one line
    print(f"lancbio on rl_synthetic: {type(err).__name__}: {err}")

histories = {}
for name in ("m_sobirl", "sobirl", "pbrl", "zeroth_order"):
    solver = getattr(bilevel.solvers, name)()
    res = bilevel.solve(problem, solver, max_iter=ITERATIONS, eval_every=max(ITERATIONS // 40, 1))
    histories[solver.label] = res.history
    last = res.history.last()
    counts = {k: int(v) for k, v in res.counts.as_dict().items() if v}
    print(f"{solver.label:13s} {res.status:8s} φ {last['phi']:.4f}, ‖∇φ‖ {last['hypergrad_norm']:.2e}, "
          f"counts {counts}")

import matplotlib  # noqa: E402  (only needed for the figure)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OUT.mkdir(parents=True, exist_ok=True)
fig, axes = plt.subplots(1, 2, figsize=(8, 3.3))
for label, history in histories.items():
    it = history.column("iteration")
    axes[0].semilogy(it, [max(p - 1.0, 1e-12) for p in history.column("phi")], label=label)
    axes[1].semilogy(it, history.column("hypergrad_norm"), label=label)
axes[0].set_ylabel("φ(x) − 1")
axes[1].set_ylabel("‖∇φ(x)‖ (exact)")
for ax in axes:
    ax.set_xlabel("iteration")
axes[0].legend(fontsize=8)
fig.suptitle("Bilevel RL, rl_synthetic (seed 0)", fontsize=9)
fig.tight_layout()
fig.savefig(OUT / "bilevel_rl.png", dpi=80)
print(f"figure: {OUT / 'bilevel_rl.png'}")
