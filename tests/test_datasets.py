"""bilevel.datasets: parsing of the real offline copies, checksum verification, offline errors, downloads
(from a loopback HTTP server only), data-root resolution and the bundled digits dataset."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from bilevel import datasets
from bilevel.datasets import DATASETS, MIRRORS, Dataset, DatasetError, _download, data_dir, load_dataset
from bilevel.datasets._idx import parse_idx, read_idx_gz
from bilevel.datasets.catalog import FILES, FileSpec
from conftest import SHARED_DATA as DATA
from conftest import _Server, needs_shared_data, shared_data_missing

# the files themselves, present and matching their pinned sha256 (an empty or partial folder skips)
needs_data = needs_shared_data()

IDX = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
       "t10k-labels-idx1-ubyte.gz")
KMNIST_NPZ = ("kmnist-train-labels.npz", "kmnist-test-imgs.npz", "kmnist-test-labels.npz")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("BILEVEL_DATA_DIR", "BILEVEL_OFFLINE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def shared():
    """Each shared dataset loaded once (explicit data_dir, no downloads)."""
    if shared_data_missing():
        pytest.skip(shared_data_missing())
    return {name: load_dataset(name, data_dir=DATA, download=False)
            for name in ("mnist", "fashion_mnist", "kmnist")}


def _link_tree(dest: Path, name: str, files, copy=()) -> Path:
    """dest/name/ holding symlinks to the shared files (``copy``: real copies, to be damaged)."""
    folder = dest / name
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f).symlink_to(DATA / name / f)
    for f in copy:
        shutil.copyfile(DATA / name / f, folder / f)
    return folder




# ---------------------------------------------------------------- the shared files parse correctly

@needs_data
@pytest.mark.parametrize("name,mean,std", [("mnist", 0.1307, 0.3081), ("fashion_mnist", 0.5, 0.5)])
def test_shared_mnist_family(shared, name, mean, std):
    ds = shared[name]
    assert isinstance(ds, Dataset) and ds.name == name
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)
    assert ds.train_labels.shape == (60000,) and ds.test_labels.shape == (10000,)
    assert ds.train_images.dtype == np.uint8 and ds.test_images.dtype == np.uint8
    assert ds.train_labels.dtype == np.int64 and ds.test_labels.dtype == np.int64
    for labels in (ds.train_labels, ds.test_labels):
        assert set(np.unique(labels)) == set(range(10))
    assert ds.train_images.min() == 0 and ds.train_images.max() == 255
    assert (ds.n_classes, ds.pixel_max, ds.mean, ds.std) == (10, 255.0, mean, std)
    assert ds.files == {f: str(DATA / name / f) for f in IDX}
    # the arrays are writable (torch.from_numpy warns on read-only ones)
    assert ds.train_images.flags.writeable
    if name == "mnist":  # known first labels of the official files
        assert ds.train_labels[:5].tolist() == [5, 0, 4, 1, 9]
        assert ds.test_labels[:5].tolist() == [7, 2, 1, 0, 4]
        assert abs(ds.train_images.mean() / 255 - 0.1307) < 1e-3


@needs_data
def test_shared_kmnist_is_partial_with_note(shared):
    ds = shared["kmnist"]
    assert ds.train_images.shape == (7011, 28, 28) and ds.train_labels.shape == (7011,)
    assert ds.test_images.shape == (10000, 28, 28) and ds.test_labels.shape == (10000,)
    assert ds.train_labels.dtype == np.int64 and ds.train_images.dtype == np.uint8
    assert ds.train_labels.min() == 0 and ds.train_labels.max() == 9 and ds.train_images.max() == 255
    full_labels = np.load(DATA / "kmnist" / "kmnist-train-labels.npz")["arr_0"]
    np.testing.assert_array_equal(ds.train_labels, full_labels[:7011])
    assert "7011" in ds.notes and "first" in ds.notes
    assert (ds.mean, ds.std) == (0.1918, 0.3483)
    assert set(ds.files) == {"kmnist-train-imgs-first7011.npz", *KMNIST_NPZ}
    assert "train-images-idx3-ubyte.gz" not in ds.files


@needs_data
def test_pinned_checksums_match_the_shared_files():
    for name in ("mnist", "fashion_mnist", "kmnist"):
        for f in sorted(os.listdir(DATA / name)):
            if f in FILES[name]:
                spec = FILES[name][f]
                data = (DATA / name / f).read_bytes()
                assert hashlib.sha256(data).hexdigest() == spec.sha256, f
                assert spec.size is None or spec.size == len(data), f
                if spec.md5:
                    assert hashlib.md5(data).hexdigest() == spec.md5, f


@needs_data
def test_verification_is_cached_per_path_size_mtime(tmp_path, monkeypatch):
    calls = []
    real = _download._sha256_of
    monkeypatch.setattr(_download, "_sha256_of", lambda p: calls.append(p) or real(p))
    datasets.clear_verification_cache()
    folder = _link_tree(tmp_path, "mnist", IDX[:3], copy=IDX[3:])
    load_dataset("mnist", data_dir=tmp_path, download=False)
    assert len(calls) == 4
    load_dataset("mnist", data_dir=tmp_path, download=False)
    assert len(calls) == 4  # nothing re-hashed
    # the symlinks resolve to the shared files, so loading those directly hashes only the one file
    # that was copied rather than linked
    load_dataset("mnist", data_dir=DATA, download=False)
    assert calls[4:] == [DATA / "mnist" / IDX[3]]
    # a modified file (new mtime) is hashed again, and its corruption is caught
    target = folder / IDX[3]
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(DatasetError, match="[Cc]hecksum"):
        load_dataset("mnist", data_dir=tmp_path, download=False)
    assert len(calls) == 6


# ---------------------------------------------------------------- corrupted and missing files

@needs_data
@pytest.mark.parametrize("damage", ["flip", "truncate"])
@pytest.mark.parametrize("download", [False, None])
def test_corrupted_file_is_rejected(tmp_path, monkeypatch, damage, download):
    monkeypatch.setitem(MIRRORS, "mnist", [])  # never reach the network
    folder = _link_tree(tmp_path, "mnist", IDX[:3], copy=IDX[3:])
    target = folder / IDX[3]
    data = target.read_bytes()
    target.write_bytes(data[:-100] if damage == "truncate" else data[:50] + bytes([data[50] ^ 1]) + data[51:])
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", data_dir=tmp_path, download=download)
    msg = str(info.value)
    assert "checksum" in msg.lower() and IDX[3] in msg and str(target) in msg
    assert FILES["mnist"][IDX[3]].sha256 in msg
    assert hashlib.sha256(target.read_bytes()).hexdigest() in msg
    assert "delete it" in msg
    assert target.read_bytes() != data  # left in place for the user to inspect, not silently replaced


@needs_data
def test_corrupted_kmnist_npz_is_rejected(tmp_path):
    folder = _link_tree(tmp_path, "kmnist", ["kmnist-train-imgs-first7011.npz", *KMNIST_NPZ[:2]],
                        copy=KMNIST_NPZ[2:])
    target = folder / KMNIST_NPZ[2]
    target.write_bytes(target.read_bytes()[:1000])
    with pytest.raises(DatasetError, match="kmnist-test-labels.npz") as info:
        load_dataset("kmnist", data_dir=tmp_path, download=False)
    assert "checksum" in str(info.value).lower()


@pytest.mark.parametrize("how", ["env", "argument"])
def test_missing_files_offline(tmp_path, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv("BILEVEL_OFFLINE", "1")
        download = None
    else:
        download = False
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion_mnist", data_dir=tmp_path, download=download)
    msg = str(info.value)
    for f in IDX:
        assert str(tmp_path / "fashion_mnist" / f) in msg
        assert MIRRORS["fashion_mnist"][0] + f in msg
    assert "BILEVEL_DATA_DIR" in msg and "data_dir=" in msg
    assert ("BILEVEL_OFFLINE" if how == "env" else "download=False") in msg
    assert not (tmp_path / "fashion_mnist").exists()  # nothing created


@needs_data
def test_missing_single_file_is_named(tmp_path):
    _link_tree(tmp_path, "mnist", IDX[:3])
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    msg = str(info.value)
    assert "1 file(s) missing" in msg and IDX[3] in msg and IDX[0] not in msg


def test_missing_kmnist_mentions_partial_copy(tmp_path):
    with pytest.raises(DatasetError) as info:
        load_dataset("kmnist", data_dir=tmp_path, download=False)
    msg = str(info.value)
    assert "train-images-idx3-ubyte.gz" in msg and "kmnist-train-imgs-first7011.npz" in msg
    assert str(tmp_path / "kmnist") in msg


# ---------------------------------------------------------------- downloads from a loopback server

def _serve(server: Path | _Server, name: str, files, corrupt=()):
    folder = server.root / name
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copyfile(DATA / name / f, folder / f)
    for f in corrupt:
        data = bytearray((DATA / name / f).read_bytes())
        data[-1] ^= 0xFF
        (folder / f).write_bytes(bytes(data))
    return server.url + name + "/"


@needs_data
@pytest.mark.parametrize("download", [True, None])
def test_download_from_loopback(tmp_path, server, monkeypatch, download):
    monkeypatch.setitem(MIRRORS, "mnist", [_serve(server, "mnist", IDX[1::2])])
    dest = _link_tree(tmp_path / "data", "mnist", IDX[0::2])
    ds = load_dataset("mnist", data_dir=tmp_path / "data", download=download)
    for f in IDX[1::2]:
        path = dest / f
        assert path.is_file() and not path.is_symlink()
        assert path.read_bytes() == (DATA / "mnist" / f).read_bytes()
        assert ds.files[f] == str(path)
        assert f"{f} downloaded from {MIRRORS['mnist'][0]}{f}" in ds.notes
    assert ds.train_labels.shape == (60000,) and ds.test_labels[:3].tolist() == [7, 2, 1]
    assert sorted(os.listdir(dest)) == sorted(IDX)  # no temporary files left
    # a second load finds the files locally
    monkeypatch.setitem(MIRRORS, "mnist", [])
    assert "downloaded" not in load_dataset("mnist", data_dir=tmp_path / "data", download=False).notes


@needs_data
def test_download_corrupted_leaves_nothing(tmp_path, server, monkeypatch):
    monkeypatch.setitem(MIRRORS, "mnist", [_serve(server, "mnist", [], corrupt=IDX[3:])])
    dest = _link_tree(tmp_path, "mnist", IDX[:3])
    before = sorted(os.listdir(dest))
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", data_dir=tmp_path, download=True)
    msg = str(info.value)
    assert IDX[3] in msg and "checksum" in msg.lower() and MIRRORS["mnist"][0] + IDX[3] in msg
    assert sorted(os.listdir(dest)) == before  # neither the final nor a temporary file


@needs_data
def test_download_falls_back_to_second_mirror(tmp_path, server, monkeypatch):
    good = _serve(server, "mnist", IDX[3:])
    dead = server.url + "nothing-here/"
    monkeypatch.setitem(MIRRORS, "mnist", [dead, good])
    dest = _link_tree(tmp_path, "mnist", IDX[:3])
    ds = load_dataset("mnist", data_dir=tmp_path, download=True)
    assert f"downloaded from {good}{IDX[3]}" in ds.notes
    assert (dest / IDX[3]).read_bytes() == (DATA / "mnist" / IDX[3]).read_bytes()
    assert sorted(os.listdir(dest)) == sorted(IDX)


def test_download_all_mirrors_fail_lists_them(tmp_path, server, monkeypatch):
    urls = [server.url + "a/", server.url + "b/"]
    monkeypatch.setitem(MIRRORS, "fashion_mnist", urls)
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion_mnist", data_dir=tmp_path, download=True)
    msg = str(info.value)
    assert all(u + IDX[0] in msg for u in urls) and "404" in msg
    assert not (tmp_path / "fashion_mnist").exists()  # a failed download leaves no (empty) dataset folder
    assert info.value.what and info.value.fix and "\n" not in info.value.what + info.value.fix


@pytest.mark.parametrize("error", [OSError("Network is unreachable"), KeyboardInterrupt()])
def test_failed_download_creates_no_folder(tmp_path, monkeypatch, error):
    """No network (every fetch raises) or Ctrl-C mid-download: no dataset folder and no data root appear,
    so a later look at the data root cannot mistake an empty folder for a dataset."""
    import urllib.error

    monkeypatch.setenv("BILEVEL_OFFLINE", "0")  # downloads allowed
    calls = []

    def no_network(url, dest, spec):
        calls.append(url)
        assert dest.parent.is_dir()  # the temporary file goes beside its final name
        raise urllib.error.URLError(error) if isinstance(error, OSError) else error

    monkeypatch.setattr(_download, "_fetch_one", no_network)
    root = tmp_path / "new" / "root"
    with pytest.raises(DatasetError if isinstance(error, OSError) else KeyboardInterrupt) as info:
        load_dataset("mnist", data_dir=root)
    assert calls == [u + IDX[0] for u in MIRRORS["mnist"]] if isinstance(error, OSError) else len(calls) == 1
    assert not (root / "mnist").exists() and not (tmp_path / "new").exists()
    assert os.listdir(tmp_path) == []
    if isinstance(error, OSError):
        msg = str(info.value)
        assert "Could not download" in msg and "Network is unreachable" in msg and "No file was written" in msg
        one_line = f"{info.value.what} — {info.value.fix}"
        assert "could not download 'train-images-idx3-ubyte.gz'" in one_line and "--data-dir" in one_line


def test_failed_download_keeps_an_existing_folder(tmp_path, monkeypatch):
    """A folder that was there before the download is the user's: it stays, with what it held."""
    monkeypatch.setattr(_download, "_fetch_one", lambda url, dest, spec: (_ for _ in ()).throw(OSError("down")))
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError):
        load_dataset("mnist", data_dir=tmp_path, download=True)
    assert os.listdir(tmp_path / "mnist") == ["notes.txt"]
    (tmp_path / "mnist" / "notes.txt").unlink()
    with pytest.raises(DatasetError):
        load_dataset("mnist", data_dir=tmp_path, download=True)
    assert (tmp_path / "mnist").is_dir()  # it existed before this call: not removed even when empty


def test_offline_and_checksum_errors_have_one_line_forms(tmp_path, monkeypatch):
    monkeypatch.setenv("BILEVEL_OFFLINE", "1")
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert info.value.what == f"MNIST: 4 file(s) missing from {tmp_path / 'mnist'} and downloading is disabled " \
                              "(BILEVEL_OFFLINE is set)"
    assert "unset BILEVEL_OFFLINE" in info.value.fix and "--data-dir" in info.value.fix
    folder = tmp_path / "mnist"
    folder.mkdir()
    for f in IDX:
        (folder / f).write_bytes(b"not the real file")
    datasets.clear_verification_cache()
    with pytest.raises(DatasetError, match="Checksum mismatch") as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert info.value.what.startswith(f"checksum mismatch for {folder / IDX[0]}")
    assert "delete the file" in info.value.fix and "\n" not in info.value.what + info.value.fix


@needs_data
def test_kmnist_explicit_download_does_not_fall_back_silently(tmp_path, server, monkeypatch):
    monkeypatch.setitem(MIRRORS, "kmnist", [server.url])  # serves nothing: 404
    _link_tree(tmp_path, "kmnist", ["kmnist-train-imgs-first7011.npz", *KMNIST_NPZ])
    with pytest.raises(DatasetError) as info:
        load_dataset("kmnist", data_dir=tmp_path, download=True)
    assert "train-images-idx3-ubyte.gz" in str(info.value) and "download=None" in str(info.value)
    # default: the local partial copy is preferred, no network needed
    monkeypatch.setitem(MIRRORS, "kmnist", [])
    assert load_dataset("kmnist", data_dir=tmp_path).train_images.shape[0] == 7011


@needs_data
def test_kmnist_full_training_file_is_preferred(tmp_path, server, monkeypatch):
    # A synthetic stand-in for the upstream 60000-image IDX file, pinned by monkeypatching its checksum.
    images = np.zeros((60000, 28, 28), np.uint8)
    images[:, 0, 0] = np.arange(60000) % 256
    payload = gzip.compress((0x803).to_bytes(4, "big") + np.array([60000, 28, 28], ">u4").tobytes()
                            + images.tobytes(), compresslevel=1)
    name = "train-images-idx3-ubyte.gz"
    monkeypatch.setitem(FILES["kmnist"], name, FileSpec(name, hashlib.sha256(payload).hexdigest()))
    (server.root / name).write_bytes(payload)
    monkeypatch.setitem(MIRRORS, "kmnist", [server.url])
    folder = _link_tree(tmp_path, "kmnist", ["kmnist-train-imgs-first7011.npz", *KMNIST_NPZ])
    ds = load_dataset("kmnist", data_dir=tmp_path, download=True)
    assert ds.train_images.shape == (60000, 28, 28) and ds.train_labels.shape == (60000,)
    np.testing.assert_array_equal(ds.train_images[:, 0, 0], images[:, 0, 0])
    assert name in ds.files and "kmnist-train-imgs-first7011.npz" not in ds.files
    assert "7011" not in ds.notes.split("Files read")[0]
    # now local: also used by default, without any network
    monkeypatch.setitem(MIRRORS, "kmnist", [])
    ds2 = load_dataset("kmnist", data_dir=tmp_path, download=False)
    assert ds2.files[name] == str(folder / name) and ds2.train_images.shape[0] == 60000


# ---------------------------------------------------------------- data root resolution

def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_dir() == tmp_path / "home" / ".cache" / "bilevel" / "datasets"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "bilevel" / "datasets"
    monkeypatch.setenv("BILEVEL_DATA_DIR", str(tmp_path / "env"))
    assert data_dir() == tmp_path / "env"
    assert data_dir(tmp_path / "arg") == tmp_path / "arg"


@needs_data
def test_env_var_is_honoured_and_argument_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("BILEVEL_OFFLINE", "1")
    monkeypatch.setenv("BILEVEL_DATA_DIR", str(DATA))
    ds = load_dataset("kmnist")
    assert ds.files["kmnist-test-labels.npz"] == str(DATA / "kmnist" / "kmnist-test-labels.npz")
    # the argument wins over the variable, in both directions
    with pytest.raises(DatasetError, match=str(tmp_path / "kmnist")):
        load_dataset("kmnist", data_dir=tmp_path)
    monkeypatch.setenv("BILEVEL_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetError):
        load_dataset("kmnist")
    assert load_dataset("kmnist", data_dir=DATA).test_images.shape == (10000, 28, 28)


# ---------------------------------------------------------------- digits, names, IDX format checks

def test_digits_needs_no_files(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    monkeypatch.setenv("BILEVEL_OFFLINE", "1")
    monkeypatch.setenv("BILEVEL_DATA_DIR", str(tmp_path / "nothing"))
    ds = load_dataset("digits")
    assert ds.train_images.shape == (1200, 8, 8) and ds.test_images.shape == (597, 8, 8)
    assert ds.train_labels.shape == (1200,) and ds.test_labels.shape == (597,)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int64
    assert ds.pixel_max == 16.0 and ds.n_classes == 10 and ds.train_images.max() == 16
    ref = load_digits()
    np.testing.assert_array_equal(ds.train_images, ref.images[:1200])
    np.testing.assert_array_equal(ds.test_labels, ref.target[1200:])
    scaled = ref.images[:1200] / 16
    assert ds.mean == pytest.approx(scaled.mean()) and ds.std == pytest.approx(scaled.std())
    assert not (tmp_path / "nothing").exists()


def test_names_and_arguments():
    assert DATASETS == ("mnist", "fashion_mnist", "kmnist", "digits")
    with pytest.raises(DatasetError, match="Did you mean 'mnist'"):
        load_dataset("mnsit")
    with pytest.raises(DatasetError, match="download"):
        load_dataset("mnist", download="yes")


def _idx(magic: int, dims, payload: bytes) -> bytes:
    return magic.to_bytes(4, "big") + np.array(dims, ">u4").tobytes() + payload


def test_idx_parser_validates(tmp_path):
    arr = parse_idx(_idx(0x803, [2, 3, 4], bytes(range(24))), ndim=3)
    assert arr.shape == (2, 3, 4) and arr.dtype == np.uint8 and arr[1, 2, 3] == 23
    assert parse_idx(_idx(0x801, [3], b"\x01\x02\x09"), ndim=1).tolist() == [1, 2, 9]
    with pytest.raises(DatasetError, match="magic"):
        parse_idx(_idx(0x802, [3], b"abc"))
    with pytest.raises(DatasetError, match="expected 0x00000803"):
        parse_idx(_idx(0x801, [3], b"abc"), ndim=3)
    with pytest.raises(DatasetError, match="truncated"):
        parse_idx(_idx(0x803, [2, 3, 4], bytes(23)))
    with pytest.raises(DatasetError, match="trailing"):
        parse_idx(_idx(0x801, [3], bytes(4)))
    with pytest.raises(DatasetError, match="header truncated"):
        parse_idx((0x803).to_bytes(4, "big") + bytes(4))
    bad = tmp_path / "x.gz"
    bad.write_bytes(gzip.compress(_idx(0x801, [100], bytes(100)))[:-12])
    with pytest.raises(DatasetError, match="decompress"):
        read_idx_gz(bad, ndim=1)
