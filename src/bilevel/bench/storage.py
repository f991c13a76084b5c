"""Results store: one folder per run, ``OUT/runs/<run_id>/``, holding

- ``history.parquet`` (pyarrow) or ``history.csv`` when pyarrow is missing: the run's evaluation rows;
- ``meta.json``: the run specification, resolved options, seed, versions, git commit, machine, status,
  the history's row count (``rows``), error text if it failed;

and ``OUT/experiment.json``: the experiment specs the folder holds, each with its hash and its run ids
(see ``runner.register``).

Every file is written atomically (temporary file in the same folder, then ``os.replace``), the history
first and ``meta.json`` last: a run is complete exactly when its ``meta.json`` exists, so an interrupted
run (Ctrl-C, kill -9) leaves at most a stray temporary file or a folder without ``meta.json``, which the
next sweep removes, and is redone.  A finished run is trusted only if both files read back and the row
counts agree (:func:`load_run`); anything else is a :class:`BrokenRun`, which a resume redoes and plots
and reports skip and list.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import tempfile
from typing import Any, Iterable, Iterator, Optional

from ..history import atomic_write_text

RUNS = "runs"
META = "meta.json"
EXPERIMENT = "experiment.json"
HISTORY_FILES = ("history.parquet", "history.csv")


class BrokenRun(Exception):
    """A run folder whose files do not read back; the message says which file and why."""


class StoreError(ValueError):
    """The results folder itself cannot be used (e.g. an unreadable experiment.json)."""


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


def json_value(value: Any) -> Any:
    """``json.dumps`` fallback: JSON values, never Python reprs, for what the metadata may hold."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()  # numpy / torch scalars
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__, **dataclasses.asdict(value)}
    return str(value)  # torch dtypes, devices, paths: their plain names


def write_meta(folder: str, meta: dict) -> None:
    atomic_write_text(os.path.join(folder, META), json.dumps(meta, indent=2, sort_keys=True, default=json_value) + "\n")


def read_meta(folder: str) -> Optional[dict]:
    """The run's metadata, None if it has none; :class:`BrokenRun` if ``meta.json`` does not parse."""
    path = os.path.join(folder, META)
    try:
        with open(path) as fh:
            meta = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise BrokenRun(f"meta.json is unreadable ({err})") from None
    if not isinstance(meta, dict) or not all(k in meta for k in ("run_id", "status", "label", "seed")):
        raise BrokenRun("meta.json lacks the run's id, status, label or seed")
    return meta


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


def load_run(folder: str) -> Optional[tuple[dict, dict[str, list]]]:
    """(meta, history columns) of a finished run, None if it has not finished, :class:`BrokenRun` if its
    files do not read back: ``meta.json`` unparsable, the history missing or unreadable, or holding
    another number of rows than ``meta.json`` records (folders written before ``rows`` was recorded are
    checked for readability only)."""
    meta = read_meta(folder)
    if meta is None:
        return None
    name = meta.get("history_file")
    if not name:
        if meta["status"] != "failed":
            raise BrokenRun(f"meta.json names no history file for a run with status {meta['status']!r}")
        return meta, {}
    if not os.path.exists(os.path.join(folder, name)):
        raise BrokenRun(f"{name} is missing")
    try:
        cols = read_history(folder, meta)
    except Exception as err:  # pyarrow/csv raise many types for a damaged file
        raise BrokenRun(f"{name} is unreadable ({type(err).__name__}: {_first_line(err)})") from None
    rows = len(next(iter(cols.values()))) if cols else 0
    if "rows" in meta and meta["rows"] != rows:
        raise BrokenRun(f"{name} has {rows} rows where meta.json records {meta['rows']}")
    return meta, cols


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no detail"


def is_complete(out: str, run_id: str) -> Optional[dict]:
    """The run's metadata if it finished (successfully or not) and reads back, else None;
    :class:`BrokenRun` if its files are damaged."""
    found = load_run(run_dir(out, run_id))
    return None if found is None else found[0]


def discard(out: str, run_id: str) -> None:
    """Remove a run's files (a broken run about to be redone): meta.json first, so that an
    interruption here leaves a run that is simply not finished."""
    folder = run_dir(out, run_id)
    for name in (META, *HISTORY_FILES):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            os.unlink(path)


def clean_partial(out: str) -> int:
    """Remove what interrupted runs leave: temporary files, and run folders without ``meta.json`` that
    hold nothing but a history (an unfinished run).  Returns how many paths were removed."""
    removed = 0
    for path in glob.glob(os.path.join(out, RUNS, "*", ".tmp-*")) + glob.glob(os.path.join(out, ".tmp-*")):
        try:
            os.unlink(path)
            removed += 1
        except FileNotFoundError:
            pass
    for folder in glob.glob(os.path.join(out, RUNS, "*")):
        if not os.path.isdir(folder) or os.path.exists(os.path.join(folder, META)):
            continue
        names = os.listdir(folder)
        if all(n in HISTORY_FILES for n in names):
            for n in names:
                os.unlink(os.path.join(folder, n))
            os.rmdir(folder)
            removed += 1
    return removed


def scan(out: str, run_ids: Optional[Iterable[str]] = None) -> tuple[list[tuple[dict, dict[str, list]]], list[tuple[str, str]]]:
    """(finished runs as (meta, columns), broken runs as (run id, reason)) under ``out``, in run-id order;
    ``run_ids`` restricts the scan to those runs (runs not finished yet are left out of both lists)."""
    ids = sorted(run_ids) if run_ids is not None else sorted(
        os.path.basename(f) for f in glob.glob(os.path.join(out, RUNS, "*")) if os.path.isdir(f))
    runs, broken = [], []
    for rid in ids:
        try:
            found = load_run(run_dir(out, rid))
        except BrokenRun as err:
            broken.append((rid, str(err)))
            continue
        if found is not None:
            runs.append(found)
    return runs, broken


def iter_runs(out: str) -> Iterator[tuple[dict, dict[str, list]]]:
    """(meta, history columns) of every finished, readable run under ``out``, in run-id order."""
    yield from scan(out)[0]


def read_experiments(out: str) -> list[dict]:
    """The experiment records of a results folder ([] for a folder that has none: new, or older
    than the records)."""
    path = os.path.join(out, EXPERIMENT)
    try:
        with open(path) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise StoreError(f"{path} is unreadable ({err}); it records which experiments {out!r} holds: "
                         "restore it, or use another --out.") from None
    records = data.get("experiments") if isinstance(data, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) and "id" in r and "runs" in r for r in records):
        raise StoreError(f"{path} does not hold a list of experiment records; restore it, or use another --out.")
    return records


def write_experiments(out: str, records: list[dict]) -> None:
    text = json.dumps({"format": 1, "experiments": records}, indent=2, sort_keys=True, default=json_value)
    atomic_write_text(os.path.join(out, EXPERIMENT), text + "\n")


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


def experiments_in(out: str, select: Optional[Iterable[str]] = None) -> list[dict]:
    """The experiment records of a results folder, optionally only those ``select`` names (each by its
    id, else its name, else a hash prefix of at least 4 characters).  A folder without records (older ones) reads as one experiment holding every run
    (``runs`` None)."""
    if not os.path.isdir(out):
        raise StoreError(f"no results folder at {out!r}; create it with `bilevel bench CONFIG --out {out}`.")
    records = read_experiments(out)
    if not records:
        name = None
        for folder in sorted(glob.glob(os.path.join(out, RUNS, "*"))):
            try:
                meta = read_meta(folder)
            except BrokenRun:
                continue
            if meta is not None:
                name = meta.get("experiment")
                break
        records = [{"id": name or os.path.basename(os.path.normpath(out)), "name": name, "hash": None,
                    "spec": None, "runs": None}]
    if not select:
        return records
    chosen = []
    for want in select:
        hits = ([r for r in records if r["id"] == want] or [r for r in records if r.get("name") == want]
                or [r for r in records if r.get("hash") and len(want) >= 4 and r["hash"].startswith(want)])
        if not hits:
            from .._validation import suggest

            ids = [r["id"] for r in records]
            raise StoreError(f"no experiment {want!r} in {out!r}.{suggest(want, ids)} It holds: {', '.join(ids)}.")
        chosen += [r for r in hits if r not in chosen]
    return chosen


def experiment_runs(out: str, record: dict) -> tuple[list[tuple[dict, dict[str, list]]], list[tuple[str, str]]]:
    """(finished runs, broken runs) of one experiment record; each meta's ``label`` is the experiment's
    own label for the run (two experiments sharing a run may label it differently)."""
    labels = record.get("runs")
    runs, broken = scan(out, labels.keys() if labels is not None else None)
    if labels:
        runs = [({**meta, "label": labels.get(meta["run_id"], meta["label"])}, cols) for meta, cols in runs]
    return runs, broken


def broken_line(out: str, broken: list[tuple[str, str]]) -> str:
    """One warning line listing unreadable runs (they are skipped; a resume redoes them)."""
    shown = "; ".join(f"{rid} ({why})" for rid, why in broken[:3])
    more = f"; and {len(broken) - 3} more" if len(broken) > 3 else ""
    return (f"skipped {len(broken)} unreadable run(s) in {out!r}: {shown}{more}. Re-running the bench "
            "command redoes them.")


def print_warning(text: str) -> None:
    """The CLI's warning line on stderr."""
    import sys

    print(f"bilevel: warning: {text}", file=sys.stderr)
