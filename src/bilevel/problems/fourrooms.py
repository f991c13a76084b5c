"""FourRooms incentive design, the configurable bilevel-RL benchmark of HPGD (Thoma, Pasztor, Krause, Ramponi &
Hu, "Contextual bilevel reinforcement learning for incentive alignment", NeurIPS 2024), as the issue states it.

Grid: 13 × 13 with outer walls, 104 free cells in four rooms joined by doors at (3,6), (6,2), (7,9), (10,6)
(row, col from the top left); the agent starts at (4,1); the goal is (1,9) or (11,11), drawn uniformly (the
context ξ: a batch of two MDPs).  Actions: up, right, down, left; a move into a wall leaves the agent in place.
Slip: the intended move with probability 1 − slip, each of the three others with slip/3 (slip = 0.33: the split
0.67 / 0.11 / 0.11 / 0.11).  One kernel is used for everything (best responses, sampled episodes and the logged
value) — the published code samples with this split but computes best responses and its logged value with
0.56 / 0.1467 × 3.  Episodes end at the goal (terminal) or after 200 steps.  γ = 0.99 at both levels.

Lower level (entropy-regularised, τ = λ): reward on arrival in s', r(s, a, s') = 1{s' = goal} + i_w(s'), with
the incentive i_w(s) = −0.2·softmax(w)_s, w ∈ R^104 (one entry per free cell; x = w, x₀ = 0).
Upper level (maximised; the library minimises its negative): per episode
    U(d) = Σ_t γ^t (1{s_{t+1} = target} − β_reg ‖i_w‖₁ 1{s_{t+1} = goal}),   target (8,4),
with β_reg = 1, 3, 5 for λ = 0.001, 0.003, 0.005.  Note ‖i_w‖₁ = 0.2 Σ_s softmax(w)_s = 0.2 for every w, so the
penalty term is −0.2 β_reg times the discounted probability of reaching the goal and does not depend on w
directly.  ``upper_value`` (a metric) is the exact E[U] averaged over the two goals (the expectation of the
published metric, the exact value for the drawn goal).
"""

from __future__ import annotations

from typing import Any

import torch

from .._validation import check_int, check_positive
from ..rl.problem import RLProblem, TrajectoryLoss
from ._registry import PROBLEMS

__all__ = ["fourrooms", "fourrooms_grid"]

DOORS = ((3, 6), (6, 2), (7, 9), (10, 6))
START, GOALS, TARGET = (4, 1), ((1, 9), (11, 11)), (8, 4)
#: β_reg for each published λ
BETA_REG = {0.001: 1.0, 0.003: 3.0, 0.005: 5.0}
MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))  # up, right, down, left


def fourrooms_grid() -> torch.Tensor:
    """13 × 13 bool grid, True = free: outer walls, a vertical wall at column 6, a horizontal wall at row 6
    (columns 1–5) and at row 7 (columns 7–11), with the four doors."""
    free = torch.zeros(13, 13, dtype=torch.bool)
    free[1:12, 1:12] = True
    free[1:12, 6] = False
    free[6, 1:6] = False
    free[7, 7:12] = False
    for r, c in DOORS:
        free[r, c] = True
    return free


@PROBLEMS.register
def fourrooms(lam: float = 0.001, beta_reg: float | None = None, slip: float = 0.33, gamma: float = 0.99,
              horizon: int = 200, *, dtype: torch.dtype = torch.float64, device: Any = "cpu") -> RLProblem:
    """FourRooms incentive design of HPGD (Thoma et al., NeurIPS 2024): steer the follower through the target cell, named ``"fourrooms"``.

    Args:
        lam: the follower's entropy weight λ (= τ); the published settings are 0.001, 0.003, 0.005.
        beta_reg: β_reg (default: 1, 3, 5 for those λ; required for another λ).
        slip: slip probability (default 0.33: 0.67 intended, 0.11 each other move).
        gamma: discount at both levels (0.99).   horizon: episode length cap (200).
        dtype, device: of every tensor (float64 on CPU by default).
    """
    check_positive("fourrooms", "lam", lam)
    check_int("fourrooms", "horizon", horizon, 1)
    if not 0 <= slip < 1:
        raise ValueError(f"fourrooms: slip must be in [0, 1); got {slip!r}.")
    if not 0 <= gamma < 1:
        raise ValueError(f"fourrooms: gamma must be in [0, 1); got {gamma!r}.")
    if beta_reg is None:
        if lam not in BETA_REG:
            raise ValueError(f"fourrooms: beta_reg has no published value for lam={lam!r} (only for "
                             f"{sorted(BETA_REG)}) — pass beta_reg=...")
        beta_reg = BETA_REG[lam]
    free = fourrooms_grid()
    cells = [(int(r), int(c)) for r, c in free.nonzero()]
    index = {cell: i for i, cell in enumerate(cells)}
    S, A = len(cells), 4
    P1 = torch.zeros(S, A, S, dtype=torch.float64)
    for i, (r, c) in enumerate(cells):
        for a in range(A):
            for m, (dr, dc) in enumerate(MOVES):
                prob = 1 - slip if m == a else slip / 3
                nxt = (r + dr, c + dc)
                P1[i, a, index.get(nxt, i)] += prob
    goals = [index[g] for g in GOALS]
    target = index[TARGET]
    terminal = torch.zeros(2, S, dtype=torch.bool)
    goal_hit = torch.zeros(2, S, dtype=torch.float64)
    for k, g in enumerate(goals):
        terminal[k, g] = True
        goal_hit[k, g] = 1.0
    P = P1.expand(2, S, A, S).to(dtype=dtype, device=device).contiguous()
    goal_hit = goal_hit.to(dtype=dtype, device=device)
    target_hit = torch.zeros(S, dtype=dtype, device=device)
    target_hit[target] = 1.0
    rho = torch.zeros(S, dtype=dtype, device=device)
    rho[index[START]] = 1.0
    x0 = torch.zeros(S, dtype=dtype, device=device)
    goal_reward = torch.einsum("ksat,kt->ksa", P, goal_hit)  # E[1{s' = goal}] per (s, a)

    def incentive(x: torch.Tensor) -> torch.Tensor:
        return -0.2 * torch.softmax(x, -1)

    def reward(x: torch.Tensor) -> torch.Tensor:
        return goal_reward + torch.matmul(P, incentive(x))  # E[1{s'=goal} + i_w(s')]

    def reward_jacobian(x: torch.Tensor) -> torch.Tensor:
        # Σ_s' P(s'|s,a) ∂i_w(s')/∂w_j with ∂i_w(s')/∂w_j = −0.2 σ_s'(δ_s'j − σ_j), σ = softmax(w):
        # −0.2 σ_j (P(j|s,a) − ⟨P(·|s,a), σ⟩), without the dense |S|×|S| product
        s = torch.softmax(x, -1)
        return -0.2 * (P - torch.matmul(P, s).unsqueeze(-1)) * s  # [2, S, A, S(=dx)]

    def cost(x: torch.Tensor) -> torch.Tensor:
        # loss = −U: −1 on arriving at the target, +β_reg‖i_w‖₁ on arriving at the goal
        penalty = beta_reg * incentive(x).abs().sum()
        per_arrival = -target_hit + penalty * goal_hit  # [2, S']
        return per_arrival[:, None, None, :].expand(2, S, A, S)

    def metrics(x: torch.Tensor, truth: Any) -> dict:
        return {"upper_value": -float(truth.phi)}

    return RLProblem(P, reward, x0, gamma=gamma, tau=lam, rho=rho, terminal=terminal,
                     trajectory=TrajectoryLoss(cost, gamma, horizon), reward_jacobian=reward_jacobian,
                     name="fourrooms", experiment="fourrooms", metrics=metrics,
                     info={"lam": lam, "beta_reg": beta_reg, "slip": slip, "gamma": gamma, "horizon": horizon,
                           "n_states": S, "kernel": f"{1 - slip:.2f} intended / {slip / 3:.4f} each other move"})


fourrooms.kind = "rl"  # bilevel.kinds: only RL solvers run on it
