"""Bad inputs to the command line, as a table: argv -> exit code + a regex on stderr (or stdout).

Every row is one ``bilevel`` process: stderr holds exactly one "bilevel: ..." error line (warnings aside) and
no Python traceback unless ``--traceback`` / ``BILEVEL_DEBUG=1`` asked for one.  Rows for behaviours that were
already good stay here so that they stay good.

How the processes are started.  A ``bilevel`` process spends about 1.5 s of CPU importing torch, so the table
runs through one driver subprocess that imports the console script's entry point once and then forks one
child per row: each row is still its own process (fresh state, its own argv, environment, working folder,
stdout/stderr files and exit status; an uncaught exception prints its traceback and exits 1, as the
interpreter does).  The rows marked ``real`` also run through the installed ``bilevel`` script itself
(``python -m bilevel`` where none is installed), and their results must match; ``BILEVEL_TEST_REAL_CLI=1``
runs every row that way.  Without ``os.fork`` every row runs through the real script.

The last rows are in-process ones where a subprocess adds nothing: a run whose f turns non-scalar midway
(needs a problem registered in the test), and the device checks of ``BilevelProblem``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import bilevel
from bilevel.cli import main
from bilevel.problem import ProblemError
from bilevel.problems import PROBLEMS, get_problem


@dataclass(frozen=True)
class Row:
    """One bad (or good) input.  ``argv`` and ``env`` values may use {tmp} (shared fixtures) and {cwd} (the
    row's own working folder).  ``stderr``/``stdout``: regexes searched in that stream.  ``traceback``: the
    row asks for the stack, which must then be there.  ``absent``/``present``: paths (relative to {cwd})
    that must not / must exist afterwards."""

    id: str
    argv: tuple[str, ...]
    code: int
    stderr: str = ""
    stdout: str = ""
    env: dict = field(default_factory=dict)
    traceback: bool = False
    real: bool = False
    absent: tuple[str, ...] = ()
    present: tuple[str, ...] = ()


RUN = ("run", "quadratic", "--no-progress", "--max-iter", "3")
HC = ("run", "hyperclean", "--no-progress", "--max-iter", "2")
NO_CUDA = (r"device 'cuda:99': (this torch \(.*\) has no CUDA support — use device 'cpu' \(--device cpu\) or "
           r"install a CUDA build of torch|no CUDA device is visible|does not exist)")

ROWS = [
    # ---- names, with the nearest valid one suggested (already good)
    Row("unknown-solver", RUN + ("--solver", "lancbo"), 2, r"unknown solver 'lancbo'\. Did you mean 'lancbio'\?"),
    Row("unknown-problem", ("run", "synthetc"), 2, r"unknown problem 'synthetc'\. Did you mean 'synthetic'\?"),
    Row("unknown-solver-option", RUN + ("-O", "lr_z=0.1"), 2, r"LancBiO: unknown option 'lr_z'\. Did you mean 'lr_y'\?"),
    Row("unknown-part-option", RUN + ("-O", "v_solver.mm=3"), 2, r"unknown option 'v_solver\.mm'\. Did you mean 'v_solver\.m'\?"),
    Row("option-of-another-solver", RUN + ("--solver", "subbio", "-O", "m=3"), 2, r"SubBiO: unknown option 'm'\. Valid options: "),
    Row("unknown-problem-option", ("run", "synthetic", "-P", "nn=3"), 2, r"problem 'synthetic': unknown option 'nn'\. Did you mean 'n'\?"),
    Row("unknown-dataset", HC + ("--dataset", "mnsit"), 2, r"unknown dataset 'mnsit'\. Did you mean 'mnist'\?"),
    Row("show-unknown", ("show", "nothing"), 2, r"nothing named 'nothing'\..* — see `bilevel list`"),
    Row("show-typo", ("show", "lanczoss"), 2, r"nothing named 'lanczoss'\. Did you mean 'lanczos'\?"),
    Row("list-unknown-kind", ("list", "bogus"), 2, r"argument what: invalid choice: 'bogus' \(choose from .*\) — see `bilevel list --help`"),
    Row("unknown-command", ("frobnicate",), 2, r"invalid choice: 'frobnicate'"),
    Row("no-command", (), 2, r"the following arguments are required: command"),
    # ---- option values (already good)
    Row("bad-solver-value", RUN + ("-O", "m=0"), 2, r"m0 must be an integer >= 1; got 0"),
    Row("negative-step", RUN + ("-O", "lr_x=-1"), 2, r"lr_x must be a positive finite number; got -1"),
    Row("step-not-a-number", RUN + ("-O", "lr_x=fast"), 2, r"lr_x must be a number, a schedule or 'auto'; got str \('fast'\)"),
    Row("bad-problem-value", RUN + ("-P", "condition=0.5"), 2, r"quadratic: condition must be >= 1"),
    Row("negative-problem-seed", RUN + ("-P", "seed=-1"), 2, r"quadratic: seed must be >= 0; got -1"),
    Row("c0-not-strongly-convex", ("run", "synthetic", "-P", "n=5", "-P", "c0=1.5"), 2, r"\|c0\| must be < 1"),
    Row("corruption-out-of-range", HC + ("--corruption", "1.5"), 2, r"corruption must be a rate in \[0, 1\); got 1\.5"),
    Row("n-train-too-large", HC + ("-P", "n_train=5000"), 2, r"n_train=5000 but digits has only 1200 training images"),
    Row("dtype-not-offered", RUN + ("--dtype", "float16"), 2, r"argument --dtype: invalid choice: 'float16'"),
    Row("diverged-run", RUN[:3] + ("-O", "lr_x=1e12", "-O", "lr_y=1.9", "--max-iter", "300", "--out", "{cwd}/d.csv"),
        1, stdout=r"diverged after \d+ iterations", present=("d.csv", "d.json")),
    # ---- outer optimizer and checkpoints (issue 13): usage errors, nothing written
    Row("outer-unknown", RUN + ("-O", "outer=adan"), 2, r"LancBiO: unknown outer 'adan'\. Did you mean 'adam'\?",
        absent=("results",)),
    Row("outer-option-unknown", RUN + ("-O", "outer=adam", "-O", "outer.lrr=0.1"), 2,
        r"LancBiO: unknown outer option 'lrr' for Adam\. Did you mean 'lr'\?"),
    Row("outer-and-lr-x", RUN + ("-O", "outer=adam", "-O", "lr_x=0.5"), 2, r"lr_x=0\.5 and outer='adam' both set the x-step"),
    Row("resume-missing", RUN + ("--resume", "{cwd}/nothing", "--out", "{cwd}/r.csv"), 2,
        r"resume_from: no checkpoint at '.*nothing'; give a checkpoint file or folder\.", absent=("r.csv", "r.json")),
    Row("checkpoint-every-zero", RUN + ("--checkpoint", "ck", "--checkpoint-every", "0"), 2,
        r"argument --checkpoint-every: must be an integer >= 1; got 0"),
    # ---- usage errors: exit 2 and one line, like every other usage error (fixed)
    Row("O-without-equals", RUN + ("-O", "lr_x"), 2, r"argument -O/--solver-opt: expected KEY=VALUE; got 'lr_x'", real=True,
        absent=("results",)),
    Row("P-without-equals", RUN + ("-P", "n"), 2, r"argument -P/--problem-opt: expected KEY=VALUE; got 'n'"),
    Row("O-without-key", RUN + ("-O", "=3"), 2, r"expected KEY=VALUE; got '=3', which has no KEY"),
    Row("negative-max-iter", RUN[:3] + ("--max-iter", "-5"), 2, r"argument --max-iter: must be an integer >= 0; got -5"),
    Row("max-iter-not-int", RUN[:3] + ("--max-iter", "ten"), 2, r"argument --max-iter: expected an integer >= 0; got 'ten'"),
    Row("eval-every-zero", RUN + ("--eval-every", "0"), 2, r"argument --eval-every: must be an integer >= 1; got 0"),
    Row("negative-seed", RUN + ("--seed", "-1"), 2, r"argument --seed: must be an integer >= 0; got -1"),
    Row("negative-tol", RUN + ("--tol", "-1"), 2, r"argument --tol: must be a positive finite number; got -1"),
    Row("zero-max-time", RUN + ("--max-time", "0"), 2, r"argument --max-time: must be a positive finite number"),
    Row("zero-threads", RUN + ("--threads", "0"), 2, r"argument --threads: must be an integer >= 1; got 0"),
    Row("zero-nproc", RUN + ("--nproc", "0"), 2, r"argument --nproc: must be an integer >= 1; got 0"),
    # ---- mini-batches (--batch-size, --batch ROLE=B, --batch-mode): one line, exit 2, nothing written
    Row("batch-size-zero", HC + ("--batch-size", "0"), 2, r"argument --batch-size: must be an integer >= 1; got 0"),
    Row("batch-size-not-int", HC + ("--batch-size", "big"), 2, r"argument --batch-size: expected an integer >= 1; got 'big'"),
    Row("batch-unknown-role", HC + ("--batch-size", "8", "--batch", "hpv=4"), 2,
        r"argument --batch: unknown batch role 'hpv'\. Did you mean 'hvp'\? Roles: inner, upper, hvp, cross, lower"),
    Row("batch-without-equals", HC + ("--batch", "upper"), 2, r"argument --batch: expected ROLE=B; got 'upper'"),
    Row("batch-role-size-zero", HC + ("--batch", "upper=0"), 2, r"argument --batch: must be an integer >= 1; got 0"),
    Row("batch-without-batch-size", HC + ("--batch", "upper=8", "--out", "{cwd}/b.csv"), 2,
        r"--batch sets the size of one role, and inner, hvp, cross, lower have none — add --batch-size B",
        absent=("b.csv", "b.json")),
    Row("batch-mode-without-size", HC + ("--batch-mode", "fixed_slices"), 2,
        r"--batch-mode fixed_slices needs mini-batches — add --batch-size B", absent=("results",)),
    Row("batch-mode-unknown", HC + ("--batch-size", "8", "--batch-mode", "random"), 2,
        r"argument --batch-mode: invalid choice: 'random' \(choose from '?permutation'?, '?fixed_slices'?\)"),
    Row("minibatch-without-data", RUN + ("--batch-size", "8"), 2,
        r"MiniBatch: quadratic declares no lower-level data size \(n_samples\), so there is nothing to sample",
        absent=("results",)),
    # ---- devices (fixed: no raw torch error)
    Row("cuda-unavailable", RUN + ("--device", "cuda:99"), 2, NO_CUDA),
    Row("meta-device", RUN + ("--device", "meta"), 2, r"device 'meta' holds shapes but no values, .* — use 'cpu' or 'cuda'"),
    Row("unknown-device", RUN + ("--device", "gpu"), 2, r"unknown device 'gpu' — use 'cpu', 'cuda' or 'cuda:N'"),
    # ---- data (fixed: one line, nothing created)
    Row("missing-data-offline", HC + ("--dataset", "mnist"), 2,
        r"MNIST: 4 file\(s\) missing from .*/data/mnist and downloading is disabled \(BILEVEL_OFFLINE is set\) — "
        r"put them there, point --data-dir", env={"BILEVEL_DATA_DIR": "{cwd}/data"}, real=True, absent=("data",)),
    Row("missing-data-dir", HC + ("--dataset", "fashion_mnist", "--data-dir", "{cwd}/nowhere"), 2,
        r"Fashion-MNIST: 4 file\(s\) missing from .*/nowhere/fashion_mnist .* or allow downloads \(unset BILEVEL_OFFLINE\)",
        absent=("nowhere",)),
    Row("missing-kmnist", HC + ("--dataset", "kmnist", "--data-dir", "{cwd}/nowhere"), 2, r"KMNIST: 4 file\(s\) missing",
        absent=("nowhere",)),
    Row("checksum-mismatch", HC + ("--dataset", "mnist", "--data-dir", "{tmp}/baddata"), 2,
        r"checksum mismatch for .*/baddata/mnist/\S+-ubyte\.gz \(size 8 bytes, expected \d+: truncated or extended\): "
        r"sha256 \w+…, expected \w+… — delete the file and download it again"),
    # ---- output path (fixed: refused before the run, not after it)
    Row("out-is-json", RUN + ("--out", "{cwd}/r.json"), 2, r"--out names the CSV history, got '.*r\.json' — give a \.csv path",
        absent=("r.json",)),
    Row("out-under-a-file", RUN + ("--out", "{tmp}/afile/r.csv"), 2, r"cannot create the folder of --out .* — choose a writable path"),
    Row("out-is-a-folder", RUN + ("--out", "{cwd}"), 2, r"--out '.*' is a folder — give a file path"),
    # ---- the stack on request
    Row("traceback-flag", RUN + ("--solver", "lancbo", "--traceback"), 2, r"Did you mean 'lancbio'", traceback=True, real=True),
    Row("traceback-global-flag", ("--traceback",) + RUN + ("--device", "gpu"), 2, r"unknown device 'gpu'", traceback=True),
    Row("debug-env", ("show", "nothing"), 2, r"nothing named 'nothing'", env={"BILEVEL_DEBUG": "1"}, traceback=True),
    # ---- good inputs next to the bad ones
    Row("version", ("--version",), 0, stdout=rf"^bilevel {re.escape(bilevel.__version__)} \(torch ", real=True),
    Row("list-problems", ("list", "problems"), 0, stdout=r"quadratic +A quadratic bilevel problem with every quantity"),
    Row("good-run", RUN + ("--out", "{cwd}/r.csv"), 0, stdout=r"history written to .*r\.csv", present=("r.csv", "r.json")),
    # ---- problem kinds (issue 14): an AID solver on an RL problem and an RL solver on a classic one
    Row("aid-solver-on-rl-problem", ("run", "rl_synthetic", "--solver", "lancbio", "--max-iter", "1"), 2,
        r"solver 'lancbio' handles classic bilevel problems, but problem 'rl_synthetic' is a bilevel RL problem"),
    Row("rl-solver-on-classic-problem", RUN + ("--solver", "m_sobirl"), 2,
        r"solver 'm_sobirl' handles bilevel RL problems, but problem 'quadratic' is a classic bilevel problem"),
]


# ---------------------------------------------------------------------------------------------- running

DRIVER = r'''
import json, os, signal, sys, time, traceback
rows, results = json.load(open(sys.argv[1])), {}
from bilevel.cli import main  # the console script's target (pyproject: bilevel = "bilevel.cli:main")
try:  # warm what the digits rows import anyway (scikit-learn, ~1 s), once instead of in every child
    import sklearn.datasets  # noqa: F401
except ImportError:
    pass
sys.stdout.flush(); sys.stderr.flush()
for row in rows:
    out, err = row["cwd"] + ".out", row["cwd"] + ".err"
    pid = os.fork()
    if pid == 0:  # the row's own process: what the console script does, `sys.exit(main())`
        code = 1
        try:
            os.chdir(row["cwd"])
            os.environ.update(row["env"])
            for fd, path in ((1, out), (2, err)):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
            sys.argv = ["bilevel", *row["argv"]]
            try:
                code = main()
            except SystemExit as exc:
                code = exc.code
            except BaseException:  # what the interpreter does with an uncaught exception
                traceback.print_exc()
                code = 1
            if code is None:
                code = 0
            elif not isinstance(code, int):
                print(code, file=sys.stderr)
                code = 1
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    start, deadline, status = time.monotonic(), time.monotonic() + 120, None
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(raw)
        elif time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = "timeout"
        else:
            time.sleep(0.005)
    results[row["id"]] = {"code": status, "stdout": open(out).read(), "stderr": open(err).read(),
                          "seconds": time.monotonic() - start}
json.dump(results, open(sys.argv[2], "w"))
'''


def _script() -> list[str]:
    exe = shutil.which("bilevel", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "bilevel"]


def _fill(text: str, tmp: Path, cwd: Path) -> str:
    return text.replace("{tmp}", str(tmp)).replace("{cwd}", str(cwd))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Run every row once: the driver, and beside it the real-script rows two at a time."""
    tmp = tmp_path_factory.mktemp("cli")
    bad = tmp / "baddata" / "mnist"
    bad.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        (bad / name).write_bytes(b"garbage!")
    (tmp / "afile").write_text("a file, not a folder")
    env = {k: v for k, v in os.environ.items() if k not in ("BILEVEL_DEBUG", "BILEVEL_DATA_DIR")}
    # never the network; an empty data root; wide help text; one thread per process (2-core machines)
    env.update(BILEVEL_OFFLINE="1", BILEVEL_DATA_DIR=str(tmp / "empty-data-root"), COLUMNS="200",
               OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    every_real = os.environ.get("BILEVEL_TEST_REAL_CLI", "") not in ("", "0") or not hasattr(os, "fork")
    specs, real_jobs = [], []
    for row in ROWS:
        for kind in ("driver", "real") if row.real or every_real else ("driver",):
            if kind == "driver" and every_real:
                continue
            cwd = tmp / kind / row.id
            cwd.mkdir(parents=True)
            spec = {"id": row.id, "cwd": str(cwd), "argv": [_fill(a, tmp, cwd) for a in row.argv],
                    "env": {k: _fill(v, tmp, cwd) for k, v in row.env.items()}}
            (specs if kind == "driver" else real_jobs).append(spec)

    def drive() -> dict:
        if not specs:
            return {}
        (tmp / "rows.json").write_text(json.dumps(specs))
        proc = subprocess.run([sys.executable, "-c", DRIVER, str(tmp / "rows.json"), str(tmp / "out.json")],
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return json.loads((tmp / "out.json").read_text())

    def real(spec: dict) -> tuple[str, dict]:
        proc = subprocess.run(_script() + spec["argv"], env={**env, **spec["env"]}, cwd=spec["cwd"],
                              capture_output=True, text=True, timeout=300)
        return spec["id"], {"code": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}

    with ThreadPoolExecutor(max_workers=3) as pool:
        driven = pool.submit(drive)
        reals = dict(pool.map(real, real_jobs))
        driven = driven.result()
    return {"tmp": tmp, "driver": driven, "real": reals}


def _check(row: Row, result: dict, cwd: Path) -> None:
    code, out, err = result["code"], result["stdout"], result["stderr"]
    shown = f"exit {code}\n--- stdout\n{out[-2000:]}\n--- stderr\n{err[-3000:]}"
    assert code == row.code, shown
    if row.stderr:
        assert re.search(row.stderr, err), shown
    if row.stdout:
        assert re.search(row.stdout, out, re.M), shown
    assert ("Traceback (most recent call last)" in err) == row.traceback, shown
    errors = [line for line in err.splitlines() if line.startswith("bilevel: ") and
              not line.startswith("bilevel: warning: ")]
    assert len(errors) == (row.code != 0), shown  # an error is exactly one line; success prints none
    if row.code:
        assert errors[0] == err.rstrip("\n").splitlines()[-1], shown  # the last thing said
    for path in row.absent:
        assert not (cwd / path).exists(), f"{path} was created\n{shown}"
    for path in row.present:
        assert (cwd / path).is_file(), f"{path} is missing\n{shown}"


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_cli_row(row: Row, outcomes):
    tmp = outcomes["tmp"]
    if row.id in outcomes["driver"]:
        _check(row, outcomes["driver"][row.id], tmp / "driver" / row.id)
    if row.id in outcomes["real"]:
        _check(row, outcomes["real"][row.id], tmp / "real" / row.id)


def test_table_size_and_real_rows():
    assert len(ROWS) >= 25 and len({r.id for r in ROWS}) == len(ROWS)
    assert sum(r.real for r in ROWS) >= 4


def test_python_m_bilevel(tmp_path):
    """``python -m bilevel`` is the command line too (src/bilevel/__main__.py)."""
    proc = subprocess.run([sys.executable, "-m", "bilevel", "run", "quadratic", "-O", "lr_x"], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2 and "expected KEY=VALUE" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------- in-process rows


def _toy(turn_bad_after: int | None = None):
    """A 3-dimensional quadratic bilevel problem whose f returns a vector from its ``turn_bad_after``-th call."""
    calls = {"f": 0}
    A = 2.0 * torch.eye(3, dtype=torch.float64)

    def factory(seed: int = 0):
        def f(x, y):
            calls["f"] += 1
            r = (y - 1.0) ** 2
            return r if turn_bad_after is not None and calls["f"] > turn_bad_after else r.sum() + (x ** 2).sum()

        def g(x, y):
            return 0.5 * y @ A @ y - x @ y

        zeros = torch.zeros(3, dtype=torch.float64)
        return bilevel.BilevelProblem(f, g, zeros, zeros, name="toy")

    return factory


@dataclass(frozen=True)
class InProcess:
    id: str
    call: Callable[..., Any]
    error: type | None
    message: str
    code: int | None = None


def _cli(argv, factory):
    def run(tmp_path, monkeypatch, capsys):
        monkeypatch.setitem(PROBLEMS._entries, "toy", factory)
        code = main([_fill(a, tmp_path, tmp_path) for a in argv])
        return code, capsys.readouterr().err
    return run


def _meta(n=3):
    return torch.zeros(n, dtype=torch.float64, device="meta")


_cpu_A = torch.eye(3, dtype=torch.float64)
_meta_A = torch.eye(3, dtype=torch.float64, device="meta")
_f = lambda x, y: ((y - 1) ** 2).sum() + (x ** 2).sum()
_g_cpu = lambda x, y: 0.5 * y @ (_cpu_A @ y) - x @ y
_g_meta = lambda x, y: 0.5 * y @ (_meta_A @ y) - x @ y
_f_meta = lambda x, y: ((y - _meta_A[0]) ** 2).sum()
_zeros = lambda: torch.zeros(3, dtype=torch.float64)

IN_PROCESS = [
    InProcess("f-non-scalar-mid-run",
              _cli(["run", "toy", "-O", "lr_x=0.1", "-O", "lr_y=0.1", "--max-iter", "50", "--eval-every", "1",
                    "--no-progress", "--out", "{tmp}/t.csv"], _toy(turn_bad_after=30)),
              None, r"^bilevel: the run failed after the evaluation of iteration \d+: ProblemError: f must return a "
                    r"scalar at every point; at this \(x, y\) it returned a tensor of shape \(3,\)\. Reduce it, e\.g\. "
                    r"with \.mean\(\) or \.sum\(\)\. — .*the history so far \(\d+ evaluations\) is in ",
              code=1),
    InProcess("custom-problem-without-steps",
              _cli(["run", "toy", "--solver", "pbgd", "--max-iter", "2", "--no-progress", "--out", "{tmp}/t.csv"], _toy()),
              None, r"^bilevel: PBGD: lr_x has no value: pass lr_x=\.\.\. \(problem 'toy' has no scale for it\)",
              code=2),
    InProcess("x0-y0-on-meta", lambda: bilevel.BilevelProblem(_f, _g_cpu, _meta(), _meta()), ProblemError,
              r"x0 is on the meta device \(a shape without values\) but f and g compute with tensors on 'cpu' — "
              r"create x0 and y0 on 'cpu'"),
    InProcess("y0-on-meta", lambda: bilevel.BilevelProblem(_f, _g_cpu, _zeros(), _meta()), ProblemError,
              r"y0 is on the meta device"),
    InProcess("g-data-on-meta", lambda: bilevel.BilevelProblem(_f, _g_meta, _zeros(), _zeros()), ProblemError,
              r"g\(x0, y0\) mixes devices: x0 and y0 are on cpu but g uses tensors on meta — move x0 and y0 "
              r"\(or g's data\) to one device"),
    InProcess("f-data-on-meta", lambda: bilevel.BilevelProblem(_f_meta, _g_cpu, _zeros(), _zeros()), ProblemError,
              r"f\(x0, y0\) mixes devices: x0 and y0 are on cpu but f uses tensors on meta"),
    InProcess("factory-cuda-unavailable", lambda: get_problem("quadratic", device="cuda:99"), ProblemError, NO_CUDA),
    InProcess("factory-meta-device", lambda: get_problem("synthetic", n=4, device="meta"), ProblemError,
              r"synthetic: device 'meta' holds shapes but no values"),
]


@pytest.mark.parametrize("case", IN_PROCESS, ids=[c.id for c in IN_PROCESS])
def test_in_process_row(case: InProcess, tmp_path, monkeypatch, capsys):
    if case.error is not None:
        with pytest.raises(case.error, match=case.message):
            case.call()
        return
    code, err = case.call(tmp_path, monkeypatch, capsys)
    assert code == case.code, err
    assert re.search(case.message, err, re.M), err
    assert "Traceback" not in err and len([ln for ln in err.splitlines() if ln.startswith("bilevel: ")]) == 1
    if case.id == "f-non-scalar-mid-run":  # what ran before the failure is kept, and says it failed
        meta = json.loads((tmp_path / "t.json").read_text())
        assert meta["status"] == "failed" and "ProblemError" in meta["message"] and not meta["interrupted"]
        rows = (tmp_path / "t.csv").read_text().splitlines()
        assert len(rows) - 1 == meta["iterations"] >= 5
