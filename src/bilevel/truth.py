"""Ground truth for evaluation: y*(x), v*(x) and the true hypergradient ∇φ(x), solved to tolerance.

With y*(x) = argmin_y g(x, y), A = ∇²_yy g, b = ∇_y f and J = ∇²_xy g (dx × dy),

    v* = A(x, y*)⁻¹ ∇_y f(x, y*),        ∇φ(x) = ∇_x f(x, y*) − J(x, y*) v*,        φ(x) = f(x, y*).

Everything here uses an *uncounted* ``Oracles`` (evaluation is neither counted nor timed, §1.4) and
acts on flat vectors.  Closed forms of the problem (``y_star``, ``hypergradient``, ``preconditioner``)
are used when present.  The solves follow §4.1: Newton–CG with an Armijo safeguard for y*, then
(preconditioned) CG for v*; never a fixed small number of steps (§6.19).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from .oracles import Oracles
from .problem import BilevelProblem

__all__ = ["GroundTruthError", "Truth", "solve_lower", "solve_adjoint", "true_hypergradient"]

MatVec = Callable[[Tensor], Tensor]


class GroundTruthError(RuntimeError):
    """A ground-truth solve failed.  ``kind``: "nonfinite" (g, ∇_y g or a product returned NaN/Inf),
    "curvature" (∇²_yy g is not positive definite: pᵀAp ≤ 0), or "convergence" (no convergence within
    the iteration limit, or the line search failed)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Truth:
    """The exact quantities at one x.

    grad: ∇φ(x).  y_star: y*(x) (None when a closed-form hypergradient made it unnecessary and the
    problem has no closed-form y*).  v_star: A(x, y*)⁻¹ ∇_y f(x, y*) (None with a closed-form
    hypergradient).  phi: φ(x) = f(x, y*) as a float (None when y* is None).
    """

    grad: Tensor
    y_star: Optional[Tensor]
    v_star: Optional[Tensor]
    phi: Optional[float]


# ---- helpers ---------------------------------------------------------------------------------------


def _as_flat(problem: BilevelProblem, value, which: str) -> Tensor:
    """Flat detached copy of x or y (a tree is flattened with the problem's spec)."""
    spec, n = (problem.x_spec, problem.dx) if which == "x" else (problem.y_spec, problem.dy)
    if not isinstance(value, Tensor):
        value = spec.flatten(value)
    value = value.detach()
    if value.numel() != n:
        raise ValueError(f"{which} must have {n} entries (the problem's d{which}); got shape {tuple(value.shape)}.")
    return value.reshape(-1).to(dtype=problem.dtype, device=problem.device).clone()


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def _effective_tol(tol: float, dtype: torch.dtype) -> float:
    # 1e-10 is meaningless in float32; never ask for less than ~100 ulps.
    return max(float(tol), 100.0 * _eps(dtype))


def _norm(t: Tensor) -> float:
    return float(torch.linalg.vector_norm(t))


def _pcg(
    matvec: MatVec,
    b: Tensor,
    x0: Tensor,
    precond: Optional[MatVec],
    tol_abs: float,
    max_iter: int,
) -> tuple[Tensor, int, float, bool]:
    """Preconditioned CG on A x = b for SPD A; stops when the recursive residual ‖r‖ ≤ tol_abs.

    Returns (x, iterations, ‖r‖ recursive, negative_curvature_seen).  On non-positive curvature
    pᵀAp ≤ 0 it stops and returns the current iterate (used by Newton–CG as its safeguard).
    """
    x = x0.clone()
    r = b - matvec(x) if bool(x0.any()) else b.clone()
    rnorm = _norm(r)
    if rnorm <= tol_abs:
        return x, 0, rnorm, False
    z = precond(r) if precond is not None else r
    p = z.clone()
    rz = float(torch.dot(r, z))
    for it in range(1, max_iter + 1):
        ap = matvec(p)
        pap = float(torch.dot(p, ap))
        if not math.isfinite(pap):
            raise GroundTruthError("CG produced a non-finite value: the Hessian product returned NaN or Inf.", "nonfinite")
        if pap <= 0.0:
            return x, it - 1, rnorm, True
        a = rz / pap
        x.add_(p, alpha=a)
        r.sub_(ap, alpha=a)
        rnorm = _norm(r)
        if rnorm <= tol_abs:
            return x, it, rnorm, False
        z = precond(r) if precond is not None else r
        rz_new = float(torch.dot(r, z))
        p.mul_(rz_new / rz).add_(z)
        rz = rz_new
    return x, max_iter, rnorm, False


def _preconditioner(problem: BilevelProblem, x: Tensor, y: Tensor) -> Optional[MatVec]:
    make = problem.closed_forms.preconditioner
    return None if make is None else make(x, y)


# ---- y* ------------------------------------------------------------------------------------------


def _noise_floor(fn: MatVec, z: Tensor) -> float:
    """Round-off level of ``fn`` near ``z``: 10 ‖fn(z ⊙ (1 + 4 eps r)) − fn(z)‖ with random signs r.

    A perturbation of a few ulps of z is invisible to the problem, so the change it causes (plus the
    fresh rounding of the second evaluation) is what no solver can get below in this dtype.
    """
    gen = torch.Generator(device="cpu").manual_seed(0)
    signs = (torch.randint(0, 2, z.shape, generator=gen) * 2 - 1).to(dtype=z.dtype, device=z.device)
    z2 = z * (1 + 4 * _eps(z.dtype) * signs)
    return 10.0 * _norm(fn(z2) - fn(z))


def solve_lower(
    problem: BilevelProblem,
    x,
    y_init=None,
    *,
    tol: float = 1e-10,
    max_iter: int = 200,
) -> Tensor:
    """y*(x) = argmin_y g(x, y), solved to ‖∇_y g(x, y)‖ ≤ tol · max(1, ‖∇_y g(x, y_init)‖).

    Uses ``problem.closed_forms.y_star`` when given.  Otherwise Newton–CG warm-started at ``y_init``
    (default ``problem.y0``): each Newton system A(x, y) p = −∇_y g is solved by CG with HVPs from
    ``Oracles.at(x, y).hvp``, preconditioned by ``closed_forms.preconditioner`` when present, to an
    inexact-Newton forcing tolerance; the step is safeguarded by Armijo backtracking on g.

    Working precision: ∇_y g itself carries round-off of order eps·‖A‖‖y‖, which can exceed a
    requested absolute 1e-10 when κ(A) is large.  Whenever a Newton step fails to halve ‖∇_y g‖
    the solver measures that floor (the change of ∇_y g under a few-ulp perturbation of y, ×10) and
    accepts ‖∇_y g‖ ≤ max(target, floor): y is then as accurate as the dtype allows.  So a tiny
    ``tol`` means "to working precision".

    Raises ``GroundTruthError`` (a RuntimeError; with the achieved and the wanted tolerance) when it does not converge
    within ``max_iter`` Newton steps or the line search fails.
    """
    x = _as_flat(problem, x, "x")
    y = problem.y0 if y_init is None else _as_flat(problem, y_init, "y")
    if problem.closed_forms.y_star is not None:
        return problem.closed_forms.y_star(x, y).detach()
    if not (isinstance(max_iter, int) and max_iter >= 0):
        raise ValueError(f"solve_lower: max_iter must be an int >= 0; got {max_iter!r}.")

    o = Oracles(problem)  # uncounted: evaluation code
    eps = _eps(problem.dtype)
    tol = _effective_tol(tol, problem.dtype)

    def grad(y_: Tensor) -> Tensor:
        return o.grad_y_g(x, y_)

    with torch.no_grad():
        gy = grad(y)
        gnorm0 = _norm(gy)
        target = tol * max(1.0, gnorm0)
        gval = float(problem.g_value(x, y))
    if not math.isfinite(gnorm0) or not math.isfinite(gval):
        raise GroundTruthError(
            f"solve_lower: g or ∇_y g is not finite at the starting point (‖∇_y g‖ = {gnorm0}).", "nonfinite")
    scale = max(1.0, gnorm0)
    gnorm = gnorm0
    best_y, best = y, gnorm
    floor = None  # measured lazily, once Newton stops making progress
    cg_cap = 10 * problem.dy + 100

    for it in range(max_iter):
        if gnorm <= max(target, floor or 0.0):
            return y
        lin = o.at(x, y)
        precond = _preconditioner(problem, x, y)
        # Inexact Newton (Eisenstat–Walker-like forcing): loose far away, tight near y*, but never
        # tighter than needed to reach the target in one step.
        forcing = min(0.1, math.sqrt(gnorm / scale))
        forcing = min(0.5, max(forcing, 0.1 * target / gnorm))
        with torch.no_grad():
            p, _, _, _ = _pcg(lin.hvp, -gy, torch.zeros_like(y), precond, forcing * gnorm, cg_cap)
            slope = float(torch.dot(gy, p))
            if slope >= 0.0 or not bool(p.any()):
                # no descent direction (g not numerically convex here, e.g. pᵀAp ≤ 0 at once):
                # fall back to a (preconditioned) gradient step
                p = -(precond(gy) if precond is not None else gy)
                slope = float(torch.dot(gy, p))
            # Armijo with a round-off slack.  Near y* the true decrease ½ gᵀA⁻¹g falls below the
            # resolution of the value g (whose terms may be far larger than g), so there a full
            # step is accepted on a decrease of ‖∇_y g‖ instead.
            slack = 10.0 * eps * max(1.0, abs(gval))
            roundoff_regime = -slope <= math.sqrt(eps) * max(1.0, abs(gval))
            t, gy_new = 1.0, None
            while True:
                y_new = y + t * p
                g_new = float(problem.g_value(x, y_new))
                if math.isfinite(g_new) and g_new <= gval + 1e-4 * t * slope + slack:
                    break
                if t == 1.0 and roundoff_regime:
                    gy_new = grad(y_new)
                    if _norm(gy_new) < gnorm:
                        break
                    gy_new = None
                t *= 0.5
                if t < 1e-12:
                    raise GroundTruthError(
                        f"solve_lower: the Armijo line search failed at Newton step {it}: "
                        f"‖∇_y g‖ = {gnorm:.3e}, wanted ≤ {target:.3e}. Is g strongly convex in y "
                        "and are its gradients consistent with its values?", "convergence"
                    )
            previous = gnorm
            y, gval = y_new, g_new
            gy = grad(y) if gy_new is None else gy_new
            gnorm = _norm(gy)
            if not math.isfinite(gnorm):
                raise GroundTruthError(f"solve_lower: ∇_y g became non-finite after Newton step {it}.", "nonfinite")
            if gnorm < best:
                best_y, best = y, gnorm
            if gnorm > 0.5 * previous:
                # no Newton-like progress: we may be at the round-off floor; (re)measure it here
                floor = _noise_floor(grad, y)
    if floor is None:
        with torch.no_grad():
            floor = _noise_floor(grad, best_y)
    if best <= max(target, floor):
        return best_y
    raise GroundTruthError(
        f"solve_lower: Newton–CG did not converge in {max_iter} iterations: achieved "
        f"‖∇_y g‖ = {best:.3e}, wanted ≤ {target:.3e} (tol={tol:g} × max(1, ‖∇_y g(x, y_init)‖ = {gnorm0:.3e}); "
        f"round-off floor ≈ {floor:.1e}). Increase max_iter or check that g is strongly convex in y.", "convergence"
    )


# ---- v* ------------------------------------------------------------------------------------------


def solve_adjoint(
    problem: BilevelProblem,
    x,
    y,
    v_init=None,
    *,
    rtol: float = 1e-10,
    max_iter: int = 20000,
) -> Tensor:
    """v* = A(x, y)⁻¹ ∇_y f(x, y) by (preconditioned) CG, warm-started at ``v_init`` (default 0).

    Stops when the *true* residual ‖A v − b‖ ≤ rtol·‖b‖ (CG's recursive residual drifts, so on its
    convergence the true residual is recomputed and CG restarted from v if needed).  ``max_iter``
    caps the total number of CG iterations (HVPs).  If restarts stall, the residual is accepted at
    the round-off floor of A v (as in ``solve_lower``), about eps·‖A‖‖v‖.  Raises ``GroundTruthError`` with
    the achieved and the wanted relative residual when it fails.
    """
    x = _as_flat(problem, x, "x")
    y = _as_flat(problem, y, "y")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"solve_adjoint: max_iter must be an int >= 1; got {max_iter!r}.")
    o = Oracles(problem)
    rtol = _effective_tol(rtol, problem.dtype)
    with torch.no_grad():
        b = o.grad_y_f(x, y)
        bnorm = _norm(b)
        if bnorm == 0.0:
            return torch.zeros_like(b)
        lin = o.at(x, y)
        precond = _preconditioner(problem, x, y)
        v = torch.zeros_like(b) if v_init is None else _as_flat(problem, v_init, "y")
        target = rtol * bnorm
        used, best, restarts, floor = 0, math.inf, 0, 0.0
        while True:
            # aim a little below the target: the recursive residual under-reports the true one
            v, its, _, negative = _pcg(lin.hvp, b, v, precond, 0.5 * target, max_iter - used)
            used += its
            res = _norm(b - lin.hvp(v))
            if not math.isfinite(res):
                raise GroundTruthError("solve_adjoint: CG produced a non-finite residual.", "nonfinite")
            if res <= max(target, floor):
                return v
            if negative:
                raise GroundTruthError(
                    f"solve_adjoint: A = ∇²_yy g is not positive definite at (x, y) (pᵀAp ≤ 0 in CG); "
                    f"relative residual {res / bnorm:.3e}, wanted ≤ {rtol:g}.", "curvature"
                )
            if res > 0.5 * best and floor == 0.0:
                floor = _noise_floor(lin.hvp, v)  # restarts stall: measure the attainable level
                if res <= floor:
                    return v
            best = min(best, res)
            restarts += 1
            if used >= max_iter or restarts > 5:
                break
    raise GroundTruthError(
        f"solve_adjoint: CG did not converge in {used} iterations (max_iter={max_iter}): achieved relative "
        f"residual ‖A v − b‖/‖b‖ = {res / bnorm:.3e}, wanted ≤ {rtol:g}. Increase max_iter, give the "
        "problem a preconditioner, or loosen rtol (the attainable accuracy is about eps·κ(A)).", "convergence"
    )


# ---- ∇φ ------------------------------------------------------------------------------------------


def true_hypergradient(
    problem: BilevelProblem,
    x,
    y_init=None,
    v_init=None,
    *,
    tol: float = 1e-10,
    rtol: float = 1e-10,
) -> Truth:
    """∇φ(x) = ∇_x f(x, y*) − J(x, y*) v*, with y* and v* solved to tolerance (uncounted oracles).

    ``y_init`` and ``v_init`` are warm starts (pass the previous y*/v*, or the solver's own y_k, v_k).
    A closed-form ``hypergradient`` is used when the problem has one; y* then comes only from a
    closed-form ``y_star`` (else it and φ are None) and v* is None.  ``tol``/``rtol`` go to
    ``solve_lower``/``solve_adjoint``.
    """
    x = _as_flat(problem, x, "x")
    cf = problem.closed_forms
    o = Oracles(problem)
    if cf.hypergradient is not None:
        grad = cf.hypergradient(x).detach()
        y_star = phi = None
        if cf.y_star is not None:
            y_star = solve_lower(problem, x, y_init)
            with torch.no_grad():
                phi = float(problem.f_value(x, y_star))
        return Truth(grad=grad, y_star=y_star, v_star=None, phi=phi)
    y_star = solve_lower(problem, x, y_init, tol=tol)
    v_star = solve_adjoint(problem, x, y_star, v_init, rtol=rtol)
    with torch.no_grad():
        grad = o.grad_x_f(x, y_star) - o.at(x, y_star).cross(v_star)
        phi = float(problem.f_value(x, y_star))
    return Truth(grad=grad.detach(), y_star=y_star, v_star=v_star, phi=phi)
