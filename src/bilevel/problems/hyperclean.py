"""Data hyper-cleaning (Franceschi, Donini, Frasconi & Pontil, ICML 2017; the headline experiment of
Yang, Gao & Yuan, LancBiO, ICLR 2025, Section 5).

Learn one weight per training sample so that a classifier trained on the weighted, partly mislabelled
training set does well on a clean validation set:

    x ∈ R^N  (per-sample weight logits; weights σ(x_i)),   y = P (a linear softmax classifier C × (d+1)),
    g(x, P) = (1/N) Σ_i σ(x_i) CE(P x̃_i, ỹ_i) + ρ ‖P‖²        (ρ = ``reg`` = 0.01; strongly convex in P)
    f(P)    = (1/N_val) Σ_j CE(P x̃_j, y_j)                    (clean validation loss; ∇_x f = 0)

The linear model has closed-form gradients, HVPs and cross products (fast path).  Any ``nn.Module``
(``model="mlp"`` or a module instance) works through the generic autodiff oracles.

Mini-batches (Yang, Gao & Yuan, ICLR 2025, the stochastic experiment): the problem declares
``n_samples = N`` (training) and ``n_samples_f = N_val`` (validation), and f, g and every closed form take a
batch of sample indices (a 1-D long tensor on the problem's device; None = all data).  On a training batch 𝓑

    g_𝓑(x, P) = (1/|𝓑|) Σ_{i∈𝓑} σ(x_i) CE(P x̃_i, ỹ_i) + ρ ‖P‖²,       f_𝓑'(P) = (1/|𝓑'|) Σ_{j∈𝓑'} CE(P x̃_j, y_j)

on a validation batch 𝓑'.  The closed forms are those of the full data with X̃, Y, x restricted to the
batch's rows (gathered on the device with ``index_select``; other rows are never read) and 1/N → 1/|𝓑|;
∇_x g and J·V are non-zero only on the batch's coordinates of x (the full-size vector is built by
``index_add``, so a repeated index counts as often as it was drawn), and Jᵀ·u reads only those
coordinates of u.  The MLP and user modules evaluate the batch's rows through autodiff.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from .._validation import check_bool, check_choice, check_int, check_positive, suggest
from ..problem import BilevelProblem, ClosedForms, ProblemError
from ._products import Products as _Products
from ._registry import PROBLEMS
from ._shared import LastBatch, LastTensor, classification_metrics
from .quadratic import _check_dtype_device, batch_index

#: default sizes (train, validation, test) per dataset; None = everything available
SIZES = {"mnist": (5000, 5000, None), "fashion_mnist": (5000, 5000, None), "kmnist": (5000, 5000, None),
         "digits": (600, 600, None)}


#: solver-neutral scales of the deterministic hyper-cleaning experiment (Franceschi et al., ICML 2017
#: setting as run by Yang, Gao & Yuan, ICLR 2025): λ = 500, θ = 0.1, η = 0.05.  The per-solver settings
#: live with the solvers under the experiment key "hyperclean" ("hyperclean/<dataset>" where they differ).
SCALES = {"lr_x": 500.0, "lr_y": 0.1, "eta": 0.05}


def _split(ds, n_train, n_val, n_test, gen: np.random.Generator):
    """Training = the first n_train training images (in order); validation = n_val drawn without
    replacement from the remaining training images, topped up from the test split when those run out
    (KMNIST offline); test = the (remaining) test split, first n_test.  Returns index arrays and a note."""
    n_avail = len(ds.train_labels)
    if n_train >= n_avail:
        raise ProblemError(f"hyperclean: n_train={n_train} but {ds.name} has only {n_avail} training images.")
    rest = np.arange(n_train, n_avail)
    note = ""
    if n_val <= rest.size:
        val_train = np.sort(gen.choice(rest, size=n_val, replace=False))
        val_test = np.array([], dtype=np.int64)
    else:
        short = n_val - rest.size
        val_train = rest
        val_test = np.sort(gen.choice(len(ds.test_labels), size=short, replace=False))
        note = (f"validation = training images {n_train}–{n_avail - 1} ({rest.size}) plus {short} images drawn "
                f"from the test split, which are excluded from the test set")
    keep = np.setdiff1d(np.arange(len(ds.test_labels)), val_test)
    test = keep if n_test is None else keep[:n_test]
    if n_test is not None and n_test > keep.size:
        raise ProblemError(f"hyperclean: n_test={n_test} but only {keep.size} test images remain.")
    return np.arange(n_train), val_train, val_test, test, note


def corrupt(labels: np.ndarray, rate: float, mode: str, n_classes: int, gen: np.random.Generator):
    """Corrupt ⌊rate·N⌋ labels chosen uniformly without replacement.  ``shift`` (default, the reference):
    ℓ ← (ℓ + U{1, …, C−1}) mod C, always wrong; ``uniform``: a uniform new label (may equal ℓ)."""
    n = labels.size
    idx = gen.choice(n, size=int(math.floor(rate * n)), replace=False)
    out = labels.copy()
    if mode == "shift":
        out[idx] = (labels[idx] + gen.integers(1, n_classes, size=idx.size)) % n_classes
    else:
        out[idx] = gen.integers(0, n_classes, size=idx.size)
    return out, np.sort(idx)


def detection_scores(weights_logit: Tensor, corrupted: Tensor) -> dict[str, float]:
    """How well low weights flag corrupted samples: precision/recall/F1 of {σ(x_i) < 0.5} and the AUC of
    the score −x_i (Mann–Whitney, ties averaged)."""
    flagged = weights_logit < 0
    tp = float((flagged & corrupted).sum())
    fp = float((flagged & ~corrupted).sum())
    fn = float((~flagged & corrupted).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    score = (-weights_logit).double().cpu().numpy()
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(score.size)
    sorted_scores = score[order]
    i = 0
    while i < score.size:  # average ranks over ties
        j = i
        while j + 1 < score.size and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    pos = corrupted.cpu().numpy().astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    auc = (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg) if n_pos and n_neg else math.nan
    return {"detect_precision": precision, "detect_recall": recall, "detect_f1": f1, "detect_auc": float(auc)}


class _Layout:
    """The two products of the linear model with a fixed data matrix X (n × d, C classes): logits Z = X Pᵀ
    (n × C) and the gradient-shaped Rᵀ X (C × d), plus the row softmax of Z.

    "plain": those products as written (the float64 default; golden histories are on this path).  "padded":
    the class dimension is zero-padded to a multiple of 16 for the GEMM kernels (Z = (X P̂ᵀ)[:, :C] with
    P̂ = [P; 0]) and Rᵀ X is read as (Xᵀ R̂)ᵀ from a contiguous copy of Xᵀ made on first use; the softmax is
    exp(Z − max) / Σ, without the library kernel's dispatch.  Same mathematics, different rounding.  On the
    2-core AVX-512 CPU this project measures on (MNIST-sized X, ``benchmarks/hyperclean_layout.py``), float32:
    X Pᵀ 1.09 against 1.64 ms, Rᵀ X 1.13 against 1.21 ms, softmax 0.09 against 0.44 ms; float64's padded X Pᵀ is
    twice slower.  "auto": padded for float32 on the CPU, plain otherwise."""

    __slots__ = ("X", "C", "width", "_XT")

    def __init__(self, X: Tensor, C: int, padded: bool) -> None:
        self.X, self.C = X, C
        self.width = 16 * math.ceil(C / 16) if padded else 0
        self._XT: Optional[Tensor] = None

    def logits(self, P: Tensor) -> Tensor:
        """Z = X Pᵀ (one pass over X)."""
        if not self.width:
            return self.X @ P.T
        Pp = P.new_zeros(self.width, P.shape[1])
        Pp[: self.C] = P
        return (self.X @ Pp.T)[:, : self.C]

    def rtx(self, R: Tensor) -> Tensor:
        """Rᵀ X (one pass over X)."""
        if not self.width:
            return R.T @ self.X
        if self._XT is None:
            self._XT = self.X.T.contiguous()
        Rp = R.new_zeros(R.shape[0], self.width)
        Rp[:, : self.C] = R
        return (self._XT @ Rp)[:, : self.C].T

    def softmax(self, Z: Tensor) -> Tensor:
        if not self.width:
            return torch.softmax(Z, dim=1)
        E = (Z - Z.amax(1, keepdim=True)).exp_()
        return E.div_(E.sum(1, keepdim=True))


class _LinearPoint:
    """Per-point quantities of the linear model shared by A·V, J·V and Jᵀ·u (closed forms derived in the module
    docstring), on the training rows ``idx`` (None: all of them).  ``products``: a ``_Products`` cache of
    U = X̃ Vᵀ shared across points (None: every product formed afresh, the unfused path).  ``Pi``: the softmax
    Π at this y when already formed (it does not depend on x)."""

    def __init__(self, lay: _Layout, Y: Tensor, reg: float, x: Tensor, y: Tensor, shape,
                 idx: Optional[Tensor] = None, products: Optional[_Products] = None,
                 Pi: Optional[Tensor] = None) -> None:
        self.idx, self.N = idx, x.shape[0]
        if idx is not None:  # only the batch's rows of X̃, Y and coordinates of x are read (X, Y: those rows)
            x = x.index_select(0, idx)
        self.lay, self.X, self.reg, self.shape = lay, lay.X, reg, shape
        P = y.view(shape)
        self.Pi = lay.softmax(lay.logits(P)) if Pi is None else Pi
        self.R = self.Pi - Y  # Π − Y
        self.s = torch.sigmoid(x)
        self.sp = self.s * (1 - self.s)
        self.n = lay.X.shape[0]
        self.P = P
        self.products = products

    def _u(self, v: Tensor) -> Tensor:
        """U = X̃ Vᵀ (one pass over X̃, none on a cache hit)."""
        if self.products is None:
            return self.lay.logits(v.view(self.shape))
        return self.products.get(self.X, v, lambda: self.lay.logits(v.view(self.shape)))

    def grad_y_g(self) -> Tensor:
        return (self.lay.rtx(self.s[:, None] * self.R) / self.n + 2 * self.reg * self.P).reshape(-1)

    def hvp(self, v: Tensor) -> Tensor:
        V = v.view(self.shape)
        U = self._u(v)
        PU = self.Pi * U
        W = PU - self.Pi * PU.sum(1, keepdim=True)
        return (self.lay.rtx(self.s[:, None] * W) / self.n + 2 * self.reg * V).reshape(-1)

    def spread(self, values: Tensor) -> Tensor:
        """Per-row values as a vector of R^N: themselves on the full data, else zero but on the batch's
        coordinates (summed over repeated indices)."""
        if self.idx is None:
            return values
        return values.new_zeros(self.N).index_add_(0, self.idx, values)

    def cross(self, v: Tensor) -> Tensor:
        U = self._u(v)
        return self.spread(self.sp * (self.R * U).sum(1) / self.n)

    def cross_t(self, w: Tensor) -> Tensor:
        if self.idx is not None:
            w = w.index_select(0, self.idx)
        return (self.lay.rtx((w * self.sp)[:, None] * self.R) / self.n).reshape(-1)


def _mlp(d: int, hidden: int, classes: int, gen: torch.Generator, dtype) -> nn.Module:
    net = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, classes)).to(dtype)
    with torch.no_grad():
        for p in net.parameters():  # seeded initialisation, independent of the global RNG
            bound = 1.0 / math.sqrt(p.shape[-1] if p.dim() > 1 else hidden)
            p.uniform_(-bound, bound, generator=gen)
    return net


@PROBLEMS.register
def hyperclean(
    dataset: str = "digits",
    corruption: float = 0.8,
    seed: int = 0,
    *,
    n_train: Optional[int] = None,
    n_val: Optional[int] = None,
    n_test: Optional[int] = None,
    corruption_mode: str = "shift",
    model: Union[str, nn.Module] = "linear",
    hidden: int = 64,
    reg: float = 0.01,
    closed_forms: bool = True,
    fused: bool = True,
    layout: str = "auto",
    data_dir: Optional[str] = None,
    dtype: torch.dtype = torch.float64,
    device: Any = "cpu",
) -> BilevelProblem:
    """Data hyper-cleaning on ``dataset`` ("mnist", "fashion_mnist", "kmnist" or the embedded "digits").

    Args:
        corruption: fraction p of training labels corrupted (⌊p·N⌋ samples).
        seed: fixes the validation draw, the corruption and the initial classifier, identically for every
            solver (per-role generators).
        n_train, n_val, n_test: sizes (defaults: 5000 / 5000 / the whole test split; digits 600 / 600 / 597).
        corruption_mode: "shift" (always a wrong label, the reference's rule) or "uniform".
        model: "linear" (C × (d+1) softmax classifier, closed forms), "mlp" (2-layer tanh MLP with
            ``hidden`` units, generic autodiff) or any ``nn.Module`` mapping (B, d) inputs to (B, C) logits.
        reg: ρ in the lower level's ρ‖params‖².   closed_forms: use the linear model's closed forms.
        fused: with closed forms, reuse products already formed (bit-identical results): U = X̃ Vᵀ across
            points (the restart product A_k v̄ takes X̃ v̄ᵀ from the previous iteration's J v_{k−1}, saving one
            of its two passes over X̃), and ∇_y f at an unchanged y (no second pass over the validation
            matrix), and the softmax Π at an unchanged y (the linearisation point's Π serves the next
            iteration's first inner step, both at y_{k+1}).  False: every product formed afresh (the
            reference path for tests).
        layout: how the closed forms form X Pᵀ and Rᵀ X on the full data: "plain" (as written), "padded"
            (class dimension padded to 16 for the GEMM kernels, Rᵀ X read from a contiguous Xᵀ, a fused
            softmax; same mathematics, float32 rounding differs) or "auto" (padded for float32 on the CPU,
            where LancBiO's iteration on MNIST took 25.6 ms against 28.9 ms plain; plain otherwise:
            float64 measured 88 against 73 ms padded/plain, and float64 histories stay unchanged).  Batches use the plain products on their gathered rows.
        data_dir: where the dataset files are (else BILEVEL_DATA_DIR, else the cache; see bilevel.datasets).

    ``problem.metrics`` gives test accuracy and loss, validation loss and accuracy, and the detection
    quality of corrupted samples (precision/recall/F1 of σ(x_i) < 0.5, AUC); ``problem.info`` records the
    split, the corrupted samples (``corrupted_indices``), the realised corruption rate and any deviation
    (KMNIST offline) and where the validation images come from (``val_train_indices``,
    ``val_test_indices``).

    Split: training = the first n_train training-split images, in order; validation = n_val drawn (seeded,
    without replacement) from the training-split images n_train … end, disjoint from training; test = the
    test split.  The stochastic experiment (§4.3 of the reference) is ``hyperclean("mnist", corruption=0.5,
    n_train=20000, n_val=5000)``: training images 0–19999, 5000 validation images from 20000–59999, the
    10000 test images; the deterministic one (5000 / 5000) follows the same rule.

    Mini-batches: ``n_samples = n_train`` and ``n_samples_f = n_val`` are declared; f, g and the closed forms
    evaluate a batch of indices as the batch mean (module docstring), touching only the batch's rows.
    Presets: the reference's
    deterministic hyper-cleaning settings for every solver (λ = 500, θ = 0.1, η = 0.05, T and Q per solver,
    LancBiO m from 1 ×1.3 every 50 iterations up to 10).
    """
    from ..datasets import DATASETS, load_dataset

    owner = "hyperclean"
    if dataset not in DATASETS:
        raise ProblemError(f"{owner}: unknown dataset {dataset!r}.{suggest(str(dataset), DATASETS)} "
                           f"Available: {', '.join(sorted(DATASETS))}.")
    if isinstance(corruption, bool) or not isinstance(corruption, (int, float)) or not 0 <= corruption < 1:
        raise ProblemError(f"{owner}: corruption must be a rate in [0, 1); got {corruption!r}.")
    check_int(owner, "seed", seed, 0)
    dtype, device = _check_dtype_device(owner, dtype, device)
    check_choice(owner, "corruption_mode", corruption_mode, ("shift", "uniform"))
    check_choice(owner, "layout", layout, ("auto", "plain", "padded"))
    check_positive(owner, "reg", reg)
    if not isinstance(model, nn.Module):
        check_choice(owner, "model", model, ("linear", "mlp"))
    defaults = SIZES.get(dataset, (5000, 5000, None))
    n_train = defaults[0] if n_train is None else check_int(owner, "n_train", n_train, 1)
    n_val = defaults[1] if n_val is None else check_int(owner, "n_val", n_val, 1)
    if n_test is not None:
        check_int(owner, "n_test", n_test, 1)

    ds = load_dataset(dataset, data_dir=data_dir)
    # one generator per role: the same seed gives the same data, noise and init for every solver
    roots = np.random.SeedSequence([seed, 20250])
    g_split, g_corrupt = (np.random.default_rng(s) for s in roots.spawn(2))
    g_init = torch.Generator().manual_seed(int(roots.generate_state(1)[0]))
    tr, va_tr, va_te, te, note = _split(ds, n_train, n_val, n_test, g_split)

    cast = dict(dtype=dtype, device=device)

    def features(images: np.ndarray) -> Tensor:
        flat = images.reshape(images.shape[0], -1).astype(np.float64) / ds.pixel_max
        X = torch.from_numpy((flat - ds.mean) / ds.std).to(**cast)
        return torch.cat([X, torch.ones(X.shape[0], 1, **cast)], 1)  # bias column

    C = ds.n_classes
    clean = ds.train_labels[tr]
    noisy, corrupted_idx = corrupt(clean, float(corruption), corruption_mode, C, g_corrupt)
    Xt = features(ds.train_images[tr])
    Xv = features(np.concatenate([ds.train_images[va_tr], ds.test_images[va_te]]))
    Xs = features(ds.test_images[te])
    yt = torch.from_numpy(noisy).to(device=device, dtype=torch.long)
    yv = torch.from_numpy(np.concatenate([ds.train_labels[va_tr], ds.test_labels[va_te]])).to(device=device, dtype=torch.long)
    ys = torch.from_numpy(ds.test_labels[te]).to(device=device, dtype=torch.long)
    is_corrupted = torch.from_numpy(noisy != clean).to(device)
    N, d1 = Xt.shape
    ce = nn.functional.cross_entropy

    padded = False  # the closed forms' layout (below)
    if isinstance(model, nn.Module) or model == "mlp":
        net = model if isinstance(model, nn.Module) else _mlp(d1 - 1, hidden, C, g_init, dtype)
        net = net.to(**cast)
        y0 = {k: v.detach().clone() for k, v in net.named_parameters()}
        Xt_, Xv_, Xs_ = Xt[:, :-1], Xv[:, :-1], Xs[:, :-1]  # the module has its own biases

        def logits(params, X):
            return functional_call(net, params, (X,))

        def g(x, params, batch):
            reg_term = sum((p ** 2).sum() for p in params.values())
            if batch is not None:
                idx = batch_index(batch, device)
                X_b, y_b, x_b = Xt_.index_select(0, idx), yt.index_select(0, idx), x.index_select(0, idx)
                return (torch.sigmoid(x_b) * ce(logits(params, X_b), y_b, reduction="none")).mean() + reg * reg_term
            return (torch.sigmoid(x) * ce(logits(params, Xt_), yt, reduction="none")).mean() + reg * reg_term

        def f(x, params, batch):
            if batch is not None:
                idx = batch_index(batch, device)
                return ce(logits(params, Xv_.index_select(0, idx)), yv.index_select(0, idx))
            return ce(logits(params, Xv_), yv)

        inputs = {"val": Xv_, "test": Xs_}
        cf = None
        kind = "mlp" if model == "mlp" else type(model).__name__
    else:
        # P ~ N(0, 0.2) entrywise (Kaiming-normal with fan_out = C, bias included)
        P0 = torch.randn(C, d1, generator=g_init, dtype=torch.float64).mul_(math.sqrt(2.0 / C)).to(**cast)
        y0 = P0
        shape = (C, d1)
        Yt = nn.functional.one_hot(yt, C).to(dtype)
        Yv = nn.functional.one_hot(yv, C).to(dtype)

        def logits(P, X):
            return X @ P.T

        def g(x, P, batch):
            if batch is not None:
                idx = batch_index(batch, device)
                X_b, y_b, x_b = Xt.index_select(0, idx), yt.index_select(0, idx), x.index_select(0, idx)
                return (torch.sigmoid(x_b) * ce(X_b @ P.T, y_b, reduction="none")).mean() + reg * (P ** 2).sum()
            return (torch.sigmoid(x) * ce(Xt @ P.T, yt, reduction="none")).mean() + reg * (P ** 2).sum()

        def f(x, P, batch):
            if batch is not None:
                idx = batch_index(batch, device)
                return ce(Xv.index_select(0, idx) @ P.T, yv.index_select(0, idx))
            return ce(Xv @ P.T, yv)

        inputs = {"val": Xv, "test": Xs}
        kind = "linear"
        cf = None
        if closed_forms:
            nv = Xv.shape[0]
            check_bool("hyperclean", "fused", fused)
            products = _Products() if fused else None
            last_f, last_pi = LastTensor(), LastTensor()  # ∇_y f (full batch) and Π (full training data) at y
            padded = layout == "padded" or (layout == "auto" and dtype == torch.float32 and device.type == "cpu")
            lay_t, lay_v = _Layout(Xt, C, padded), _Layout(Xv, C, padded)

            def grad_y_f(x, y, batch):
                if batch is None and fused:
                    return last_f.get(y, lambda: _grad_y_f(x, y, batch))
                return _grad_y_f(x, y, batch)

            def _grad_y_f(x, y, batch):
                if batch is not None:
                    idx = batch_index(batch, device)
                    X_b = Xv.index_select(0, idx)
                    Pi = torch.softmax(X_b @ y.view(shape).T, dim=1)
                    return ((Pi - Yv.index_select(0, idx)).T @ X_b / X_b.shape[0]).reshape(-1)
                Pi = lay_v.softmax(lay_v.logits(y.view(shape)))
                return (lay_v.rtx(Pi - Yv) / nv).reshape(-1)

            def grad_x_g(x, y, batch):
                if batch is not None:
                    idx = batch_index(batch, device)
                    s = torch.sigmoid(x.index_select(0, idx))
                    loss = ce(Xt.index_select(0, idx) @ y.view(shape).T, yt.index_select(0, idx), reduction="none")
                    return x.new_zeros(N).index_add_(0, idx, s * (1 - s) * loss / idx.shape[0])
                s = torch.sigmoid(x)
                return s * (1 - s) * ce(lay_t.logits(y.view(shape)), yt, reduction="none") / N

            train_rows = LastBatch()  # the batch's rows of X̃ and Y, gathered once per batch object

            def point(x, y, batch):
                if batch is None:
                    if not fused:
                        return _LinearPoint(lay_t, Yt, reg, x, y, shape)
                    Pi = last_pi.get(y, lambda: lay_t.softmax(lay_t.logits(y.view(shape))))
                    return _LinearPoint(lay_t, Yt, reg, x, y, shape, products=products, Pi=Pi)
                idx = batch_index(batch, device)
                X_b, Y_b = train_rows.get(batch, lambda: (Xt.index_select(0, idx), Yt.index_select(0, idx)))
                return _LinearPoint(_Layout(X_b, C, False), Y_b, reg, x, y, shape, idx, products=products)

            cf = ClosedForms(
                grad_x_f=lambda x, y, batch: torch.zeros_like(x),
                grad_y_f=grad_y_f,
                grad_y_g=lambda x, y, batch: point(x, y, batch).grad_y_g(),
                grad_x_g=grad_x_g,
                linearize=point,
            )

    def metrics(x, y) -> dict[str, float]:
        out = classification_metrics([("val", logits(y, inputs["val"]), yv), ("test", logits(y, inputs["test"]), ys)])
        out.update(detection_scores(x.detach(), is_corrupted))
        return out

    info = {
        "dataset": dataset, "corruption": float(corruption), "corruption_mode": corruption_mode, "seed": seed,
        "model": kind, "closed_forms": cf is not None, "n_train": N, "n_val": int(Xv.shape[0]),
        "n_test": int(Xs.shape[0]), "realised_corruption": float(is_corrupted.double().mean()),
        "split_note": note, "dataset_notes": ds.notes, "reg": reg,
        "layout": ("padded" if padded else "plain") if cf is not None else None,
        "corrupted_indices": corrupted_idx.tolist(),  # which training samples got a wrong label (sorted)
        # where the samples come from: training = training-split images 0 … N−1 (in order); validation =
        # these training-split images (sorted), then these test-split images (KMNIST offline only)
        "val_train_indices": va_tr.tolist(), "val_test_indices": va_te.tolist(),
    }
    return BilevelProblem(
        f, g, torch.zeros(N, **cast), y0, name=f"hyperclean-{dataset}", closed_forms=cf,
        presets={"*": dict(SCALES)}, metrics=metrics, n_samples=N, n_samples_f=int(Xv.shape[0]), info=info,
        experiment=f"hyperclean/{dataset}",
    )
