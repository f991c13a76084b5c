"""The ``Dataset`` and ``TextDataset`` records and the one exception type of ``bilevel.datasets``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Dataset", "DatasetError", "TextDataset"]


class DatasetError(RuntimeError):
    """A dataset cannot be provided: unknown name, missing or corrupted file, failed download, bad format.

    The message always names the file concerned and says how to fix the problem.  ``what`` and ``fix``,
    where set, are that message in two short one-line parts, for one-line reports (the command line prints
    "bilevel: <what> — <fix>").
    """

    def __init__(self, message: str, *, what: str | None = None, fix: str | None = None) -> None:
        super().__init__(message)
        self.what = what
        self.fix = fix


# eq=False: comparing arrays element-wise inside a generated __eq__ would raise; identity is enough.
@dataclass(frozen=True, eq=False)
class Dataset:
    """An image-classification dataset with its official train/test split.

    train_images, test_images: uint8, shape (N, H, W), raw pixel values in [0, pixel_max].
    train_labels, test_labels: int64, shape (N,), values in [0, n_classes).
    mean, std: normalisation constants of ``pixel / pixel_max``; use ``(images / pixel_max - mean) / std``.
    notes: provenance and deviations from the upstream dataset (for example KMNIST's partial training
    images), to be reported with results.
    files: file name -> absolute path of every file read (empty for nothing but a bundled source).
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    n_classes: int
    pixel_max: float
    mean: float
    std: float
    notes: str = ""
    files: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        # the default repr would print four large arrays
        return (f"Dataset(name={self.name!r}, train={tuple(self.train_images.shape)}, "
                f"test={tuple(self.test_images.shape)}, n_classes={self.n_classes}, "
                f"pixel_max={self.pixel_max}, mean={self.mean:.4f}, std={self.std:.4f})")


@dataclass(frozen=True, eq=False)
class TextDataset:
    """A text-classification dataset as sparse features, with its official train/test split.

    train_X, test_X: ``scipy.sparse.csr_matrix``, float64, shape (N, p); row i is document i's feature
    vector (see ``features``), column j the token ``vocabulary[j]``.
    train_labels, test_labels: int64, shape (N,), values in [0, n_classes); label i is ``target_names[i]``.
    target_names: the class names, sorted.  vocabulary: the p tokens in column order (sorted).
    features: the feature option that built the matrices (``"counts_l2"`` or ``"tfidf_l2"``).
    notes: provenance, deviations and caching, to be reported with results.
    files: file name -> absolute path of every file read (the archive, its manifest, the feature cache).
    """

    name: str
    train_X: object  # scipy.sparse.csr_matrix (scipy is imported lazily by the loader)
    train_labels: np.ndarray
    test_X: object
    test_labels: np.ndarray
    target_names: list
    vocabulary: list
    features: str
    notes: str = ""
    files: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.target_names)

    @property
    def n_features(self) -> int:
        return int(self.train_X.shape[1])

    def __repr__(self) -> str:
        return (f"TextDataset(name={self.name!r}, features={self.features!r}, train={tuple(self.train_X.shape)}, "
                f"test={tuple(self.test_X.shape)}, nnz=({self.train_X.nnz}, {self.test_X.nnz}), "
                f"n_classes={self.n_classes})")
