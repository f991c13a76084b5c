"""bilevel.datasets.load_newsgroups: the real offline archive (shapes, class counts, nnz, unit rows; skipped
when ../shared/data lacks it), and on small synthetic archives: the features against scikit-learn, row
order and labels, the on-disk cache (reused, rebuilt when damaged), checksums, the MANIFEST check, unsafe
members (``../escape``), offline errors and downloads from a loopback server.

The full build (≈ 5 s on one core) happens once per module, into a temporary cache."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from bilevel.datasets import MIRRORS, DatasetError, TextDataset, load_dataset, load_newsgroups, newsgroups
from bilevel.datasets.catalog import FILES, NEWSGROUPS_REPACK_SHA256, FileSpec
from conftest import SHARED_DATA, needs_shared_data, shared_data_missing

NAME, ARCHIVE, MANIFEST = "20newsgroups", "20news-bydate.tar.gz", "MANIFEST.tsv.gz"
needs_news = needs_shared_data(NAME)

# measured on the project's offline archive (scikit-learn 1.9 vectorisers; the same vocabulary as
# fetch_20newsgroups_vectorized's documented 130107 columns)
N_FEATURES = 130107
NNZ = {"train": 1787565, "test": 1107956}


@pytest.fixture(autouse=True)
def _clean_env(tmp_path, monkeypatch):
    for var in ("BILEVEL_DATA_DIR", "BILEVEL_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    # the per-user cache fallback goes to a temporary folder, never to the real ~/.cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def _files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


# ---------------------------------------------------------------- the real archive (built once)

@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The offline archive's counts_l2 features, built once into a temporary cache."""
    if shared_data_missing(NAME):
        pytest.skip(shared_data_missing(NAME))
    cache = tmp_path_factory.mktemp("news_cache")
    return load_newsgroups(SHARED_DATA, download=False, cache_dir=cache), cache


def _manifest_counts() -> dict[str, Counter]:
    counts = {"train": Counter(), "test": Counter()}
    with gzip.open(SHARED_DATA / NAME / MANIFEST, "rt", encoding="utf-8") as fh:
        assert fh.readline().split("\t")[:3] == ["path", "sha256", "bytes"]
        for line in fh:
            split, group, _ = line.split("\t")[0].split("/")
            counts[split.removeprefix("20news-bydate-")][group] += 1
    return counts


@needs_news
def test_full_shapes_counts_nnz_and_norms(full):
    ds, cache = full
    assert isinstance(ds, TextDataset) and ds.features == "counts_l2" and ds.n_classes == 20
    counts = _manifest_counts()
    assert sorted(counts["train"]) == sorted(counts["test"]) == ds.target_names == sorted(ds.target_names)
    for split, X, labels, n in (("train", ds.train_X, ds.train_labels, 11314),
                                ("test", ds.test_X, ds.test_labels, 7532)):
        assert isinstance(X, sp.csr_matrix) and X.dtype == np.float64 and X.has_sorted_indices
        assert X.shape == (n, N_FEATURES) and X.nnz == NNZ[split]
        assert labels.dtype == np.int64 and labels.shape == (n,) and set(labels.tolist()) == set(range(20))
        per_class = np.bincount(labels, minlength=20)
        assert per_class.tolist() == [counts[split][g] for g in ds.target_names] and per_class.sum() == n
        assert np.all(np.diff(labels) >= 0)  # rows sorted by group
        norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
        np.testing.assert_allclose(norms, 1.0, rtol=0, atol=1e-12)
        assert X.data.min() > 0
    assert len(ds.vocabulary) == N_FEATURES and ds.vocabulary == sorted(set(ds.vocabulary))
    assert ds.files[ARCHIVE] == str(SHARED_DATA / NAME / ARCHIVE)
    assert ds.files[MANIFEST] == str(SHARED_DATA / NAME / MANIFEST)
    assert "repack" in ds.notes and "checked against" in ds.notes and "Lang" in ds.notes
    assert [p.name for p in cache.iterdir()] == [f"20news-bydate-counts_l2-{NEWSGROUPS_REPACK_SHA256[:16]}-v1.npz"]


@needs_news
def test_full_first_document_row_by_hand(full):
    """Row 0 is the training document of the first group with the smallest file id, tokenised here
    without scikit-learn: lowercased latin-1 text, runs of >= 2 word characters, counts / l2 norm."""
    ds, _ = full
    group = ds.target_names[0]
    with tarfile.open(SHARED_DATA / NAME / ARCHIVE, "r:gz") as tar:
        ids = [int(m.name.rsplit("/", 1)[1]) for m in tar.getmembers()
               if m.isfile() and m.name.startswith(f"20news-bydate-train/{group}/")]
        data = tar.extractfile(f"20news-bydate-train/{group}/{min(ids)}").read()
    counts = Counter(re.findall(r"\b\w\w+\b", data.decode("latin-1").lower()))
    column = {token: j for j, token in enumerate(ds.vocabulary)}
    expected = np.zeros(N_FEATURES)
    for token, c in counts.items():
        expected[column[token]] = c
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(ds.train_X[0].toarray().ravel(), expected, rtol=1e-14, atol=0)
    assert ds.train_labels[0] == 0


@needs_news
def test_full_second_load_uses_the_cache(full, monkeypatch):
    ds, cache = full

    def fail(*args, **kwargs):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(newsgroups, "_vectorise", fail)
    monkeypatch.setattr(newsgroups, "_read_documents", fail)
    again = load_newsgroups(SHARED_DATA, download=False, cache_dir=cache)
    for a, b in ((ds.train_X, again.train_X), (ds.test_X, again.test_X)):
        assert a.shape == b.shape and (a != b).nnz == 0
    np.testing.assert_array_equal(ds.train_labels, again.train_labels)
    np.testing.assert_array_equal(ds.test_labels, again.test_labels)
    assert again.vocabulary == ds.vocabulary and again.target_names == ds.target_names
    assert "read from the cache" in again.notes
    # the cache is keyed by the feature option: tf-idf is not served from the counts file
    with pytest.raises(AssertionError, match="cache was not used"):
        load_newsgroups(SHARED_DATA, download=False, features="tfidf_l2", cache_dir=cache)


@needs_news
def test_full_corrupted_archive_rejected_by_checksum(tmp_path):
    folder = tmp_path / NAME
    folder.mkdir()
    data = bytearray((SHARED_DATA / NAME / ARCHIVE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / ARCHIVE).write_bytes(bytes(data))
    with pytest.raises(DatasetError) as info:
        load_newsgroups(tmp_path, download=False, cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert "Checksum mismatch" in msg and str(folder / ARCHIVE) in msg
    assert NEWSGROUPS_REPACK_SHA256 in msg and FILES[NAME][ARCHIVE].sha256 in msg
    assert info.value.what.startswith(f"checksum mismatch for {folder / ARCHIVE}")
    assert not (tmp_path / "cache").exists()


@needs_news
def test_pinned_newsgroups_checksums_match_the_shared_files():
    for filename in (ARCHIVE, MANIFEST):
        spec = FILES[NAME][filename]
        digest = hashlib.sha256((SHARED_DATA / NAME / filename).read_bytes()).hexdigest()
        assert digest == spec.sha256 or digest in spec.repacks
    assert FILES[NAME][ARCHIVE].sha256 == "8f1b2514ca22a5ade8fbb9cfa5727df95fa587f4c87b786e15c759fa66d95610"


# ---------------------------------------------------------------- small synthetic archives

GROUPS = ("alt.one", "comp.two", "sci.three")
# file ids of different lengths: numeric order (9 < 10 < 101) differs from string order
IDS = {"train": (101, 9, 10), "test": (7, 12)}


def _text(split: str, group: str, doc_id: int) -> bytes:
    words = {"alt.one": b"Alpha alpha BETA", "comp.two": b"gamma Gamma delta_1 caf\xe9", "sci.three": b"Epsilon 42 x"}
    return words[group] + f" {split} doc{doc_id} shared I a".encode() + (b" unseenword" if split == "test" else b"")


def _members(extra=()) -> list:
    members = [(f"20news-bydate-{split}/", None) for split in ("train", "test")]
    for split in ("train", "test"):
        for group in GROUPS:
            members.append((f"20news-bydate-{split}/{group}/", None))
            members += [(f"20news-bydate-{split}/{group}/{i}", _text(split, group, i)) for i in IDS[split]]
    return members + list(extra)


def _tar_gz(members) -> bytes:
    """A gzip tar of ``members``: (name, bytes) files, (name, None) folders, (name, ("sym"|"lnk", target))."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(content, tuple):
                info.type = tarfile.SYMTYPE if content[0] == "sym" else tarfile.LNKTYPE
                info.linkname = content[1]
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _manifest(members, tamper: str | None = None) -> bytes:
    lines = ["path\tsha256\tbytes\tprovenance"]
    for name, content in members:
        if isinstance(content, bytes):
            sha = hashlib.sha256(content).hexdigest()
            lines.append(f"{name}\t{'0' * 64 if name == tamper else sha}\t{len(content)}\tsynthetic")
    return gzip.compress(("\n".join(lines) + "\n").encode())


def _install(root: Path, monkeypatch, members=None, *, repack: bool = False, manifest: bytes | None = None,
             place: bool = True) -> bytes:
    """Write a synthetic archive under root/20newsgroups/ and pin its sha256 (as upstream's, or as the
    repack with ``repack``); the expected split sizes follow it.  Returns the archive's bytes."""
    members = _members() if members is None else members
    data = _tar_gz(members)
    sha = hashlib.sha256(data).hexdigest()
    spec = FileSpec(ARCHIVE, "f" * 64, repacks=(sha,)) if repack else FileSpec(ARCHIVE, sha)
    monkeypatch.setitem(FILES[NAME], ARCHIVE, spec)
    monkeypatch.setattr(newsgroups, "EXPECTED_DOCUMENTS",
                        {split: len(GROUPS) * len(IDS[split]) for split in ("train", "test")})
    monkeypatch.setattr(newsgroups, "N_GROUPS", len(GROUPS))
    folder = root / NAME
    if place:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ARCHIVE).write_bytes(data)
    if manifest is not None:
        (folder / MANIFEST).write_bytes(manifest)
        monkeypatch.setitem(FILES[NAME], MANIFEST, FileSpec(MANIFEST, hashlib.sha256(manifest).hexdigest(),
                                                            downloadable=False))
    return data


def _expected_rows(split: str) -> list[tuple[int, bytes]]:
    """(label, bytes) in the documented order: group names sorted, then numeric file id."""
    return [(g, _text(split, group, i)) for g, group in enumerate(sorted(GROUPS)) for i in sorted(IDS[split])]


@pytest.mark.parametrize("features", ["counts_l2", "tfidf_l2"])
def test_synthetic_features_match_sklearn(tmp_path, monkeypatch, features):
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
    from sklearn.preprocessing import normalize

    _install(tmp_path, monkeypatch)
    ds = load_newsgroups(tmp_path, download=False, features=features, cache_dir=tmp_path / "cache")
    rows = {split: _expected_rows(split) for split in ("train", "test")}
    texts = {split: [b.decode("latin-1") for _, b in rows[split]] for split in rows}
    vec = CountVectorizer() if features == "counts_l2" else TfidfVectorizer()
    ref_train, ref_test = vec.fit_transform(texts["train"]), vec.transform(texts["test"])
    if features == "counts_l2":
        ref_train, ref_test = normalize(ref_train), normalize(ref_test)
    np.testing.assert_allclose(ds.train_X.toarray(), ref_train.toarray(), rtol=1e-15, atol=0)
    np.testing.assert_allclose(ds.test_X.toarray(), ref_test.toarray(), rtol=1e-15, atol=0)
    assert ds.vocabulary == list(vec.get_feature_names_out())
    assert ds.target_names == sorted(GROUPS)
    assert ds.train_labels.tolist() == [g for g, _ in rows["train"]]
    assert ds.test_labels.tolist() == [g for g, _ in rows["test"]]
    # latin-1 decoding and lowercasing; single characters and test-only words are not tokens
    assert "café" in ds.vocabulary and "alpha" in ds.vocabulary and "Alpha" not in ds.vocabulary
    assert "unseenword" not in ds.vocabulary and "i" not in ds.vocabulary and "42" in ds.vocabulary
    if features == "counts_l2":  # row 0: alt.one/9, "alpha" twice among 5 distinct tokens: 2 / sqrt(4 + 4)
        assert ds.train_X[0, ds.vocabulary.index("alpha")] == pytest.approx(2 / np.sqrt(8), rel=1e-15)
    assert "upstream's" in ds.notes and MANIFEST not in ds.files


def test_synthetic_cache_reused_keyed_and_rebuilt_when_damaged(tmp_path, monkeypatch):
    _install(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    first = load_newsgroups(tmp_path, download=False, cache_dir=cache)
    (path,) = cache.iterdir()
    assert path.name.startswith("20news-bydate-counts_l2-") and first.files[path.name] == str(path)
    assert "built from the archive and cached" in first.notes
    assert not [p for p in cache.iterdir() if p.name.endswith(".part")]  # written atomically, no leftovers

    calls = []

    def counted(real):
        return lambda *a, **k: calls.append(real.__name__) or real(*a, **k)

    monkeypatch.setattr(newsgroups, "_vectorise", counted(newsgroups._vectorise))
    monkeypatch.setattr(newsgroups, "_read_documents", counted(newsgroups._read_documents))
    second = load_newsgroups(tmp_path, download=False, cache_dir=cache)
    assert calls == [] and "read from the cache" in second.notes
    assert (second.train_X != first.train_X).nnz == 0 and second.vocabulary == first.vocabulary

    # another option: another file, built
    load_newsgroups(tmp_path, download=False, features="tfidf_l2", cache_dir=cache)
    assert calls == ["_read_documents", "_vectorise"] and len(list(cache.iterdir())) == 2

    good = path.read_bytes()
    damages = {"flip a data byte": good[:len(good) // 2] + bytes([good[len(good) // 2] ^ 1]) + good[len(good) // 2 + 1:],
               "truncate": good[:len(good) // 3],
               "empty": b"",
               "not a zip": b"garbage" * 100}
    for how, damaged in damages.items():
        path.write_bytes(damaged)
        calls.clear()
        rebuilt = load_newsgroups(tmp_path, download=False, cache_dir=cache)
        assert calls == ["_read_documents", "_vectorise"], how
        assert f"The cache file {path} was not used" in rebuilt.notes, how
        assert (rebuilt.train_X != first.train_X).nnz == 0 and (rebuilt.test_X != first.test_X).nnz == 0, how
        assert path.read_bytes() != damaged, how  # replaced by a good file
        calls.clear()
        load_newsgroups(tmp_path, download=False, cache_dir=cache)
        assert calls == [], how


def test_synthetic_cache_for_another_archive_is_not_trusted(tmp_path, monkeypatch):
    """A cache file whose name matches but whose content was built from another archive is rebuilt."""
    _install(tmp_path / "a", monkeypatch)
    load_newsgroups(tmp_path / "a", download=False, cache_dir=tmp_path / "cache_a")
    (built,) = (tmp_path / "cache_a").iterdir()
    other = _members()
    assert other[3][0] == "20news-bydate-train/alt.one/101"
    other[3] = (other[3][0], b"completely different words here")
    data = _install(tmp_path / "b", monkeypatch, other)
    target = tmp_path / "cache_b" / newsgroups._cache_name(hashlib.sha256(data).hexdigest(), "counts_l2")
    target.parent.mkdir()
    shutil.copyfile(built, target)  # right name, wrong archive inside
    ds = load_newsgroups(tmp_path / "b", download=False, cache_dir=tmp_path / "cache_b")
    assert "was not used (it describes" in ds.notes and "completely" in ds.vocabulary


def test_cache_beside_the_archive_else_per_user(tmp_path, monkeypatch):
    _install(tmp_path / "root", monkeypatch)
    ds = load_newsgroups(tmp_path / "root", download=False)
    (path,) = (tmp_path / "root" / NAME / "cache").iterdir()
    assert ds.files[path.name] == str(path)
    # a data folder marked read-only (permission bits honoured even for root): the per-user cache
    _install(tmp_path / "ro", monkeypatch)
    folder = tmp_path / "ro" / NAME
    folder.chmod(0o555)
    try:
        ds = load_newsgroups(tmp_path / "ro", download=False)
    finally:
        folder.chmod(0o755)
    assert not (folder / "cache").exists()
    (path,) = (tmp_path / "xdg" / "bilevel" / "datasets" / NAME / "cache").iterdir()
    assert ds.files[path.name] == str(path)
    # nowhere writable: the features are still returned, and the notes say they were not cached
    _install(tmp_path / "blocked", monkeypatch)
    (tmp_path / "blocked" / NAME / "cache").write_text("a file where the cache folder would go")
    (tmp_path / "xdg2").mkdir(mode=0o555)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg2"))
    try:
        ds = load_newsgroups(tmp_path / "blocked", download=False)
    finally:
        (tmp_path / "xdg2").chmod(0o755)
    assert os.listdir(tmp_path / "xdg2") == []
    assert "not cached" in ds.notes and ds.train_X.shape[0] == 9


@pytest.mark.parametrize("member", [
    ("../escape", b"outside"),
    ("20news-bydate-train/../../escape", b"outside"),
    ("/tmp/escape-absolute", b"outside"),
    ("20news-bydate-train/alt.one/500", ("sym", "../../../escape")),
    ("20news-bydate-train/alt.one/501", ("lnk", "../escape")),
])
def test_crafted_member_is_refused_and_writes_nothing(tmp_path, monkeypatch, member):
    root = tmp_path / "root"
    _install(root, monkeypatch, _members(extra=[member]))
    before = _files_under(tmp_path)
    with pytest.raises(DatasetError) as info:
        load_newsgroups(root, download=False, cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert repr(member[0]) in msg and str(root / NAME / ARCHIVE) in msg and "not used" in msg
    assert "\n" not in info.value.what + info.value.fix
    assert _files_under(tmp_path) == before  # no escape, no cache, nothing
    assert not Path("/tmp/escape-absolute").exists()


def test_layout_errors_name_the_archive(tmp_path, monkeypatch):
    members = _members()
    _install(tmp_path, monkeypatch, members[:-1])  # one test document short
    with pytest.raises(DatasetError, match=r"holds 5 test documents in 3 groups, expected 6 in 3"):
        load_newsgroups(tmp_path, download=False, cache_dir=tmp_path / "cache")
    _install(tmp_path, monkeypatch, members + [(members[-1][0], b"again")])
    with pytest.raises(DatasetError, match="appears twice"):
        load_newsgroups(tmp_path, download=False, cache_dir=tmp_path / "cache")
    (tmp_path / NAME / ARCHIVE).write_bytes(b"not gzip")
    monkeypatch.setitem(FILES[NAME], ARCHIVE, FileSpec(ARCHIVE, hashlib.sha256(b"not gzip").hexdigest()))
    with pytest.raises(DatasetError, match="cannot read .* as a gzip tar archive"):
        load_newsgroups(tmp_path, download=False, cache_dir=tmp_path / "cache")
    # members that are not documents (a README) are ignored and counted in the notes
    _install(tmp_path, monkeypatch, members + [("README", b"hello")])
    assert "1 archive member(s) that are not documents ignored" in load_newsgroups(
        tmp_path, download=False, cache_dir=tmp_path / "cache2").notes


def test_repack_documents_checked_against_the_manifest(tmp_path, monkeypatch):
    members = _members()
    _install(tmp_path, monkeypatch, repack=True, manifest=_manifest(members))
    ds = load_newsgroups(tmp_path, download=False, cache_dir=tmp_path / "c1")
    assert "repack" in ds.notes and "sha256 and size of each" in ds.notes and MANIFEST in ds.files
    bad = members[5][0]
    _install(tmp_path, monkeypatch, repack=True, manifest=_manifest(members, tamper=bad))
    with pytest.raises(DatasetError) as info:
        load_newsgroups(tmp_path, download=False, cache_dir=tmp_path / "c2")
    assert repr(bad) in str(info.value) and str(tmp_path / NAME / MANIFEST) in str(info.value)
    assert not (tmp_path / "c2").exists()
    # a listing with a document the archive lacks
    _install(tmp_path, monkeypatch, repack=True, manifest=_manifest(members + [("20news-bydate-test/x/1", b"z")]))
    with pytest.raises(DatasetError, match="list different documents"):
        load_newsgroups(tmp_path, download=False, cache_dir=tmp_path / "c3")
    # the manifest is itself pinned
    (tmp_path / NAME / MANIFEST).write_bytes(_manifest(members))
    with pytest.raises(DatasetError, match="Checksum mismatch .*MANIFEST") as info:
        load_newsgroups(tmp_path, download=False, cache_dir=tmp_path / "c4")
    assert "copy it again" in str(info.value)
    # no manifest: loaded, with a note
    (tmp_path / NAME / MANIFEST).unlink()
    assert "absent" in load_newsgroups(tmp_path, download=False, cache_dir=tmp_path / "c5").notes


def test_synthetic_corrupted_archive_rejected(tmp_path, monkeypatch):
    data = _install(tmp_path, monkeypatch)
    path = tmp_path / NAME / ARCHIVE
    path.write_bytes(data[:40] + bytes([data[40] ^ 0xFF]) + data[41:])
    with pytest.raises(DatasetError, match="Checksum mismatch") as info:
        load_newsgroups(tmp_path, download=False, cache_dir=tmp_path / "cache")
    assert str(path) in str(info.value) and "delete it and download it again" in str(info.value)


@pytest.mark.parametrize("how", ["env", "argument"])
def test_offline_and_missing_is_a_clear_error(tmp_path, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv("BILEVEL_OFFLINE", "1")
    with pytest.raises(DatasetError) as info:
        load_newsgroups(tmp_path, download=None if how == "env" else False)
    msg, err = str(info.value), info.value
    assert str(tmp_path / NAME / ARCHIVE) in msg and "BILEVEL_DATA_DIR" in msg and "data_dir=" in msg
    assert "https://ndownloader.figshare.com/files/5975967" in msg
    assert "http://qwone.com/~jason/20Newsgroups/20news-bydate.tar.gz" in msg and MANIFEST in msg
    assert ("BILEVEL_OFFLINE" if how == "env" else "download=False") in msg
    assert err.what.startswith("20 Newsgroups: 1 file(s) missing") and "\n" not in err.what + err.fix
    assert os.listdir(tmp_path) == []  # nothing created


def test_download_from_loopback_by_full_url_and_folder(tmp_path, server, monkeypatch):
    data = _install(tmp_path / "data", monkeypatch, place=False)
    (server.root / "files").mkdir()
    (server.root / "files" / "5975967").write_bytes(data)  # a figshare-style URL: no file name
    monkeypatch.setitem(MIRRORS, NAME, [server.url + "files/404", server.url + "files/5975967"])
    ds = load_newsgroups(tmp_path / "data")
    path = tmp_path / "data" / NAME / ARCHIVE
    assert path.read_bytes() == data and ds.files[ARCHIVE] == str(path)
    assert f"downloaded from {server.url}files/5975967" in ds.notes
    assert sorted(os.listdir(path.parent)) == [ARCHIVE, "cache"]  # no temporary file; cache beside it
    assert ds.train_X.shape == (9, len(ds.vocabulary))
    # a folder mirror gets the file name appended; a corrupted download leaves nothing
    (server.root / "mirror").mkdir()
    (server.root / "mirror" / ARCHIVE).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    monkeypatch.setitem(MIRRORS, NAME, [server.url + "mirror/"])
    with pytest.raises(DatasetError) as info:
        load_newsgroups(tmp_path / "fresh", download=True)
    assert f"{server.url}mirror/{ARCHIVE}" in str(info.value) and "checksum" in str(info.value)
    assert not (tmp_path / "fresh").exists()


def test_bad_arguments_one_line_errors():
    cases = [(dict(features="tfidf"), r"unknown features 'tfidf'\. Did you mean 'tfidf_l2'"),
             (dict(features="counts"), "Available: counts_l2, tfidf_l2"),
             (dict(download="yes"), "download must be True, False or None, got 'yes'")]
    for kwargs, pattern in cases:
        with pytest.raises(DatasetError, match=pattern) as info:
            load_newsgroups(**kwargs)
        assert info.value.what and info.value.fix and "\n" not in str(info.value)
    with pytest.raises(DatasetError, match="text data set.*load_newsgroups"):
        load_dataset("20newsgroups")
