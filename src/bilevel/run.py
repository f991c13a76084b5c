"""``solve(problem, solver, ...) -> Result``: the front door.

The loop times only the solver's steps (the device is synchronised before the clock is read) and
evaluates metrics between steps with uncounted oracles, so time and oracle counts never include
evaluation.  A non-finite iterate ends the run with status ``diverged`` and keeps the last finite
iterate and the history so far.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable, Optional

import torch

from ._validation import check_int, check_positive
from .history import History
from .metrics import Evaluator
from .oracles import CountingOracles, Counts, Oracles
from .problem import BilevelProblem
from .result import Result
from .sampling import BatchSource, FullBatch
from .solvers.base import Solver, SolverState


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _finite(*tensors) -> bool:
    # one device sync: a sum is non-finite iff some entry is (or the values are astronomically large)
    total = sum(t.sum() for t in tensors if t is not None)
    return math.isfinite(float(total))


def _describe(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)


def solve(
    problem: BilevelProblem,
    solver: Solver,
    *,
    max_iter: int = 1000,
    max_time: Optional[float] = None,
    eval_every: int = 10,
    seed: int = 0,
    tol: Optional[float] = None,
    true_hypergradient: Optional[bool] = None,
    callback: Optional[Callable[[dict], Any]] = None,
    progress: bool = False,
    oracles: Any = None,
    batches: Optional[BatchSource] = None,
) -> Result:
    """Run ``solver`` on ``problem``.

    Args:
        max_iter: outer iterations K.   max_time: stop after this much solver time (seconds).
        eval_every: evaluate every this many iterations (and after the last one).
        seed: seeds the solver's own draws (random v_0, TTSA's truncation, ...).
        tol: stop with ``converged`` once the hypergradient norm at an evaluation is ≤ tol (the true
            one when available, else the estimate ‖D_k‖).
        true_hypergradient: compute ‖∇φ(x_k)‖ at evaluations (solves y* and v* to tight tolerance).
            Default: on for problems that declare ground truth (``info["ground_truth"]``) or carry a
            closed-form hypergradient or y*.
        callback: called with each evaluation row; return True to stop (status ``stopped``).
        progress: show a tqdm progress bar.
        oracles: the oracles the solver calls, e.g. a user's ``OracleWrapper`` around
            ``Oracles(problem)`` (default: ``Oracles(problem)``); ``solve`` counts on top of it.
        batches: the batch source (default ``FullBatch()``: every oracle call sees the full data set).

    The path of one run: ``bound = solver.bind(problem)`` (options resolved and checked once), the batch
    stream is started with the solver's ``batch_roles``, then each iteration
    ``state = bound.step(state, counting_oracles, stream(k))``.
    """
    if not isinstance(problem, BilevelProblem):
        raise TypeError(f"problem must be a bilevel.BilevelProblem; got {type(problem).__name__}.")
    if not isinstance(solver, Solver):
        hint = " Did you forget the parentheses, e.g. bilevel.solvers.lancbio()?" if callable(solver) else ""
        raise TypeError(f"solver must be a bilevel solver instance; got {type(solver).__name__}.{hint}")
    check_int("solve", "max_iter", max_iter, 0)
    check_int("solve", "eval_every", eval_every, 1)
    check_int("solve", "seed", seed, 0)
    if max_time is not None:
        check_positive("solve", "max_time", max_time)
    if tol is not None:
        check_positive("solve", "tol", tol)
    if callback is not None and not callable(callback):
        raise TypeError(f"solve: callback must be callable(row) -> bool; got {type(callback).__name__}.")
    if oracles is None:
        oracles = Oracles(problem)
    else:
        missing = [m for m in ("grad_x_f", "grad_y_f", "grad_f", "grad_y_g", "grad_x_g", "grad_g", "at")
                   if not callable(getattr(oracles, m, None))]
        if missing:
            raise TypeError(
                f"solve: oracles must provide {', '.join(missing)}; got {type(oracles).__name__}. Wrap "
                "bilevel.Oracles(problem) in a bilevel.OracleWrapper subclass."
            )
        if getattr(oracles, "problem", problem) is not problem:
            raise ValueError("solve: the oracles were built for another problem; build them with this problem.")
    if batches is None:
        batches = FullBatch()
    elif not isinstance(batches, BatchSource):
        raise TypeError(
            f"solve: batches must be a batch source with start(roles, generator), e.g. bilevel.FullBatch(); "
            f"got {type(batches).__name__}."
        )
    if true_hypergradient is None:
        cf = problem.closed_forms
        true_hypergradient = bool(
            problem.info.get("ground_truth") or cf.hypergradient is not None or cf.y_star is not None
        )

    device = problem.device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    counts = Counts()
    oracles = CountingOracles(oracles, counts)
    bound = solver.bind(problem)
    # the batch stream draws from a generator of its own, so sampling never shifts the solver's draws
    batch_generator = torch.Generator(device=device)
    batch_generator.manual_seed(seed)
    stream = batches.start(getattr(bound, "batch_roles", {}), batch_generator)
    evaluate = Evaluator(problem, true_hypergradient)
    history = History()
    state: SolverState = bound.init(problem, oracles, generator)
    for text in bound.budget_warnings(max_iter):
        warnings.warn(text, stacklevel=2)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_iter, desc=f"{solver.name} on {problem.name}", unit="it", dynamic_ncols=True)

    elapsed = 0.0
    status, message, done = "max_iter", "", 0
    last_good = state
    interrupted = False
    for k in range(max_iter):
        _sync(device)
        start = time.perf_counter()
        try:
            new_state = bound.step(state, oracles, stream(k))
            _sync(device)
        except KeyboardInterrupt:
            # Ctrl-C: keep everything done so far (the interrupted step is dropped) and return normally
            elapsed += time.perf_counter() - start
            interrupted, status = True, "stopped"
            message = (f"interrupted (KeyboardInterrupt) during iteration {k}; the {done} completed "
                       "iterations and their history are kept.")
            if done and (not len(history) or history.last().get("iteration") != done - 1):
                x_k, y_k, v_k = last_good.iterate
                history.append({"iteration": done - 1, "time": elapsed, **counts.as_dict(),
                                **evaluate(x_k, y_k, v_k)})
            break
        elapsed += time.perf_counter() - start
        x_k, y_k, v_k = new_state.iterate
        if not _finite(new_state.x, y_k, v_k):
            status = "diverged"
            message = _diverged_message(k, bound)
            break
        state, last_good, done = new_state, new_state, k + 1
        if bar is not None:
            bar.update(1)
        last = k == max_iter - 1
        if k % eval_every == 0 or last:
            row = {"iteration": k, "time": elapsed, **counts.as_dict(), **evaluate(x_k, y_k, v_k)}
            history.append(row)
            if bar is not None:
                bar.set_postfix(_postfix(row), refresh=False)
            if not all(math.isfinite(val) for val in row.values() if isinstance(val, float)):
                status = "diverged"
                message = f"the evaluation at iteration {k} is not finite; {_step_hint(bound)}"
                break
            metric = row.get("hypergrad_norm", row.get("hypergrad_est_norm"))
            if tol is not None and metric is not None and metric <= tol:
                status = "converged"
                message = f"hypergradient norm {metric:.3e} <= tol {tol:g} at iteration {k}."
                break
            if callback is not None and callback(dict(row)):
                status, message = "stopped", f"the callback asked to stop at iteration {k}."
                break
        if max_time is not None and elapsed >= max_time:
            status = "max_time"
            message = f"solver time {elapsed:.3f} s reached max_time={max_time:g} at iteration {k}."
            if not (k % eval_every == 0 or last):
                history.append({"iteration": k, "time": elapsed, **counts.as_dict(), **evaluate(x_k, y_k, v_k)})
            break
    if bar is not None:
        bar.close()
    if status == "max_iter":
        last_row = history.last()
        if "hypergrad_norm" in last_row:
            shown = f"; last true hypergradient norm {last_row['hypergrad_norm']:.3e}"
        elif "hypergrad_est_norm" in last_row:
            shown = f"; last estimated hypergradient norm ‖D‖ {last_row['hypergrad_est_norm']:.3e}"
        else:
            shown = ""
        message = f"ran max_iter={max_iter} iterations{shown}. Raise max_iter (or set tol) to go further."

    return Result(
        x=last_good.x, y=last_good.y,
        v=last_good.v, status=status, message=message, iterations=done, counts=counts, time=elapsed,
        history=history, solver=bound.name, problem=problem.name,
        options=_plain(bound.resolved_options()),
        events=dict(last_good.events), seed=seed,
        x_tree=problem.unflatten_x(last_good.x), y_tree=problem.unflatten_y(last_good.y),
        interrupted=interrupted,
    )


def _postfix(row: dict) -> dict:
    keys = ("hypergrad_norm", "hypergrad_est_norm", "residual")
    return {k: f"{row[k]:.2e}" for k in keys if k in row}


def _step_hint(bound: Any) -> str:
    opts = bound.resolved_options()
    names = ("lr_x", "lr_y", "eta", "inner.lr", "v_solver.eta")
    steps = ", ".join(f"{k}={_describe(opts[k])}" for k in names if opts.get(k) is not None)
    return f"the step sizes are likely too large ({steps}); try smaller ones." if steps else "try smaller step sizes."


def _diverged_message(k: int, bound: Any) -> str:
    return (
        f"non-finite values appeared at iteration {k}; the last finite iterate (after {k} iterations) is "
        f"returned. {_step_hint(bound)}"
    )


def _plain(opts: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)) for k, v in opts.items()}
