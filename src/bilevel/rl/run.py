"""The run loop of bilevel RL (``bilevel.solve`` hands an ``RLProblem`` here).

As for the classic loop, only the solver's steps are timed (the device is synchronised before the clock is
read) and counted; the evaluation runs between steps on exact quantities computed outside the timer
(``RLProblem.truth``: converged soft policy iteration and the exact |S|×|S| adjoint solve, warm-started
across evaluations), at the solver's own iterate x_k.
"""

from __future__ import annotations

import math
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


def solve_rl(problem: RLProblem, solver: Any, *, max_iter: int = 1000, max_time: Optional[float] = None,
             eval_every: int = 10, seed: int = 0, tol: Optional[float] = None,
             true_hypergradient: Optional[bool] = None, callback: Optional[Callable[[dict], Any]] = None,
             progress: bool = False, oracles: Any = None) -> Result:
    """Run an RL solver on an RL problem (called by ``bilevel.solve``; same arguments and statuses:
    ``converged`` (the true ‖∇φ‖, or the estimate's norm without ground truth, ≤ tol), ``max_iter``,
    ``max_time``, ``stopped``, ``diverged``)."""
    device = problem.device
    counts = RLCounts()
    if oracles is None:
        oracles = RLOracles(problem, counts)
    elif not isinstance(oracles, RLOracles) or oracles.problem is not problem:
        raise TypeError("solve: an RL problem runs on bilevel.rl.RLOracles(problem); got "
                        f"{type(oracles).__name__} (leave oracles=None).")
    else:
        counts = oracles.counts
    if true_hypergradient is None:
        true_hypergradient = True
    bound = solver.bind(problem)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    state = bound.init(problem, oracles, generator)
    evaluate = RLEvaluator(problem, true_hypergradient)
    history = History()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_iter, desc=f"{solver.name} on {problem.name}", unit="it", dynamic_ncols=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    elapsed, status, message, done = 0.0, "max_iter", "", 0
    last_good, interrupted = state, False
    for k in range(max_iter):
        sync()
        start = time.perf_counter()
        try:
            new_state = bound.step(state, oracles, None)
            sync()
        except KeyboardInterrupt:
            elapsed += time.perf_counter() - start
            interrupted, status = True, "stopped"
            message = (f"interrupted (KeyboardInterrupt) during iteration {k}; the {done} completed iterations "
                       "and their history are kept.")
            break
        elapsed += time.perf_counter() - start
        x_k, V_k, w_k, est_k, pi_k = new_state.iterate
        total = float(new_state.x.sum() + V_k.sum() + (est_k.sum() if est_k is not None else 0.0))
        if not math.isfinite(total):
            status = "diverged"
            message = (f"non-finite values appeared at iteration {k}; the last finite iterate (after {k} "
                       f"iterations) is returned. The step size is likely too large (lr_x={bound.lr_x:g}); "
                       "try a smaller one.")
            break
        state, last_good, done = new_state, new_state, k + 1
        if bar is not None:
            bar.update(1)
        last = k == max_iter - 1
        if k % eval_every == 0 or last:
            try:
                row = {"iteration": k, "time": elapsed, **counts.as_dict(), **evaluate(x_k, V_k, w_k, est_k, pi_k)}
            except SoftSolveError as err:
                status = "diverged"
                message = f"the exact soft Bellman solve for the evaluation at iteration {k} failed: {err}."
                break
            history.append(row)
            if bar is not None:
                bar.set_postfix({c: f"{row[c]:.2e}" for c in ("phi", "hypergrad_norm") if c in row}, refresh=False)
            metric = row.get("hypergrad_norm", row.get("hypergrad_est_norm"))
            if tol is not None and metric is not None and metric <= tol:
                status, message = "converged", f"hypergradient norm {metric:.3e} <= tol {tol:g} at iteration {k}."
                break
            if callback is not None and callback(dict(row)):
                status, message = "stopped", f"the callback asked to stop at iteration {k}."
                break
        if max_time is not None and elapsed >= max_time:
            status = "max_time"
            message = f"solver time {elapsed:.3f} s reached max_time={max_time:g} at iteration {k}."
            if not (k % eval_every == 0 or last):
                history.append({"iteration": k, "time": elapsed, **counts.as_dict(),
                                **evaluate(x_k, V_k, w_k, est_k, pi_k)})
            break
    if bar is not None:
        bar.close()
    if status == "max_iter":
        row = history.last()
        shown = (f"; last φ {row['phi']:.6g}, true ‖∇φ‖ {row['hypergrad_norm']:.3e}"
                 if row and "hypergrad_norm" in row else "")
        message = f"ran max_iter={max_iter} iterations{shown}. Raise max_iter (or set tol) to go further."
    return Result(
        x=last_good.x, y=last_good.V, v=last_good.w, status=status, message=message, iterations=done,
        counts=counts, time=elapsed, history=history, solver=bound.name, problem=problem.name,
        options={**{k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
                    for k, v in bound.resolved_options().items()}, "stochastic": False},
        events=dict(last_good.events), seed=seed, x_tree=last_good.x, y_tree=last_good.V,
        interrupted=interrupted, dtype=str(problem.dtype).replace("torch.", ""),
    )
