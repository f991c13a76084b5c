"""A quadratic bilevel problem with every quantity in closed form (the test zoo's reference).

    g(x, y) = ½ yᵀ A y − yᵀ (B x + d),        f(x, y) = ½ ‖y − c‖² + (α/2) ‖x‖²,

with A ∈ R^(dy×dy) SPD (eigenvalues linspace(1, κ, dy) in a random orthogonal basis), B ∈ R^(dy×dx).
Then, in the notation of §1.2,

    ∇_y g = A y − B x − d,   ∇_x g = −Bᵀ y,   A(x, y) = A,   J = ∇²_xy g = −Bᵀ  (dx × dy),
    y*(x) = A⁻¹ (B x + d),   v* = A⁻¹ (y* − c),
    ∇φ(x) = α x − J v* = α x + Bᵀ A⁻¹ (y* − c),
    ∇²φ = α I + Bᵀ A⁻² B   (constant), so x* solves (α I + Bᵀ A⁻² B) x = Bᵀ A⁻¹ (c − A⁻¹ d).

Finite-sum form (``n_samples=n``, optionally ``n_samples_f=m``): the lower level is the mean of n per-sample
quadratics and the upper level the mean of m per-sample targets,

    g = (1/n) Σᵢ gᵢ,   gᵢ(x, y) = ½ yᵀ Aᵢ y − yᵀ (Bᵢ x + dᵢ),      f = (1/m) Σⱼ fⱼ,   fⱼ(x, y) = ½ ‖y − cⱼ‖² + (α/2) ‖x‖²,

with Aᵢ = R (I + Sᵢ) R (R = A^½ of the deterministic instance, Sᵢ symmetric, Σᵢ Sᵢ = 0, maxᵢ ‖Sᵢ‖₂ = noise < 1,
so every Aᵢ ⪰ (1 − noise) A ≻ 0), Bᵢ = B + noise·Zᵢ/√dx, dᵢ = d + noise·zᵢ, cⱼ = c + noise·wⱼ (Zᵢ, zᵢ, wⱼ
standard Gaussian, centred over the samples).  On a batch 𝓑 of indices every value and closed form is the
batch mean: A_𝓑 = (1/|𝓑|) Σ_{i∈𝓑} Aᵢ (likewise B_𝓑, d_𝓑, c_𝓑) in the formulas above, and
f_𝓑 = ½ ‖y − c_𝓑‖² + ½ (1/|𝓑|) Σ_{j∈𝓑} ‖cⱼ − c_𝓑‖² + (α/2) ‖x‖².  The full data (batch None) is the mean over
all samples: A = (1/n) Σ Aᵢ, B, d, c likewise (computed once), and y*, ∇φ, x* above are exact for it.
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


def _sample_generator(seed: int, level: int) -> torch.Generator:
    """The CPU generator of one level's per-sample data (level 1: lower, 2: upper) of a finite-sum problem:
    independent of the instance's own draws and of the other level's sample count."""
    return torch.Generator(device="cpu").manual_seed((seed * 1_000_003 + level) % 2**63)


def _centred(t: Tensor) -> Tensor:
    """``t`` minus its mean over the samples (dim 0): per-sample perturbations that sum to zero."""
    return t - t.mean(0)


def batch_index(batch: Any, device: torch.device) -> Tensor:
    """A batch of sample indices as a 1-D long tensor on ``device``: the tensor itself when it already is one
    (the samplers' batches: no copy, no host-device transfer)."""
    if isinstance(batch, Tensor) and batch.dtype == torch.long and batch.device == device:
        return batch.reshape(-1)
    return torch.as_tensor(batch, dtype=torch.long, device=device).reshape(-1)


def batch_mean(samples: Tensor, batch: Any) -> Tensor:
    """(1/|𝓑|) Σ_{i∈𝓑} samples[i] (duplicates counted as drawn), by index_select on the samples' device."""
    return samples.index_select(0, batch_index(batch, samples.device)).mean(0)


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
    n_samples: int | None = None,
    n_samples_f: int | None = None,
    noise: float = 0.5,
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
        n_samples: None (default: the deterministic problem above, no data) or n >= 1: the lower level is
            the finite sum g = (1/n) Σᵢ gᵢ of the module docstring, and ``f``, ``g`` and every closed form
            accept a batch of sample indices (a 1-D long tensor on the problem's device; None = all data)
            and return the batch mean.  Memory: n·dy·(dy + dx + 1) numbers.
        n_samples_f: None (f deterministic) or m >= 1: the upper level is the finite sum f = (1/m) Σⱼ fⱼ.
            A level without samples, when the other has them, is declared as one sample (a batch of it
            is index 0, the whole level), so samplers and sample counts stay truthful.
        noise: the spread of the per-sample data, in [0, 1): maxᵢ ‖Sᵢ‖₂ = noise (so Aᵢ ⪰ (1 − noise) A)
            and the scale of the Gaussian perturbations of Bᵢ, dᵢ, cⱼ.  Used only with n_samples(_f).
            The per-sample data come from their own CPU generators, seeded from ``seed`` and the level
            (lower: the n × dy × dy Gaussian of the Sᵢ, then Zᵢ, then zᵢ; upper: the wⱼ); the instance's
            own draws (A's basis, B, c, d, x0, y0) are those of the deterministic problem.
        dtype, device: of every tensor (data are generated in float64 on the CPU, then cast).

    ``problem.info`` holds A, B, c, d, alpha, x_star (the exact minimiser of φ), phi_star, the
    constants L (= λ_max(A)), mu (= λ_min(A)) and L_phi (= λ_max(∇²φ)), condition and seed.  In the
    finite-sum form A, B, c, d are the full-data means, and info adds n_samples, n_samples_f, noise,
    the per-sample stacks A_samples (n × dy × dy), B_samples, d_samples (lower) and c_samples (m × dy,
    upper; absent for a deterministic level) and L_max = maxᵢ λ_max(Aᵢ).
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
    if n_samples is not None:
        n_samples = check_int(owner, "n_samples", n_samples, minimum=1)
    if n_samples_f is not None:
        n_samples_f = check_int(owner, "n_samples_f", n_samples_f, minimum=1)
    noise = check_positive(owner, "noise", noise, allow_zero=True)
    if noise >= 1:
        raise ValueError(
            f"{owner}: noise must be in [0, 1) so that every per-sample Hessian Aᵢ ⪰ (1 − noise) A stays positive "
            f"definite; got {noise!r}."
        )
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

    A_s = B_s = d_s = c_s = None  # per-sample stacks of the finite-sum form
    if n_samples is not None:
        gen_g = _sample_generator(seed, 1)
        W = torch.randn(n_samples, dy, dy, generator=gen_g, dtype=f64)
        W = _centred(0.5 * (W + W.transpose(1, 2)))
        radius = float(torch.linalg.eigvalsh(W).abs().max())  # maxᵢ ‖Wᵢ‖₂
        S = W * (noise / radius) if radius > 0 else W
        R = (basis * eig.sqrt()) @ basis.T  # A^½
        A_s = R @ (torch.eye(dy, dtype=f64) + S) @ R
        A_s = 0.5 * (A_s + A_s.transpose(1, 2))  # each Aᵢ exactly symmetric
        B_s = B64 + noise * _centred(torch.randn(n_samples, dy, dx, generator=gen_g, dtype=f64)) / math.sqrt(dx)
        d_s = d64 + noise * _centred(torch.randn(n_samples, dy, generator=gen_g, dtype=f64))
        A64, B64, d64 = A_s.mean(0), B_s.mean(0), d_s.mean(0)  # the full data: the means
        eig, basis = torch.linalg.eigh(A64)
    if n_samples_f is not None:
        gen_f = _sample_generator(seed, 2)
        c_s = c64 + noise * _centred(torch.randn(n_samples_f, dy, generator=gen_f, dtype=f64))
        c64 = c_s.mean(0)

    # Exact x*, L_φ in float64: ∇²φ = αI + BᵀA⁻²B.
    Ainv64 = (basis / eig) @ basis.T
    AinvB = Ainv64 @ B64
    hess_phi = alpha * torch.eye(dx, dtype=f64) + AinvB.T @ AinvB
    hess_phi = 0.5 * (hess_phi + hess_phi.T)
    L_phi = float(torch.linalg.eigvalsh(hess_phi).max())
    x_star64 = torch.linalg.solve(hess_phi, AinvB.T @ (c64 - Ainv64 @ d64))
    y_at_star = Ainv64 @ (B64 @ x_star64 + d64)
    phi_star = float(0.5 * (y_at_star - c64).square().sum() + 0.5 * alpha * x_star64.square().sum())
    if c_s is not None:  # f = mean ½‖y − cⱼ‖² = ½‖y − c‖² + ½ mean ‖cⱼ − c‖²
        phi_star = float(0.5 * (y_at_star - c_s).square().sum(1).mean() + 0.5 * alpha * x_star64.square().sum())
    L, mu = float(eig.max()), float(eig.min())

    cast = dict(dtype=dtype, device=dev)
    A, B, c, d, Ainv = (t.to(**cast) for t in (A64, B64, c64, d64, Ainv64))

    def f(x: Tensor, y: Tensor) -> Tensor:
        return 0.5 * (y - c).square().sum() + 0.5 * alpha * x.square().sum()

    def g(x: Tensor, y: Tensor) -> Tensor:
        return 0.5 * torch.dot(y, A @ y) - torch.dot(y, B @ x + d)

    finite_sum = n_samples is not None or n_samples_f is not None
    if finite_sum:
        f, g, cf_batch = _finite_sum_forms(A, B, c, d, alpha, A_s, B_s, d_s, c_s, cast)

    cf = None
    if closed_forms and finite_sum:
        cf = ClosedForms(
            **cf_batch,
            y_star=lambda x, y_init=None: Ainv @ (B @ x + d),
            hypergradient=lambda x: alpha * x + B.T @ (Ainv @ (Ainv @ (B @ x + d) - c)),
        )
    elif closed_forms:

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
    sizes = {}
    if finite_sum:
        sizes = {"n_samples": n_samples or 1, "n_samples_f": n_samples_f or 1}
        info.update(n_samples=n_samples, n_samples_f=n_samples_f, noise=noise)
        if A_s is not None:
            info.update(A_samples=A_s.to(**cast), B_samples=B_s.to(**cast), d_samples=d_s.to(**cast),
                        L_max=float(torch.linalg.eigvalsh(A_s).max()))
        if c_s is not None:
            info["c_samples"] = c_s.to(**cast)
    return BilevelProblem(
        f, g, x0.to(**cast), y0.to(**cast), name="quadratic", closed_forms=cf, presets=presets, info=info,
        **sizes,
    )


def _finite_sum_forms(A, B, c, d, alpha, A_s, B_s, d_s, c_s, cast):
    """f, g and the closed-form oracles of the finite-sum quadratic, each the mean over its batch (None: the
    full-data means A, B, c, d).  A level without per-sample stacks ignores the batch."""
    if A_s is not None:
        A_s, B_s, d_s = (t.to(**cast) for t in (A_s, B_s, d_s))
    if c_s is not None:
        c_s = c_s.to(**cast)

    def lower(batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        if batch is None or A_s is None:
            return A, B, d
        idx = batch_index(batch, A_s.device)
        return (A_s.index_select(0, idx).mean(0), B_s.index_select(0, idx).mean(0),
                d_s.index_select(0, idx).mean(0))

    def targets(batch: Any) -> Tensor | None:
        """The batch's targets cⱼ (rows), or None for a deterministic upper level."""
        if c_s is None:
            return None
        return c_s if batch is None else c_s.index_select(0, batch_index(batch, c_s.device))

    def f(x: Tensor, y: Tensor, batch: Any) -> Tensor:
        C = targets(batch)
        fit = 0.5 * (y - c).square().sum() if C is None else 0.5 * (y - C).square().sum(1).mean()
        return fit + 0.5 * alpha * x.square().sum()

    def g(x: Tensor, y: Tensor, batch: Any) -> Tensor:
        A_, B_, d_ = lower(batch)
        return 0.5 * torch.dot(y, A_ @ y) - torch.dot(y, B_ @ x + d_)

    def grad_y_f(x: Tensor, y: Tensor, batch: Any) -> Tensor:
        C = targets(batch)
        return y - (c if C is None else C.mean(0))

    def grad_y_g(x: Tensor, y: Tensor, batch: Any) -> Tensor:
        A_, B_, d_ = lower(batch)
        return A_ @ y - B_ @ x - d_

    def grad_x_g(x: Tensor, y: Tensor, batch: Any) -> Tensor:
        if batch is None or B_s is None:
            return -(B.T @ y)
        return -(batch_mean(B_s, batch).T @ y)

    cf = {
        "grad_x_f": lambda x, y, batch: alpha * x,
        "grad_y_f": grad_y_f,
        "grad_y_g": grad_y_g,
        "grad_x_g": grad_x_g,
        "linearize": lambda x, y, batch: _QuadraticPoint(*lower(batch), x, y),
    }
    return f, g, cf
