"""Readers for the two on-disk formats, with format validation.

IDX (MNIST, Fashion-MNIST, KMNIST's IDX files), gzip-compressed::

    bytes 0-3   magic, big-endian: 0x00000803 (uint8, 3 dims: images) or 0x00000801 (uint8, 1 dim: labels)
    then        one big-endian uint32 per dimension (N, then 28, 28 for images)
    then        prod(dims) uint8 values, row-major, nothing after them

KMNIST ``.npz``: a NumPy archive holding the single array ``arr_0`` (uint8 images (N, 28, 28) or
uint8 labels (N,)).

Checksums are verified before these readers run; the checks here catch files whose checksum is not
pinned and make format errors readable instead of a cryptic reshape failure.
"""

from __future__ import annotations

import gzip
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ._base import DatasetError

__all__ = ["parse_idx", "read_idx_gz", "read_npz"]

_MAGIC = {0x00000801: 1, 0x00000803: 3}  # uint8 data with 1 or 3 dimensions


def parse_idx(data: bytes, *, source: str = "<bytes>", ndim: int | None = None) -> np.ndarray:
    """Decode uncompressed IDX bytes into a uint8 array; ``ndim`` (1 or 3) is the expected rank."""
    if len(data) < 4:
        raise DatasetError(f"{source}: not an IDX file (only {len(data)} bytes after decompression).")
    magic = int.from_bytes(data[:4], "big")
    if magic not in _MAGIC:
        raise DatasetError(
            f"{source}: bad IDX magic number 0x{magic:08x}; expected 0x00000803 (images) or "
            f"0x00000801 (labels).")
    rank = _MAGIC[magic]
    if ndim is not None and rank != ndim:
        want = "0x00000803 (images)" if ndim == 3 else "0x00000801 (labels)"
        raise DatasetError(f"{source}: IDX magic 0x{magic:08x} has {rank} dimension(s); expected {want}.")
    header = 4 + 4 * rank
    if len(data) < header:
        raise DatasetError(f"{source}: IDX header truncated ({len(data)} of {header} bytes).")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=rank, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise DatasetError(
            f"{source}: IDX data {what}: header says dims {dims} = {expected} bytes in all, file has "
            f"{len(data)} bytes.")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_gz(path: Path, *, ndim: int) -> np.ndarray:
    """Read a gzip-compressed IDX file (writable array, not a view of the decompressed bytes)."""
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DatasetError(f"{path}: cannot decompress ({exc}); the file is damaged: delete it and "
                           f"download it again.") from exc
    # bytearray: np.frombuffer on bytes gives a read-only array, which torch.from_numpy warns about
    return parse_idx(bytearray(data), source=str(path), ndim=ndim)


def read_npz(path: Path) -> np.ndarray:
    """Read the single array ``arr_0`` of an upstream KMNIST ``.npz`` archive."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            if keys != ["arr_0"]:
                raise DatasetError(f"{path}: expected a single array 'arr_0' in the archive, found {keys}.")
            array = archive["arr_0"]
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DatasetError(f"{path}: cannot read the .npz archive ({exc}).") from exc
    if array.dtype != np.uint8:
        raise DatasetError(f"{path}: expected uint8 data, found {array.dtype}.")
    return array
