"""Bad inputs to `bilevel bench`, `plot` and `report`: one table, input → exit status + stderr regex.

The benchmark third of the issue's bad-input table (the library and `bilevel run` rows live in their own
files).  Rows marked ``proc`` run the real command line in a subprocess (``python -m bilevel.cli``),
launched together by a module fixture so that interpreter start-ups overlap; the others call
``bilevel.cli.main(argv)`` in this process, which is the same code after the start-up.  Rows that need a
results folder get their own copy of one finished sweep (2 tiny runs), damaged as the row says.
Exit statuses: 0 done, 1 some run failed, 2 bad input.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest

from bilevel.bench import load, run_sweep
from bilevel.cli import main

OK = """
    name: tiny
    problem: {name: quadratic, options: {dy: 12}}
    solvers: [subbio]
    seeds: 2
    run: {max_iter: 3, eval_every: 1}
"""
FILES = {
    "ok.yaml": OK,
    "fails.yaml": """
        name: fails
        problem: {name: quadratic, options: {condition: [10.0, 0.5]}}
        solvers: [subbio]
        run: {max_iter: 2}
    """,
    "typo.yaml": "problem: {name: quadratic}\nsolver: [lancbio]\n",
    "unknown_solver.yaml": "problem: {name: quadratic}\nsolvers: [lancbo]\n",
    "unknown_problem.yaml": "problem: {name: quadratik}\nsolvers: [lancbio]\n",
    "unknown_option.yaml": "problem: {name: quadratic}\nsolvers: [{name: lancbio, options: {lrx: 1.0}}]\n",
    "bad_max_iter.yaml": "problem: {name: quadratic}\nsolvers: [lancbio]\nrun: {max_iter: 0}\n",
    "bad_threads.yaml": "problem: {name: quadratic}\nsolvers: [lancbio]\nrun: {threads: two}\n",
    "bad_schedule.yaml": "problem: {name: quadratic}\nsolvers: [{name: lancbio, options: {m: {schedule: dimensional}}}]\n",
    "not_yaml.yaml": "problem: [unclosed\n",
}


def _truncate(path: str) -> None:
    with open(path, "rb") as fh:
        data = fh.read()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])


def _first_run(folder: str) -> str:
    return sorted(os.listdir(os.path.join(folder, "runs")))[0]


def damage_meta(folder):
    _truncate(os.path.join(folder, "runs", _first_run(folder), "meta.json"))


def damage_history(folder):
    _truncate(os.path.join(folder, "runs", _first_run(folder), "history.parquet"))


def damage_rows(folder):
    path = os.path.join(folder, "runs", _first_run(folder), "meta.json")
    meta = json.load(open(path))
    json.dump({**meta, "rows": meta["rows"] + 1}, open(path, "w"))


def damage_records(folder):
    with open(os.path.join(folder, "experiment.json"), "w") as fh:
        fh.write('{"format": 1, "experiments": [')


def add_second_experiment(folder):
    ok = os.path.join(folder, "..", "..", "..", "files", "ok.yaml")  # root/rows/<id>/out → root/files
    run_sweep(load(ok, {"run.max_iter": "4"}), folder,
              backend="sequential", progress=False, add_experiment=True)


def empty(folder):
    shutil.rmtree(folder)
    os.makedirs(folder)


@dataclass(frozen=True)
class Row:
    """``argv`` may use {files} (the config folder), {out} (this row's copy of the finished sweep, after
    ``damage``), {dir} (this row's empty folder); ``stderr``/``stdout`` are regexes searched for."""

    id: str
    argv: tuple
    code: int
    stderr: str
    stdout: str = ""
    proc: bool = False
    damage: Optional[Callable[[str], None]] = None
    env: dict = field(default_factory=dict)
    needs: str = ""  # a module that must be importable ("distributed"), or "-ray": ray must be absent
    check: Optional[Callable[[str], None]] = None  # called with {out} after the command


def _report_lists_unreadable(out):
    text = open(os.path.join(out, "report.md")).read()
    assert "Unreadable runs (skipped)" in text and "meta.json is unreadable" in text


def _meta_redone(out):
    from bilevel.bench import storage

    runs, broken = storage.scan(out)
    assert len(runs) == 2 and not broken


B = ("bench",)
ROWS = [
    # --- the experiment file (validated before anything runs) ---
    Row("yaml-unknown-top-key", B + ("{files}/typo.yaml", "--out", "{dir}/o"), 2,
        r"^bilevel: \S+typo\.yaml: unknown key 'solver'\. Did you mean 'solvers'\?", proc=True),
    Row("yaml-unknown-solver", B + ("{files}/unknown_solver.yaml", "--out", "{dir}/o"), 2,
        r"unknown solver 'lancbo'\. Did you mean 'lancbio'\?"),
    Row("yaml-unknown-problem", B + ("{files}/unknown_problem.yaml", "--out", "{dir}/o"), 2,
        r"unknown problem 'quadratik'\. Did you mean 'quadratic'\?"),
    Row("yaml-unknown-solver-option", B + ("{files}/unknown_option.yaml", "--out", "{dir}/o"), 2,
        r"solvers\[0\]: .*unknown option 'lrx'\. Did you mean 'lr_x'\?"),
    Row("yaml-bad-max-iter", B + ("{files}/bad_max_iter.yaml", "--out", "{dir}/o"), 2,
        r"run\.max_iter must be a positive integer; got 0\."),
    Row("yaml-bad-threads", B + ("{files}/bad_threads.yaml", "--out", "{dir}/o"), 2,
        r"run\.threads must be a positive integer; got 'two'\."),
    Row("yaml-unknown-schedule", B + ("{files}/bad_schedule.yaml", "--out", "{dir}/o"), 2,
        r"unknown schedule 'dimensional'\. Did you mean 'dimension'\?"),
    Row("yaml-not-yaml", B + ("{files}/not_yaml.yaml", "--out", "{dir}/o"), 2, r"not_yaml\.yaml: not valid YAML"),
    Row("config-missing", B + ("{files}/nope.yaml", "--out", "{dir}/o"), 2, r"no experiment file at '\S+nope\.yaml'"),
    # --- --set overrides ---
    Row("set-without-equals", B + ("{files}/ok.yaml", "--out", "{dir}/o", "--set", "seeds"), 2,
        r"--set expects PATH=VALUE, e\.g\. problem\.options\.n=1000; got 'seeds'\."),
    Row("set-bad-index", B + ("{files}/ok.yaml", "--out", "{dir}/o", "--set", "solvers.5.options={{}}"), 2,
        r"--set solvers\.5\.options: index '5' out of range|solvers has 1 entries; got index '5'"),
    Row("set-unknown-run-key", B + ("{files}/ok.yaml", "--out", "{dir}/o", "--set", "run.max_iters=3"), 2,
        r"run: unknown key 'max_iters'\. Did you mean 'max_iter'\?"),
    Row("set-bad-value", B + ("{files}/ok.yaml", "--out", "{dir}/o", "--set", "run.max_iter=-1"), 2,
        r"run\.max_iter must be a positive integer; got -1\."),
    Row("set-not-yaml", B + ("{files}/ok.yaml", "--out", "{dir}/o", "--set", "seeds=[1,"), 2,
        r"--set seeds=\[1,: the value is not valid YAML"),
    # --- backends and workers ---
    Row("backend-unknown", B + ("{files}/ok.yaml", "--out", "{dir}/o", "--backend", "lokky"), 2,
        r"unknown backend 'lokky'\. Did you mean 'loky'\? Choose one of loky, dask, ray, sequential\."),
    Row("backend-ray-missing", B + ("{files}/ok.yaml", "--out", "{dir}/o", "--backend", "ray"), 2,
        r'^bilevel: the ray backend needs ray, which is not installed: pip install "bilevel\[ray\]"\.\n$',
        proc=True, needs="-ray"),
    Row("dask-scheduler-unreachable",
        B + ("{files}/ok.yaml", "--out", "{dir}/o", "--backend", "dask", "--scheduler", "tcp://127.0.0.1:9",
             "--no-progress"), 2,
        r"^bilevel: cannot reach the Dask scheduler at 'tcp://127\.0\.0\.1:9' \(.*\); check the address[^\n]*\n$",
        proc=True, needs="distributed", env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"}),
    Row("n-jobs-zero", B + ("{files}/ok.yaml", "--out", "{dir}/o", "--n-jobs", "0"), 2,
        r"n_jobs \(--n-jobs\) must be a positive integer; got 0\."),
    Row("devices-unknown (new)", B + ("{files}/ok.yaml", "--out", "{dir}/o", "--devices", "cpu,gpu"), 2,
        r"^bilevel: devices \(--devices\): unknown device 'gpu' — use 'cpu', 'cuda' or 'cuda:N'"),
    Row("devices-no-cuda (new)", B + ("{files}/ok.yaml", "--out", "{dir}/o", "--devices", "cuda:99"), 2,
        r"^bilevel: devices \(--devices\): device 'cuda:99'"),
    Row("scheduler-with-sequential", B + ("{files}/ok.yaml", "--out", "{dir}/o", "--backend", "sequential",
                                          "--scheduler", "tcp://h:1"), 2, r"--scheduler is for the dask and ray"),
    # --- the results folder: one experiment, resumed; damaged runs redone ---
    Row("same-spec-resumes", B + ("{files}/ok.yaml", "--out", "{out}", "--no-progress"), 0, r"^$",
        stdout=r"^2 runs: 2 already done, 0 run now \(none\); results in ", proc=True),
    Row("changed-spec-refused", B + ("{files}/ok.yaml", "--out", "{out}", "--set", "run.max_iter=4"), 2,
        r"^bilevel: '\S+' holds experiment 'tiny' and this config differs from 'tiny' at: run\.max_iter\. Use "
        r"another --out, or --add-experiment to add it to '\S+' as a distinct experiment\.\n$", proc=True),
    Row("changed-spec-added", B + ("{files}/ok.yaml", "--out", "{out}", "--set", "run.max_iter=4",
                                   "--add-experiment", "--n-jobs", "1", "--no-progress"), 0, r"^$",
        stdout=r"2 runs: 0 already done, 2 run now \(max_iter=2\)"),
    Row("corrupt-meta-redone", B + ("{files}/ok.yaml", "--out", "{out}", "--no-progress"), 0,
        r"^bilevel: redoing run subbio-\w+-seed\d: meta\.json is unreadable \([^\n]*\)\n$",
        stdout=r"2 runs: 1 already done, 1 run now", proc=True, damage=damage_meta, check=_meta_redone),
    Row("truncated-parquet-redone", B + ("{files}/ok.yaml", "--out", "{out}", "--no-progress"), 0,
        r"^bilevel: redoing run subbio-\w+-seed\d: history\.parquet is unreadable \(", proc=True,
        damage=damage_history, check=_meta_redone),
    Row("row-count-mismatch-redone", B + ("{files}/ok.yaml", "--out", "{out}", "--no-progress"), 0,
        r"redoing run \S+: history\.parquet has (\d+) rows where meta\.json records \d+", damage=damage_rows,
        check=_meta_redone),
    Row("experiment-records-unreadable", B + ("{files}/ok.yaml", "--out", "{out}"), 2,
        r"experiment\.json is unreadable \(.*\); it records which experiments .* restore it, or use another --out\.",
        damage=damage_records),
    Row("failed-runs-exit-1", B + ("{files}/fails.yaml", "--out", "{dir}/o", "--backend", "sequential",
                                   "--no-progress"), 1,
        r"^bilevel: 1 run\(s\) failed: SubBiO \[condition=0\.5\] seed 0 \(.*condition.*\)\. .* re-run the same "
        r"command with --retry-failed\.\n$", stdout=r"2 runs: 0 already done, 2 run now \(failed=1, max_iter=1\)",
        proc=True),
    # --- plot ---
    Row("plot-unknown-metric", ("plot", "{out}", "--y", "hypergrad_nrom"), 2,
        r"^bilevel: no run in '\S+' logged metric 'hypergrad_nrom'\. Did you mean 'hypergrad_norm'\? Metrics "
        r"available: .*residual", proc=True),
    Row("plot-missing-folder", ("plot", "{dir}/nowhere"), 2, r"no results folder at '\S+nowhere'"),
    Row("plot-bad-extension", ("plot", "{out}", "--out", "{dir}/fig.jpg"), 2, r"must end in \.png, \.pdf or \.svg"),
    Row("plot-skips-unreadable", ("plot", "{out}"), 0,
        r"^bilevel: warning: skipped 1 unreadable run\(s\) in '\S+': subbio-\w+-seed\d \(meta\.json is unreadable",
        stdout=r"figure written to \S+hypergrad_norm_vs_time\.png", damage=damage_meta),
    Row("plot-needs-experiment", ("plot", "{out}"), 2,
        r"holds 2 experiments \(tiny, tiny@\w{8}\); a figure shows one: choose it with --experiment NAME\.",
        damage=add_second_experiment),
    Row("plot-unknown-experiment", ("plot", "{out}", "--experiment", "tinyy"), 2,
        r"no experiment 'tinyy' in '\S+'\. Did you mean 'tiny'\? It holds: tiny\."),
    Row("plot-bad-x", ("plot", "{out}", "--x", "tme"), 2, r"argument --x: invalid choice: 'tme'"),
    # --- report ---
    Row("report-missing-folder", ("report", "{dir}/nowhere"), 2,
        r"^bilevel: no results folder at '\S+nowhere'; create it with `bilevel bench CONFIG --out \S+`\.\n$",
        proc=True),
    Row("report-empty-folder", ("report", "{out}"), 2, r"no finished runs under '\S+'; run `bilevel bench", damage=empty),
    Row("report-unknown-plot-metric", ("report", "{out}", "--plots", "time:nonexistent"), 2,
        r"^bilevel: no run in '\S+' logged metric 'nonexistent'\. Metrics available: [^\n]*hypergrad_norm", proc=True),
    Row("report-plot-did-you-mean", ("report", "{out}", "--plots", "time:residul"), 2, r"Did you mean 'residual'\?"),
    Row("report-unknown-x-axis", ("report", "{out}", "--plots", "tme:residual"), 2,
        r"unknown x axis 'tme'\. Did you mean 'time'\? Choose one of time, iteration, hvp, samples, epochs_g, epochs_f\."),
    Row("report-plot-without-colon", ("report", "{out}", "--plots", "residual"), 2,
        r"--plots takes X:METRIC pairs .*got 'residual'\."),
    Row("report-unknown-metric", ("report", "{out}", "--metrics", "residul"), 2,
        r"logged metric 'residul'\. Did you mean 'residual'\?"),
    Row("report-unknown-target-metric", ("report", "{out}", "--target-metric", "hypergrad_nrm"), 2,
        r"logged target metric 'hypergrad_nrm'\. Did you mean 'hypergrad_norm'\?"),
    Row("report-target-metric-without-default", ("report", "{out}", "--target-metric", "f"), 2,
        r"no default target for 'f'; give one with --target VALUE"),
    Row("report-above-and-below", ("report", "{out}", "--above", "--below"), 2,
        r"argument --below: not allowed with argument --above"),
    Row("report-notes-missing", ("report", "{out}", "--notes", "{dir}/notes.md"), 2,
        r"--notes: cannot read '\S+notes\.md' \(No such file or directory\)\."),
    Row("report-lists-unreadable", ("report", "{out}"), 0,
        r"^bilevel: warning: skipped 1 unreadable run\(s\)", stdout=r"report written to \S+report\.md",
        damage=damage_meta, check=_report_lists_unreadable),
    Row("report-several-folders-need-out", ("report", "{out}", "{out}"), 2,
        r"with several results folders, give the report path \(--out\)\."),
]


def _available(row: Row) -> str:
    """'' if the row can run here, else why not."""
    if row.needs == "-ray":
        return "ray is installed" if importlib.util.find_spec("ray") else ""
    if row.needs and importlib.util.find_spec(row.needs) is None:
        return f"{row.needs} is not installed"
    return ""


def _env(extra: dict) -> dict:
    env = {**os.environ, **extra}
    src = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "src"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """Prepare every row's folders, then run the subprocess rows together: {id: (code, stdout, stderr)}."""
    root = tmp_path_factory.mktemp("bad_inputs_bench")
    files = root / "files"
    files.mkdir()
    for name, text in FILES.items():
        (files / name).write_text(textwrap.dedent(text))
    done = str(root / "done")
    run_sweep(load(str(files / "ok.yaml")), done, backend="sequential", progress=False)
    argvs = {}
    for row in ROWS:
        here = root / "rows" / row.id
        here.mkdir(parents=True)
        out = str(here / "out")
        shutil.copytree(done, out)
        if row.damage is not None:
            row.damage(out)
        places = {"files": str(files), "out": out, "dir": str(here)}
        argvs[row.id] = ([a.format(**places) for a in row.argv], out)
    runnable = [r for r in ROWS if r.proc and not _available(r)]

    def launch(row):
        cmd = [sys.executable, "-m", "bilevel.cli", *argvs[row.id][0]]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_env(row.env))
        return row.id, (done.returncode, done.stdout, done.stderr)

    with ThreadPoolExecutor(max_workers=min(4, max(2, os.cpu_count() or 1))) as pool:
        ran = dict(pool.map(launch, runnable))
    return argvs, ran


def _in_process(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def test_table_has_enough_rows():
    assert len(ROWS) >= 18 and len({r.id for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(table, row):
    why = _available(row)
    if why:
        pytest.skip(why)
    argvs, ran = table
    argv, out = argvs[row.id]
    code, stdout, stderr = ran[row.id] if row.proc else _in_process(argv)
    assert code == row.code, f"exit {code}, stderr: {stderr}"
    assert re.search(row.stderr, stderr), stderr
    assert "Traceback" not in stderr
    if row.stdout:
        assert re.search(row.stdout, stdout), stdout
    if row.check is not None:
        row.check(out)
