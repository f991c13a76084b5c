"""The run loop of bilevel RL (``bilevel.solve`` hands an ``RLProblem`` here).

As for the classic loop, only the solver's steps are timed (the device is synchronised before the clock is
read) and counted; the evaluation runs between steps on exact quantities computed outside the timer
(``RLProblem.truth``: converged soft policy iteration and the exact |S|×|S| adjoint solve, warm-started
across evaluations), at the solver's own iterate x_k.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..history import History
from ..result import Result
from .mdp import SoftSolveError
from .oracles import RLCounts, RLOracles
from .problem import RLProblem


def _norm(t: Tensor) -> float:
    return float(torch.linalg.vector_norm(t))


class RLEvaluator:
    """Callable ``(x_k, V_k, w_k, estimate_k, π_k) -> dict``.

    Columns: ``hypergrad_est_norm`` (‖estimate‖, the hypergradient the step used), ``f`` (F(x_k, π_k) with the
    solver's own policy, when it has one) and, with ``true_hypergradient``: ``phi`` (φ(x_k) exact),
    ``hypergrad_norm`` (‖∇φ(x_k)‖ exact), ``hypergrad_rel_error`` (‖estimate − ∇φ‖/‖∇φ‖) and ``value_error``
    (‖V_k − V*(x_k)‖∞), plus the problem's own ``metrics(x, truth)``."""

    def __init__(self, problem: RLProblem, true_hypergradient: bool) -> None:
        self.problem = problem
        self.true_hypergradient = true_hypergradient
        self._V: Optional[Tensor] = None

    def __call__(self, x: Tensor, V: Tensor, w: Optional[Tensor], estimate: Optional[Tensor],
                 pi: Optional[Tensor]) -> dict[str, Any]:
        p = self.problem
        row: dict[str, Any] = {}
        if pi is not None:
            with torch.no_grad():
                row["f"] = float(p.upper(x, pi))
        if estimate is not None:
            row["hypergrad_est_norm"] = _norm(estimate)
        if self.true_hypergradient:
            t = p.truth(x, self._V)
            self._V = t.V
            gnorm = _norm(t.grad)
            row["phi"] = float(t.phi)
            row["hypergrad_norm"] = gnorm
            if estimate is not None:
                row["hypergrad_rel_error"] = _norm(estimate - t.grad) / gnorm if gnorm > 0 else _norm(estimate)
            if V is not None and V.shape == t.V.shape:
                row["value_error"] = float((V - t.V).abs().max())
            if p.metrics is not None:
                row.update({str(k): float(v) for k, v in dict(p.metrics(x, t)).items()})
        return row


class _RLRun:
    """One RL run's bookkeeping around the solver's steps: the state, its clock, the checks after a step, the
    evaluations, the history, the callbacks (``bilevel.callbacks`` hooks: ``on_start``, ``on_iteration``,
    ``on_evaluation``, ``on_end``), checkpoints and the ``Result``.  ``solve_rl`` drives one, ``solve_rl_seeds``
    several whose steps are batched."""

    def __init__(self, problem: RLProblem, bound: Any, seed: int, oracles: RLOracles, *, max_iter: int,
                 max_time: Optional[float], eval_every: int, tol: Optional[float], true_hypergradient: bool,
                 hooks: list, resume_from: Any = None) -> None:
        from ..run import _header, _RunHandle
        from ..sampling import FullBatch

        self.problem, self.bound, self.seed, self.oracles, self.counts = problem, bound, seed, oracles, oracles.counts
        self.max_iter, self.max_time, self.eval_every, self.tol = max_iter, max_time, eval_every, tol
        self.hooks = hooks
        self.per_iteration = [cb for cb in hooks if callable(getattr(cb, "on_iteration", None))]
        generator = torch.Generator(device=problem.device)
        generator.manual_seed(seed)
        self.state = bound.init(problem, oracles, generator)
        self.evaluate = RLEvaluator(problem, true_hypergradient)
        self.history = History()
        self.elapsed, self.status, self.message, self.done = 0.0, "max_iter", "", 0
        self.interrupted = False
        self.header = _header(problem, bound, False, seed, FullBatch())
        if resume_from is not None:
            self._restore(resume_from)
        self.last_good = self.state
        self.first = self.done  # iterations done before this call (a resumed run's)
        self.handle = _RunHandle(self.save)
        self.bar = None

    # ---- the loop's pieces ------------------------------------------------------------------------
    def start(self, progress: bool) -> None:
        info = {"problem": self.problem.name, "solver": self.bound.name,
                "options": {k: _plain(v) for k, v in self.bound.resolved_options().items()}, "seed": self.seed,
                "max_iter": self.max_iter, "eval_every": self.eval_every, "start": self.first,
                "stochastic": False, "dtype": str(self.problem.dtype).replace("torch.", "")}
        for cb in self.hooks:
            if callable(getattr(cb, "on_start", None)):
                cb.on_start(dict(info))
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.max_iter, initial=min(self.first, self.max_iter),
                            desc=f"{self.bound.name} on {self.problem.name}", unit="it", dynamic_ncols=True)

    def _row(self, k: int, x_k: Tensor, V_k: Tensor, w_k: Any, est_k: Any, pi_k: Any) -> dict:
        return {"iteration": k, "time": self.elapsed, **self.counts.as_dict(),
                **self.evaluate(x_k, V_k, w_k, est_k, pi_k)}

    def interrupt(self, k: int, seconds: float) -> None:
        self.elapsed += seconds
        self.interrupted, self.status = True, "stopped"
        self.message = (f"interrupted (KeyboardInterrupt) during iteration {k}; the {self.done} completed iterations "
                        "and their history are kept.")

    def record(self, k: int, new_state: Any, seconds: float) -> bool:
        """After iteration k (``seconds`` of solver time): checks, evaluation, callbacks; True when the run
        stops here."""
        self.elapsed += seconds
        x_k, V_k, w_k, est_k, pi_k = new_state.iterate
        total = float(new_state.x.sum() + V_k.sum() + (est_k.sum() if est_k is not None else 0.0))
        if not math.isfinite(total):
            self.status = "diverged"
            self.message = (f"non-finite values appeared at iteration {k}; the last finite iterate (after {k} "
                            f"iterations) is returned. The step size is likely too large (lr_x={self.bound.lr_x:g}); "
                            "try a smaller one.")
            return True
        self.state, self.last_good, self.done = new_state, new_state, k + 1
        if self.bar is not None:
            self.bar.update(1)
        evaluated = k % self.eval_every == 0 or k == self.max_iter - 1
        if evaluated:
            try:
                row = self._row(k, x_k, V_k, w_k, est_k, pi_k)
            except SoftSolveError as err:
                self.status = "diverged"
                self.message = f"the exact soft Bellman solve for the evaluation at iteration {k} failed: {err}."
                return True
            self.history.append(row)
            if self.bar is not None:
                self.bar.set_postfix({c: f"{row[c]:.2e}" for c in ("phi", "hypergrad_norm") if c in row},
                                     refresh=False)
            metric = row.get("hypergrad_norm", row.get("hypergrad_est_norm"))
            if self.tol is not None and metric is not None and metric <= self.tol:
                self.status = "converged"
                self.message = f"hypergradient norm {metric:.3e} <= tol {self.tol:g} at iteration {k}."
                return True
            asked = [cb for cb in self.hooks
                     if callable(getattr(cb, "on_evaluation", None)) and cb.on_evaluation(dict(row))]
            if asked:
                self.status = "stopped"
                self.message = (getattr(asked[0], "stop_message", "")
                                or f"the callback asked to stop at iteration {k}.")
                return True
        if self.per_iteration:
            self.handle.iterations = self.done
            for cb in self.per_iteration:
                cb.on_iteration(k, self.handle)
        if self.max_time is not None and self.elapsed >= self.max_time:
            self.status = "max_time"
            self.message = f"solver time {self.elapsed:.3f} s reached max_time={self.max_time:g} at iteration {k}."
            if not evaluated:
                self.history.append(self._row(k, x_k, V_k, w_k, est_k, pi_k))
            return True
        return False

    def result(self) -> Result:
        if self.bar is not None:
            self.bar.close()
        if self.status == "max_iter":
            row = self.history.last()
            shown = (f"; last φ {row['phi']:.6g}, true ‖∇φ‖ {row['hypergrad_norm']:.3e}"
                     if row and "hypergrad_norm" in row else "")
            self.message = (f"ran max_iter={self.max_iter} iterations{shown}. Raise max_iter (or set tol) to go "
                            "further.")
        last = self.last_good
        result = Result(
            x=last.x, y=last.V, v=last.w, status=self.status, message=self.message, iterations=self.done,
            counts=self.counts, time=self.elapsed, history=self.history, solver=self.bound.name,
            problem=self.problem.name,
            options={**{k: _plain(v) for k, v in self.bound.resolved_options().items()}, "stochastic": False},
            events=dict(last.events), seed=self.seed, x_tree=last.x, y_tree=last.V,
            interrupted=self.interrupted, dtype=str(self.problem.dtype).replace("torch.", ""),
        )
        for cb in self.hooks:
            if callable(getattr(cb, "on_end", None)):
                cb.on_end(result)
        return result

    # ---- checkpoints (the format of ``bilevel.checkpoint``) ---------------------------------------
    def save(self, path: Any) -> str:
        """Write the run as it is now (after ``done`` iterations) to ``path``, atomically."""
        from .. import checkpoint

        payload = {
            "format": checkpoint.FORMAT, "version": checkpoint.VERSION, "header": self.header,
            "iterations": self.done, "x0": self.problem.x0, "y0": self.problem.y0,
            "run": checkpoint.encode({"state": self.state}),
            "counts": self.counts.as_dict(), "elapsed": self.elapsed,
            "history": {"rows": self.history.to_dicts(), "columns": self.history.columns},
            "evaluator": {"V": self.evaluate._V},
            "callbacks": [[type(cb).__name__, cb.state_dict()] if callable(getattr(cb, "state_dict", None)) else None
                          for cb in self.hooks],
        }
        return checkpoint.save(payload, path)

    def _restore(self, path: Any) -> None:
        from .. import checkpoint
        from ..run import _check_header

        payload = checkpoint.load(path, self.problem.device)
        where = payload["path"]
        try:
            _check_header(payload, self.header, self.problem, where)
            self.state = checkpoint.decode(payload["run"])["state"]
            for name, value in payload["counts"].items():
                setattr(self.counts, name, int(value))
            self.history._rows = [dict(r) for r in payload["history"]["rows"]]
            self.history._columns = list(payload["history"]["columns"])
            self.evaluate._V = payload["evaluator"]["V"]
            saved = payload["callbacks"]
            for cb, entry in zip(self.hooks, saved + [None] * (len(self.hooks) - len(saved))):
                if entry is not None and callable(getattr(cb, "load_state_dict", None)) and entry[0] == type(cb).__name__:
                    cb.load_state_dict(entry[1])
            self.elapsed, self.done = float(payload["elapsed"]), int(payload["iterations"])
        except checkpoint.CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as err:
            raise checkpoint.CheckpointError(
                f"resume_from: {where!r} is damaged or inconsistent ({type(err).__name__}: "
                f"{' '.join(str(err).split())[:160]}); resume from another checkpoint.") from None


def _plain(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _oracles_for(problem: RLProblem, oracles: Any) -> RLOracles:
    if oracles is None:
        return RLOracles(problem, RLCounts())
    if not isinstance(oracles, RLOracles) or oracles.problem is not problem:
        raise TypeError("solve: an RL problem runs on bilevel.rl.RLOracles(problem); got "
                        f"{type(oracles).__name__} (leave oracles=None).")
    return oracles


def solve_rl(problem: RLProblem, solver: Any, *, max_iter: int = 1000, max_time: Optional[float] = None,
             eval_every: int = 10, seed: int = 0, tol: Optional[float] = None,
             true_hypergradient: Optional[bool] = None, callback: Optional[Callable[[dict], Any]] = None,
             progress: bool = False, oracles: Any = None, callbacks: Optional[list] = None,
             resume_from: Any = None) -> Result:
    """Run an RL solver on an RL problem (called by ``bilevel.solve``; same arguments and statuses:
    ``converged`` (the true ‖∇φ‖, or the estimate's norm without ground truth, ≤ tol), ``max_iter``,
    ``max_time``, ``stopped``, ``diverged``).  ``callbacks`` and ``resume_from`` work as for ``bilevel.solve``
    (``EarlyStopping``, ``Checkpoint``, ``TensorBoard``, ...): a run resumed from a checkpoint continues with
    the same history, bit for bit, as the uninterrupted run (same device, dtype and thread count)."""
    from ..callbacks import as_callbacks

    hooks = as_callbacks(callbacks, callback)
    if resume_from is not None and not isinstance(resume_from, (str, os.PathLike)):
        raise TypeError(f"solve: resume_from must be a checkpoint file or folder path; got {type(resume_from).__name__}.")
    oracles = _oracles_for(problem, oracles)
    bound = solver.bind(problem)
    run = _RLRun(problem, bound, seed, oracles, max_iter=max_iter, max_time=max_time, eval_every=eval_every,
                 tol=tol, true_hypergradient=True if true_hypergradient is None else true_hypergradient,
                 hooks=hooks, resume_from=resume_from)
    run.start(progress)
    device = problem.device
    for k in range(run.first, max_iter):
        _sync(device)
        start = time.perf_counter()
        try:
            new_state = bound.step(run.state, oracles, None)
            _sync(device)
        except KeyboardInterrupt:
            run.interrupt(k, time.perf_counter() - start)
            break
        if run.record(k, new_state, time.perf_counter() - start):
            break
    return run.result()


def solve_rl_seeds(problem: RLProblem, solver: Any, seeds: list, *, max_iter: int = 1000,
                   max_time: Optional[float] = None, eval_every: int = 10, tol: Optional[float] = None,
                   true_hypergradient: Optional[bool] = None, callbacks: Optional[Callable[[int], list]] = None
                   ) -> list:
    """Run ``solver`` on ``problem`` once per seed, stepping the runs together (``Solver.step_batch``: HPGD
    vectorises one iteration over all seeds, other solvers step the runs one after another): one ``Result``
    per seed, each with the same iterates and history as ``solve(problem, solver, seed=s)`` alone (CPU,
    float64; tested), except ``time``: a batched step's solver time is split equally between the runs it
    advanced.  A run that stops (converged, diverged, a callback) leaves the batch; the others go on; Ctrl-C
    stops them all, each keeping its completed iterations (status ``stopped``).  ``callbacks``: optional
    ``seed -> list`` of callback objects for each run.  No progress bar, no ``resume_from``."""
    from .._validation import check_run_budget
    from ..callbacks import as_callbacks
    from ..kinds import check_kind

    check_kind(solver, problem)
    check_run_budget("solve_rl_seeds", max_iter, eval_every, max_time, tol)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"solve_rl_seeds: seeds must be a non-empty list of distinct seeds; got {seeds!r}.")
    bound = solver.bind(problem)
    runs = [_RLRun(problem, bound, int(s), RLOracles(problem, RLCounts()), max_iter=max_iter, max_time=max_time,
                   eval_every=eval_every, tol=tol,
                   true_hypergradient=True if true_hypergradient is None else true_hypergradient,
                   hooks=as_callbacks(callbacks(int(s)) if callbacks is not None else None)) for s in seeds]
    for run in runs:
        run.start(False)
    active = list(runs)
    for k in range(max_iter):
        if not active:
            break
        _sync(problem.device)
        start = time.perf_counter()
        try:
            new_states = bound.step_batch([r.state for r in active], [r.oracles for r in active])
            _sync(problem.device)
        except KeyboardInterrupt:  # every run keeps its completed iterations, as a run alone does
            share = (time.perf_counter() - start) / len(active)
            for run in active:
                run.interrupt(k, share)
            break
        share = (time.perf_counter() - start) / len(active)
        active = [r for r, st in zip(active, new_states) if not r.record(k, st, share)]
    return [run.result() for run in runs]
