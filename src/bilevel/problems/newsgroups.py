"""20 Newsgroups: one ℓ2-regularisation strength per feature, selected on validation data (Grazzi, Franceschi,
Pontil & Salzo, "On the Iteration Complexity of Hypergradient Computation", ICML 2020; Ji, Yang & Liang,
"Bilevel Optimization: Convergence Analysis and Enhanced Design", ICML 2021, the stocBiO experiment; the
hyper-parameter selection task of Yang, Gao & Yuan, LancBiO, ICLR 2025).

Data: the "bydate" split, token counts with each document scaled to unit ℓ2 norm (no idf), p = 130107
features, C = 20 classes.  The 11314 training documents are split 50/50, stratified by class and seeded,
into training (N_tr = 5657) and validation (N_val = 5657) documents; test = the 7532 official test documents.
X = X_tr (N_tr × p, sparse CSR, rows aᵢᵀ), labels cᵢ, one-hot rows Y (X_val, Y_val: the validation rows).

Variables: y = W ∈ R^(p×C) (no bias; zero at the start; dy = pC = 2 602 140), x ∈ R^p (x_j = the log of
feature j's regularisation strength; zero at the start).

    g(x, W) = (1/N_tr) Σᵢ CE(Wᵀaᵢ, cᵢ) + (1/(2pC)) Σ_j e^(x_j) ‖W_j,:‖²
    f(x, W) = (1/N_val) Σᵢ CE(Wᵀaᵢ, cᵢ)   (validation documents; ∇_x f = 0)

Closed forms, with Π = row-softmax(X W), U = X V, E = diag(e^x)/(pC) (each by differentiating g and f above):

    ∇_W g = (1/N_tr) X_trᵀ (Π − Y) + E W
    A V   = ∇²_WW g·V = (1/N_tr) X_trᵀ [Π ⊙ U − Π ⊙ rowsum(Π ⊙ U)] + E V
    J V   = ∇²_xW g·V = (1/(pC)) e^x ⊙ rowsum(W ⊙ V)          ∈ R^p: a per-feature row sum, O(pC), no data
    Jᵀ w  = ∇²_Wx g·w = E diag(w) W                             ∈ R^(p×C)
    ∇_x g = (1/(2pC)) e^x ⊙ rowsum(W ⊙ W),   ∇_W f = (1/N_val) X_valᵀ (Π_val − Y_val)

Costs: a gradient or an HVP is two sparse products (X W then Xᵀ R), each O(nnz · C) with nnz ≈ 8.8e5 on the
training half, plus O(pC) dense work; J V, Jᵀ w and ∇_x g are O(pC) and read no data.  Per point (``linearize``)
X W and Π are computed once, on the first product that needs them, and shared by ∇_W g and every HVP there;
J V and Jᵀ w never compute them.

Sparse products (``backend``): scipy.sparse CSR on the CPU (the default there), torch sparse CSR elsewhere
(CUDA).  Xᵀ is stored as its own CSR matrix for the full data (built once), so Xᵀ R is a row-wise product too.
Measured on the full problem (the training half of split seed 0: N = 5657 rows, nnz = 879 033, C = 20, float64;
median of 7 calls on a shared 2-core machine under load, so orders of magnitude only):

    ==========================  ================  ====================  =====================
                                scipy.sparse CSR  torch CSR, 1 thread   torch CSR, 2 threads
    ==========================  ================  ====================  =====================
    X W                         15 ms             19 ms                 48 ms
    Xᵀ R (Xᵀ stored as CSR)     8 ms              28 ms                 56 ms
    ==========================  ================  ====================  =====================

scipy is single-threaded whatever torch's thread count (the same times at 1 and 2 threads); torch's CSR kernels
were slower at either count, and slower still without a stored Xᵀ (``X.t() @ R``: about 4× the stored
product's time at one thread in an earlier measurement).  Hence ``backend="auto"`` = scipy on the CPU, torch on
CUDA (scipy cannot run there; the torch path is tested on the CPU).

Mini-batches: ``n_samples = N_tr`` and ``n_samples_f = N_val``; a batch is a 1-D long tensor of row indices into
the training (g) or validation (f) documents.  The cross-entropy terms become the batch mean (rows gathered
from the CSR matrix: only the batch's non-zeros are read; a repeated index counts as often as drawn); the
penalty, J V, Jᵀ w and ∇_x g do not depend on the data and are the same on every batch.

Conditioning: at x = 0 the penalty's curvature is 1/(pC) ≈ 3.8e-7, so A is extremely ill-conditioned; the
published settings use large steps (Ji, Yang & Liang 2021: θ = λ = 100, η = 0.5; ``SCALES``).  The inner step
θ is stable for W_j only while θ e^(x_j)/(pC) < 2, i.e. x_j < ln(2pC/θ) ≈ 10.9 at θ = 100: methods whose
hypergradient estimate moves x (LancBiO, AmIGO) can push a component there on runs much longer than Ji et al.'s
K = 50 (see the LancBiO docstring); stocBiO's truncated Neumann v (η = 0.5, Q = 10) is small and x hardly moves.

Memory: W, V and every dy-vector are 8·pC bytes ≈ 21 MB in float64.  A dense Hessian (the exact v-solve) would
be (pC)² · 8 bytes ≈ 54 TB: ``linear_solvers.Exact`` refuses it and says so.  ITD needs only its T_b points
(Π at each: N_tr·C numbers) and runs.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .._validation import check_choice, check_int
from ..problem import BilevelProblem, ClosedForms, ProblemError
from ._registry import PROBLEMS
from ._shared import LastBatch, classification_metrics
from .quadratic import _check_dtype_device, batch_index

#: solver-neutral scales of the experiment (Ji, Yang & Liang, ICML 2021, 20 Newsgroups): λ = 100, θ = 100,
#: η = 0.5.  The per-solver settings (T, Q, ...) live with the solvers under the experiment key "newsgroups".
SCALES = {"lr_x": 100.0, "lr_y": 100.0, "eta": 0.5}

#: the sparse-product backends; "auto" = scipy on the CPU, torch on other devices (see the module docstring)
BACKENDS = ("auto", "scipy", "torch")

_OWNER = "newsgroups"


# ---- sparse products ---------------------------------------------------------------------------------------
def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


class _ScipyRows:
    """Documents X (n × p) as a scipy CSR matrix: ``mul(W) = X W`` and ``tmul(R) = Xᵀ R`` (n × C and p × C,
    torch tensors on the CPU).  With ``transpose`` Xᵀ is kept as its own CSR matrix (the full data: built once);
    batches use the transposed view (CSC product) instead of building one."""

    def __init__(self, X, transpose: bool) -> None:
        self.X = X
        self.n, self.p = X.shape
        self.XT = X.T.tocsr() if transpose else None

    def mul(self, W: Tensor) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.X @ _numpy(W)))

    def tmul(self, R: Tensor) -> Tensor:
        XT = self.X.T if self.XT is None else self.XT
        return torch.from_numpy(np.ascontiguousarray(XT @ _numpy(R)))

    def rows(self, idx: Tensor) -> "_ScipyRows":
        return _ScipyRows(self.X[idx.cpu().numpy()], transpose=False)


def _torch_csr(crow: Tensor, col: Tensor, val: Tensor, shape) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the products used here are stable
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, col, val, size=shape, check_invariants=False)


class _TorchRows:
    """Documents X (n × p) as a torch sparse CSR tensor on the problem's device (same interface as
    ``_ScipyRows``).  Full data: Xᵀ as its own CSR tensor.  A batch: its rows gathered with index arithmetic on
    the device, and Xᵀ R as a scatter-add of the batch's non-zeros (O(nnz_B · C))."""

    def __init__(self, crow: Tensor, col: Tensor, val: Tensor, shape, XT: Optional[Tensor]) -> None:
        self.crow, self.col, self.val = crow, col, val
        self.n, self.p = shape
        self.X = _torch_csr(crow, col, val, shape)
        self.XT = XT
        self._row = None

    @classmethod
    def from_scipy(cls, X, dtype: torch.dtype, device: torch.device) -> "_TorchRows":
        def parts(M):
            return (torch.from_numpy(M.indptr.astype(np.int64)).to(device),
                    torch.from_numpy(M.indices.astype(np.int64)).to(device),
                    torch.from_numpy(M.data).to(dtype=dtype, device=device))

        XT = X.T.tocsr()
        return cls(*parts(X), X.shape, _torch_csr(*parts(XT), XT.shape))

    def mul(self, W: Tensor) -> Tensor:
        return self.X @ W.detach().contiguous()

    def tmul(self, R: Tensor) -> Tensor:
        R = R.detach()
        if self.XT is not None:
            return self.XT @ R.contiguous()
        if self._row is None:
            counts = self.crow[1:] - self.crow[:-1]
            self._row = torch.repeat_interleave(torch.arange(self.n, device=self.col.device), counts)
        out = R.new_zeros(self.p, R.shape[1])
        return out.index_add_(0, self.col, self.val[:, None] * R.index_select(0, self._row))

    def rows(self, idx: Tensor) -> "_TorchRows":
        starts, ends = self.crow.index_select(0, idx), self.crow.index_select(0, idx + 1)
        counts = ends - starts
        crow = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        offset = torch.repeat_interleave(starts - crow[:-1], counts)  # position in X minus position in X_B
        pos = torch.arange(offset.shape[0], device=offset.device) + offset
        return _TorchRows(crow, self.col.index_select(0, pos), self.val.index_select(0, pos),
                          (idx.shape[0], self.p), None)


class _Mul(torch.autograd.Function):
    """Z = X W, differentiable to any order (its derivative is Xᵀ·, whose derivative is X·)."""

    @staticmethod
    def forward(ctx, W: Tensor, rows: Any) -> Tensor:
        ctx.rows = rows
        return rows.mul(W)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _TMul.apply(grad, ctx.rows), None


class _TMul(torch.autograd.Function):
    """Xᵀ R, the adjoint of ``_Mul``."""

    @staticmethod
    def forward(ctx, R: Tensor, rows: Any) -> Tensor:
        ctx.rows = rows
        return rows.tmul(R)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _Mul.apply(grad, ctx.rows), None


class _Level:
    """One level's documents: the sparse rows, the labels and their one-hot rows; ``batch(b)`` gives the
    batch's rows (gathered once per batch object: roles that share a draw, and the inner steps on one batch,
    reuse them)."""

    def __init__(self, rows: Any, labels: Tensor, n_classes: int, dtype: torch.dtype) -> None:
        self.rows, self.labels = rows, labels
        self.Y = nn.functional.one_hot(labels, n_classes).to(dtype)
        self._last = LastBatch()

    def batch(self, batch: Any, device: torch.device) -> tuple[Any, Tensor, Tensor]:
        if batch is None:
            return self.rows, self.labels, self.Y
        def gather():
            idx = batch_index(batch, device)
            return self.rows.rows(idx), self.labels.index_select(0, idx), self.Y.index_select(0, idx)

        return self._last.get(batch, gather)


class _Point:
    """Per-point quantities shared by ∇_W g, A·V, J·V and Jᵀ·w at (x, W) on one batch of training rows (the
    closed forms of the module docstring).  X W and Π are computed on the first product that needs them."""

    def __init__(self, rows: Any, Y: Tensor, x: Tensor, W: Tensor, scale: float) -> None:
        self.rows, self.Y, self.W = rows, Y, W
        self.shape = W.shape
        self.d = torch.exp(x) * scale  # diag(E) = e^x / (pC)
        self._pi: Optional[Tensor] = None

    @property
    def pi(self) -> Tensor:
        if self._pi is None:
            self._pi = torch.softmax(self.rows.mul(self.W), dim=1)
        return self._pi

    def grad_y_g(self) -> Tensor:
        out = self.rows.tmul((self.pi - self.Y) / self.rows.n)  # a fresh p × C tensor
        return out.addcmul_(self.d[:, None], self.W).reshape(-1)

    def hvp(self, v: Tensor) -> Tensor:
        V = v.view(self.shape)
        Pi = self.pi
        PU = Pi * self.rows.mul(V)
        M = PU - Pi * PU.sum(1, keepdim=True)
        return self.rows.tmul(M / self.rows.n).addcmul_(self.d[:, None], V).reshape(-1)

    def cross(self, v: Tensor) -> Tensor:
        # rowsum(W ⊙ V) as p batched 1×C · C×1 products: no p × C temporary (W ⊙ V would be one more dy-vector)
        return self.d * torch.bmm(self.W.unsqueeze(1), v.view(self.shape).unsqueeze(2)).view(-1)

    def cross_t(self, w: Tensor) -> Tensor:
        return ((self.d * w)[:, None] * self.W).reshape(-1)


# ---- data ---------------------------------------------------------------------------------------------------
def stratified_halves(labels: np.ndarray, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split the documents 50/50, stratified by class: each class c with n_c documents gives ⌊n_c/2⌋ or
    ⌈n_c/2⌉ to the first half (the classes with an odd count, in a seeded order, alternate so that the first
    half has ⌈N/2⌉ documents), chosen by a seeded permutation.  Returns the sorted indices of both halves."""
    first = []
    classes = np.unique(labels)
    odd = [c for c in classes if np.count_nonzero(labels == c) % 2]
    extra = (len(odd) + labels.size % 2) // 2
    bonus = set(gen.permutation(np.asarray(odd, dtype=np.int64))[:extra].tolist()) if odd else set()
    for c in classes:
        members = np.flatnonzero(labels == c)
        take = members.size // 2 + (1 if int(c) in bonus else 0)
        first.append(gen.permutation(members)[:take])
    a = np.sort(np.concatenate(first)) if first else np.array([], dtype=np.int64)
    b = np.setdiff1d(np.arange(labels.size), a)
    return a, b


def most_frequent_features(X, n: int) -> np.ndarray:
    """The ``n`` columns of X with the most non-zeros (document frequency), ties to the lower index; sorted."""
    df = np.bincount(X.indices, minlength=X.shape[1])
    return np.sort(np.argsort(-df, kind="stable")[:n])


def _unit_rows(X):
    """Rows rescaled to unit ℓ2 norm (rows that are all zero stay zero)."""
    import scipy.sparse as sp

    norms = np.sqrt(np.asarray(X.multiply(X).sum(1)).ravel())
    norms[norms == 0] = 1.0
    return sp.diags(1.0 / norms) @ X


def _check_data(data: Any) -> tuple:
    """``data=(train_X, train_labels, test_X, test_labels)`` as (CSR float64, int64, CSR float64, int64)."""
    import scipy.sparse as sp

    names = ("train_X", "train_labels", "test_X", "test_labels")
    if not isinstance(data, (tuple, list)) or len(data) != 4:
        raise ProblemError(f"{_OWNER}: data must be a tuple (train_X, train_labels, test_X, test_labels); got "
                           f"{type(data).__name__}{f' of length {len(data)}' if isinstance(data, (tuple, list)) else ''}.")
    out = []
    for i, (name, item) in enumerate(zip(names, data)):
        if i % 2 == 0:
            if sp.issparse(item):
                M = sp.csr_matrix(item, dtype=np.float64)
            elif isinstance(item, np.ndarray) and item.ndim == 2:
                M = sp.csr_matrix(item.astype(np.float64))
            else:
                raise ProblemError(f"{_OWNER}: data {name} must be a 2-D scipy.sparse matrix (CSR) or numpy array; "
                                   f"got {type(item).__name__}{f' of {item.ndim} dimension(s)' if isinstance(item, np.ndarray) else ''}.")
            if not np.isfinite(M.data).all():
                raise ProblemError(f"{_OWNER}: data {name} contains NaN or Inf values.")
            M.sort_indices()
            out.append(M)
        else:
            labels = np.asarray(item)
            if labels.ndim != 1 or labels.dtype.kind not in "iu":
                raise ProblemError(f"{_OWNER}: data {name} must be a 1-D array of integer class labels; got "
                                   f"{'dtype ' + str(labels.dtype) if labels.ndim == 1 else f'shape {labels.shape}'}.")
            if labels.size and labels.min() < 0:
                raise ProblemError(f"{_OWNER}: data {name} must hold class labels 0, 1, ...; got {int(labels.min())}.")
            rows = out[-1].shape[0]
            if labels.size != rows:
                raise ProblemError(f"{_OWNER}: data {name} has {labels.size} labels but {names[i - 1]} has {rows} rows.")
            out.append(labels.astype(np.int64))
    if out[0].shape[1] != out[2].shape[1]:
        raise ProblemError(f"{_OWNER}: data train_X has {out[0].shape[1]} features but test_X has {out[2].shape[1]}; "
                           "build both with one vocabulary.")
    if out[0].shape[0] < 2:
        raise ProblemError(f"{_OWNER}: data train_X has {out[0].shape[0]} document(s); the 50/50 training/validation "
                           "split needs at least 2.")
    return tuple(out)


def _load(data_dir: Optional[str], features: str):
    from ..datasets import DatasetError

    try:
        from ..datasets import load_newsgroups
    except ImportError:  # pragma: no cover - the loader ships with the package
        raise ProblemError(f"{_OWNER}: this installation has no bilevel.datasets.load_newsgroups; pass "
                           "data=(train_X, train_labels, test_X, test_labels).") from None
    try:
        ds = load_newsgroups(data_dir=data_dir, features=features)
    except DatasetError as err:
        what = getattr(err, "what", None) or " ".join(str(err).split())
        fix = getattr(err, "fix", None)
        hint = (fix or "pass data_dir=DIR (command line: --data-dir DIR), DIR holding "
                "20newsgroups/20news-bydate.tar.gz, or set BILEVEL_DATA_DIR")
        raise ProblemError(f"{_OWNER}: the 20 Newsgroups data could not be loaded: {what} — {hint}.") from err
    return ds


@PROBLEMS.register
def newsgroups(
    seed: int = 0,
    *,
    data_dir: Optional[str] = None,
    n_features: Optional[int] = None,
    features: str = "counts_l2",
    backend: str = "auto",
    dtype: torch.dtype = torch.float64,
    device: Any = "cpu",
    data: Optional[Sequence[Any]] = None,
) -> BilevelProblem:
    """20 Newsgroups per-feature ℓ2-regularisation selection (Ji, Yang & Liang, ICML 2021) at dy = 2.6 million.

    Args:
        seed: fixes the stratified 50/50 training/validation split of the training documents.
        data_dir: where the archive is (``20newsgroups/20news-bydate.tar.gz`` under it), else
            ``BILEVEL_DATA_DIR``, else the cache (see ``bilevel.datasets.load_newsgroups``).
        n_features: keep only the n most frequent features (document frequency over all training documents,
            ties to the lower column; deterministic) and rescale each document to unit ℓ2 norm again: a small
            instance for tests and quick runs.  None: all p = 130107.
        features: "counts_l2" (token counts, unit ℓ2 rows: the experiment's) or "tfidf_l2" (labelled tf-idf
            variant of the loader).
        backend: sparse products: "scipy" (CPU only), "torch" (torch sparse CSR, any device) or "auto" (scipy on
            the CPU, torch elsewhere; measured in the module docstring).
        dtype: torch.float64 (default) or torch.float32.   device: torch device.
        data: ``(train_X, train_labels, test_X, test_labels)`` (scipy sparse or numpy, integer labels 0..C−1)
            instead of the archive; C = the largest label + 1.

    The problem: x ∈ R^p, y = W ∈ R^(p×C) (zeros), g = mean training cross-entropy + (1/(2pC)) Σ_j e^(x_j)‖W_j‖²,
    f = mean validation cross-entropy; closed forms for every oracle (module docstring).  ``metrics``: test
    loss and accuracy, validation loss and accuracy.  Mini-batches: ``n_samples`` = training documents,
    ``n_samples_f`` = validation documents.  Presets: λ = 100, θ = 100, η = 0.5 (Ji et al. 2021); T, Q and
    LancBiO's m per solver under the experiment key "newsgroups".  ``info`` records the sizes, nnz, the
    split (``train_indices``, ``val_indices``: rows of the training documents) and the loader's notes.
    """
    seed = check_int(_OWNER, "seed", seed, 0)
    dtype, device = _check_dtype_device(_OWNER, dtype, device)
    if dtype not in (torch.float64, torch.float32):
        raise ProblemError(f"{_OWNER}: dtype must be torch.float64 or torch.float32 (the sparse products); got {dtype}.")
    check_choice(_OWNER, "backend", backend, BACKENDS)
    check_choice(_OWNER, "features", features, ("counts_l2", "tfidf_l2"))
    if backend == "auto":
        backend = "scipy" if device.type == "cpu" else "torch"
    if backend == "scipy" and device.type != "cpu":
        raise ProblemError(f"{_OWNER}: backend='scipy' computes on the CPU only; got device {str(device)!r} — use "
                           "backend='torch' (or 'auto') there.")
    if n_features is not None:
        check_int(_OWNER, "n_features", n_features, 1)

    notes, files = "", ""
    if data is not None:
        train_X, train_labels, test_X, test_labels = _check_data(data)
        source = "data="
    else:
        ds = _load(data_dir, features)
        train_X, train_labels, test_X, test_labels = _check_data(
            (ds.train_X, ds.train_labels, ds.test_X, ds.test_labels))
        notes, files, source = getattr(ds, "notes", ""), getattr(ds, "files", ""), "archive"
    p_all = train_X.shape[1]
    if n_features is not None:
        if n_features > p_all:
            raise ProblemError(f"{_OWNER}: n_features={n_features} but the data has only {p_all} features; pass at "
                               f"most {p_all} (or None for all).")
        cols = most_frequent_features(train_X, n_features)
        train_X, test_X = _unit_rows(train_X[:, cols]).tocsr(), _unit_rows(test_X[:, cols]).tocsr()
    n_classes = int(max(train_labels.max(), test_labels.max() if test_labels.size else 0)) + 1
    p = train_X.shape[1]

    gen = np.random.default_rng(np.random.SeedSequence([seed, 20111]))
    tr, va = stratified_halves(train_labels, gen)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32

    def level(X, labels) -> _Level:
        X = X.astype(np_dtype)
        rows = (_ScipyRows(X, transpose=True) if backend == "scipy"
                else _TorchRows.from_scipy(X, dtype, device))
        return _Level(rows, torch.from_numpy(labels).to(device), n_classes, dtype)

    train = level(train_X[tr], train_labels[tr])
    val = level(train_X[va], train_labels[va])
    test = _ScipyRows(test_X.astype(np_dtype), transpose=False) if backend == "scipy" else (
        _TorchRows.from_scipy(test_X.astype(np_dtype), dtype, device))
    test_labels_t = torch.from_numpy(test_labels).to(device)
    scale = 1.0 / (p * n_classes)
    ce = nn.functional.cross_entropy

    def g(x, W, batch):
        rows, labels, _ = train.batch(batch, device)
        return ce(_Mul.apply(W, rows), labels) + 0.5 * scale * (torch.exp(x) * (W * W).sum(1)).sum()

    def f(x, W, batch):
        rows, labels, _ = val.batch(batch, device)
        return ce(_Mul.apply(W, rows), labels)

    shape = (p, n_classes)

    def point(x, y, batch):
        rows, _, Y = train.batch(batch, device)
        return _Point(rows, Y, x, y.view(shape), scale)

    def grad_y_f(x, y, batch):
        rows, _, Y = val.batch(batch, device)
        Pi = torch.softmax(rows.mul(y.view(shape)), dim=1)
        return rows.tmul((Pi - Y) / rows.n).reshape(-1)

    def grad_x_g(x, y, batch):
        W = y.view(shape)
        return (0.5 * scale) * torch.exp(x) * (W * W).sum(1)

    cf = ClosedForms(
        grad_x_f=lambda x, y, batch: torch.zeros_like(x),
        grad_y_f=grad_y_f,
        grad_y_g=lambda x, y, batch: point(x, y, batch).grad_y_g(),
        grad_x_g=grad_x_g,
        linearize=point,
    )

    def metrics(x, W) -> dict[str, float]:
        return classification_metrics([("val", val.rows.mul(W), val.labels), ("test", test.mul(W), test_labels_t)])

    nnz = int(train_X[tr].nnz)
    info = {
        "seed": seed, "source": source, "features": features, "backend": backend, "n_train": int(tr.size),
        "n_val": int(va.size), "n_test": int(test_X.shape[0]), "n_features": p, "n_features_all": p_all,
        "n_classes": n_classes, "nnz_train": nnz, "dataset_notes": notes, "dataset_files": str(files),
        "dense_hessian_bytes": float(p * n_classes) ** 2 * (8 if dtype == torch.float64 else 4),
        "train_indices": tr.tolist(), "val_indices": va.tolist(),
    }
    cast = dict(dtype=dtype, device=device)
    name = _OWNER if n_features is None else f"{_OWNER}-p{p}"
    return BilevelProblem(
        f, g, torch.zeros(p, **cast), torch.zeros(shape, **cast), name=name, closed_forms=cf,
        presets={"*": dict(SCALES)}, metrics=metrics, n_samples=int(tr.size), n_samples_f=int(va.size), info=info,
        experiment=_OWNER,
    )

