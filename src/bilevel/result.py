"""``Result``: what ``bilevel.solve`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from torch import Tensor

from .history import History
from .oracles import Counts

STATUSES = ("converged", "max_iter", "max_time", "diverged", "stopped")


@dataclass(frozen=True)
class Result:
    """Outcome of one run.

    x, y, v: final flat iterates (x is x_K, after the last update; v is None for methods without v).
    status: one of ``converged``, ``max_iter``, ``max_time``, ``diverged``, ``stopped``;
    message: what happened and what to try.   iterations: outer steps completed.
    counts: oracle calls (``Counts``).   time: solver wall time in seconds, evaluation excluded.
    history: the evaluation rows.   options: the solver's resolved options.   events: v-solver events.
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

    @property
    def success(self) -> bool:
        return self.status in ("converged", "max_iter", "max_time", "stopped")

    def summary(self) -> str:
        last = self.history.last()
        lines = [
            f"solver {self.solver} on {self.problem}: {self.status} after {self.iterations} iterations, "
            f"{self.time:.3f} s solver time",
            f"  {self.message}",
            "  oracle calls: " + ", ".join(f"{k}={v}" for k, v in self.counts.as_dict().items() if v),
        ]
        if self.iterations:
            per = self.counts.hvp / self.iterations
            lines.append(f"  HVPs per iteration: {per:.3f}")
        if last:
            skip = {"iteration", "time", *self.counts.as_dict()}
            shown = {k: v for k, v in last.items() if k not in skip}
            lines.append("  last evaluation: " + ", ".join(_fmt(k, v) for k, v in shown.items()))
        if self.events:
            lines.append("  events: " + ", ".join(f"{k}={v}" for k, v in sorted(self.events.items())))
        return "\n".join(lines)


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{key}={value:.4g}"
    return f"{key}={value}"
