"""Run an expanded experiment: every (solver configuration × seed) once, in parallel, resumable.

Parallelism goes through joblib: local processes (``loky``, the default), or an existing cluster engine
through joblib's backends: a Dask distributed scheduler (``backend="dask"``, ``scheduler="tcp://…"``) or
Ray (``backend="ray"``, with ``ray`` installed).  Runs whose ``meta.json`` exists are skipped, so re-running
the same command after an interruption completes the sweep without redoing or duplicating finished runs.
A run that raises is recorded as ``failed`` (with its traceback) and the sweep goes on.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from . import storage
from .config import RunSpec, decode

BACKENDS = ("loky", "dask", "ray", "sequential")


@dataclass(frozen=True)
class SweepSummary:
    total: int
    skipped: int
    ran: int
    statuses: dict

    def __str__(self) -> str:
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.statuses.items()))
        return f"{self.total} runs: {self.skipped} already done, {self.ran} run now ({parts or 'none'})"


def git_commit() -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


def environment() -> dict:
    import numpy
    import torch

    from .. import __version__

    return {
        "bilevel": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
        "python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.node(),
        "processor": platform.machine(), "cpus": os.cpu_count(),
    }


def execute(spec: dict, out: str, commit: Optional[str], threads: int) -> dict:
    """Run one specification and store it; returns its metadata.  Never raises for a run's own error."""
    import torch

    from ..problems import get_problem
    from ..run import solve
    from ..solvers import get_solver

    torch.set_num_threads(max(1, threads))
    folder = storage.run_dir(out, spec["run_id"])
    os.makedirs(folder, exist_ok=True)
    meta: dict[str, Any] = {**spec, "commit": commit, "env": environment(),
                            "started": _dt.datetime.now(_dt.timezone.utc).isoformat()}
    start = time.perf_counter()
    try:
        popts = {k: decode(v) for k, v in spec["problem_options"].items()}
        if "seed" not in popts and "seed" in _params(spec["problem"]):
            popts["seed"] = spec["seed"]
        problem = get_problem(spec["problem"], **popts)
        solver = get_solver(spec["solver"], **{k: decode(v) for k, v in spec["solver_options"].items()})
        limits = spec["limits"]
        result = solve(
            problem, solver, max_iter=limits["max_iter"], max_time=limits.get("max_time"),
            eval_every=limits["eval_every"], tol=limits.get("tol"),
            true_hypergradient=limits.get("true_hypergradient"), seed=spec["seed"],
        )
        meta["history_file"] = storage.write_history(folder, result.history.to_dicts(), result.history.columns)
        meta.update(
            status=result.status, message=result.message, iterations=result.iterations, time=result.time,
            counts=result.counts.as_dict(), events=result.events, options=result.options,
            problem_info={k: v for k, v in problem.info.items() if isinstance(v, (int, float, str, bool))},
            error=None,
        )
    except Exception as err:  # recorded, the sweep goes on
        meta.update(status="failed", message=f"{type(err).__name__}: {err}", error=traceback.format_exc(),
                    history_file=None)
    meta["wall"] = time.perf_counter() - start
    meta["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
    storage.write_meta(folder, meta)  # last: marks the run complete
    return meta


def _params(problem: str) -> list[str]:
    import inspect

    from ..problems import PROBLEMS

    return list(inspect.signature(PROBLEMS[problem]).parameters)


def run_sweep(
    specs: Sequence[RunSpec],
    out: str,
    *,
    backend: str = "loky",
    n_jobs: Optional[int] = None,
    scheduler: Optional[str] = None,
    progress: bool = True,
    retry_failed: bool = False,
) -> SweepSummary:
    """Execute every spec not already finished under ``out``."""
    if backend not in BACKENDS:
        from .._validation import suggest

        raise ValueError(f"unknown backend {backend!r}.{suggest(backend, BACKENDS)} Choose one of {', '.join(BACKENDS)}.")
    os.makedirs(os.path.join(out, storage.RUNS), exist_ok=True)
    storage.clean_partial(out)
    todo, skipped = [], 0
    for spec in specs:
        meta = storage.is_complete(out, spec.run_id)
        if meta is not None and not (retry_failed and meta.get("status") == "failed"):
            skipped += 1
        else:
            todo.append(spec)
    commit = git_commit()
    jobs = n_jobs or (os.cpu_count() or 1)
    threads = max(1, (os.cpu_count() or 1) // max(1, min(jobs, len(todo) or 1)))
    statuses: dict[str, int] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(specs), initial=skipped, desc="runs", unit="run", dynamic_ncols=True)
    try:
        for meta in _dispatch(todo, out, commit, threads, backend, jobs, scheduler):
            statuses[meta["status"]] = statuses.get(meta["status"], 0) + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{meta['label']} seed {meta['seed']}: {meta['status']}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    return SweepSummary(len(specs), skipped, len(todo), statuses)


def _dispatch(todo, out, commit, threads, backend, jobs, scheduler):
    if not todo:
        return
    if backend == "sequential" or (backend == "loky" and jobs == 1):
        for spec in todo:
            yield execute(spec.to_dict(), out, commit, threads)
        return
    import joblib

    tasks = (joblib.delayed(execute)(spec.to_dict(), out, commit, threads) for spec in todo)
    if backend == "dask":
        from dask.distributed import Client

        client = Client(scheduler) if scheduler else Client(processes=False)
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
        ray.init(address=scheduler, ignore_reinit_error=True)
        with joblib.parallel_config(backend="ray", n_jobs=jobs):
            yield from joblib.Parallel(return_as="generator")(tasks)
        return
    with joblib.parallel_config(backend="loky", n_jobs=min(jobs, len(todo))):
        yield from joblib.Parallel(return_as="generator_unordered")(tasks)
