"""The lower-level inner solver of bilevel RL: warm-started soft value iteration."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .._validation import check_int
from . import mdp as M


@dataclass(frozen=True)
class SoftValueIteration:
    """T sweeps of V ← τ logsumexp((r + γPV)/τ) from a warm start (stable log-sum-exp; vectorised over states
    and actions, batched over the leading MDP dimensions).  ``run(oracles, r, V)`` counts T sweeps per MDP;
    ``policy(problem, r, V)`` is π = softmax((r + γPV)/τ) at the result (the solvers call
    ``RLOracles.policy``, the same map, which on a sparse kernel sums over the few next states only)."""

    sweeps: int = 10

    def __post_init__(self) -> None:
        check_int("SoftValueIteration", "sweeps", self.sweeps, 1)

    def run(self, oracles, r: Tensor, V: Tensor, P: Tensor | None = None) -> Tensor:
        return oracles.soft_vi(r, V, self.sweeps, P)

    @staticmethod
    def policy(problem, r: Tensor, V: Tensor, P: Tensor | None = None) -> Tensor:
        P = problem.P if P is None else P
        return M.soft_policy(M.soft_q(r, P, V, problem.gamma), problem.tau, problem.terminal)
