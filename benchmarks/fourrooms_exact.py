"""FourRooms with the exact hypergradient: what the problem as defined allows (a reference for the solvers).

Runs x_{k+1} = x_k − 0.5·clip(∇φ(x_k)) (the protocol's step and clipping) with the exact ∇φ (converged soft policy
iteration, the exact adjoint through the exact 200-step upper value) for each λ, and prints the exact upper value
averaged over the two goals and per goal.  With the incentive i_w = −0.2·softmax(w), ‖i_w‖₁ = 0.2 for every w, so the
goal-reaching penalty −0.2·β_reg·(discounted probability of reaching the goal) cannot vanish.

    python benchmarks/fourrooms_exact.py                 # λ = 0.001, 0.003, 0.005; 300 iterations
    python benchmarks/fourrooms_exact.py --iters 1000 --lam 0.001
"""

from __future__ import annotations

import argparse

import torch

from bilevel.problems import get_problem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lam", nargs="+", type=float, default=[0.001, 0.003, 0.005])
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for lam in args.lam:
        p = get_problem("fourrooms", lam=lam)
        x, V = p.x0, None
        for k in range(args.iters + 1):
            t = p.truth(x, V)
            V = t.V
            if k % max(1, args.iters // 5) == 0 or k == args.iters:
                goals = [-float(v) for v in p.upper_per_context(x, t.pi)]
                print(f"λ = {lam:g}, k = {k}: upper value {-float(t.phi):.4f} (goal (1,9): {goals[0]:.4f}, goal (11,11): "
                      f"{goals[1]:.4f}), ‖∇φ‖ = {float(t.grad.norm()):.3e}")
            g = t.grad
            x = x - args.lr * g * min(1.0, 1.0 / max(float(g.norm()), 1e-300))


if __name__ == "__main__":
    main()
