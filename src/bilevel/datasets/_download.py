"""Checksum verification (cached in-process) and downloads with mirror fallback, urllib only.

A download streams into a temporary file in the destination folder (same filesystem, so the final
``os.replace`` is atomic and concurrent loaders never see a partial file), is verified against the
pinned sha256 while it streams, and only then takes the final name.  Any failure removes the temporary
file and moves on to the next mirror.  When every mirror fails (or the download is interrupted), the
folders the download created are removed again if they are still empty: a failed download leaves no
trace, in particular no empty dataset folder that would look like a dataset to a later check.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

from ._base import DatasetError
from .catalog import FileSpec

__all__ = ["verify_file", "download_file", "clear_verification_cache", "TIMEOUT_S"]

TIMEOUT_S = 60.0  # per network operation (connect / each read), not per file
_CHUNK = 1 << 20
_USER_AGENT = "bilevel-datasets/0.1 (python urllib)"  # some hosts refuse urllib's default agent

# (real path, inode, size, mtime_ns) -> sha256 hex digest.  A rewritten or replaced file changes at
# least one of these, so a stale entry cannot vouch for new content; an unchanged one is not re-hashed.
_VERIFIED: dict[tuple[str, int, int, int], str] = {}
_LOCK = threading.Lock()


def clear_verification_cache() -> None:
    """Forget all cached checksum results (the next load re-hashes every file)."""
    with _LOCK:
        _VERIFIED.clear()


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _key(path: Path) -> tuple[str, int, int, int]:
    st = os.stat(path)
    return (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)


def verify_file(path: Path, spec: FileSpec) -> str:
    """Raise DatasetError unless the file's sha256 is the pinned one (or one of ``spec.repacks``); return it."""
    key = _key(path)
    with _LOCK:
        actual = _VERIFIED.get(key)
    if actual is None:
        actual = _sha256_of(path)
        with _LOCK:
            _VERIFIED[key] = actual
    if actual != spec.sha256 and actual not in spec.repacks:
        size = key[2]
        also = "".join(f"\n  or       sha256 {sha} (the project's offline repack)" for sha in spec.repacks)
        size_note = (f" (size {size} bytes, expected {spec.size}: truncated or extended)"
                     if spec.size is not None and size != spec.size else f" (size {size} bytes)")
        # a file that exists only in the project's offline copy cannot be downloaded again
        again = ("download it again (load with download=True)" if spec.downloadable
                 else "copy it again from the project's offline data (it cannot be downloaded)")
        raise DatasetError(
            f"Checksum mismatch for {spec.name!r} at {path}{size_note}:\n"
            f"  expected sha256 {spec.sha256}{also}\n"
            f"  actual   sha256 {actual}\n"
            f"The file is corrupted or incomplete and was not used.  Fix: delete it and {again}, "
            f"or point data_dir= / BILEVEL_DATA_DIR at a folder with a good copy.",
            what=f"checksum mismatch for {path}{size_note}: sha256 {actual[:16]}…, expected {spec.sha256[:16]}…",
            fix=f"delete the file and {again.split(' (')[0]}, or point --data-dir (data_dir=) / BILEVEL_DATA_DIR "
                f"at a folder with a good copy")
    return actual


def _fetch_one(url: str, dest: Path, spec: FileSpec) -> None:
    """Download url to dest via a temporary file, verifying sha256; raise on any failure."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if actual != spec.sha256:
            raise DatasetError(f"checksum mismatch (expected sha256 {spec.sha256}, got {actual}, "
                               f"{tmp.stat().st_size} bytes)")
        # mkstemp creates 0600 files; a cached dataset should be readable like any other download
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        # also on KeyboardInterrupt: never leave a partial file behind
        tmp.unlink(missing_ok=True)
        raise
    with _LOCK:
        _VERIFIED[_key(dest)] = actual


def _make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` (and missing parents); return the folders created, deepest first."""
    created = []
    path = folder
    while not path.exists() and path != path.parent:
        created.append(path)
        path = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    return created


def _remove_if_empty(created: list[Path]) -> None:
    """Remove the folders a failed download created, deepest first, stopping at the first non-empty one
    (a concurrent download may have put a file there)."""
    for path in created:
        try:
            path.rmdir()
        except OSError:
            return


def download_file(urls: list[str], dest: Path, spec: FileSpec) -> str:
    """Try each URL in turn until one yields the verified file at ``dest``; return the URL used.

    On failure nothing is left behind: no partial file and no folder that this call created."""
    try:
        created = _make_folder(dest.parent)
    except OSError as exc:
        raise DatasetError(f"Cannot create the folder {dest.parent} to download {spec.name!r} into: {exc}. "
                           f"Pass data_dir= or set BILEVEL_DATA_DIR to a writable folder.",
                           what=f"cannot create the folder {dest.parent} to download {spec.name!r} into ({exc})",
                           fix="point --data-dir (data_dir=) or BILEVEL_DATA_DIR at a writable folder") from exc
    failures = []
    try:
        for url in urls:
            try:
                _fetch_one(url, dest, spec)
                return url
            except (OSError, urllib.error.URLError, DatasetError, ValueError) as exc:
                # HTTPError and URLError are OSErrors; ValueError covers malformed URLs
                failures.append(f"  {url}: {exc}")
    finally:
        if not dest.is_file():  # failed or interrupted
            _remove_if_empty(created)
    tried = "\n".join(failures) if failures else "  (no download URL configured)"
    first = " ".join(failures[0].split()) if failures else "no download URL configured"
    raise DatasetError(
        f"Could not download {spec.name!r} into {dest.parent}; tried:\n{tried}\n"
        f"No file was written.  Fix: retry when the network is available, or get the file by other means, "
        f"put it in {dest.parent} and load with download=False (or point data_dir= / BILEVEL_DATA_DIR at a "
        f"folder that has it).",
        what=f"could not download {spec.name!r} into {dest.parent} ({len(failures)} mirror(s) tried; {first})",
        fix=f"retry when the network is available, or put the file in {dest.parent} by other means, or point "
            f"--data-dir (data_dir=) / BILEVEL_DATA_DIR at a folder that has it")
