"""Results store: one folder per run, ``OUT/runs/<run_id>/``, holding

- ``history.parquet`` (pyarrow) or ``history.csv`` when pyarrow is missing: the run's evaluation rows;
- ``meta.json``: the run specification, resolved options, seed, versions, git commit, machine, status,
  error text if it failed.

Both are written atomically (temporary file in the same folder, then ``os.replace``), the history first
and ``meta.json`` last: a run is complete exactly when its ``meta.json`` exists, so an interrupted run
(Ctrl-C, kill -9) leaves at most a stray temporary file, which the next sweep removes, and is redone.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import tempfile
from typing import Any, Iterator, Optional

from ..history import atomic_write_text

RUNS = "runs"
META = "meta.json"


def run_dir(out: str, run_id: str) -> str:
    return os.path.join(out, RUNS, run_id)


def have_parquet() -> bool:
    import importlib.util

    return importlib.util.find_spec("pyarrow") is not None


def write_history(folder: str, rows: list[dict], columns: list[str]) -> str:
    """Write the rows atomically; returns the file name used."""
    os.makedirs(folder, exist_ok=True)
    if have_parquet():
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({c: [_plain(r.get(c)) for r in rows] for c in columns})
        name = "history.parquet"
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=folder)
        os.close(fd)
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, os.path.join(folder, name))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return name
    lines = [",".join(columns)]
    for r in rows:
        lines.append(",".join("" if r.get(c) is None else repr(r.get(c)) if isinstance(r.get(c), float) else str(r.get(c)) for c in columns))
    atomic_write_text(os.path.join(folder, "history.csv"), "\n".join(lines) + "\n")
    return "history.csv"


def write_meta(folder: str, meta: dict) -> None:
    atomic_write_text(os.path.join(folder, META), json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")


def read_meta(folder: str) -> Optional[dict]:
    path = os.path.join(folder, META)
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def read_history(folder: str, meta: dict) -> dict[str, list]:
    """Columns of a finished run's history ({} if it has none, e.g. a run that failed at start)."""
    name = meta.get("history_file")
    if not name:
        return {}
    path = os.path.join(folder, name)
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pydict()
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    cols: dict[str, list] = {k: [] for k in (rows[0].keys() if rows else [])}
    for r in rows:
        for k, v in r.items():
            cols[k].append(_number(v))
    return cols


def is_complete(out: str, run_id: str) -> Optional[dict]:
    """The run's metadata if it finished (successfully or not), else None."""
    return read_meta(run_dir(out, run_id))


def clean_partial(out: str) -> int:
    """Remove temporary files left by interrupted writes; returns how many."""
    stale = glob.glob(os.path.join(out, RUNS, "*", ".tmp-*"))
    for path in stale:
        os.unlink(path)
    return len(stale)


def iter_runs(out: str) -> Iterator[tuple[dict, dict[str, list]]]:
    """(meta, history columns) of every finished run under ``out``, in run-id order."""
    for folder in sorted(glob.glob(os.path.join(out, RUNS, "*"))):
        meta = read_meta(folder)
        if meta is not None:
            yield meta, read_history(folder, meta)


def _plain(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return float(value) if abs(value) > 2 ** 53 else value
    if isinstance(value, float):
        return value
    return str(value)


def _number(text: str) -> Any:
    if text == "":
        return math.nan
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text
