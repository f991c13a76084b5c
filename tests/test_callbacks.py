"""``solve(callbacks=[...])``: the hook protocol, early stopping, and the TensorBoard and W&B loggers."""

from __future__ import annotations

import sys
import types

import pytest
import torch

import bilevel
from bilevel.callbacks import Callback, EarlyStopping, TensorBoard, WandB


@pytest.fixture(scope="module")
def quad():
    return bilevel.problems.quadratic(dx=5, dy=20, condition=10.0, seed=0)


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_start(self, info):
        self.calls.append(("start", info))

    def on_iteration(self, k, run):
        self.calls.append(("iteration", k, run.iterations))

    def on_evaluation(self, row):
        self.calls.append(("evaluation", row))
        return False

    def on_end(self, result):
        self.calls.append(("end", result))


def test_hooks_order_and_arguments(quad):
    rec, rows = Recorder(), []
    res = bilevel.solve(quad, bilevel.solvers.lancbio(), max_iter=12, eval_every=5, callbacks=[rec], callback=rows.append)
    kinds = [c[0] for c in rec.calls]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("iteration") == 12
    info = rec.calls[0][1]
    assert info["solver"] == "lancbio" and info["problem"] == "quadratic" and info["start"] == 0
    assert info["max_iter"] == 12 and info["options"]["m"] == 10
    assert [c[1] for c in rec.calls if c[0] == "iteration"] == list(range(12))
    assert [c[2] for c in rec.calls if c[0] == "iteration"] == list(range(1, 13))
    evaluated = [c[1] for c in rec.calls if c[0] == "evaluation"]
    assert evaluated == res.history.to_dicts() == rows  # the old callback= still gets every row
    # an evaluation is reported before the iteration's on_iteration
    assert kinds[1:3] == ["evaluation", "iteration"]
    assert rec.calls[-1][1] is res


def test_callbacks_do_not_change_the_run(quad):
    a = bilevel.solve(quad, bilevel.solvers.amigo_cg(), max_iter=30, eval_every=4)
    b = bilevel.solve(quad, bilevel.solvers.amigo_cg(), max_iter=30, eval_every=4, callbacks=[Recorder()])
    assert [{k: v for k, v in r.items() if k != "time"} for r in a.history] == \
           [{k: v for k, v in r.items() if k != "time"} for r in b.history]
    assert a.counts == b.counts and torch.equal(a.x, b.x)


def test_a_function_in_callbacks_can_stop(quad):
    res = bilevel.solve(quad, bilevel.solvers.lancbio(), max_iter=50, eval_every=5,
                        callbacks=[lambda row: row["iteration"] >= 10])
    assert res.status == "stopped" and res.message == "the callback asked to stop at iteration 10."


# ---- early stopping -------------------------------------------------------------------------------------
def _feed(stopper, values):
    for i, v in enumerate(values):
        if stopper.on_evaluation({"iteration": i, "loss": v}):
            return i
    return None


@pytest.mark.parametrize("mode, values, patience, min_delta, stop_at", [
    ("min", [5, 4, 3, 3, 3, 3], 3, 0.0, 5),          # no strict decrease for 3 evaluations
    ("min", [5, 4, 3.9, 3.8, 3.7, 3.6], 2, 0.25, 3),  # decreases by less than min_delta do not count
    ("min", [5, 4, 3.9, 3.8, 3.7, 3.6], 2, 0.0, None),
    ("max", [0.1, 0.5, 0.4, 0.6, 0.6, 0.55], 2, 0.0, 5),
    ("min", [1.0, float("nan"), float("nan"), 0.5], 2, 0.0, 2),  # NaN never improves
])
def test_early_stopping_rule(mode, values, patience, min_delta, stop_at):
    stopper = EarlyStopping("loss", mode=mode, patience=patience, min_delta=min_delta)
    assert _feed(stopper, values) == stop_at


def test_early_stopping_in_a_run(quad):
    # hypergrad_norm falls, so in mode "max" the first value stays the best: stop after `patience` evaluations
    res = bilevel.solve(quad, bilevel.solvers.lancbio(), max_iter=100, eval_every=5,
                        callbacks=[EarlyStopping("hypergrad_norm", mode="max", patience=3)])
    assert res.status == "stopped" and res.iterations == 16
    assert res.message.startswith("early stopping at iteration 15: hypergrad_norm has not increased by more than "
                                  "min_delta=0 for 3 evaluations (best "), res.message


def test_early_stopping_unknown_metric(quad):
    with pytest.raises(ValueError, match=r"^EarlyStopping: the run does not log 'test_acc'; logged columns: grad_x_f, .*hypergrad_norm"):
        bilevel.solve(quad, bilevel.solvers.lancbio(), max_iter=5, callbacks=[EarlyStopping("test_acc")])


# ---- TensorBoard ----------------------------------------------------------------------------------------
def test_tensorboard_writes_the_history(quad, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = bilevel.solve(quad, bilevel.solvers.lancbio(), max_iter=23, eval_every=5, max_time=1e9,
                        callbacks=[TensorBoard(tmp_path)])
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    events = acc.Scalars("bilevel/hypergrad_norm")
    assert [e.step for e in events] == [0, 5, 10, 15, 20, 22]
    # float32 in the event file
    assert [e.value for e in events] == pytest.approx(res.history.column("hypergrad_norm"), rel=1e-6)
    assert "bilevel/hvp" in acc.Tags()["scalars"]


def test_tensorboard_missing_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r'^TensorBoard: the tensorboard package is not installed; pip install '
                                          r'"bilevel\[tensorboard\]"'):
        TensorBoard(tmp_path)


# ---- Weights & Biases (a fake module: wandb is not installed) ---------------------------------------------
class _FakeRun:
    def __init__(self, config, kwargs):
        self.config, self.kwargs, self.logged, self.summary, self.finished = config, kwargs, [], {}, False

    def log(self, values, step):
        self.logged.append((step, dict(values)))

    def finish(self):
        self.finished = True


def _fake_wandb():
    module = types.ModuleType("wandb")
    module.runs = []

    def init(config=None, **kwargs):
        run = _FakeRun(config, kwargs)
        module.runs.append(run)
        return run

    module.init = init
    return module


def test_wandb_logs_rows_config_and_summary(quad, monkeypatch):
    fake = _fake_wandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    res = bilevel.solve(quad, bilevel.solvers.lancbio(), max_iter=12, eval_every=5,
                        callbacks=[WandB(project="demo", mode="offline", config={"note": "x"})])
    (run,) = fake.runs
    assert run.kwargs == {"project": "demo", "mode": "offline"}
    assert run.config["solver"] == "lancbio" and run.config["m"] == 10 and run.config["note"] == "x"
    assert [step for step, _ in run.logged] == [0, 5, 10, 11]
    assert [values["hypergrad_norm"] for _, values in run.logged] == res.history.column("hypergrad_norm")
    assert run.summary["status"] == "max_iter" and run.summary["hvp"] == res.counts.hvp and run.finished


def test_wandb_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=r'^WandB: the wandb package is not installed; pip install "bilevel\[wandb\]"'):
        WandB()
