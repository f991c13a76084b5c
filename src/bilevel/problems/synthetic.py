"""The synthetic problem of the LancBiO experiments (Yang, Gao & Yuan, ICLR 2025), for any n and κ_G.

    f(x, y) = c₁ cos(xᵀ D₁ y) + ½ ‖D₂ x − y‖²
    g(x, y) = c₀ Σᵢ sin(xᵢ + yᵢ) + log Σᵢ exp(xᵢ yᵢ) + ½ yᵀ (D₃ + G) y

with x, y ∈ R^n, diagonal D₁, D₂, D₃ and G = Q diag(linspace(1, κ_G, n)) Qᵀ.  Since the log-sum-exp
Hessian is PSD and D₃ ⪰ 0, ∇²_yy g ⪰ G − c₀ I ⪰ (1 − c₀) I: g is strongly convex in y for |c₀| < 1.

Closed-form oracles (s = softmax(x ⊙ y), g_y = x ⊙ s, g_x = y ⊙ s, t = xᵀ D₁ y):

    ∇_x f = −c₁ sin(t) D₁ y + D₂ (D₂ x − y)
    ∇_y f = −c₁ sin(t) D₁ x − (D₂ x − y)
    ∇_y g = c₀ cos(x + y) + g_y + D₃ y + G y
    ∇_x g = c₀ cos(x + y) + g_x
    A u   = −c₀ sin(x + y) ⊙ u + (x² ⊙ s) ⊙ u − (g_yᵀ u) g_y + D₃ u + G u
    J u   = −c₀ sin(x + y) ⊙ u + ((1 + x ⊙ y) ⊙ s) ⊙ u − (g_yᵀ u) g_x
    Jᵀ w  = −c₀ sin(x + y) ⊙ w + ((1 + x ⊙ y) ⊙ s) ⊙ w − (g_xᵀ w) g_y

Only ∇_y g and A u touch the dense G (O(n²)); the rest is O(n).  The ground-truth solves use the
preconditioner M⁻¹ = Q diag(1/(λᵢ(G) + 0.5)) Qᵀ, which clusters the spectrum of M⁻¹A near 1.

Finite-sum form (``n_samples=N``, optionally ``n_samples_f=M``): every sample observes the problem's data
with a zero-mean perturbation, so that the full sums are exactly the problem above (and its ground truth
is unchanged):

    g = (1/N) Σₖ gₖ,   gₖ(x, y) = c₀ Σᵢ wₖᵢ sin(xᵢ + yᵢ) + log Σᵢ exp(xᵢ yᵢ) + ½ yᵀ (diag(δₖ) + G) y + ξₖᵀ y
    f = (1/M) Σⱼ fⱼ,   fⱼ(x, y) = f(x, y) + eⱼᵀ (y − D₂ x)   (= c₁ cos(xᵀD₁y) + ½‖D₂x − y − eⱼ‖² − ½‖eⱼ‖²)

with per-sample sine weights wₖ = 1 + noise·ωₖ, diagonals δₖ = d₃ ⊙ (1 + noise·ω′ₖ) (ω, ω′ uniform, centred
over the samples, scaled to |ω| ≤ 1), tilts ξₖ and targets eⱼ = noise × centred standard Gaussians.  So
Σₖ wₖ = N·1, Σₖ δₖ = N·d₃, Σₖ ξₖ = 0, Σⱼ eⱼ = 0, and every gₖ is strongly convex:
∇²_yy gₖ ⪰ G − |c₀|(1 + noise) I ⪰ (1 − |c₀|(1 + noise)) I.  On a batch 𝓑 the closed forms above hold with the
batch means w̄, δ̄, ξ̄, ē in place of 1, d₃, 0, 0: c₀ → c₀ w̄ (elementwise) in ∇_y g, ∇_x g, A, J, Jᵀ; D₃ → diag(δ̄);
∇_y g gains + ξ̄; ∇_y f gains + ē and ∇_x f gains − D₂ ē.  The batch means cost O(|𝓑| n) (one gather of the
stacked per-sample rows); the products are as above.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from .._validation import check_bool, check_int, check_positive
from ..problem import BilevelProblem, ClosedForms
from ._products import Products
from ._registry import PROBLEMS
from .quadratic import _centred, _check_dtype_device, _check_seed, _sample_generator, batch_mean

__all__ = ["synthetic", "synthetic_data", "SyntheticData", "clear_synthetic_cache"]

# Shift of the preconditioner M = G + 0.5 I (§4.1): A − G lies within about ±0.5 I plus the PSD
# log-sum-exp and D₃ terms, so the eigenvalues of M⁻¹A cluster near 1.
_PRECOND_SHIFT = 0.5


@dataclass(frozen=True)
class SyntheticData:
    """The raw arrays of one instance (shared through the cache: never modify them in place).

    d1, d2, d3: the diagonals of D₁, D₂, D₃.  Q: the orthogonal eigenbasis of G; eigenvalues: λ(G) =
    linspace(1, κ_G, n); G = Q diag(λ) Qᵀ.  x0, y0: the initial point.
    """

    d1: Tensor
    d2: Tensor
    d3: Tensor
    Q: Tensor
    eigenvalues: Tensor
    G: Tensor
    x0: Tensor
    y0: Tensor


def _check_args(owner: str, n: Any, condition: Any, seed: Any, dtype: Any, device: Any):
    n = check_int(owner, "n", n, minimum=1)
    condition = check_positive(owner, "condition", condition)
    if condition < 1:
        raise ValueError(f"{owner}: condition must be >= 1 (it is κ_G = λ_max(G)/λ_min(G)); got {condition!r}.")
    seed = _check_seed(owner, seed)
    dtype, dev = _check_dtype_device(owner, dtype, device)
    return n, condition, seed, dtype, dev


@lru_cache(maxsize=2)  # small: at n = 10⁴ one entry holds G and Q, 1.6 GB in float64
def _generate(n: int, condition: float, seed: int, dtype: torch.dtype, device: torch.device) -> SyntheticData:
    # Draw in the documented order, always in float64 on the CPU (the instance then does not
    # depend on dtype or device): D₁, D₂, D₃, the n × n Gaussian for the QR, x0, y0.
    gen = torch.Generator(device="cpu").manual_seed(seed)
    f64 = torch.float64
    d1 = 10.0 * (torch.rand(n, generator=gen, dtype=f64) - 0.5)
    d2 = torch.rand(n, generator=gen, dtype=f64) + 0.1
    d3 = 0.5 * torch.rand(n, generator=gen, dtype=f64)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=f64))
    x0 = torch.randn(n, generator=gen, dtype=f64)
    y0 = torch.randn(n, generator=gen, dtype=f64)
    eig = torch.linspace(1.0, condition, n, dtype=f64)
    G = (Q * eig) @ Q.T
    G = 0.5 * (G + G.T)  # exactly symmetric, so autodiff and closed forms agree to round-off
    cast = dict(dtype=dtype, device=device)
    return SyntheticData(*(t.to(**cast) for t in (d1, d2, d3, Q, eig, G, x0, y0)))


def synthetic_data(
    n: int = 1000,
    condition: float = 1e5,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float64,
    device: Any = "cpu",
) -> SyntheticData:
    """The arrays of the instance (n, κ_G = condition, seed); cached in-process (LRU of 2 instances)."""
    n, condition, seed, dtype, dev = _check_args("synthetic_data", n, condition, seed, dtype, device)
    return _generate(n, condition, seed, dtype, dev)


def clear_synthetic_cache() -> None:
    """Drop the cached instances (frees G and Q)."""
    _generate.cache_clear()


class _SyntheticPoint:
    """Per-point quantities shared by A u, J u and Jᵀ w at one (x, y): everything O(n) except G u."""

    def __init__(self, data: SyntheticData, c0: float | Tensor, x: Tensor, y: Tensor,
                 d3: Tensor | None = None, tilt: Tensor | None = None, products: Products | None = None) -> None:
        # the finite-sum form on a batch passes c₀ w̄ (a vector) for c0, δ̄ for d3 and the tilt ξ̄
        self._G, self._d3 = data.G, (data.d3 if d3 is None else d3)
        self._tilt = tilt
        self._products = products  # G u shared across points (fused closed forms), or None
        self._x, self._y = x, y
        s = torch.softmax(x * y, dim=0)  # max-shifted internally: stable
        self.s = s
        self.g_y = x * s
        self.g_x = y * s
        self._neg_sin = -c0 * torch.sin(x + y)
        self._cos = c0 * torch.cos(x + y)
        self._diag_A = self._neg_sin + x * x * s + self._d3
        self._diag_J = self._neg_sin + (1.0 + x * y) * s

    def grad_y_g(self) -> Tensor:
        out = self._cos + self.g_y + self._d3 * self._y + self._g_times(self._y)
        return out if self._tilt is None else out + self._tilt

    def _g_times(self, u: Tensor) -> Tensor:
        """G u, the O(n²) product (none when the same u was multiplied before, fused)."""
        if self._products is None:
            return self._G @ u
        return self._products.get(self._G, u, lambda: self._G @ u)

    def hvp(self, u: Tensor) -> Tensor:
        return self._diag_A * u - torch.dot(self.g_y, u) * self.g_y + self._g_times(u)

    def cross(self, u: Tensor) -> Tensor:
        return self._diag_J * u - torch.dot(self.g_y, u) * self.g_x

    def cross_t(self, w: Tensor) -> Tensor:
        return self._diag_J * w - torch.dot(self.g_x, w) * self.g_y


@PROBLEMS.register
def synthetic(
    n: int = 1000,
    condition: float = 1e5,
    seed: int = 0,
    *,
    c0: float = 0.5,
    c1: float = 0.1,
    n_samples: int | None = None,
    n_samples_f: int | None = None,
    noise: float = 0.5,
    fused: bool = True,
    dtype: torch.dtype = torch.float64,
    device: Any = "cpu",
) -> BilevelProblem:
    """The synthetic problem of the LancBiO experiments (Yang, Gao & Yuan, ICLR 2025), named ``"synthetic"``, with n = dx = dy and κ_G = ``condition``.

    The paper uses n = 10⁴, κ_G = 1e5, seeds 1–10; tests use n = 50–200, κ_G = 100.  Data generation
    (``synthetic_data``) is cached per (n, condition, seed, dtype, device).  Closed forms: the four
    gradients, ``linearize`` (A u, J u, Jᵀ u) and the ground-truth preconditioner; no y*/∇φ closed
    form (they need solves: ``bilevel.truth`` does them).  ``fused`` (default True): the points share the
    last few products G u (``problems._products.Products``), so that A_k v̄ at a restart takes G v̄ from the
    logging residual A_{k−1} v_{k−1} when one was formed, and grad_y_g at a point reuses G y; bit-identical
    to ``fused=False`` (every product formed afresh).

    Presets: lr_x = λ = 1, lr_y = θ = eta = η = 1/κ_G for every solver; per solver the paper's T, Q
    (LancBiO/SubBiO/AmIGO T = 5, AmIGO Q = 5; stocBiO/BSA T = Q = 10; TTSA T = 1, Q = 10, λ_k =
    max(0.01, k^−0.4); BSA λ_k = max(0.01, k^−1/2); SOBA T = 1; ITD T = 10) and LancBiO's m: from 1,
    ×1.1 every 20 iterations, capped at 80.

    Finite-sum form (module docstring): ``n_samples=N`` makes g the mean of N per-sample terms and
    ``n_samples_f=M`` f the mean of M; ``f``, ``g`` and every closed form then accept a batch of sample
    indices (a 1-D long tensor on the problem's device; None = all data) and return the batch mean.  A level
    without samples, when the other has them, is declared as one sample.  ``noise`` in [0, 1) with
    |c₀|(1 + noise) < 1 sets the spread.  The per-sample data come from their own CPU generators seeded from
    ``seed`` and the level (lower: ω (N × n uniforms), ω′ (N × n uniforms), ξ (N × n Gaussians); upper: e
    (M × n Gaussians)); the instance (``synthetic_data``) is unchanged, and so are y*, ∇φ and the
    preconditioner of the full sums.  Memory: 3·N·n + M·n numbers.  ``info`` adds n_samples,
    n_samples_f, noise and the per-sample arrays (``sin_weights``, ``d3_samples``, ``tilts``: N × n;
    ``targets``: M × n).
    """
    owner = "synthetic"
    n, condition, seed, dtype, dev = _check_args(owner, n, condition, seed, dtype, device)
    for name, val in (("c0", c0), ("c1", c1)):
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val):
            raise TypeError(f"{owner}: {name} must be a finite number; got {val!r}.")
    if abs(c0) >= 1:
        raise ValueError(
            f"{owner}: |c0| must be < 1 so that g is strongly convex in y (∇²_yy g ⪰ (1 − |c0|) I); got {c0!r}."
        )
    c0, c1 = float(c0), float(c1)
    if n_samples is not None:
        n_samples = check_int(owner, "n_samples", n_samples, minimum=1)
    if n_samples_f is not None:
        n_samples_f = check_int(owner, "n_samples_f", n_samples_f, minimum=1)
    noise = check_positive(owner, "noise", noise, allow_zero=True)
    if noise >= 1 or (n_samples is not None and abs(c0) * (1 + noise) >= 1):
        raise ValueError(
            f"{owner}: noise must be in [0, 1) with |c0|·(1 + noise) < 1, so that every per-sample lower objective "
            f"stays strongly convex (∇²_yy gₖ ⪰ (1 − |c0|(1 + noise)) I); got noise={noise!r} with c0={c0!r}."
        )
    data = _generate(n, condition, seed, dtype, dev)
    d1, d2, d3, G, Q, eig = data.d1, data.d2, data.d3, data.G, data.Q, data.eigenvalues

    def f(x: Tensor, y: Tensor) -> Tensor:
        return c1 * torch.cos(torch.dot(x * d1, y)) + 0.5 * (d2 * x - y).square().sum()

    def g(x: Tensor, y: Tensor) -> Tensor:
        return (
            c0 * torch.sin(x + y).sum()
            + torch.logsumexp(x * y, dim=0)
            + 0.5 * torch.dot(y, d3 * y + G @ y)
        )

    def grad_x_f(x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        t = torch.dot(x * d1, y)
        return -c1 * torch.sin(t) * (d1 * y) + d2 * (d2 * x - y)

    def grad_y_f(x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        t = torch.dot(x * d1, y)
        return -c1 * torch.sin(t) * (d1 * x) - (d2 * x - y)

    def grad_y_g(x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        s = torch.softmax(x * y, dim=0)
        return c0 * torch.cos(x + y) + x * s + d3 * y + G @ y

    def grad_x_g(x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        s = torch.softmax(x * y, dim=0)
        return c0 * torch.cos(x + y) + y * s

    inv_shifted = 1.0 / (eig + _PRECOND_SHIFT)

    def preconditioner(x: Tensor, y: Tensor):
        # M⁻¹ u = Q diag(1/(λ + 0.5)) Qᵀ u: independent of (x, y), two O(n²) products.
        return lambda u: Q @ (inv_shifted * (Q.T @ u))

    check_bool("synthetic", "fused", fused)
    products = Products() if fused else None
    cf = ClosedForms(
        grad_x_f=grad_x_f,
        grad_y_f=grad_y_f,
        grad_y_g=grad_y_g,
        grad_x_g=grad_x_g,
        linearize=lambda x, y, batch: _SyntheticPoint(data, c0, x, y, products=products),
        preconditioner=preconditioner,
    )
    step = 1.0 / condition
    # solver-neutral scales; the solvers keep the paper's per-solver synthetic settings (key "synthetic")
    presets = {"*": {"lr_x": 1.0, "lr_y": step, "eta": step}}
    # ground_truth: solve() evaluates the true hypergradient by default (y*, v* to 1e-10, preconditioned)
    info = {"n": n, "condition": condition, "seed": seed, "c0": c0, "c1": c1, "ground_truth": True}
    sizes = {}
    if n_samples is not None or n_samples_f is not None:
        sizes = {"n_samples": n_samples or 1, "n_samples_f": n_samples_f or 1}
        info.update(n_samples=n_samples, n_samples_f=n_samples_f, noise=noise)
        f, g, cf = _finite_sum(data, c0, noise, seed, n_samples, n_samples_f, f, g, cf, info)
    return BilevelProblem(
        f, g, data.x0, data.y0, name="synthetic", closed_forms=cf, presets=presets, info=info,
        experiment="synthetic", **sizes,
    )


def _bounded_centred(u: Tensor) -> Tensor:
    """``u`` centred over the samples (dim 0) and scaled so that its largest entry has magnitude 1."""
    u = _centred(u)
    top = float(u.abs().max()) if u.numel() else 0.0
    return u / top if top > 0 else u


def _finite_sum(data: SyntheticData, c0: float, noise: float, seed: int, n_samples: int | None,
                n_samples_f: int | None, f_full, g_full, cf_full: ClosedForms, info: dict):
    """f, g and the closed forms of the finite-sum form (module docstring): on a batch, the batch means of the
    per-sample rows replace the full-data terms; on None (all data), the deterministic problem's own forms."""
    n, f64 = data.x0.numel(), torch.float64
    cast = dict(dtype=data.x0.dtype, device=data.x0.device)
    d2, d3, G = data.d2, data.d3, data.G
    rows_g = rows_f = None
    if n_samples is not None:
        gen = _sample_generator(seed, 1)
        sin_w = 1.0 + noise * _bounded_centred(2 * torch.rand(n_samples, n, generator=gen, dtype=f64) - 1)
        diag_w = 1.0 + noise * _bounded_centred(2 * torch.rand(n_samples, n, generator=gen, dtype=f64) - 1)
        tilt = noise * _centred(torch.randn(n_samples, n, generator=gen, dtype=f64))
        # one (N, 3, n) stack: a batch's three means come from one gather
        rows_g = torch.stack([sin_w.to(**cast), d3 * diag_w.to(**cast), tilt.to(**cast)], 1)
        info.update(sin_weights=rows_g[:, 0], d3_samples=rows_g[:, 1], tilts=rows_g[:, 2])
    if n_samples_f is not None:
        gen = _sample_generator(seed, 2)
        rows_f = (noise * _centred(torch.randn(n_samples_f, n, generator=gen, dtype=f64))).to(**cast)
        info["targets"] = rows_f

    def lower(batch: Any):
        """(c₀ w̄, δ̄, ξ̄) of the batch."""
        w, dd, xi = batch_mean(rows_g, batch).unbind(0)
        return c0 * w, dd, xi

    def lower_batched(batch: Any) -> bool:
        return batch is not None and rows_g is not None

    def upper_batched(batch: Any) -> bool:
        return batch is not None and rows_f is not None

    def f(x: Tensor, y: Tensor, batch: Any) -> Tensor:
        if not upper_batched(batch):
            return f_full(x, y)
        return f_full(x, y) + torch.dot(batch_mean(rows_f, batch), y - d2 * x)

    def g(x: Tensor, y: Tensor, batch: Any) -> Tensor:
        if not lower_batched(batch):
            return g_full(x, y)
        cw, dd, xi = lower(batch)
        return (
            (cw * torch.sin(x + y)).sum()
            + torch.logsumexp(x * y, dim=0)
            + 0.5 * torch.dot(y, dd * y + G @ y)
            + torch.dot(xi, y)
        )

    def grad_x_f(x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        out = cf_full.grad_x_f(x, y)
        return out - d2 * batch_mean(rows_f, batch) if upper_batched(batch) else out

    def grad_y_f(x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        out = cf_full.grad_y_f(x, y)
        return out + batch_mean(rows_f, batch) if upper_batched(batch) else out

    def grad_y_g(x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        if not lower_batched(batch):
            return cf_full.grad_y_g(x, y)
        cw, dd, xi = lower(batch)
        s = torch.softmax(x * y, dim=0)
        return cw * torch.cos(x + y) + x * s + dd * y + G @ y + xi

    def grad_x_g(x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        if not lower_batched(batch):
            return cf_full.grad_x_g(x, y)
        cw, _, _ = lower(batch)
        s = torch.softmax(x * y, dim=0)
        return cw * torch.cos(x + y) + y * s

    def linearize(x: Tensor, y: Tensor, batch: Any):
        if not lower_batched(batch):
            return cf_full.linearize(x, y, None)
        cw, dd, xi = lower(batch)
        return _SyntheticPoint(data, cw, x, y, d3=dd, tilt=xi)

    cf = dataclasses.replace(cf_full, grad_x_f=grad_x_f, grad_y_f=grad_y_f, grad_y_g=grad_y_g,
                             grad_x_g=grad_x_g, linearize=linearize)
    return f, g, cf
