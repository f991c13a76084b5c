"""Callbacks: ``solve(..., callbacks=[...])``.

A callback is any object with some of these methods (``Callback`` has them all, doing nothing):

    on_start(info)         once, before the first iteration; ``info`` is a dict: problem, solver, options,
                           seed, max_iter, eval_every, start (iterations already done: > 0 on a resumed run),
                           stochastic, dtype
    on_iteration(k, run)   after every iteration k (0-based) and its evaluation, if any; ``run.iterations``
                           (k + 1) and ``run.save_checkpoint(path)``.  Only callbacks that define it are
                           called, so loggers cost nothing per iteration
    on_evaluation(row)     with each evaluation row (a copy); return True to stop the run (status
                           ``stopped``; the message is the callback's ``stop_message`` when it has one)
    on_end(result)         once, with the ``Result`` (whatever the status, also after Ctrl-C)
    state_dict() / load_state_dict(state)
                           optional: saved in checkpoints and restored on ``resume_from`` (early stopping's
                           best value and patience count), matched by position and class name

``solve(callback=fn)`` (a function of the row, True to stop) keeps working next to ``callbacks``.  None of
the calls is timed: the solver time excludes them, as it excludes evaluation.

Ready-made: ``TensorBoard`` (``pip install "bilevel[tensorboard]"``), ``WandB`` (``pip install
"bilevel[wandb]"``), ``EarlyStopping`` and ``Checkpoint`` (see ``bilevel.checkpoint``).
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Optional

from ._validation import check_choice, check_int, check_positive

HOOKS = ("on_start", "on_iteration", "on_evaluation", "on_end")


class Callback:
    """Base class with every hook doing nothing (subclass and override what you need)."""

    def on_start(self, info: dict) -> None:
        pass

    def on_evaluation(self, row: dict) -> Optional[bool]:
        return None

    def on_end(self, result: Any) -> None:
        pass


def _numeric(row: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if k != "iteration" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class _Logger(Callback):
    """Logs every evaluation row's numbers at step = iteration, and at the end the rows the run appended
    outside ``on_evaluation`` (the last row of a run stopped by ``max_time``, Ctrl-C, ...)."""

    def __init__(self) -> None:
        self._last: Optional[int] = None

    def _log(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def on_evaluation(self, row: dict) -> None:
        step = int(row.get("iteration", 0))
        self._log(_numeric(row), step)
        self._last = step
        return None

    def _log_rest(self, result: Any) -> None:
        for row in result.history:
            step = int(row.get("iteration", 0))
            if self._last is None or step > self._last:
                self._log(_numeric(row), step)
                self._last = step


class TensorBoard(_Logger):
    """Writes every evaluation row to TensorBoard (``torch.utils.tensorboard.SummaryWriter``): one scalar per
    column, tagged ``prefix + column`` (e.g. ``"bilevel/hypergrad_norm"``), at step = iteration; at the end
    the status and message as text.  ``pip install "bilevel[tensorboard]"`` (the ``tensorboard`` package)."""

    def __init__(self, log_dir: str | os.PathLike, prefix: str = "bilevel/") -> None:
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)):
            raise TypeError(f"TensorBoard: log_dir must be a folder path; got {type(log_dir).__name__}.")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError('TensorBoard: the tensorboard package is not installed; pip install '
                              '"bilevel[tensorboard]" (or pip install tensorboard).') from None
        self.log_dir, self.prefix = os.fspath(log_dir), str(prefix)
        self._writer_class = SummaryWriter
        self.writer: Any = None

    def on_start(self, info: dict) -> None:
        self.writer = self._writer_class(log_dir=self.log_dir)
        shown = ", ".join(f"{k}={v}" for k, v in info.get("options", {}).items())
        self.writer.add_text(f"{self.prefix}run", f"{info.get('solver')} on {info.get('problem')}, seed "
                             f"{info.get('seed')}: {shown}", global_step=int(info.get("start", 0)))

    def _log(self, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            self.writer.add_scalar(f"{self.prefix}{key}", value, global_step=step)

    def on_end(self, result: Any) -> None:
        if self.writer is None:
            return
        self._log_rest(result)
        self.writer.add_text(f"{self.prefix}status", f"{result.status}: {result.message}",
                             global_step=int(result.iterations))
        self.writer.close()
        self.writer = None


class WandB(_Logger):
    """Logs every evaluation row to Weights & Biases: ``wandb.init(config=<options, seed, problem>, **init)``
    at the start, ``run.log(row, step=iteration)`` per evaluation, the status, message and oracle counts in
    the run's summary and ``run.finish()`` at the end.  ``init`` are ``wandb.init``'s keyword arguments
    (``project``, ``name``, ``mode="offline"``, ...).  ``pip install "bilevel[wandb]"``."""

    def __init__(self, **init: Any) -> None:
        super().__init__()
        try:
            import wandb
        except ImportError:
            raise ImportError('WandB: the wandb package is not installed; pip install "bilevel[wandb]" (or pip '
                              'install wandb).') from None
        self.wandb, self.init = wandb, dict(init)
        self.run: Any = None

    def on_start(self, info: dict) -> None:
        init = dict(self.init)
        config = {**{k: v for k, v in info.items() if k != "options"}, **info.get("options", {})}
        config.update(init.pop("config", None) or {})
        self.run = self.wandb.init(config=config, **init)

    def _log(self, values: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(values, step=step)

    def on_end(self, result: Any) -> None:
        if self.run is None:
            return
        self._log_rest(result)
        self.run.summary.update({"status": result.status, "message": result.message,
                                 "iterations": result.iterations, **result.counts.as_dict()})
        self.run.finish()
        self.run = None


class EarlyStopping(Callback):
    """Stop when ``metric`` (any logged column: ``hypergrad_norm``, ``test_accuracy``, ``f``, ...) has not
    improved by more than ``min_delta`` for ``patience`` evaluations in a row.  ``mode="min"``: improvement
    is value < best − min_delta; ``"max"``: value > best + min_delta.  A NaN value never improves.  The run
    ends ``stopped`` with a message naming the metric, its best value and where it was reached.  A row
    without the metric is an error naming the logged columns.  Its state (best, count) is saved in
    checkpoints."""

    def __init__(self, metric: str, mode: str = "min", patience: int = 5, min_delta: float = 0.0) -> None:
        if not isinstance(metric, str) or not metric:
            raise TypeError(f"EarlyStopping: metric must be a column name such as 'hypergrad_norm'; got {metric!r}.")
        self.metric = metric
        self.mode = check_choice("EarlyStopping", "mode", mode, ("min", "max"))
        self.patience = check_int("EarlyStopping", "patience", patience, 1)
        self.min_delta = check_positive("EarlyStopping", "min_delta", min_delta, allow_zero=True)
        self.best: Optional[float] = None
        self.best_iteration: Optional[int] = None
        self.wait = 0
        self.stop_message = ""

    def _improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_evaluation(self, row: dict) -> bool:
        if self.metric not in row:
            logged = ", ".join(k for k in row if k not in ("iteration", "time"))
            raise ValueError(f"EarlyStopping: the run does not log {self.metric!r}; logged columns: {logged}.")
        value = float(row[self.metric])
        if self._improves(value):
            self.best, self.best_iteration, self.wait = value, int(row.get("iteration", 0)), 0
            return False
        self.wait += 1
        if self.wait < self.patience:
            return False
        change = f"{'decreased' if self.mode == 'min' else 'increased'} by more than min_delta={self.min_delta:g}"
        self.stop_message = (f"early stopping at iteration {row.get('iteration')}: {self.metric} has not {change} "
                             f"for {self.patience} evaluations (best {self.best:.6g} at iteration "
                             f"{self.best_iteration}; now {value:.6g}).")
        return True

    def state_dict(self) -> dict:
        return {"best": self.best, "best_iteration": self.best_iteration, "wait": self.wait}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.best_iteration, self.wait = state["best"], state["best_iteration"], int(state["wait"])


class Checkpoint(Callback):
    """Save the run every ``every`` iterations to ``directory/checkpoint-<iterations done>.pt``, atomically
    (a temporary file, then ``os.replace``), keeping the last ``keep`` files (None: all).
    ``solve(..., resume_from=directory)`` (or a file) continues from the latest one with the same history,
    bit for bit, as an uninterrupted run (``bilevel.checkpoint``)."""

    def __init__(self, directory: str | os.PathLike, every: int = 100, keep: Optional[int] = None) -> None:
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"Checkpoint: directory must be a folder path; got {type(directory).__name__}.")
        self.directory = os.fspath(directory)
        self.every = check_int("Checkpoint", "every", every, 1)
        self.keep = None if keep is None else check_int("Checkpoint", "keep", keep, 1)
        self.written: list[str] = []

    def on_start(self, info: dict) -> None:
        from .checkpoint import FILE_PATTERN

        # files already in the folder (a resumed run writing where it read) count towards ``keep``
        try:
            names = os.listdir(self.directory)
        except OSError:
            names = []
        found = sorted((int(m.group(1)), n) for n in names if (m := FILE_PATTERN.match(n)))
        self.written = [os.path.join(self.directory, n) for _, n in found]

    def on_iteration(self, k: int, run: Any) -> None:
        if (k + 1) % self.every:
            return
        from .checkpoint import file_name

        path = run.save_checkpoint(os.path.join(self.directory, file_name(k + 1)))
        self.written = [p for p in self.written if p != path] + [path]
        if self.keep is not None:
            while len(self.written) > self.keep:
                old = self.written.pop(0)
                if os.path.exists(old):
                    os.unlink(old)


class _Function(Callback):
    """A plain function of the row (``solve(callback=fn)``): True stops with the historical message."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def on_evaluation(self, row: dict) -> Optional[bool]:
        return self.fn(row)


def as_callbacks(callbacks: Any, callback: Any = None) -> list:
    """The list ``solve`` calls: ``callbacks`` (objects with hooks, or functions of the row), then
    ``callback``; one-line errors for anything else."""
    out = []
    if callbacks is not None:
        if isinstance(callbacks, (str, bytes)) or not hasattr(callbacks, "__iter__"):
            raise TypeError(f"solve: callbacks must be a list of callback objects (bilevel.callbacks); got "
                            f"{type(callbacks).__name__}.")
        for i, cb in enumerate(callbacks):
            if isinstance(cb, type):
                raise TypeError(f"solve: callbacks[{i}] is the class {cb.__name__}; pass an instance, e.g. "
                                f"{cb.__name__}(...).")
            if any(callable(getattr(cb, h, None)) for h in HOOKS):
                out.append(cb)
            elif callable(cb):
                out.append(_Function(cb))
            else:
                raise TypeError(f"solve: callbacks[{i}] has none of the hooks {', '.join(HOOKS)} and is not "
                                f"callable; got {type(cb).__name__}.")
    if callback is not None:
        out.append(_Function(callback))
    return out
