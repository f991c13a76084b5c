"""Ctrl-C and `bilevel run`: the history so far and the metadata are written (status stopped, interrupted),
one line is printed, the exit code is 130; during problem construction nothing is written.

The first two tests send a real SIGINT to a real process; the others raise KeyboardInterrupt at a chosen
point in-process, to cover both ways a run can be interrupted: inside a solver step (``solve`` catches it
and returns a stopped result) and inside an evaluation (it reaches the CLI, which writes what it was given).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import bilevel
from bilevel.cli import main
from bilevel.problems import PROBLEMS

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="POSIX signals")

def _default_sigint() -> None:
    """In the child, before exec: Ctrl-C's default action.  A suite started in the background by a
    non-interactive shell (``make test &``) inherits SIGINT *ignored*, which exec keeps, and Python then
    installs no KeyboardInterrupt handler: the child would not see the interrupt under test."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)



def _script() -> list[str]:
    exe = shutil.which("bilevel", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "bilevel"]


class _Watch:
    """Collects a stream in a thread; ``wait_for(pattern)`` blocks until the pattern has been seen."""

    def __init__(self, stream) -> None:
        self.data = b""
        self._stream = stream
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while chunk := self._stream.read1(4096):
            self.data += chunk

    def wait_for(self, pattern: bytes, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.data):
                return True
            time.sleep(0.02)
        return False

    def text(self) -> str:
        self._thread.join(timeout=10)
        return self.data.decode(errors="replace")


def _interrupt(cmd: list[str], ready: bytes, cwd) -> tuple[int, str, str]:
    env = {**os.environ, "BILEVEL_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("BILEVEL_DEBUG", None)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_default_sigint)
    out, err = _Watch(proc.stdout), _Watch(proc.stderr)
    try:
        seen = err.wait_for(ready, timeout=120)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert seen, f"never saw {ready!r}; stderr:\n{err.text()[-3000:]}"
    return code, out.text(), err.text()


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("bilevel: ")]


def test_sigint_during_run_writes_history_and_exits_130(tmp_path):
    out = tmp_path / "runs" / "r.csv"
    cmd = _script() + ["run", "synthetic", "-P", "n=100", "-P", "condition=100", "--max-iter", "100000000",
                       "--eval-every", "1", "--out", str(out)]
    # the progress bar has counted at least three iterations: the run is well under way
    code, stdout, err = _interrupt(cmd, rb"\| *([3-9]|\d\d+)/100000000", tmp_path)
    assert code == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    lines = _error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("bilevel: interrupted") and str(out) in lines[0], err[-2000:]
    rows = list(csv.DictReader(open(out)))
    assert len(rows) >= 3
    iterations = [int(r["iteration"]) for r in rows]
    assert iterations == list(range(len(rows))) or iterations[:-1] == list(range(len(rows) - 1))
    assert all(float(r["hypergrad_norm"]) >= 0 for r in rows)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["status"] == "stopped" and meta["interrupted"] is True
    assert meta["iterations"] == iterations[-1] + 1 and "interrupted" in meta["message"]
    assert meta["seed"] == 0 and meta["problem_seed"] == 0 and meta["threads"] >= 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.csv", "r.json"]  # no temporary files left


SLOW_PROBLEM = """
import sys, time
import bilevel
from bilevel.cli import main
from bilevel.problems import PROBLEMS

def slow(seed: int = 0):
    print("building the problem", file=sys.stderr, flush=True)
    time.sleep(120)  # stands for a long data download or instance generation

PROBLEMS.register(slow, name="slow")
sys.exit(main(["run", "slow", "--no-progress", "--out", "r.csv"]))
"""


def test_sigint_while_building_the_problem(tmp_path):
    code, stdout, err = _interrupt([sys.executable, "-c", SLOW_PROBLEM], rb"building the problem", tmp_path)
    assert code == 130, err
    assert "Traceback" not in err
    assert _error_lines(err) == ["bilevel: interrupted while building the problem — nothing was written"]
    assert sorted(os.listdir(tmp_path)) == []


def _toy(interrupt_in: str, after: int):
    """A quadratic toy whose ``interrupt_in`` ("g": during a step, "metrics": during an evaluation) raises
    KeyboardInterrupt from its ``after``-th call on."""
    calls = {"n": 0}
    A = 2.0 * torch.eye(3, dtype=torch.float64)

    def tick(where):
        if where == interrupt_in:
            calls["n"] += 1
            if calls["n"] > after:
                raise KeyboardInterrupt

    def factory(seed: int = 0):
        def f(x, y):
            return ((y - 1.0) ** 2).sum() + (x ** 2).sum()

        def g(x, y):
            if torch.is_grad_enabled():
                tick("g")
            return 0.5 * y @ A @ y - x @ y

        def metrics(x, y):
            tick("metrics")
            return {"x0": float(x[0])}

        zeros = torch.zeros(3, dtype=torch.float64)
        return bilevel.BilevelProblem(f, g, zeros, zeros, name="toy", metrics=metrics,
                                      presets={"*": {"lr_x": 0.1, "lr_y": 0.1, "eta": 0.1}})

    return factory


@pytest.mark.parametrize("where", ["g", "metrics"])
def test_ctrl_c_inside_a_step_or_an_evaluation(tmp_path, monkeypatch, capsys, where):
    monkeypatch.setitem(PROBLEMS._entries, "toy", _toy(where, after=40))
    out = tmp_path / "t.csv"
    code = main(["run", "toy", "--solver", "soba", "--max-iter", "1000", "--eval-every", "2", "--no-progress",
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 130
    assert captured.out == ""  # one line, on stderr
    lines = _error_lines(captured.err)
    assert len(lines) == 1 and lines[0].startswith("bilevel: interrupted") and str(out) in lines[0]
    rows = list(csv.DictReader(open(out)))
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["status"] == "stopped" and meta["interrupted"] is True and rows
    assert meta["iterations"] == int(rows[-1]["iteration"]) + 1
    assert meta["counts"]["grad_y_g"] > 0 and meta["options"]["lr_x"] == 0.1
    # a step: solve() caught it and returned a stopped result; an evaluation: the CLI wrote the rows it had
    assert ("during iteration" if where == "g" else "after the evaluation of iteration") in meta["message"]
