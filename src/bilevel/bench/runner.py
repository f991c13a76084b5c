"""Run an expanded experiment: every (solver configuration × seed) once, in parallel, resumable.

Parallelism goes through joblib: local processes (``loky``, the default), or an existing cluster engine
through joblib's backends: a Dask distributed scheduler (``backend="dask"``, ``scheduler="tcp://…"``) or
Ray (``backend="ray"``, with ``ray`` installed).

A results folder holds experiments, not loose runs.  The first sweep into a folder records its spec
(``experiment.json``); the same spec again resumes it: runs that finished and read back are skipped, so
re-running the same command after an interruption completes the sweep without redoing or duplicating
anything, and runs whose files are damaged are redone (each one named, with the reason).  Another spec is
refused (:class:`SpecMismatch`, naming the keys that differ) unless ``add_experiment=True``, which records
it beside the first as a distinct experiment; plots and reports keep experiments apart.  Runs are
identified by a hash of everything that determines their numbers, so two experiments that contain the
same run share its folder.

A run that raises is recorded as ``failed`` (with its traceback) and the sweep goes on.  Ctrl-C stops
the workers, removes partial files and raises :class:`SweepInterrupted` (a ``KeyboardInterrupt``) saying
how many runs are finished; finished runs stay.
"""

from __future__ import annotations

import datetime as _dt
import glob
import os
import platform
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from . import storage
from .config import Experiment, RunSpec, decode, spec_diff

BACKENDS = ("loky", "dask", "ray", "sequential")


class SpecMismatch(ValueError):
    """The results folder holds another experiment; the message names the differing keys and the ways out."""


class BackendError(RuntimeError):
    """The parallel backend is missing or unreachable; the message says how to fix it."""


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep: ``finished`` of ``total`` runs are stored (``ran`` of them by this call,
    including runs a worker completed while the sweep was being stopped)."""

    def __init__(self, finished: int, total: int, ran: int):
        super().__init__(f"{finished} of {total} runs finished")
        self.finished, self.total, self.ran = finished, total, ran


@dataclass(frozen=True)
class SweepSummary:
    total: int
    skipped: int
    ran: int
    statuses: dict
    redone: tuple = ()       # (run id, why) of finished runs whose files were damaged
    failed: tuple = ()       # (run id, label, seed, message) of every failed run of the experiment
    experiment: str = ""

    def __str__(self) -> str:
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.statuses.items()))
        text = f"{self.total} runs: {self.skipped} already done, {self.ran} run now ({parts or 'none'})"
        if self.redone:
            text += f", {len(self.redone)} of them redone because their files were damaged"
        return text

    def failed_line(self) -> str:
        """One line naming the failed runs and the way to retry them ('' when none failed)."""
        if not self.failed:
            return ""
        shown = "; ".join(f"{label} seed {seed} ({msg.splitlines()[0][:80] if msg else 'no message'})"
                          for _, label, seed, msg in self.failed[:3])
        more = f"; and {len(self.failed) - 3} more" if len(self.failed) > 3 else ""
        return (f"{len(self.failed)} run(s) failed: {shown}{more}. The traceback is in each run's meta.json "
                "('error'); after fixing the cause, re-run the same command with --retry-failed.")


def git_commit(cwd: Optional[str] = None) -> Optional[str]:
    """The checkout's commit (``+dirty`` with uncommitted changes to tracked files), None outside git.

    Read without taking ``.git/index.lock``: a plain ``git status`` refreshes the index and so locks it,
    which breaks a ``git commit`` the user runs meanwhile; ``--no-optional-locks`` skips that refresh."""
    here = cwd or os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(GIT_STATUS, cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("+dirty" if dirty else "")


GIT_STATUS = ("git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no")


def environment() -> dict:
    import numpy
    import torch

    from .. import __version__

    return {
        "bilevel": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
        "python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.node(),
        "processor": platform.machine(), "cpus": os.cpu_count(),
    }


def execute(spec: dict, out: str, commit: Optional[str], devices: Optional[Sequence[str]] = None,
            first: int = 0) -> dict:
    """Run one specification and store it; returns its metadata.  Never raises for a run's own error;
    ``spec["batches"]`` (a ``MiniBatch.to_dict()``, or None for full batch) is the run's batch source;
    Ctrl-C (``KeyboardInterrupt``) stores nothing and propagates, so the run counts as not finished.
    Warnings the run raises go to ``meta["warnings"]`` (the report lists them) rather than mid-sweep stderr.

    The run uses ``spec["limits"]["threads"]`` torch threads (the caller's count is restored after).  With
    ``devices`` the run holds one of them alone while it runs (``_DeviceLease``; tried from slot ``first``)
    and builds its problem there (its ``device`` option; recorded as ``meta["device"]``, not part of the run's
    identity: the same run on another device is the same run)."""
    if devices:
        with _DeviceLease(out, devices, first) as lease:
            return _execute(spec, out, commit, lease.device)
    return _execute(spec, out, commit, None)


def _execute(spec: dict, out: str, commit: Optional[str], device: Optional[str]) -> dict:
    import torch

    from ..problems import get_problem
    from ..run import solve
    from ..sampling import MiniBatch
    from ..solvers import get_solver

    folder = storage.run_dir(out, spec["run_id"])
    os.makedirs(folder, exist_ok=True)
    limits = spec["limits"]
    threads = int(limits.get("threads", 1))
    meta: dict[str, Any] = {**spec, "commit": commit, "env": {**environment(), "threads": threads},
                            "started": _dt.datetime.now(_dt.timezone.utc).isoformat()}
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        popts = {k: decode(v) for k, v in spec["problem_options"].items()}
        if "seed" not in popts and "seed" in _params(spec["problem"]):
            popts["seed"] = spec["seed"]
        if device is not None:
            meta["device"] = device
            if "device" in _params(spec["problem"]):
                popts["device"] = device
        problem = get_problem(spec["problem"], **popts)
        solver = get_solver(spec["solver"], **{k: decode(v) for k, v in spec["solver_options"].items()})
        batches = MiniBatch.from_dict(spec["batches"]) if spec.get("batches") else None  # None: full batch
        with warnings.catch_warnings(record=True) as caught:  # kept in meta.json, not printed mid-sweep
            warnings.simplefilter("always")
            result = solve(
                problem, solver, max_iter=limits["max_iter"], max_time=limits.get("max_time"),
                eval_every=limits["eval_every"], tol=limits.get("tol"),
                true_hypergradient=limits.get("true_hypergradient"), seed=spec["seed"], batches=batches,
            )
        meta["warnings"] = list(dict.fromkeys(str(w.message) for w in caught))
        if getattr(result, "interrupted", False):  # solve keeps Ctrl-C's partial run; a sweep redoes it
            raise KeyboardInterrupt
        rows = result.history.to_dicts()
        meta["history_file"] = storage.write_history(folder, rows, result.history.columns)
        meta.update(
            status=result.status, message=result.message, iterations=result.iterations, time=result.time,
            counts=result.counts.as_dict(), events=result.events, options=result.options, rows=len(rows),
            problem_info={k: v for k, v in problem.info.items() if isinstance(v, (int, float, str, bool))},
            error=None,
        )
    except Exception as err:  # recorded, the sweep goes on
        meta.update(status="failed", message=f"{type(err).__name__}: {err}", error=traceback.format_exc(),
                    history_file=None, rows=0)
    finally:
        torch.set_num_threads(saved_threads)
    meta["wall"] = time.perf_counter() - start
    meta["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
    storage.write_meta(folder, meta)  # last: marks the run complete
    return meta


def _params(problem: str) -> list[str]:
    import inspect

    from ..problems import PROBLEMS

    return list(inspect.signature(PROBLEMS[problem]).parameters)


def _as_experiment(specs: Experiment | Sequence[RunSpec]) -> Experiment:
    """A plain list of specs (library use) becomes an experiment whose spec is its runs."""
    if isinstance(specs, Experiment):
        return specs
    from .config import spec_hash

    runs = tuple(specs)
    spec = {"runs": {r.run_id: r.label for r in runs}}
    name = runs[0].experiment if runs else "experiment"
    return Experiment(name, spec, spec_hash(spec), runs)


def register(out: str, experiment: Experiment, add: bool = False) -> dict:
    """Record ``experiment`` in ``OUT/experiment.json`` or find it there; returns its record.

    The same spec (same hash) resumes.  Another spec is refused with :class:`SpecMismatch` unless ``add``,
    which records it as a distinct experiment (its id is its name, or ``name@hash`` if the name is taken).
    A folder written before experiments were recorded is adopted when the config describes all its runs."""
    records = storage.read_experiments(out)
    for record in records:
        if record.get("hash") == experiment.hash:
            return record
    if not records:
        legacy = _legacy_runs(out)
        foreign = sorted(set(legacy) - {r.run_id for r in experiment})
        if foreign and not add:
            raise SpecMismatch(
                f"{out!r} already holds {len(foreign)} run(s) that this experiment does not describe "
                f"(e.g. {foreign[0]}; written before results folders recorded their experiment, or with "
                "other settings). Use another --out, or --add-experiment to keep them apart as a distinct experiment.")
        if foreign:
            labels = {rid: meta.get("label", rid) for rid, meta in legacy.items()}
            name = next((m.get("experiment") for m in legacy.values() if m.get("experiment")), "earlier runs")
            records.append({"id": str(name), "name": str(name), "hash": None, "spec": None,
                            "description": "runs found in the folder before experiments were recorded",
                            "runs": labels})
    elif not add:
        same_name = [r for r in records if r.get("name") == experiment.name]
        ref = (same_name or records)[-1]
        diff = spec_diff(ref.get("spec") or {}, experiment.spec)
        shown = ", ".join(diff[:6]) + (f" and {len(diff) - 6} more" if len(diff) > 6 else "")
        held = ", ".join(repr(r["id"]) for r in records)
        raise SpecMismatch(
            f"{out!r} holds experiment {held} and this config differs from {ref['id']!r} at: {shown or 'its runs'}. "
            f"Use another --out, or --add-experiment to add it to {out!r} as a distinct experiment.")
    taken = {r["id"] for r in records}
    rid = experiment.name if experiment.name not in taken else f"{experiment.name}@{experiment.hash[:8]}"
    record = {
        "id": rid, "name": experiment.name, "hash": experiment.hash, "spec": experiment.spec,
        "description": experiment.description, "source": experiment.source, "overrides": experiment.overrides,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(), "runs": experiment.labels(),
    }
    records.append(record)
    storage.write_experiments(out, records)
    return record


def _legacy_runs(out: str) -> dict[str, dict]:
    """run id → meta of the finished runs in a folder that has no experiment records."""
    found = {}
    for folder in glob.glob(os.path.join(out, storage.RUNS, "*")):
        try:
            meta = storage.read_meta(folder)
        except storage.BrokenRun:
            meta = {}
        if meta is not None:
            found[os.path.basename(folder)] = meta
    return found


def _check_backend(backend: str, scheduler: Optional[str], n_jobs: Optional[int]) -> None:
    """Fail early, in one line, for a backend that cannot run here."""
    from .._validation import suggest

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}.{suggest(backend, BACKENDS)} Choose one of {', '.join(BACKENDS)}.")
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1):
        raise ValueError(f"n_jobs (--n-jobs) must be a positive integer; got {n_jobs!r}.")
    import importlib.util

    if backend == "ray" and importlib.util.find_spec("ray") is None:
        raise BackendError('the ray backend needs ray, which is not installed: pip install "bilevel[ray]".')
    if backend == "dask" and importlib.util.find_spec("distributed") is None:
        raise BackendError('the dask backend needs dask.distributed, which is not installed: pip install "bilevel[dask]".')
    if backend == "sequential" and scheduler:
        raise ValueError("--scheduler is for the dask and ray backends; drop it or choose --backend dask/ray.")


def run_sweep(
    specs: Experiment | Sequence[RunSpec],
    out: str,
    *,
    backend: str = "loky",
    n_jobs: Optional[int] = None,
    scheduler: Optional[str] = None,
    progress: bool = True,
    retry_failed: bool = False,
    add_experiment: bool = False,
    on_redo=None,
    devices: Optional[Sequence[str]] = None,
) -> SweepSummary:
    """Execute every run of the experiment not already finished under ``out``.

    ``on_redo(run_id, why)`` is called for each finished run whose files are damaged (it is redone);
    by default a line goes to stderr.  ``devices`` (e.g. ``["cuda:0", "cuda:1"]``): each run holds one of them
    alone while it runs, so ``n_jobs`` workers (default: one per device) never share a device; a name given
    twice is two slots on that device.  Raises :class:`SpecMismatch`, :class:`BackendError`, ``ValueError``
    (bad arguments) before running anything, and :class:`SweepInterrupted` on Ctrl-C."""
    experiment = _as_experiment(specs)
    _check_backend(backend, scheduler, n_jobs)
    devices = _check_devices(devices)
    os.makedirs(out, exist_ok=True)
    record = register(out, experiment, add=add_experiment)
    os.makedirs(os.path.join(out, storage.RUNS), exist_ok=True)
    storage.clean_partial(out)
    if on_redo is None:
        def on_redo(run_id, why):
            print(f"bilevel: redoing run {run_id}: {why}", file=sys.stderr)

    todo, skipped, redone = [], 0, []
    for spec in experiment:
        try:
            meta = storage.is_complete(out, spec.run_id)
        except storage.BrokenRun as err:
            redone.append((spec.run_id, str(err)))
            on_redo(spec.run_id, str(err))
            storage.discard(out, spec.run_id)
            meta = None
        if meta is not None and not (retry_failed and meta.get("status") == "failed"):
            skipped += 1
        else:
            todo.append(spec)
    commit = git_commit()
    jobs = n_jobs or (len(devices) if devices else (os.cpu_count() or 1))
    statuses: dict[str, int] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(experiment), initial=skipped, desc="runs", unit="run", dynamic_ncols=True)
    results = _dispatch(todo, out, commit, backend, jobs, scheduler, devices)
    ran = 0
    try:
        for meta in results:
            ran += 1
            statuses[meta["status"]] = statuses.get(meta["status"], 0) + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{meta['label']} seed {meta['seed']}: {meta['status']}", refresh=False)
    except KeyboardInterrupt:
        _stop(results, bar, out)
        bar = None
        finished = sum(1 for spec in experiment if _finished(out, spec.run_id))
        raise SweepInterrupted(finished, len(experiment), max(ran, finished - skipped)) from None
    finally:
        if bar is not None:
            bar.close()
    labels = record.get("runs") or experiment.labels()
    failed = []
    for spec in experiment:
        try:
            meta = storage.is_complete(out, spec.run_id)
        except storage.BrokenRun:
            meta = None
        if meta is not None and meta.get("status") == "failed":
            failed.append((spec.run_id, labels.get(spec.run_id, spec.label), spec.seed, meta.get("message") or ""))
    return SweepSummary(len(experiment), skipped, len(todo), statuses, tuple(redone), tuple(failed), record["id"])


def _finished(out: str, run_id: str) -> bool:
    try:
        return storage.is_complete(out, run_id) is not None
    except storage.BrokenRun:
        return False


def _stop(results, bar, out: str) -> None:
    """After Ctrl-C: stop the workers (closing joblib's generator kills them and waits), then remove
    partial files.  A second Ctrl-C meanwhile is ignored, so the cleanup always completes."""
    import signal
    import threading
    import warnings

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # joblib warns that unfinished tasks were discarded
            try:
                results.close()
            except Exception:  # noqa: BLE001 - the workers are being torn down; nothing to report
                pass
        if bar is not None:
            bar.close()
        storage.clean_partial(out)
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)


def _check_devices(devices: Any) -> Optional[list[str]]:
    """``devices`` as a list of device names this torch can compute on (None: none given); one-line errors."""
    if devices is None:
        return None
    if isinstance(devices, str) or not isinstance(devices, (list, tuple)) or not devices:
        raise ValueError(f"devices (--devices) must be a non-empty list of torch devices, e.g. ['cuda:0', 'cuda:1'] "
                         f"(--devices cuda:0,cuda:1); got {devices!r}.")
    from ..problem import check_device

    return [str(check_device("devices (--devices)", d)) for d in devices]


class _DeviceLease:
    """One device of ``devices`` held by this run alone while it runs: slot i is locked through the file
    ``<out>/.devices/<i>.lock`` (``fcntl.flock``: released by the OS if the worker dies), tried from
    ``first`` on, waiting when every slot is busy.  So n workers on n devices never share one, whichever
    worker takes which run.  Without ``fcntl`` (Windows) the run takes slot ``first``."""

    def __init__(self, out: str, devices: Sequence[str], first: int) -> None:
        self.out, self.devices, self.first = out, list(devices), first
        self.handle = None
        self.slot = first % len(self.devices)

    def __enter__(self) -> "_DeviceLease":
        try:
            import fcntl
        except ImportError:
            return self
        folder = os.path.join(self.out, ".devices")
        os.makedirs(folder, exist_ok=True)
        n = len(self.devices)
        while True:
            for i in range(n):
                slot = (self.first + i) % n
                handle = open(os.path.join(folder, f"{slot}.lock"), "a")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    handle.close()
                    continue
                self.handle, self.slot = handle, slot
                return self
            time.sleep(0.05)

    @property
    def device(self) -> str:
        return self.devices[self.slot]

    def __exit__(self, *exc: Any) -> None:
        if self.handle is not None:
            self.handle.close()  # closing releases the lock
            self.handle = None


def _dispatch(todo, out, commit, backend, jobs, scheduler, devices=None):
    if not todo:
        return
    if backend == "sequential" or (backend == "loky" and min(jobs, len(todo)) == 1):  # no worker to start
        for i, spec in enumerate(todo):
            yield execute(spec.to_dict(), out, commit, devices, i)
        return
    import joblib

    tasks = (joblib.delayed(execute)(spec.to_dict(), out, commit, devices, i) for i, spec in enumerate(todo))
    if backend == "dask":
        from dask.distributed import Client

        try:
            client = Client(scheduler) if scheduler else Client(processes=False)
        except (OSError, TimeoutError) as err:
            raise BackendError(f"cannot reach the Dask scheduler at {scheduler!r} ({_one_line(err)}); check the "
                               "address and that a scheduler runs there (`dask scheduler`).") from None
        try:
            with joblib.parallel_config(backend="dask", n_jobs=jobs):
                yield from joblib.Parallel(return_as="generator")(tasks)
        finally:
            client.close()
        return
    if backend == "ray":
        import ray
        from ray.util.joblib import register_ray

        register_ray()
        try:
            ray.init(address=scheduler, ignore_reinit_error=True)
        except (ConnectionError, OSError, RuntimeError) as err:
            raise BackendError(f"cannot reach the Ray cluster at {scheduler!r} ({_one_line(err)}).") from None
        with joblib.parallel_config(backend="ray", n_jobs=jobs):
            yield from joblib.Parallel(return_as="generator")(tasks)
        return
    # max_nbytes=None: the arguments are small dicts, nothing to memory-map into /dev/shm.  The workers
    # ignore SIGINT: Ctrl-C reaches the whole process group, and the parent alone stops the sweep (it
    # kills the workers), instead of each idle worker printing its own KeyboardInterrupt traceback.
    with joblib.parallel_config(backend="loky", n_jobs=min(jobs, len(todo)), max_nbytes=None,
                                initializer=_ignore_sigint):
        yield from joblib.Parallel(return_as="generator_unordered")(tasks)


def _ignore_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return " ".join(text.split())
