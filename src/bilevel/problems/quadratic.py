"""A quadratic bilevel problem with every quantity in closed form (the test zoo's reference).

    g(x, y) = ½ yᵀ A y − yᵀ (B x + d),        f(x, y) = ½ ‖y − c‖² + (α/2) ‖x‖²,

with A ∈ R^(dy×dy) SPD (eigenvalues linspace(1, κ, dy) in a random orthogonal basis), B ∈ R^(dy×dx).
Then, in the notation of §1.2,

    ∇_y g = A y − B x − d,   ∇_x g = −Bᵀ y,   A(x, y) = A,   J = ∇²_xy g = −Bᵀ  (dx × dy),
    y*(x) = A⁻¹ (B x + d),   v* = A⁻¹ (y* − c),
    ∇φ(x) = α x − J v* = α x + Bᵀ A⁻¹ (y* − c),
    ∇²φ = α I + Bᵀ A⁻² B   (constant), so x* solves (α I + Bᵀ A⁻² B) x = Bᵀ A⁻¹ (c − A⁻¹ d).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._validation import check_int, check_positive
from ..problem import BilevelProblem, ClosedForms, check_device
from ._registry import PROBLEMS

__all__ = ["quadratic"]


def _check_dtype_device(owner: str, dtype: Any, device: Any) -> tuple[torch.dtype, torch.device]:
    """Shared by the problem factories: a floating torch dtype (or its name, "float32") and a device."""
    if isinstance(dtype, str):  # from YAML / the command line
        dtype = getattr(torch, dtype.removeprefix("torch."), dtype)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype.is_complex:
        raise TypeError(f"{owner}: dtype must be a real floating torch.dtype (e.g. torch.float64); got {dtype!r}.")
    return dtype, check_device(owner, device)


def _check_seed(owner: str, seed: Any) -> int:
    return check_int(owner, "seed", seed, minimum=0)


class _QuadraticPoint:
    """Second-order oracles at (x, y): constant in (x, y) except ∇_y g."""

    def __init__(self, A: Tensor, B: Tensor, d: Tensor, x: Tensor, y: Tensor) -> None:
        self._A, self._B, self._d, self._x, self._y = A, B, d, x, y

    def grad_y_g(self) -> Tensor:
        return self._A @ self._y - self._B @ self._x - self._d

    def hvp(self, u: Tensor) -> Tensor:
        return self._A @ u  # A u

    def cross(self, u: Tensor) -> Tensor:
        return -(self._B.T @ u)  # J u = −Bᵀ u ∈ R^dx

    def cross_t(self, w: Tensor) -> Tensor:
        return -(self._B @ w)  # Jᵀ w = −B w ∈ R^dy


@PROBLEMS.register
def quadratic(
    dx: int = 5,
    dy: int = 10,
    condition: float = 10.0,
    seed: int = 0,
    *,
    alpha: float = 1.0,
    closed_forms: bool = True,
    dtype: torch.dtype = torch.float64,
    device: Any = "cpu",
) -> BilevelProblem:
    """A quadratic bilevel problem with every quantity in closed form, named ``"quadratic"`` (g = ½ yᵀAy − yᵀ(Bx + d), f = ½‖y − c‖² + (α/2)‖x‖²).

    Args:
        dx, dy: dimensions of x and y (>= 1).
        condition: κ(A) = λ_max(A)/λ_min(A) (>= 1); the spectrum of A is linspace(1, κ, dy).
        seed: seeds a CPU ``torch.Generator``; draws, in order: the dy × dy Gaussian whose QR gives A's
            eigenbasis, B (dy × dx, entries N(0, 1/dx)), c, d, x0 ~ N(0, I_dx), y0 ~ N(0, I_dy).
        alpha: α >= 0, the weight of (α/2)‖x‖² (α = 0 needs dy >= dx for a unique x*).
        closed_forms: give every oracle, y*, ∇φ in closed form (True) or only f and g (False: the
            pure autodiff path of ``Oracles`` and of ``bilevel.truth``).
        dtype, device: of every tensor (data are generated in float64 on the CPU, then cast).

    ``problem.info`` holds A, B, c, d, alpha, x_star (the exact minimiser of φ), phi_star, the
    constants L (= λ_max(A)), mu (= λ_min(A)) and L_phi (= λ_max(∇²φ)), condition and seed.
    Presets (all solvers): lr_y = eta = 1/L, lr_x = 1/L_phi (T and Q: each solver's own defaults).
    """
    owner = "quadratic"
    dx = check_int(owner, "dx", dx, minimum=1)
    dy = check_int(owner, "dy", dy, minimum=1)
    condition = check_positive(owner, "condition", condition)
    if condition < 1:
        raise ValueError(f"{owner}: condition must be >= 1 (it is λ_max(A)/λ_min(A)); got {condition!r}.")
    seed = _check_seed(owner, seed)
    alpha = check_positive(owner, "alpha", alpha, allow_zero=True)
    if alpha == 0 and dy < dx:
        raise ValueError(
            f"{owner}: alpha = 0 with dx = {dx} > dy = {dy} makes ∇²φ = BᵀA⁻²B singular (no unique x*); "
            "use alpha > 0 or dy >= dx."
        )
    if not isinstance(closed_forms, bool):
        raise TypeError(f"{owner}: closed_forms must be True or False; got {closed_forms!r}.")
    dtype, dev = _check_dtype_device(owner, dtype, device)

    # Generate in float64 on the CPU so that the instance does not depend on dtype/device.
    gen = torch.Generator(device="cpu").manual_seed(seed)
    f64 = torch.float64
    basis, _ = torch.linalg.qr(torch.randn(dy, dy, generator=gen, dtype=f64))
    eig = torch.linspace(1.0, condition, dy, dtype=f64)
    A64 = (basis * eig) @ basis.T
    A64 = 0.5 * (A64 + A64.T)  # exactly symmetric
    B64 = torch.randn(dy, dx, generator=gen, dtype=f64) / math.sqrt(dx)
    c64 = torch.randn(dy, generator=gen, dtype=f64)
    d64 = torch.randn(dy, generator=gen, dtype=f64)
    x0 = torch.randn(dx, generator=gen, dtype=f64)
    y0 = torch.randn(dy, generator=gen, dtype=f64)

    # Exact x*, L_φ in float64: ∇²φ = αI + BᵀA⁻²B.
    Ainv64 = (basis / eig) @ basis.T
    AinvB = Ainv64 @ B64
    hess_phi = alpha * torch.eye(dx, dtype=f64) + AinvB.T @ AinvB
    hess_phi = 0.5 * (hess_phi + hess_phi.T)
    L_phi = float(torch.linalg.eigvalsh(hess_phi).max())
    x_star64 = torch.linalg.solve(hess_phi, AinvB.T @ (c64 - Ainv64 @ d64))
    y_at_star = Ainv64 @ (B64 @ x_star64 + d64)
    phi_star = float(0.5 * (y_at_star - c64).square().sum() + 0.5 * alpha * x_star64.square().sum())
    L, mu = float(eig.max()), float(eig.min())

    cast = dict(dtype=dtype, device=dev)
    A, B, c, d, Ainv = (t.to(**cast) for t in (A64, B64, c64, d64, Ainv64))

    def f(x: Tensor, y: Tensor) -> Tensor:
        return 0.5 * (y - c).square().sum() + 0.5 * alpha * x.square().sum()

    def g(x: Tensor, y: Tensor) -> Tensor:
        return 0.5 * torch.dot(y, A @ y) - torch.dot(y, B @ x + d)

    cf = None
    if closed_forms:

        def y_star(x: Tensor, y_init: Tensor | None = None) -> Tensor:
            return Ainv @ (B @ x + d)

        def hypergradient(x: Tensor) -> Tensor:
            return alpha * x + B.T @ (Ainv @ (Ainv @ (B @ x + d) - c))

        cf = ClosedForms(
            grad_x_f=lambda x, y, batch: alpha * x,
            grad_y_f=lambda x, y, batch: y - c,
            grad_y_g=lambda x, y, batch: A @ y - B @ x - d,
            grad_x_g=lambda x, y, batch: -(B.T @ y),
            linearize=lambda x, y, batch: _QuadraticPoint(A, B, d, x, y),
            y_star=y_star,
            hypergradient=hypergradient,
        )

    # problem-scale quantities only: T and Q are the solvers' own defaults
    presets = {"*": {"lr_x": 1.0 / L_phi, "lr_y": 1.0 / L, "eta": 1.0 / L}}
    info = {
        "ground_truth": True,  # solve() evaluates the true hypergradient by default (dense solves)
        "dx": dx,
        "dy": dy,
        "condition": condition,
        "seed": seed,
        "alpha": alpha,
        "closed_forms": closed_forms,
        "A": A,
        "B": B,
        "c": c,
        "d": d,
        "x_star": x_star64.to(**cast),
        "phi_star": phi_star,
        "L": L,
        "mu": mu,
        "L_phi": L_phi,
    }
    return BilevelProblem(
        f, g, x0.to(**cast), y0.to(**cast), name="quadratic", closed_forms=cf, presets=presets, info=info
    )
