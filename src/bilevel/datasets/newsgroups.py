"""20 Newsgroups, "bydate" split (J. Rennie), as sparse document features: ``load_newsgroups``.

The data: 18846 Usenet posts from 20 groups, split by posting date into 11314 training and 7532 test
documents (K. Lang, "NewsWeeder: Learning to Filter Netnews", ICML 1995; the bydate split and archive
by J. Rennie).  No explicit licence; long redistributed for research.

Files (in ``<data root>/20newsgroups/``): ``20news-bydate.tar.gz``, a gzip tar whose regular members
``20news-bydate-{train,test}/<group>/<file id>`` are the documents.  Two archives are accepted:
upstream's (sha256 8f1b2514…, downloaded from figshare or qwone.com when missing and allowed) and the
project's offline repack (sha256 665b4b52…, same documents, other bytes; 73 documents with non-ASCII
bytes may differ from upstream in a few characters), whose ``MANIFEST.tsv.gz`` (path, sha256, bytes,
provenance per document) is then checked document by document when it is present.  The archive is
streamed: no member is ever extracted, so a crafted member name (``../escape``, an absolute path, a
link) cannot write anywhere; such members are refused.

Documents are decoded as latin-1 (every byte is a character, as scikit-learn's ``fetch_20newsgroups``
does) and kept whole (headers, quotes and signatures included).  Rows are ordered by (group name, numeric
file id) within each split; the label of a document is the index of its group in the sorted group names
(``target_names``).

Features, for a document d with token counts c_d ∈ ℕ^p over the vocabulary (the p distinct tokens of the
training split, sorted; scikit-learn's CountVectorizer defaults: lowercase, tokens = runs of ≥ 2 word
characters, regex ``(?u)\\b\\w\\w+\\b``; no stop words, no pruning):

- ``"counts_l2"`` (default): x_d = c_d / ‖c_d‖₂, no idf (``fetch_20newsgroups_vectorized``'s features):
  train (11314, 130107), test (7532, 130107).
- ``"tfidf_l2"``: tf-idf, x_d = (c_d ⊙ w) / ‖c_d ⊙ w‖₂ with w_j = ln((1 + n) / (1 + df_j)) + 1, n the
  number of training documents and df_j how many contain token j (TfidfVectorizer's defaults, idf fitted
  on the training split).

Test tokens absent from the training vocabulary are dropped; a document without any known token would be
an all-zero row (none is, in either split).

Cache: the first build (reading the archive, ≈ 5 s of vectorising on one core) is saved as one ``.npz``
(the CSR arrays ``data, indices, indptr`` of each split, the labels, the vocabulary, a metadata record and
a sha256 of all of them), named by the feature option and the archive's sha256, in ``<data
root>/20newsgroups/cache/`` when that folder can be written, else in the per-user cache
(``~/.cache/bilevel/datasets/20newsgroups/cache``), or in ``cache_dir=``.  It is written to a temporary
file renamed into place (``os.replace``), so a reader never sees a partial file; a cache file that cannot
be read, fails its sha256 or describes another archive or option is rebuilt, never trusted.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import stat
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from .._validation import suggest
from . import catalog
from ._base import DatasetError, TextDataset
from ._download import verify_file
from ._load import _ensure, _resolve_root, user_cache_root

__all__ = ["load_newsgroups", "FEATURES", "NAME", "ARCHIVE", "MANIFEST", "EXPECTED_DOCUMENTS", "N_GROUPS",
           "TOKEN_PATTERN", "CACHE_FORMAT"]

NAME = "20newsgroups"
ARCHIVE = "20news-bydate.tar.gz"
MANIFEST = "MANIFEST.tsv.gz"
FEATURES: tuple[str, ...] = ("counts_l2", "tfidf_l2")
#: documents per split and groups in the bydate archive (checked on every build)
EXPECTED_DOCUMENTS: dict[str, int] = {"train": 11314, "test": 7532}
N_GROUPS = 20
TOKEN_PATTERN = r"(?u)\b\w\w+\b"
#: bumped whenever the cached arrays would change for the same archive and option
CACHE_FORMAT = 1

_DOC = re.compile(r"20news-bydate-(train|test)/([^/]+)/([0-9]+)")
_SPLITS = ("train", "test")
_FIX_ARCHIVE = ("delete the archive and load with download=True to fetch upstream's, or copy the project's "
                f"offline {ARCHIVE} and {MANIFEST} again")


class _CacheInvalid(Exception):
    """A cache file that must not be used (unreadable, checksum mismatch, other archive or option)."""


def _error(what: str, fix: str) -> DatasetError:
    return DatasetError(f"{what}. Fix: {fix}.", what=what, fix=fix)


# ---------------------------------------------------------------- reading the archive

def _member_name(archive: Path, member: tarfile.TarInfo) -> str:
    """The member's path, refusing anything that could resolve outside a folder or is not a plain file
    or folder (the archive is never extracted, but such a member has no business in it)."""
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    parts = PurePosixPath(name).parts
    if name.startswith("/") or "\\" in name or ".." in parts or (parts and ":" in parts[0]):
        raise _error(f"20 Newsgroups: unsafe member name {member.name!r} in {archive} (absolute or leading "
                     f"outside the archive's folder); the archive was not used", _FIX_ARCHIVE)
    if not (member.isfile() or member.isdir()):
        raise _error(f"20 Newsgroups: member {member.name!r} in {archive} is a link or special file, not a "
                     f"document; the archive was not used", _FIX_ARCHIVE)
    return name


def _read_documents(archive: Path) -> tuple[dict[str, list[tuple[str, int, str, bytes]]], list[str]]:
    """Stream the archive (``tarfile`` mode ``r|gz``, nothing extracted): per split, the documents as
    (group, file id, member path, bytes), and the names of the members that are not documents."""
    docs: dict[str, list[tuple[str, int, str, bytes]]] = {split: [] for split in _SPLITS}
    seen: set[str] = set()
    ignored: list[str] = []
    try:
        with tarfile.open(archive, mode="r|gz") as tar:
            for member in tar:
                name = _member_name(archive, member)
                if member.isdir():
                    continue
                match = _DOC.fullmatch(name)
                if match is None:
                    ignored.append(name)
                    continue
                if name in seen:
                    raise _error(f"20 Newsgroups: document {name!r} appears twice in {archive}", _FIX_ARCHIVE)
                seen.add(name)
                handle = tar.extractfile(member)
                docs[match[1]].append((match[2], int(match[3]), name, handle.read()))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise _error(f"20 Newsgroups: cannot read {archive} as a gzip tar archive ({exc})", _FIX_ARCHIVE) from exc
    for split in _SPLITS:
        docs[split].sort(key=lambda doc: (doc[0], doc[1]))
    return docs, ignored


def _check_layout(archive: Path, docs) -> list[str]:
    """The groups (sorted) after checking the split sizes and that both splits have the same groups."""
    groups = {split: sorted({doc[0] for doc in docs[split]}) for split in _SPLITS}
    for split in _SPLITS:
        if len(docs[split]) != EXPECTED_DOCUMENTS[split] or len(groups[split]) != N_GROUPS:
            raise _error(f"20 Newsgroups: {archive} holds {len(docs[split])} {split} documents in "
                         f"{len(groups[split])} groups, expected {EXPECTED_DOCUMENTS[split]} in {N_GROUPS} "
                         f"(members 20news-bydate-{split}/<group>/<id>)", _FIX_ARCHIVE)
    if groups["train"] != groups["test"]:
        only = sorted(set(groups["train"]) ^ set(groups["test"]))
        raise _error(f"20 Newsgroups: the train and test splits of {archive} have different groups "
                     f"(in one only: {', '.join(only)})", _FIX_ARCHIVE)
    return groups["train"]


def _read_manifest(path: Path) -> dict[str, tuple[str, int]]:
    """path -> (sha256, bytes) from the tab-separated listing (header: path, sha256, bytes, ...)."""
    try:
        with gzip.open(path, "rt", encoding="utf-8", newline="\n") as fh:
            header = fh.readline().rstrip("\n").split("\t")
            if header[:3] != ["path", "sha256", "bytes"]:
                raise ValueError(f"header {header[:3]}, expected ['path', 'sha256', 'bytes']")
            listing = {}
            for line in fh:
                fields = line.rstrip("\n").split("\t")
                listing[fields[0]] = (fields[1], int(fields[2]))
    except (OSError, EOFError, ValueError, IndexError) as exc:
        raise _error(f"20 Newsgroups: cannot parse {path} ({exc})",
                     f"copy the project's offline {MANIFEST} again") from exc
    return listing


def _check_manifest(archive: Path, manifest: Path, docs, exact: bool) -> None:
    """Every document listed, nothing else; with ``exact`` (the repack the listing describes) each
    document's sha256 and size as listed too."""
    listing = _read_manifest(manifest)
    names = {doc[2] for split in _SPLITS for doc in docs[split]}
    missing, extra = sorted(set(listing) - names), sorted(names - set(listing))
    if missing or extra:
        first = (missing or extra)[0]
        raise _error(f"20 Newsgroups: {archive} and {manifest} list different documents ({len(missing)} listed but "
                     f"absent, {len(extra)} present but not listed, e.g. {first!r})", _FIX_ARCHIVE)
    if not exact:
        return
    for split in _SPLITS:
        for _, _, name, data in docs[split]:
            sha, size = listing[name]
            actual = hashlib.sha256(data).hexdigest()
            if actual != sha or len(data) != size:
                raise _error(f"20 Newsgroups: document {name!r} in {archive} does not match {manifest}: "
                             f"sha256 {actual[:16]}… and {len(data)} bytes, listed {sha[:16]}… and {size} bytes",
                             _FIX_ARCHIVE)


# ---------------------------------------------------------------- features

def _vectorise(train_texts: list[str], test_texts: list[str], features: str):
    """(train CSR, test CSR, vocabulary) with scikit-learn's vectorisers, vocabulary fitted on train.

    The options are spelled out (they are CountVectorizer's defaults) so that a change of defaults in a
    later scikit-learn cannot change the features silently."""
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
    from sklearn.preprocessing import normalize

    options = dict(lowercase=True, token_pattern=TOKEN_PATTERN, strip_accents=None, analyzer="word",
                   ngram_range=(1, 1), stop_words=None, min_df=1, max_df=1.0, max_features=None,
                   binary=False, dtype=np.float64)
    if features == "counts_l2":
        vectoriser = CountVectorizer(**options)
    else:
        vectoriser = TfidfVectorizer(**options, norm="l2", use_idf=True, smooth_idf=True, sublinear_tf=False)
    train = vectoriser.fit_transform(train_texts).tocsr()
    test = vectoriser.transform(test_texts).tocsr()
    if features == "counts_l2":
        train = normalize(train, norm="l2", copy=False)
        test = normalize(test, norm="l2", copy=False)
    for matrix in (train, test):
        matrix.sort_indices()
    return train, test, [str(token) for token in vectoriser.get_feature_names_out()]


# ---------------------------------------------------------------- on-disk cache

def _cache_name(archive_sha256: str, features: str) -> str:
    return f"20news-bydate-{features}-{archive_sha256[:16]}-v{CACHE_FORMAT}.npz"


def _cache_dirs(folder: Path, cache_dir) -> list[Path]:
    if cache_dir is not None:
        return [Path(cache_dir).expanduser().absolute()]
    dirs = [folder / "cache", user_cache_root() / NAME / "cache"]
    return dirs if dirs[0] != dirs[1] else dirs[:1]


def _writable(directory: Path) -> bool:
    """Whether ``directory`` (or, while it does not exist, its nearest existing parent) may be written.

    Permission bits are honoured even for root, who could write anyway: a folder marked read-only (the
    project's shared offline copy) must not collect cache files."""
    path = directory
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return path.is_dir() and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) and os.access(path, os.W_OK)


def _text_array(items: list[str]) -> np.ndarray:
    # tokens and group names never contain a newline (tokens are word characters)
    return np.frombuffer("\n".join(items).encode("utf-8"), dtype=np.uint8)


def _text_list(array: np.ndarray) -> list[str]:
    text = array.tobytes().decode("utf-8")
    return text.split("\n") if text else []


def _digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for key in sorted(arrays):
        if key == "digest":
            continue
        arr = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}|{arr.dtype.str}|{arr.shape}|".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def _pack(archive_sha256: str, features: str, train, test, train_labels, test_labels, vocabulary,
          target_names) -> dict[str, np.ndarray]:
    meta = {"format": CACHE_FORMAT, "dataset": NAME, "archive_sha256": archive_sha256, "features": features}
    arrays = {"meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8),
              "vocabulary": _text_array(vocabulary), "target_names": _text_array(target_names)}
    for split, matrix, labels in (("train", train, train_labels), ("test", test, test_labels)):
        arrays[f"{split}_data"] = matrix.data
        arrays[f"{split}_indices"] = matrix.indices
        arrays[f"{split}_indptr"] = matrix.indptr
        arrays[f"{split}_shape"] = np.array(matrix.shape, dtype=np.int64)
        arrays[f"{split}_labels"] = labels
    arrays["digest"] = np.frombuffer(_digest(arrays).encode(), dtype=np.uint8)
    return arrays


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez into a temporary file beside ``path``, renamed into place only once complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_cache(path: Path, archive_sha256: str, features: str):
    """(train, test, train_labels, test_labels, vocabulary, target_names) or _CacheInvalid."""
    import scipy.sparse as sp

    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as exc:  # a damaged zip or array header can raise almost anything: never trust it
        raise _CacheInvalid(f"unreadable ({type(exc).__name__}: {exc})") from exc
    if "digest" not in arrays or arrays["digest"].tobytes().decode("ascii", "replace") != _digest(arrays):
        raise _CacheInvalid("its content does not match its recorded sha256")
    try:
        meta = json.loads(arrays["meta"].tobytes().decode())
        expected = {"format": CACHE_FORMAT, "dataset": NAME, "archive_sha256": archive_sha256, "features": features}
        if meta != expected:
            raise _CacheInvalid(f"it describes {meta}, not {expected}")
        out = []
        for split in _SPLITS:
            shape = tuple(int(n) for n in arrays[f"{split}_shape"])
            matrix = sp.csr_matrix((arrays[f"{split}_data"], arrays[f"{split}_indices"],
                                    arrays[f"{split}_indptr"]), shape=shape)
            matrix.check_format(full_check=True)
            out.append(matrix)
        labels = [arrays[f"{split}_labels"] for split in _SPLITS]
        vocabulary, target_names = _text_list(arrays["vocabulary"]), _text_list(arrays["target_names"])
        for matrix, lab in zip(out, labels):
            if (matrix.dtype != np.float64 or lab.dtype != np.int64 or lab.shape != (matrix.shape[0],)
                    or matrix.shape[1] != len(vocabulary)
                    or (lab.size and (lab.min() < 0 or lab.max() >= len(target_names)))):
                raise _CacheInvalid("its arrays are inconsistent")
    except _CacheInvalid:
        raise
    except (KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise _CacheInvalid(f"malformed ({type(exc).__name__}: {exc})") from exc
    return out[0], out[1], labels[0], labels[1], vocabulary, target_names


# ---------------------------------------------------------------- the loader

def load_newsgroups(data_dir: str | os.PathLike | None = None, download: bool | None = None, *,
                    features: str = "counts_l2", cache_dir: str | os.PathLike | None = None) -> TextDataset:
    """20 Newsgroups (bydate): train (11314 × p) and test (7532 × p) CSR features, p = 130107 tokens.

    data_dir: the data root holding ``20newsgroups/`` (default ``$BILEVEL_DATA_DIR``, else the per-user
    cache; see ``bilevel.datasets.data_dir``).  download: True to download a missing archive, False never,
    None (default) unless BILEVEL_OFFLINE is set.  features: ``"counts_l2"`` (token counts scaled to unit
    ℓ2 norm per document, no idf) or ``"tfidf_l2"`` (tf-idf, unit ℓ2 norm); see the module docstring for
    the formulas, tokenisation and row order.  cache_dir: where the built features are cached (default:
    beside the archive if writable, else the per-user cache).

    The archive is verified against its pinned sha256 (upstream's, or the project's repack, whose
    documents are then checked against ``MANIFEST.tsv.gz``) on every call; the features come from the
    cache when it holds a valid file for this archive and option (a second load takes about a second),
    else they are built (seconds: reading 14 MB of gzip and vectorising 18846 documents) and cached.
    Returns a ``TextDataset``; raises ``DatasetError`` with the file concerned and the fix.
    """
    if download not in (None, True, False):
        raise _error(f"load_newsgroups: download must be True, False or None, got {download!r}",
                     "pass download=True, download=False or leave it unset")
    if features not in FEATURES:
        raise _error(f"load_newsgroups: unknown features {features!r}.{suggest(str(features), FEATURES)} "
                     f"Available: {', '.join(FEATURES)}", f"pass features='{FEATURES[0]}' or '{FEATURES[1]}'")
    root = _resolve_root(data_dir)
    folder = root / NAME
    hints = {ARCHIVE: f"or, offline, the project's repack of it with its {MANIFEST} in the same folder"}
    paths, log = _ensure(NAME, root, [ARCHIVE], download, hints)
    archive = Path(paths[ARCHIVE])
    archive_sha256 = verify_file(archive, catalog.FILES[NAME][ARCHIVE])  # already hashed: cached
    repack = archive_sha256 in catalog.FILES[NAME][ARCHIVE].repacks
    files = {ARCHIVE: str(archive)}
    notes = [f"20 Newsgroups, bydate split: {EXPECTED_DOCUMENTS['train']} train / {EXPECTED_DOCUMENTS['test']} "
             f"test documents in {N_GROUPS} groups, decoded as latin-1; rows sorted by (group, file id); "
             f"features {features!r} ("
             + ("token counts scaled to unit l2 norm, no idf" if features == "counts_l2"
                else "tf-idf with smooth idf from the training split, unit l2 norm")
             + ", vocabulary from the training split only)."]
    notes.append(f"Archive {archive} (sha256 {archive_sha256[:16]}…): "
                 + ("the project's offline repack, not byte-identical to upstream; 73 documents with non-ASCII "
                    "bytes may differ from upstream in a few characters." if repack else "upstream's."))
    if log:
        notes.append("Downloaded: " + "; ".join(log) + ".")

    name = _cache_name(archive_sha256, features)
    dirs = _cache_dirs(folder, cache_dir)
    for directory in dirs:
        path = directory / name
        if not path.is_file():
            continue
        try:
            train, test, train_labels, test_labels, vocabulary, target_names = _read_cache(
                path, archive_sha256, features)
        except _CacheInvalid as exc:
            try:
                path.unlink()
                removed = "removed"
            except OSError:
                removed = "left in place"
            notes.append(f"The cache file {path} was not used ({exc}); {removed}.")
            continue
        files[name] = str(path)
        notes.append(f"Features read from the cache {path}.")
        notes.append(catalog.CITATIONS[NAME])
        return TextDataset(NAME, train, train_labels, test, test_labels, target_names, vocabulary, features,
                           " ".join(notes), files)

    docs, ignored = _read_documents(archive)
    target_names = _check_layout(archive, docs)
    manifest = folder / MANIFEST
    if manifest.is_file():
        verify_file(manifest, catalog.FILES[NAME][MANIFEST])
        _check_manifest(archive, manifest, docs, exact=repack)
        files[MANIFEST] = str(manifest)
        notes.append(f"Documents checked against {manifest} ("
                     + ("sha256 and size of each" if repack else "the same paths") + ").")
    elif repack:
        notes.append(f"{MANIFEST} absent: the documents were not checked one by one (the archive's sha256 was).")
    if ignored:
        notes.append(f"{len(ignored)} archive member(s) that are not documents ignored (e.g. {ignored[0]!r}).")
    index = {group: i for i, group in enumerate(target_names)}
    texts = {split: [doc[3].decode("latin-1") for doc in docs[split]] for split in _SPLITS}
    labels = {split: np.array([index[doc[0]] for doc in docs[split]], dtype=np.int64) for split in _SPLITS}
    del docs
    train, test, vocabulary = _vectorise(texts["train"], texts["test"], features)
    del texts
    arrays = _pack(archive_sha256, features, train, test, labels["train"], labels["test"], vocabulary,
                   target_names)
    failures = []
    for directory in dirs:
        path = directory / name
        if cache_dir is None and not _writable(directory):
            failures.append(f"{directory}: not writable")
            continue
        try:
            _write_cache(path, arrays)
        except OSError as exc:
            failures.append(f"{directory}: {exc}")
            continue
        files[name] = str(path)
        notes.append(f"Features built from the archive and cached in {path}.")
        break
    else:
        notes.append("Features built from the archive but not cached (" + "; ".join(failures)
                     + "): pass cache_dir= a writable folder to keep them.")
    notes.append(catalog.CITATIONS[NAME])
    return TextDataset(NAME, train, labels["train"], test, labels["test"], target_names, vocabulary, features,
                       " ".join(notes), files)
