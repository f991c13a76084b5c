"""``Result``: what ``bilevel.solve`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from torch import Tensor

from .history import History
from .oracles import Counts

STATUSES = ("converged", "max_iter", "max_time", "diverged", "stopped", "not_strongly_convex")


@dataclass(frozen=True)
class Result:
    """Outcome of one run.

    x, y, v: final flat iterates (x is x_K, after the last update; v is None for methods without v).
    status: one of ``converged`` (tol met on a trusted hypergradient estimate), ``max_iter``, ``max_time``,
    ``diverged`` (non-finite values; the message names the oracle that produced the first), ``stopped``,
    ``not_strongly_convex`` (the v-solver met non-positive curvature of ∇²_yy g in consecutive iterations;
    see ``solve``'s ``curvature_patience``); ``success`` is False for ``diverged`` and ``not_strongly_convex``.
    message: what happened and what to try.   iterations: outer steps completed.
    counts: oracle calls (``Counts``).   time: solver wall time in seconds, evaluation excluded.
    history: the evaluation rows.   options: the solver's resolved options, and ``"stochastic"``: whether
    the run drew mini-batches (any batch source but ``FullBatch``; the solver was then bound with its
    ``"stochastic/…"`` settings first).   events: v-solver events.
    interrupted: the run was stopped by Ctrl-C (KeyboardInterrupt; status ``stopped``): ``solve`` returns what
    it had instead of raising, and the CLI exits with code 130.
    """

    x: Tensor
    y: Tensor
    v: Optional[Tensor]
    status: str
    message: str
    iterations: int
    counts: Counts
    time: float
    history: History
    solver: str
    problem: str
    options: dict = field(default_factory=dict)
    events: dict = field(default_factory=dict)
    seed: int = 0
    x_tree: Any = None
    y_tree: Any = None
    interrupted: bool = False
    dtype: str = ""  # the problem's floating-point type ("float64", "float32"), shown by ``summary``

    @property
    def success(self) -> bool:
        return self.status in ("converged", "max_iter", "max_time", "stopped")

    def summary(self) -> str:
        last = self.history.last()
        lines = [
            f"solver {self.solver} on {self.problem}: {self.status} after {self.iterations} iterations, "
            f"{self.time:.3f} s solver time" + (f", {self.dtype}" if self.dtype else ""),
            f"  {self.message}",
            "  oracle calls: " + ", ".join(f"{k}={v}" for k, v in self.counts.as_dict().items() if v),
        ]
        if self.iterations and hasattr(self.counts, "hvp"):  # RL runs count model access instead of HVPs
            per = self.counts.hvp / self.iterations
            lines.append(f"  HVPs per iteration: {per:.3f}")
        if last:
            skip = {"iteration", "time", "epochs_f", "epochs_g", *self.counts.as_dict()}
            shown = {k: v for k, v in last.items() if k not in skip}
            lines.append("  last evaluation: " + ", ".join(_fmt(k, v) for k, v in shown.items()))
        if self.events:
            lines.append("  events: " + ", ".join(f"{k}={v}" for k, v in sorted(self.events.items())))
        note = estimate_note(last, self.options) if last else ""
        if note:
            lines.append(f"  note: {note}")
        return "\n".join(lines)


#: a relative hypergradient error above this at the last evaluation makes the summary explain it
POOR_ESTIMATE = 0.1


def estimate_note(row: dict, options: dict) -> str:
    """Why the last evaluation's hypergradient estimate is poor, and what to change ("" when it is good
    or unknown).  Reads ``hypergrad_rel_error`` and its split ``hypergrad_error_from_y`` / ``_from_v``
    (see ``bilevel.metrics.Evaluator``); the inner error ``inner_rel_error`` when the split is missing."""
    rel = row.get("hypergrad_rel_error")
    if rel is None or not rel > POOR_ESTIMATE:
        return ""
    head = (f"the hypergradient estimate is poor: relative error {rel:.3g} at the last evaluation "
            f"(‖∇φ‖ = {row.get('hypergrad_norm', float('nan')):.3g})")
    from_y, from_v = row.get("hypergrad_error_from_y"), row.get("hypergrad_error_from_v")
    inner = row.get("inner_rel_error")
    y_lags = from_y >= from_v if from_y is not None and from_v is not None else (inner is not None and inner > POOR_ESTIMATE)
    split = f" (error due to y: {from_y:.3g}, due to v: {from_v:.3g})" if from_y is not None and from_v is not None else ""
    shown = ", ".join(f"{k}={_short(options[k])}" for k in ("inner_steps", "lr_y") if options.get(k) is not None)
    if y_lags:
        where = f"; ‖y_k − y*(x_k)‖/‖y*‖ = {inner:.2g}" if inner is not None else ""
        return (f"{head}, mostly because y_k is not close enough to y*(x_k){split}{where}: the inner solver "
                f"does not keep up with x. Give it more work: more inner steps (inner_steps) or a larger lr_y "
                f"(up to about 1/L of g(x, ·)){f'; now {shown}' if shown else ''}.")
    if from_v is not None:
        v_opts = ", ".join(f"{k}={_short(options[k])}" for k in ("m", "v_steps", "eta") if options.get(k) is not None)
        return (f"{head}, mostly because v_k does not solve A_k v = b_k{split}: give the v-solver more work "
                f"(a larger m, more v_steps, a larger eta){f'; now {v_opts}' if v_opts else ''}.")
    return f"{head}."


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{key}={value:.4g}"
    return f"{key}={value}"
