"""History: the table of evaluation rows of one run (one row per evaluation, columns fixed by the first)."""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from typing import IO, Any, Callable, Iterator


class History:
    """Rows of metrics logged during a run.  ``last()``, ``column(name)``, ``to_csv(path)``."""

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self._columns: list[str] = []

    def append(self, row: dict[str, Any]) -> None:
        for key in row:
            if key not in self._columns:
                self._columns.append(key)
        self._rows.append(dict(row))

    @property
    def columns(self) -> list[str]:
        return list(self._columns)

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter([dict(r) for r in self._rows])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return dict(self._rows[i])

    def last(self) -> dict[str, Any]:
        """The most recent row (empty dict if nothing was logged)."""
        return dict(self._rows[-1]) if self._rows else {}

    def column(self, name: str) -> list[Any]:
        if name not in self._columns:
            raise KeyError(f"no column {name!r} in this history; columns: {', '.join(self._columns)}.")
        return [r.get(name, math.nan) for r in self._rows]

    def to_dicts(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._rows]

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """CSV text; written atomically to ``path`` (temporary file + rename) when given."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self._columns, restval="", lineterminator="\n")
        writer.writeheader()
        for row in self._rows:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
        text = buf.getvalue()
        if path is not None:
            atomic_write_text(path, text)
        return text

    def __repr__(self) -> str:
        return f"History({len(self)} rows, columns={self._columns})"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = False,
                 suffix: str = "") -> None:
    """Write ``path`` so that it is either the old file or the complete new one, never partial: ``write(fh)``
    fills a temporary file in the same folder (the usual permissions, flushed to disk), then ``os.replace``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", newline="")) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` so that ``path`` is either the old file or the complete new one, never partial."""
    atomic_write(path, lambda fh: fh.write(text))
