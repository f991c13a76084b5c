"""Bilevel reinforcement learning on entropy-regularised tabular MDPs (problem kind ``"rl"``).

- ``mdp``: soft Bellman operators, warm-started soft value iteration (batched over MDPs), exact solves.
- ``RLProblem`` (``problem``): M_τ(x) = (S, A, P, r(x), γ, τ), ρ, the upper loss F(x, π) or a trajectory loss;
  exact φ(x) and ∇φ(x) for evaluation (``RLProblem.truth``).
- ``RLOracles`` / ``RLCounts`` (``oracles``): counted model access, value-iteration sweeps, sampled transitions
  and vectorised trajectory sampling.
- ``SoftValueIteration``: the lower-level inner solver object.
- ``solve_rl`` (``run``): the run loop ``bilevel.solve`` uses for RL problems; ``solve_rl_seeds``: several seeds
  stepped together (HPGD vectorises them), each run as it would be alone.

Solvers (``bilevel.solvers``): ``m_sobirl``, ``sobirl``, ``stoc_sobirl``, ``hpgd``, ``pbrl``, ``zeroth_order``.
"""

from .inner import SoftValueIteration
from .mdp import SoftSolveError, soft_optimal, soft_policy, soft_q, soft_v, soft_vi
from .oracles import RLCounts, RLOracles, Trajectories
from .problem import RLProblem, RLTruth, TrajectoryLoss
from .run import solve_rl, solve_rl_seeds

__all__ = ["RLCounts", "RLOracles", "RLProblem", "RLTruth", "SoftSolveError", "SoftValueIteration",
           "TrajectoryLoss", "Trajectories", "soft_optimal", "soft_policy", "soft_q", "soft_v", "soft_vi",
           "solve_rl", "solve_rl_seeds"]
