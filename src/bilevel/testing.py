"""Checks for your own bilevel problems: oracles and hypergradients against finite differences.

``check_oracles(problem)`` compares every oracle that ``Oracles`` provides for the problem (closed form
or autodiff, whichever the problem uses) with central finite differences:

- gradients against differences of the values:  ⟨∇_x f, d⟩ ≈ [f(x + εd, y) − f(x − εd, y)] / 2ε, …
- second-order products against differences of the gradients:
    A u  = ∇²_yy g·u ≈ [∇_y g(x, y + εu) − ∇_y g(x, y − εu)] / 2ε
    J u  = ∇²_xy g·u ≈ [∇_x g(x, y + εu) − ∇_x g(x, y − εu)] / 2ε     (in R^dx)
    Jᵀ w = ∇²_yx g·w ≈ [∇_y g(x + εw, y) − ∇_y g(x − εw, y)] / 2ε     (in R^dy)

``check_hypergradient(problem)`` compares the AID hypergradient ∇φ(x) = ∇_x f − J A⁻¹ ∇_y f at y*
(from ``bilevel.truth``) with central differences of φ(x) = f(x, y*(x)) along random unit directions.

All differences use the fourth-order central stencil
    D(h) = [−F(2h) + 8F(h) − 8F(−h) + F(−2h)] / 12h,
whose O(h⁴) truncation error lets a relative tolerance of 1e-5…1e-6 hold in float64 even for oscillatory
problems.  Directions come from a seeded CPU generator, so a check is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .oracles import Oracles
from .problem import BilevelProblem
from .truth import solve_lower, true_hypergradient

__all__ = [
    "HypergradientCheck",
    "OracleReport",
    "OracleCheck",
    "check_hypergradient",
    "check_oracles",
    "central_difference",
]


def central_difference(fun: Callable[[float], Any], h: float) -> Any:
    """d/ds fun(s) at s = 0 by the fourth-order central stencil with step h (scalars or tensors)."""
    return (-fun(2 * h) + 8 * fun(h) - 8 * fun(-h) + fun(-2 * h)) / (12 * h)


def _flat(problem: BilevelProblem, value, which: str) -> Tensor:
    spec, n = (problem.x_spec, problem.dx) if which == "x" else (problem.y_spec, problem.dy)
    if value is None:
        return problem.x0 if which == "x" else problem.y0
    if not isinstance(value, Tensor):
        value = spec.flatten(value)
    if value.numel() != n:
        raise ValueError(f"{which} must have {n} entries; got shape {tuple(value.shape)}.")
    return value.detach().reshape(-1).to(dtype=problem.dtype, device=problem.device).clone()


def _unit_directions(problem: BilevelProblem, n: int, count: int, gen: torch.Generator) -> list[Tensor]:
    out = []
    for _ in range(count):
        d = torch.randn(n, generator=gen, dtype=torch.float64)
        out.append((d / d.norm()).to(dtype=problem.dtype, device=problem.device))
    return out


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1; got {value!r}.")
    return value


# ---- hypergradient ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HypergradientCheck:
    """Result of ``check_hypergradient``.

    ok: every direction passed.  max_rel_error: the largest |FD − ⟨∇φ, d⟩| / max(‖∇φ‖, |FD|)
    (the denominator is floored at the round-off level of FD / rtol).
    analytic, finite_difference, rel_errors: per direction.  hypergradient: ∇φ(x).  phi: φ(x).
    """

    ok: bool
    max_rel_error: float
    rel_errors: tuple[float, ...]
    analytic: tuple[float, ...]
    finite_difference: tuple[float, ...]
    hypergradient: Tensor
    phi: Optional[float]
    eps: float
    rtol: float

    def report(self) -> str:
        lines = [
            f"hypergradient check: {'ok' if self.ok else 'FAILED'} (max relative error "
            f"{self.max_rel_error:.2e}, rtol {self.rtol:.1e}, step {self.eps:.1e}, ‖∇φ‖ = "
            f"{float(self.hypergradient.norm()):.4e})",
            "  direction   <∇φ, d>                 finite difference       rel. error",
        ]
        for i, (a, f, e) in enumerate(zip(self.analytic, self.finite_difference, self.rel_errors)):
            flag = "" if e <= self.rtol else "   <-- too large"
            lines.append(f"  {i:9d}   {a: .15e}  {f: .15e}  {e:.2e}{flag}")
        return "\n".join(lines)

    __str__ = report


def check_hypergradient(
    problem: BilevelProblem,
    x=None,
    *,
    y=None,
    n_directions: int = 3,
    eps: Optional[float] = None,
    rtol: float = 1e-5,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> HypergradientCheck:
    """Compare the hypergradient of ``bilevel.truth.true_hypergradient`` with finite differences of φ.

    φ(x) = f(x, y*(x)) is evaluated with y* solved to working precision (warm-started from y*(x)),
    along ``n_directions`` random unit directions d; the check passes when
    |D(ε) − ⟨∇φ, d⟩| ≤ rtol · max(‖∇φ‖, |D(ε)|) for each d (normalising by ‖∇φ‖ keeps directions
    nearly orthogonal to ∇φ meaningful).

    Args:
        x: the point (tensor or tree; default ``problem.x0``).  y: warm start for y* (default y0).
        eps: the difference step; default eps_mach^(1/5) · max(1, ‖x‖/√dx) (≈ 7e-4 in float64), the
            balance of the O(ε⁴) truncation and the O(eps_mach/ε) round-off of the stencil.
        raise_on_failure: raise AssertionError with the report when a direction fails.
    """
    n_directions = _check_count("n_directions", n_directions)
    xf = _flat(problem, x, "x")
    y_warm = _flat(problem, y, "y")
    truth = true_hypergradient(problem, xf, y_warm)
    y_star = truth.y_star if truth.y_star is not None else solve_lower(problem, xf, y_warm)
    grad = truth.grad
    if eps is None:
        eps = torch.finfo(problem.dtype).eps ** 0.2 * max(1.0, float(xf.norm()) / math.sqrt(problem.dx))
    eps = float(eps)

    def phi(x_: Tensor) -> float:
        # tol far below what is attainable: solve_lower then stops at its working-precision floor
        ys = solve_lower(problem, x_, y_star, tol=1e-15)
        with torch.no_grad():
            return float(problem.f_value(x_, ys))

    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    gnorm = float(grad.norm())
    # keeps a check at a stationary point (∇φ = 0) from dividing round-off by zero
    floor = _noise(problem, abs(phi(xf)), eps) / rtol
    analytic, fds, errors = [], [], []
    for d in _unit_directions(problem, problem.dx, n_directions, gen):
        a = float(torch.dot(grad, d))
        fd = central_difference(lambda s: phi(xf + s * d), eps)
        denom = max(gnorm, abs(fd), floor)
        err = abs(fd - a) / denom if denom > 0 else 0.0
        analytic.append(a)
        fds.append(fd)
        errors.append(err if math.isfinite(err) else math.inf)
    result = HypergradientCheck(
        ok=all(e <= rtol for e in errors),
        max_rel_error=max(errors),
        rel_errors=tuple(errors),
        analytic=tuple(analytic),
        finite_difference=tuple(fds),
        hypergradient=grad,
        phi=truth.phi,
        eps=eps,
        rtol=float(rtol),
    )
    if raise_on_failure and not result.ok:
        raise AssertionError(f"problem {problem.name!r}: " + result.report())
    return result


# ---- oracles ------------------------------------------------------------------------------------

ORACLE_NAMES = ("grad_x_f", "grad_y_f", "grad_y_g", "grad_x_g", "hvp", "cross", "cross_t")


@dataclass(frozen=True)
class OracleReport:
    """One oracle's comparison: ``source`` is "closed form" or "autodiff"; one error per direction,
    relative as ‖oracle − FD‖ / max(‖oracle‖, ‖FD‖) (floored at the round-off level of FD / rtol)."""

    name: str
    source: str
    ok: bool
    max_rel_error: float
    rel_errors: tuple[float, ...]


@dataclass(frozen=True)
class OracleCheck:
    """Result of ``check_oracles``: ``reports[name]`` per oracle; ``ok`` when all passed."""

    ok: bool
    reports: dict[str, OracleReport] = field(default_factory=dict)
    rtol: float = 0.0
    eps: float = 0.0

    def __getitem__(self, name: str) -> OracleReport:
        return self.reports[name]

    def failed(self) -> list[str]:
        return [k for k, r in self.reports.items() if not r.ok]

    def report(self) -> str:
        lines = [f"oracle check: {'ok' if self.ok else 'FAILED'} (rtol {self.rtol:.1e}, step {self.eps:.1e})"]
        for r in self.reports.values():
            flag = "" if r.ok else "   <-- FAILED"
            lines.append(f"  {r.name:9s} ({r.source:11s}) max rel. error {r.max_rel_error:.2e}{flag}")
        return "\n".join(lines)

    __str__ = report


def _rel(a: Tensor, b: Tensor, floor: float) -> float:
    """‖a − b‖ / max(‖a‖, ‖b‖, floor): relative, except near 0 where ``floor`` (the round-off level of
    the difference quotient divided by rtol) keeps pure noise from counting as a 100 % error."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    denom = max(float(a.norm()), float(b.norm()), floor)
    if denom == 0.0:
        return 0.0
    err = float((a - b).norm()) / denom
    return err if math.isfinite(err) else math.inf


def _noise(problem: BilevelProblem, magnitude: float, h: float) -> float:
    """Round-off level of a difference quotient of a quantity of size ``magnitude`` with step h."""
    return 10.0 * torch.finfo(problem.dtype).eps * max(1.0, magnitude) / h


def check_oracles(
    problem: BilevelProblem,
    x=None,
    y=None,
    *,
    n_directions: int = 3,
    rtol: float = 1e-6,
    eps: Optional[float] = None,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> OracleCheck:
    """Compare grad_x_f, grad_y_f, grad_y_g, grad_x_g, hvp, cross and cross_t with finite differences.

    Gradients are compared with differences of the values f and g along random unit directions
    (scalar ⟨∇, d⟩ vs D(ε), error relative to max(‖∇‖, |D(ε)|)); the products A u, J u and Jᵀ w with
    differences of the gradient oracles (whole vectors, error ‖a − b‖ / max(‖a‖, ‖b‖)).  Both
    denominators are floored at the round-off level of the difference quotient divided by rtol, so
    an oracle that is exactly 0 (f without x, say) passes.  The default step is
    eps_mach^(1/5) · max(1, ‖(x, y)‖/√(dx + dy)).  ``x``, ``y`` default to the problem's initial point and
    may be trees.  Float32 problems need a looser rtol (about 1e-3).  Raises AssertionError with the
    report when ``raise_on_failure`` and a check fails.
    """
    n_directions = _check_count("n_directions", n_directions)
    xf, yf = _flat(problem, x, "x"), _flat(problem, y, "y")
    o = Oracles(problem)
    cf = problem.closed_forms
    if eps is None:
        size = math.sqrt(float(xf.square().sum() + yf.square().sum()) / (problem.dx + problem.dy))
        eps = torch.finfo(problem.dtype).eps ** 0.2 * max(1.0, size)
    eps = float(eps)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    lin = o.at(xf, yf)
    closed_lin = cf.linearize(xf, yf, None) if cf.linearize is not None else None

    def source(name: str) -> str:
        if name in ("hvp", "cross", "cross_t"):
            return "closed form" if closed_lin is not None and hasattr(closed_lin, name) else "autodiff"
        return "closed form" if getattr(cf, name) is not None else "autodiff"

    def value(fn, xx: Tensor, yy: Tensor) -> Tensor:
        with torch.no_grad():
            return fn(xx, yy, None).detach().to(torch.float64).reshape(())

    with torch.no_grad():
        gy, gx = o.grad_y_g(xf, yf), o.grad_x_g(xf, yf)
    errs: dict[str, list[float]] = {k: [] for k in ORACLE_NAMES}
    for _ in range(n_directions):
        dxv = _unit_directions(problem, problem.dx, 1, gen)[0]
        dyv = _unit_directions(problem, problem.dy, 1, gen)[0]
        # gradients vs values
        for name, fn, grad, d, wrt in (
            ("grad_x_f", problem.f_value, o.grad_x_f, dxv, "x"),
            ("grad_y_f", problem.f_value, o.grad_y_f, dyv, "y"),
            ("grad_y_g", problem.g_value, o.grad_y_g, dyv, "y"),
            ("grad_x_g", problem.g_value, o.grad_x_g, dxv, "x"),
        ):
            if wrt == "x":
                fd = central_difference(lambda s: value(fn, xf + s * d, yf), eps)
            else:
                fd = central_difference(lambda s: value(fn, xf, yf + s * d), eps)
            full = grad(xf, yf).to(torch.float64)
            an = torch.dot(full, d.to(torch.float64))
            # relative to ‖∇‖ (as in check_hypergradient), so a d nearly orthogonal to ∇ is fair
            floor = max(float(full.norm()), _noise(problem, abs(float(value(fn, xf, yf))), eps) / rtol)
            errs[name].append(_rel(an.reshape(1), fd.reshape(1), floor))
        # products vs gradients
        with torch.no_grad():
            fd_hvp = central_difference(lambda s: o.grad_y_g(xf, yf + s * dyv), eps)
            fd_cross = central_difference(lambda s: o.grad_x_g(xf, yf + s * dyv), eps)
            fd_cross_t = central_difference(lambda s: o.grad_y_g(xf + s * dxv, yf), eps)
        floor_y = _noise(problem, float(gy.norm()), eps) / rtol
        floor_x = _noise(problem, float(gx.norm()), eps) / rtol
        errs["hvp"].append(_rel(lin.hvp(dyv), fd_hvp, floor_y))
        errs["cross"].append(_rel(lin.cross(dyv), fd_cross, floor_x))
        errs["cross_t"].append(_rel(lin.cross_t(dxv), fd_cross_t, floor_y))

    reports = {
        name: OracleReport(
            name=name,
            source=source(name),
            ok=all(e <= rtol for e in es),
            max_rel_error=max(es),
            rel_errors=tuple(es),
        )
        for name, es in errs.items()
    }
    result = OracleCheck(ok=all(r.ok for r in reports.values()), reports=reports, rtol=float(rtol), eps=eps)
    if raise_on_failure and not result.ok:
        raise AssertionError(f"problem {problem.name!r}: " + result.report())
    return result
