"""``load_dataset`` and ``data_dir``: locating, verifying, downloading and reading the datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .._validation import suggest
from . import catalog
from ._base import Dataset, DatasetError
from ._download import download_file, verify_file
from ._idx import read_idx_gz, read_npz

__all__ = ["DATASETS", "data_dir", "load_dataset", "user_cache_root"]

DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist", "kmnist", "digits")

_TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "kmnist": "KMNIST", "20newsgroups": "20 Newsgroups"}
#: names under which users may look for the text data set, which has its own loader
_TEXT_ALIASES = ("20newsgroups", "newsgroups", "20_newsgroups", "20news")
_N_TRAIN, _N_TEST, _SIDE = 60000, 10000, 28
_IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
_K_FULL = "train-images-idx3-ubyte.gz"
_K_PARTIAL = "kmnist-train-imgs-first7011.npz"
_K_OTHERS = ("kmnist-train-labels.npz", "kmnist-test-imgs.npz", "kmnist-test-labels.npz")
_DIGITS_TRAIN = 1200


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The effective data root: ``path`` if given, else ``$BILEVEL_DATA_DIR``, else the per-user cache
    ``$XDG_CACHE_HOME/bilevel/datasets`` (``~/.cache/bilevel/datasets`` when XDG_CACHE_HOME is unset).

    Each dataset lives in a sub-folder of the root (``mnist/``, ``fashion_mnist/``, ``kmnist/``), the
    layout of the project's offline copy, so the root can point straight at it.  Nothing is created.
    """
    if path is None:
        path = os.environ.get("BILEVEL_DATA_DIR") or None
    if path is None:
        return user_cache_root()
    return Path(path).expanduser().absolute()


def user_cache_root() -> Path:
    """The per-user cache ``$XDG_CACHE_HOME/bilevel/datasets`` (``~/.cache/bilevel/datasets``), whatever
    ``$BILEVEL_DATA_DIR`` says: where derived files go when the data folder is not writable."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # the XDG spec says to ignore relative values
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return (base / "bilevel" / "datasets").expanduser().absolute()


_resolve_root = data_dir  # load_dataset's data_dir parameter shadows the function


def _offline() -> bool:
    return os.environ.get("BILEVEL_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off")


def _canonical(name: str) -> str:
    if not isinstance(name, str):
        raise DatasetError(f"load_dataset: name must be a string, got {type(name).__name__}.")
    key = name.strip().lower().replace("-", "_")
    key = {"fashionmnist": "fashion_mnist", "fashion": "fashion_mnist"}.get(key, key)
    if key in _TEXT_ALIASES:
        raise DatasetError(f"load_dataset: {name!r} is a text data set, not an image one; load it with "
                           f"bilevel.datasets.load_newsgroups(data_dir=..., features='counts_l2').")
    if key not in DATASETS:
        raise DatasetError(f"Unknown dataset {name!r}.{suggest(key, DATASETS)} Available: {', '.join(DATASETS)}.")
    return key


def _urls(name: str, filename: str) -> list[str]:
    # a mirror ending in "/" is a folder; any other is the full URL of the data set's one downloadable file
    return [base + filename if base.endswith("/") else base for base in catalog.MIRRORS.get(name, [])]


def _missing_error(name: str, root: Path, missing: list[str], reason: str,
                   hints: dict[str, str]) -> DatasetError:
    folder = root / name
    lines = []
    for filename in missing:
        urls = _urls(name, filename)
        where = " or ".join(urls) if urls else "(no download URL known)"
        lines.append(f"  {filename}: looked for {folder / filename}; get it from {where}")
        if filename in hints:
            lines.append(f"    ({hints[filename]})")
    return DatasetError(
        f"{_TITLES[name]}: {len(missing)} file(s) missing and downloading is disabled ({reason}):\n"
        + "\n".join(lines) +
        f"\nFix: either put the file(s) in {folder}{os.sep}, or point the loader at a data root whose "
        f"'{name}/' sub-folder has them: set BILEVEL_DATA_DIR=/path/to/root or pass data_dir='/path/to/root'. "
        f"To download instead, pass download=True (or unset BILEVEL_OFFLINE).",
        what=f"{_TITLES[name]}: {len(missing)} file(s) missing from {folder} and downloading is disabled ({reason})",
        fix=(f"put {'them' if len(missing) > 1 else missing[0]} there, point --data-dir (data_dir=) or "
             f"BILEVEL_DATA_DIR at a data root whose '{name}/' folder has {'them' if len(missing) > 1 else 'it'}, or "
             + ("allow downloads (unset BILEVEL_OFFLINE)" if reason.startswith("BILEVEL") else "pass download=True")))


def _ensure(name: str, root: Path, filenames: list[str], download: bool | None,
            hints: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """Verified local paths of ``filenames`` (downloading missing ones if allowed) and the download log."""
    folder = root / name
    specs = catalog.FILES[name]
    present = [f for f in filenames if (folder / f).is_file()]
    missing = [f for f in filenames if f not in present]
    allowed = download if download is not None else not _offline()
    if missing and not allowed:
        reason = "download=False" if download is False else "BILEVEL_OFFLINE is set"
        raise _missing_error(name, root, missing, reason, hints or {})
    for filename in present:  # check what is here before touching the network
        verify_file(folder / filename, specs[filename])
    log = []
    for filename in missing:
        url = download_file(_urls(name, filename), folder / filename, specs[filename])
        log.append(f"{filename} downloaded from {url}")
    return {f: str(folder / f) for f in filenames}, log


def _check(source: str, images: np.ndarray, labels: np.ndarray, n: int, n_classes: int = 10) -> None:
    if images.shape != (n, _SIDE, _SIDE):
        raise DatasetError(f"{source}: images have shape {images.shape}, expected ({n}, {_SIDE}, {_SIDE}).")
    if labels.shape != (n,):
        raise DatasetError(f"{source}: labels have shape {labels.shape}, expected ({n},).")
    if labels.size and int(labels.max()) >= n_classes:
        raise DatasetError(f"{source}: label {int(labels.max())} outside 0..{n_classes - 1}.")


def _notes(name: str, folder: Path, log: list[str], body: str) -> str:
    parts = [body, f"Files read from {folder}."]
    if log:
        parts.append("Downloaded: " + "; ".join(log) + ".")
    parts.append(catalog.CITATIONS[name])
    return " ".join(parts)


def _load_idx_family(name: str, root: Path, download: bool | None) -> Dataset:
    files, log = _ensure(name, root, list(_IDX_FILES), download)
    tr_x = read_idx_gz(Path(files[_IDX_FILES[0]]), ndim=3)
    tr_y = read_idx_gz(Path(files[_IDX_FILES[1]]), ndim=1)
    te_x = read_idx_gz(Path(files[_IDX_FILES[2]]), ndim=3)
    te_y = read_idx_gz(Path(files[_IDX_FILES[3]]), ndim=1)
    _check(f"{_TITLES[name]} training split", tr_x, tr_y, _N_TRAIN)
    _check(f"{_TITLES[name]} test split", te_x, te_y, _N_TEST)
    mean, std = catalog.NORMALISATION[name]
    body = f"{_TITLES[name]}, official split ({_N_TRAIN} train / {_N_TEST} test, 28x28 uint8)."
    return Dataset(name, tr_x, tr_y.astype(np.int64), te_x, te_y.astype(np.int64), 10, 255.0, mean, std,
                   _notes(name, root / name, log, body), files)


def _load_kmnist(root: Path, download: bool | None) -> Dataset:
    name, folder = "kmnist", root / "kmnist"
    full_here, partial_here = (folder / _K_FULL).is_file(), (folder / _K_PARTIAL).is_file()
    # Local files win; the partial copy is used only when the full file is absent and no download was
    # explicitly requested, so an explicit download=True never silently degrades to 7011 images.
    use_partial = partial_here and not full_here and download is not True
    train_file = _K_PARTIAL if use_partial else _K_FULL
    hints = {_K_FULL: f"or, offline, the project's partial copy {_K_PARTIAL} (the first "
                      f"{catalog.KMNIST_PARTIAL_COUNT} training images) in the same folder"}
    try:
        files, log = _ensure(name, root, [train_file, *_K_OTHERS], download, hints)
    except DatasetError as exc:
        if download is True and partial_here:
            raise DatasetError(f"{exc}\nThe partial offline copy {folder / _K_PARTIAL} is present: load with "
                               f"download=None or download=False to use it instead.") from exc
        raise
    tr_y = read_npz(Path(files["kmnist-train-labels.npz"]))
    te_x = read_npz(Path(files["kmnist-test-imgs.npz"]))
    te_y = read_npz(Path(files["kmnist-test-labels.npz"]))
    _check("KMNIST test split", te_x, te_y, _N_TEST)
    if tr_y.shape != (_N_TRAIN,):
        raise DatasetError(f"{files['kmnist-train-labels.npz']}: shape {tr_y.shape}, expected ({_N_TRAIN},).")
    if use_partial:
        tr_x = read_npz(Path(files[_K_PARTIAL]))
        n = catalog.KMNIST_PARTIAL_COUNT
        tr_y = tr_y[:n].copy()  # the partial images are the first n, in upstream order
        body = (f"KMNIST: only the first {n} training images are available locally ({_K_PARTIAL}, not an "
                f"official file); train_labels are the first {n} of the official {_N_TRAIN} to match. The "
                f"test split is complete. A disjoint 5000+5000 train/validation split from the training "
                f"images is impossible; the reference protocol (Yang, Gao & Yuan, ICLR 2025) uses training images "
                f"5000-{n - 1} plus 2989 test images as validation and the other 7011 test images as test. "
                f"Report this deviation with results. The full {_K_FULL} (from "
                f"{catalog.MIRRORS['kmnist'][0] if catalog.MIRRORS.get('kmnist') else 'the KMNIST site'}) "
                f"is used instead when present in the same folder (download=True fetches it).")
    else:
        tr_x = read_idx_gz(Path(files[_K_FULL]), ndim=3)
        n = _N_TRAIN
        body = (f"KMNIST, official split ({_N_TRAIN} train / {_N_TEST} test, 28x28 uint8); training images "
                f"from the upstream IDX file {_K_FULL}, everything else from the upstream .npz files.")
    _check("KMNIST training split", tr_x, tr_y, n)
    mean, std = catalog.NORMALISATION[name]
    return Dataset(name, tr_x, tr_y.astype(np.int64), te_x, te_y.astype(np.int64), 10, 255.0, mean, std,
                   _notes(name, folder, log, body), files)


def _load_digits() -> Dataset:
    try:
        import sklearn
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DatasetError("The 'digits' dataset is scikit-learn's bundled copy: install scikit-learn "
                           "(pip install scikit-learn).") from exc
    bunch = load_digits()
    images = np.asarray(bunch.images)
    if images.shape != (1797, 8, 8) or images.min() < 0 or images.max() > 16:
        raise DatasetError(f"sklearn.datasets.load_digits returned unexpected data: shape {images.shape}.")
    images = images.astype(np.uint8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    tr = images[:_DIGITS_TRAIN]
    scaled = tr / 16.0
    csv = Path(sklearn.__file__).parent / "datasets" / "data" / "digits.csv.gz"
    files = {csv.name: str(csv)} if csv.is_file() else {}
    notes = (f"digits: scikit-learn {sklearn.__version__}'s bundled load_digits() (1797 8x8 images, values "
             f"0-16), split deterministically: the first {_DIGITS_TRAIN} samples train, the remaining "
             f"{len(images) - _DIGITS_TRAIN} test; mean/std computed on the training split. "
             + catalog.CITATIONS["digits"])
    return Dataset("digits", tr.copy(), labels[:_DIGITS_TRAIN].copy(), images[_DIGITS_TRAIN:].copy(),
                   labels[_DIGITS_TRAIN:].copy(), 10, 16.0, float(scaled.mean()), float(scaled.std()), notes,
                   files)


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None,
                 download: bool | None = None) -> Dataset:
    """Load one of ``DATASETS`` with its official train/test split (see the package docstring).

    data_dir: the data root (default: ``$BILEVEL_DATA_DIR``, else the per-user cache; see ``data_dir()``).
    download: True to download missing files, False never to, None (default) to download missing files
    unless the environment variable BILEVEL_OFFLINE is set (to anything but "", 0, false, no, off).
    Every file is verified against its pinned sha256 before use.  Raises DatasetError.
    """
    if download not in (None, True, False):
        raise DatasetError(f"load_dataset: download must be True, False or None, got {download!r}.")
    key = _canonical(name)
    if key == "digits":
        return _load_digits()
    root = _resolve_root(data_dir)
    if key == "kmnist":
        return _load_kmnist(root, download)
    return _load_idx_family(key, root, download)
