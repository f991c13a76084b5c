"""Checkpoints and ``solve(resume_from=...)``: a resumed run is bit-identical to an uninterrupted one.

The protocol of every test: run K = 40 iterations with a checkpoint every 10; run again but stop at 25
(checkpoints at 10 and 20); resume from the iteration-20 checkpoint to 40.  The histories (every column but
``time``), the counts, the events, the status and the final x, y, v must be equal (``==``, ``torch.equal``).
"""

from __future__ import annotations

import csv
import os
import warnings

import pytest
import torch

import bilevel
from bilevel.callbacks import Checkpoint, EarlyStopping
from bilevel.checkpoint import CheckpointError
from bilevel.cli import main
from bilevel.kinds import solvers_for
from bilevel.sampling import _MiniBatchStream
from bilevel.solvers import SOLVERS, get_solver


def _quad(stochastic: bool = False, seed: int = 0):
    extra = {"n_samples": 200, "n_samples_f": 100} if stochastic else {}
    return bilevel.problems.quadratic(dx=5, dy=20, condition=10.0, seed=seed, **extra)


def _strip(res):
    return [{k: v for k, v in row.items() if k != "time"} for row in res.history]


def _run(problem, solver, max_iter, stochastic, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bilevel.solve(problem, solver, max_iter=max_iter, eval_every=3, seed=1,
                             batches=bilevel.MiniBatch(32) if stochastic else None, **kw)


def _same(a, b):
    assert _strip(a) == _strip(b)
    assert a.counts == b.counts and a.events == b.events and a.status == b.status and a.iterations == b.iterations
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert (a.v is None and b.v is None) or torch.equal(a.v, b.v)


def _interrupted_and_resumed(tmp_path, problem, solver, stochastic, resume_at=20, **kw):
    folder = tmp_path / "ckpt"
    _run(problem, solver, 25, stochastic, callbacks=[Checkpoint(folder, every=10)], **kw)
    assert sorted(os.listdir(folder)) == ["checkpoint-00000010.pt", "checkpoint-00000020.pt"]  # no temporaries left
    return _run(problem, solver, 40, stochastic, resume_from=folder / f"checkpoint-{resume_at:08d}.pt", **kw)


CASES = {
    "lancbio": ("lancbio", {}, False),
    "amigo_cg": ("amigo_cg", {}, False),
    "soba": ("soba", {}, False),
    "lancbio minibatch": ("lancbio", {}, True),
    "amigo_cg minibatch": ("amigo_cg", {}, True),
    "soba minibatch": ("soba", {}, True),
    # the solver's own generator: v_0 ~ N(0, I) and Neumann's random truncation p
    "lancbio randn v0 minibatch": ("lancbio", {"v_init": "randn"}, True),
    "stocbio minibatch": ("stocbio", {}, True),
    "lancbio adam + steplr minibatch": ("lancbio", {"outer": "adam", "outer.lr": 0.05, "outer_scheduler": "steplr",
                                                    "outer_scheduler.step_size": 15}, True),
    "lancbio plain mode (basis window)": ("lancbio", {"plain_until": 30, "m": 6}, False),
    "f2sa rmsprop minibatch": ("f2sa", {"outer": "rmsprop", "outer.lr": 0.01}, True),
    # automatic steps (bilevel.auto_steps): L̂, μ̂ and AdaGrad-norm's sum travel in the state
    "itd automatic steps": ("itd", {"lr_x": "auto", "lr_y": "auto"}, False),
    "pbgd automatic θ": ("pbgd", {"lr_y": "auto"}, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_resume_is_bit_identical(tmp_path, case):
    name, options, stochastic = CASES[case]
    problem = _quad(stochastic)
    solver = get_solver(name, **options)
    full = _run(problem, solver, 40, stochastic, callbacks=[Checkpoint(tmp_path / "full", every=10)])
    _same(full, _run(problem, solver, 40, stochastic))  # checkpointing does not perturb the run
    _same(full, _interrupted_and_resumed(tmp_path, problem, solver, stochastic))


@pytest.mark.parametrize("name", solvers_for("classic"))  # RL problems: the test below
def test_every_solver_resumes(tmp_path, name):
    cls = SOLVERS[name]
    solver = cls.create(**cls.checks.get("counts", {}).get("options", {}))
    problem = _quad()
    _same(_run(problem, solver, 40, False), _interrupted_and_resumed(tmp_path, problem, solver, False, resume_at=10))


def test_rl_and_classic_runs_refuse_each_others_checkpoints(tmp_path):
    """RL runs checkpoint too (tests/test_rl_runs.py); a checkpoint of one kind does not resume the other."""
    rl = bilevel.problems.rl_synthetic(seed=0, dim=4)
    bilevel.solve(rl, get_solver("m_sobirl"), max_iter=3, callbacks=[Checkpoint(tmp_path / "rl", every=3)])
    bilevel.solve(_quad(), get_solver("amigo_cg"), max_iter=3, callbacks=[Checkpoint(tmp_path / "aid", every=3)])
    with pytest.raises(CheckpointError, match=r"^resume_from: .* was written for problem 'quadratic', this run has "
                                              r"'rl_synthetic'; resume with the problem, solver"):
        bilevel.solve(rl, get_solver("m_sobirl"), max_iter=5, resume_from=tmp_path / "aid")
    with pytest.raises(CheckpointError, match=r"^resume_from: .* was written for problem 'rl_synthetic', this run has "
                                              r"'quadratic'"):
        bilevel.solve(_quad(), get_solver("amigo_cg"), max_iter=5, resume_from=tmp_path / "rl")


def test_the_comparison_catches_a_stream_not_restored(tmp_path, monkeypatch):
    """Control: without the batch stream's state the resumed run draws other batches, and the test sees it."""
    problem, solver = _quad(True), get_solver("amigo_cg")
    full = _run(problem, solver, 40, True)
    monkeypatch.setattr(_MiniBatchStream, "load_state_dict", lambda self, state: None)
    resumed = _interrupted_and_resumed(tmp_path, problem, solver, True)
    assert _strip(resumed)[:7] == _strip(full)[:7]  # the rows up to iteration 18 come from the checkpoint
    assert _strip(resumed) != _strip(full) and not torch.equal(resumed.x, full.x)


def test_folder_resumes_from_latest_and_keep(tmp_path):
    problem, solver = _quad(), get_solver("lancbio")
    full = _run(problem, solver, 40, False)
    _run(problem, solver, 35, False, callbacks=[Checkpoint(tmp_path, every=10, keep=2)])
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-00000020.pt", "checkpoint-00000030.pt"]
    # a resumed run writing into the folder it read from counts the files there towards keep
    resumed = _run(problem, solver, 40, False, resume_from=tmp_path, callbacks=[Checkpoint(tmp_path, every=10, keep=2)])
    _same(full, resumed)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-00000030.pt", "checkpoint-00000040.pt"]


def test_resume_at_or_past_max_iter_returns_the_checkpoint(tmp_path):
    problem, solver = _quad(), get_solver("lancbio")
    _run(problem, solver, 20, False, callbacks=[Checkpoint(tmp_path, every=10)])
    res = _run(problem, solver, 20, False, resume_from=tmp_path)
    ref = _run(problem, solver, 20, False)
    assert res.iterations == 20 and res.counts == ref.counts and torch.equal(res.x, ref.x)


def test_early_stopping_state_survives_resume(tmp_path, monkeypatch):
    problem, solver = _quad(), get_solver("lancbio", lr_x=0.05)

    def stopper():
        return EarlyStopping("f", mode="max", patience=4)  # f mostly falls: stops soon after the start

    full = _run(problem, solver, 40, False, callbacks=[stopper()])
    assert full.status == "stopped" and 10 < full.iterations < 40 and "early stopping" in full.message
    _run(problem, solver, 40, False, callbacks=[stopper(), Checkpoint(tmp_path, every=5)])
    resume = {"callbacks": [stopper()], "resume_from": tmp_path / "checkpoint-00000010.pt"}
    resumed = _run(problem, solver, 40, False, **resume)
    _same(full, resumed)
    assert resumed.message == full.message
    # control: a stopper that forgets its state stops elsewhere
    monkeypatch.setattr(EarlyStopping, "load_state_dict", lambda self, state: None)
    resume["callbacks"] = [stopper()]
    assert _run(problem, solver, 40, False, **resume).iterations != full.iterations


def test_checkpoint_loads_without_code(tmp_path):
    problem, solver = _quad(True), get_solver("lancbio", outer="adam")
    _run(problem, solver, 10, True, callbacks=[Checkpoint(tmp_path, every=10)])
    payload = torch.load(tmp_path / "checkpoint-00000010.pt", weights_only=True)
    assert payload["format"] == "bilevel-checkpoint" and payload["iterations"] == 10
    assert payload["header"]["solver"] == "lancbio" and payload["header"]["options"]["outer"] == "torch.optim.adam.Adam"


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _write(path, payload):
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("damage", ["truncated", "garbage", "pickled code", "not a checkpoint", "missing file"])
def test_damaged_checkpoints_are_one_line_errors(tmp_path, damage):
    problem, solver = _quad(), get_solver("lancbio")
    _run(problem, solver, 10, False, callbacks=[Checkpoint(tmp_path, every=10)])
    path = tmp_path / "checkpoint-00000010.pt"
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    elif damage == "pickled code":
        _write(path, {"format": "bilevel-checkpoint", "version": 1, "x": _Evil()})
    elif damage == "not a checkpoint":
        _write(path, {"weights": torch.zeros(3)})
    else:
        path = tmp_path / "nothing.pt"
    with pytest.raises(CheckpointError) as info:
        _run(problem, solver, 20, False, resume_from=path)
    text = str(info.value)
    assert "\n" not in text and text.startswith("resume_from: ")
    expected = {"truncated": "truncated, corrupted", "garbage": "truncated, corrupted",
                "pickled code": "truncated, corrupted", "not a checkpoint": "not a bilevel checkpoint",
                "missing file": "no checkpoint at"}[damage]
    assert expected in text, text


@pytest.mark.parametrize("change, expected", [
    ({"solver": get_solver("amigo_cg")}, "was written for solver 'lancbio', this run has 'amigo_cg'"),
    ({"solver": get_solver("lancbio", m=5)}, "other solver options (m: 10 there, 5 here)"),
    ({"seed": 2}, "was written for seed 1, this run has 2"),
    ({"problem": _quad(seed=3)}, "another instance of 'quadratic'"),
    ({"problem": bilevel.problems.quadratic(dx=6, dy=20, seed=0)}, "was written for dx 5, this run has 6"),
    ({"batches": bilevel.MiniBatch(16), "problem": _quad(True)}, "was written for stochastic False"),
])
def test_mismatched_checkpoints_are_refused(tmp_path, change, expected):
    problem, solver = _quad(), get_solver("lancbio")
    _run(problem, solver, 10, False, callbacks=[Checkpoint(tmp_path, every=10)])
    kw = {"max_iter": 20, "eval_every": 3, "seed": change.get("seed", 1), "batches": change.get("batches"),
          "resume_from": tmp_path}
    with pytest.raises(CheckpointError, match="^resume_from: ") as info:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bilevel.solve(change.get("problem", problem), change.get("solver", solver), **kw)
    assert expected in str(info.value), str(info.value)


def test_other_minibatch_sizes_are_refused(tmp_path):
    problem, solver = _quad(True), get_solver("lancbio")
    _run(problem, solver, 10, True, callbacks=[Checkpoint(tmp_path, every=10)])
    with pytest.raises(CheckpointError, match="was written for batches 'MiniBatch\\(32\\)', this run has 'MiniBatch\\(16\\)'"):
        bilevel.solve(problem, solver, max_iter=20, seed=1, batches=bilevel.MiniBatch(16), resume_from=tmp_path)


def _csv_rows(path):
    with open(path) as fh:
        return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(fh)]


def test_cli_checkpoint_and_resume(tmp_path, capsys):
    common = ["run", "quadratic", "--solver", "lancbio", "--eval-every", "3", "--seed", "1", "--no-progress"]
    assert main(common + ["--max-iter", "40", "--out", str(tmp_path / "full.csv")]) == 0
    assert main(common + ["--max-iter", "25", "--checkpoint", str(tmp_path / "ck"), "--checkpoint-every", "10",
                          "--out", str(tmp_path / "part.csv")]) == 0
    assert main(common + ["--max-iter", "40", "--resume", str(tmp_path / "ck"), "--out", str(tmp_path / "res.csv")]) == 0
    assert _csv_rows(tmp_path / "res.csv") == _csv_rows(tmp_path / "full.csv")
    capsys.readouterr()
    assert main(common[:3] + ["amigo_cg"] + common[4:] + ["--max-iter", "40", "--resume", str(tmp_path / "ck"),
                                                          "--out", str(tmp_path / "bad.csv")]) == 2
    err = capsys.readouterr().err
    assert "was written for solver 'lancbio', this run has 'amigo_cg'" in err and not (tmp_path / "bad.csv").exists()


def test_checkpoint_file_permissions_follow_the_umask(tmp_path):
    _run(_quad(), get_solver("lancbio"), 10, False, callbacks=[Checkpoint(tmp_path, every=10)])
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(tmp_path / "checkpoint-00000010.pt").st_mode & 0o777 == 0o666 & ~mask


_KILLED_RUN = """
import os, signal, sys
import bilevel
from bilevel.callbacks import Callback, Checkpoint

class Kill(Callback):
    def on_iteration(self, k, run):
        if k + 1 == 25:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: as a crashed or killed job

problem = bilevel.problems.quadratic(dx=5, dy=20, condition=10.0, seed=0, n_samples=200, n_samples_f=100)
bilevel.solve(problem, bilevel.solvers.get_solver("lancbio"), max_iter=40, eval_every=3, seed=1,
              batches=bilevel.MiniBatch(32), callbacks=[Checkpoint(sys.argv[1], every=10), Kill()])
"""


def test_resume_after_sigkill(tmp_path):
    """A process killed (SIGKILL) at iteration 25 leaves its checkpoints at 10 and 20 whole; resuming from the
    folder (its latest, 20) in another process gives the uninterrupted run's history, bit for bit."""
    import signal
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.path.dirname(bilevel.__path__[0]),
                                                                     os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-c", _KILLED_RUN, str(tmp_path)], env=env, capture_output=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-00000010.pt", "checkpoint-00000020.pt"]
    problem, solver = _quad(True), get_solver("lancbio")
    _same(_run(problem, solver, 40, True), _run(problem, solver, 40, True, resume_from=tmp_path))
