"""Your own bilevel problem from two callables: choosing a ridge penalty on validation data.

    lower level  g(x, w) = ½ ‖X_tr w − t_tr‖² / n_tr + ½ eˣ ‖w‖²     (ridge regression, strongly convex in w)
    upper level  f(x, w) = ½ ‖X_val w − t_val‖² / n_val               (validation error)

x = log of the penalty (one number), y = w (the regression weights).  The script checks the AID hypergradient
against finite differences of φ(x) = f(x, w*(x)) (``bilevel.testing.check_hypergradient``), runs LancBiO with
explicit step sizes (a problem of your own has no published settings), and compares the x it finds with the
minimiser of φ found by a golden-section search, where w*(x) is a dense solve.  It draws φ with both points.

Run: ``python examples/own_problem.py``; ``BILEVEL_EXAMPLES_QUICK=1`` for the small budget of the tests,
``BILEVEL_EXAMPLES_OUT=DIR`` for the figure's folder (default: examples/output).
"""

import os
from pathlib import Path

import torch

import bilevel

QUICK = os.environ.get("BILEVEL_EXAMPLES_QUICK", "") not in ("", "0")
OUT = Path(os.environ.get("BILEVEL_EXAMPLES_OUT", Path(__file__).resolve().parent / "output"))
torch.set_num_threads(1)  # a small problem: extra threads only cost synchronisation

# data: a noisy linear model with more features than the training set can pin down, so the penalty matters
gen = torch.Generator().manual_seed(0)
n_tr, n_val, d = 60, 200, 20
w_true = torch.randn(d, generator=gen, dtype=torch.float64)
X_tr = torch.randn(n_tr, d, generator=gen, dtype=torch.float64)
X_val = torch.randn(n_val, d, generator=gen, dtype=torch.float64)
t_tr = X_tr @ w_true + 3.0 * torch.randn(n_tr, generator=gen, dtype=torch.float64)
t_val = X_val @ w_true + 3.0 * torch.randn(n_val, generator=gen, dtype=torch.float64)


def g(x, w, batch=None):
    return 0.5 * ((X_tr @ w - t_tr) ** 2).mean() + 0.5 * torch.exp(x[0]) * (w ** 2).sum()


def f(x, w, batch=None):
    return 0.5 * ((X_val @ w - t_val) ** 2).mean()


x0 = torch.tensor([2.0], dtype=torch.float64)  # penalty e² ≈ 7.4: too strong
problem = bilevel.BilevelProblem(f, g, x0, torch.zeros(d, dtype=torch.float64), name="ridge")


def phi(x: float) -> float:
    """φ(x) = f(x, w*(x)) with w*(x) from a dense solve of the ridge normal equations (the ground truth)."""
    H = X_tr.T @ X_tr / n_tr + torch.exp(torch.tensor(x, dtype=torch.float64)) * torch.eye(d, dtype=torch.float64)
    w = torch.linalg.solve(H, X_tr.T @ t_tr / n_tr)
    return float(f(None, w))


print(bilevel.testing.check_hypergradient(problem))

# step sizes: θ = 1/L for the lower level, L = λ_max(X_trᵀX_tr/n_tr) + eˣ at the start (the penalty only falls)
L = float(torch.linalg.eigvalsh(X_tr.T @ X_tr / n_tr)[-1]) + float(torch.exp(x0[0]))
solver = bilevel.solvers.lancbio(lr_x=0.5, lr_y=1.0 / L, inner_steps=10, m=10)
res = bilevel.solve(problem, solver, max_iter=40 if QUICK else 300, eval_every=10, seed=0)
print(res.summary())

lo, hi = -6.0, 4.0  # golden-section search for the minimiser of φ (unimodal on this interval)
ratio = (5 ** 0.5 - 1) / 2
for _ in range(80):
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    lo, hi = (lo, b) if phi(a) < phi(b) else (a, hi)
x_star = (lo + hi) / 2
x_found = float(res.x[0])
print(f"start x0 = {float(x0[0]):.3f}, φ = {phi(float(x0[0])):.5f}")
print(f"LancBiO  x  = {x_found:.3f}, φ = {phi(x_found):.5f}")
print(f"truth    x* = {x_star:.3f}, φ = {phi(x_star):.5f}  (golden-section search on dense solves)")
grid = torch.linspace(-6.0, 4.0, 201, dtype=torch.float64).tolist()
values = [phi(x) for x in grid]

import matplotlib  # noqa: E402  (only needed for the figure)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OUT.mkdir(parents=True, exist_ok=True)
fig, ax = plt.subplots(figsize=(5.5, 3.5))
ax.plot(grid, values, color="0.3", label="φ(x) = f(x, w*(x)) (dense solves)")
ax.plot([float(x0[0])], [phi(float(x0[0]))], "o", color="tab:red", label="start x₀")
ax.plot([x_found], [phi(x_found)], "*", markersize=12, color="tab:blue", label=f"LancBiO after {res.iterations} iterations")
ax.set_xlabel("x = log penalty")
ax.set_ylabel("validation error")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "own_problem.png", dpi=80)
print(f"figure: {OUT / 'own_problem.png'}")
