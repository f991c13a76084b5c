"""A v-solver of your own, plugged into the AID loop: steepest descent with exact line search.

The AID loop needs v ≈ A⁻¹ b, A = ∇²_yy g, b = ∇_y f, from Hessian-vector products only.  Steepest descent on
the quadratic model m(v) = ½ vᵀA v − bᵀv takes, from the warm start v (the previous outer iteration's),

    r ← b − A v                                   (1 product)
    repeat Q times:  a ← rᵀr / rᵀA r;  v ← v + a r;  r ← r − a A r        (1 product each)

so Q + 1 products per outer iteration, and no step size to choose (the line search is exact on a quadratic).
A value rᵀA r ≤ 0 proves A is not positive definite: the solver stops there and reports it as curvature
evidence, which ``solve`` turns into the status ``not_strongly_convex`` if it persists.

A v-solver is a frozen dataclass deriving from ``bilevel.linear_solvers.LinearSolver`` with ``init`` (the
state carried across outer iterations) and ``solve`` (one outer iteration's work; it never changes its input
state).  The script checks it on a fixed SPD system against ``torch.linalg.solve``, then runs it inside
``aid(...)`` on the quadratic test problem (closed-form ground truth) next to the same loop with CG.

Run: ``python examples/custom_v_solver.py``; ``BILEVEL_EXAMPLES_QUICK=1`` for the small budget of the tests.
"""

import os
from dataclasses import dataclass
from typing import ClassVar

import torch

import bilevel
from bilevel.inner import GD
from bilevel.linear_solvers import LinearSolver, SolveInfo, cg, linear_solve
from bilevel.linear_solvers.base import Curvature
from bilevel.solvers import aid

QUICK = os.environ.get("BILEVEL_EXAMPLES_QUICK", "") not in ("", "0")
torch.set_num_threads(1)


@dataclass(frozen=True)
class SteepestDescentState:
    v: torch.Tensor  # the current estimate (every v-solver state has one)


@dataclass(frozen=True, kw_only=True)
class SteepestDescent(LinearSolver):
    """Steepest descent with exact line search, ``steps`` (Q) steps per call: Q + 1 HVPs."""

    name: ClassVar[str] = "steepest_descent"
    steps: int = 3

    def validate(self, options):
        if not isinstance(options["steps"], int) or options["steps"] < 1:
            raise ValueError(f"SteepestDescent: steps must be an integer ≥ 1; got {options['steps']!r}.")

    def init(self, b, v0=None):
        return SteepestDescentState(v=torch.zeros_like(b) if v0 is None else v0.detach().clone())

    def expected_matvecs(self, k):
        return float(self.steps + 1)

    def solve(self, matvec, b, state, *, k=0, generator=None):
        v = state.v
        r = b.detach() - matvec(v).detach()
        matvecs, curvature = 1, None
        for _ in range(self.steps):
            ar = matvec(r).detach()
            matvecs += 1
            rr, rar = float(r @ r), float(r @ ar)
            if rr == 0.0:
                break  # v solves the system exactly
            if rar <= 0.0:
                curvature = Curvature("steepest descent: rᵀAr/‖r‖²", rar / rr)
                break
            a = rr / rar
            v, r = v + a * r, r - a * ar
        events = ("indefinite",) if curvature is not None else ()
        return v, SteepestDescentState(v=v), SolveInfo(matvecs=matvecs, events=events, curvature=curvature)


# 1. on a fixed SPD system: repeated calls converge to A⁻¹ b
gen = torch.Generator().manual_seed(0)
M = torch.randn(30, 30, generator=gen, dtype=torch.float64)
A = M @ M.T / 30 + torch.eye(30, dtype=torch.float64)
b = torch.randn(30, generator=gen, dtype=torch.float64)
fixed = linear_solve(lambda u: A @ u, b, SteepestDescent(steps=5), rtol=1e-10)
error = float(torch.linalg.vector_norm(fixed.v - torch.linalg.solve(A, b)) / torch.linalg.vector_norm(b))
print(f"fixed system: converged={fixed.converged} after {fixed.matvecs} products; ‖v − A⁻¹b‖/‖b‖ = {error:.1e}")

# 2. inside the AID loop, on a quadratic bilevel problem with closed-form ground truth
problem = bilevel.problems.quadratic(dx=5, dy=40, condition=50.0, seed=0)
steps = dict(lr_x=0.5, inner=GD(steps=5, lr=1.0 / 50.0))  # θ = 1/L: the lower level's largest eigenvalue is κ = 50
iterations = 30 if QUICK else 300
for label, v_solver in [("steepest descent", SteepestDescent(steps=3)), ("CG", cg(steps=3))]:
    res = bilevel.solve(problem, aid(v_solver=v_solver, **steps), max_iter=iterations, eval_every=10, seed=0)
    last = res.history.last()
    print(f"AID + {label:16s}: {res.status}, true ‖∇φ‖ {last['hypergrad_norm']:.2e}, "
          f"residual ‖Av − b‖ {last['residual']:.1e}, HVPs {res.counts.hvp}")
