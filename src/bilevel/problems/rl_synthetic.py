"""The synthetic bilevel-RL problem of the SoBiRL experiments (Yang, Gao & Yuan, AISTATS 2025).

An entropy-regularised MDP with |S| = 10 states, |A| = 5 actions, γ = 0.5, τ = 1, whose rewards are a
quadratic form of the upper variable x ∈ R^100:

    r_sa(x) = c_sa · xᵀ M x,      ∇_x r_sa = c_sa (M + Mᵀ) x,
    f(x, π) = ½‖x‖² + ½‖π‖_F²,    ∇_x f = x,  ∂f/∂π_sa = π_sa.

Each P(·|s, a) has a random support of size drawn from U{1, …, |S| − 1} (states without replacement) with
U[0, 1) weights normalised over it; c_sa = U·U′; x₀ ~ N(0, I); M has i.i.d. N(0, 1) entries; ρ is uniform.
The global minimum is φ* = 1 at x = 0 (all rewards vanish, π is uniform, ½·|S|·(1/|A|) = 1).
"""

from __future__ import annotations

from typing import Any

import torch

from .._validation import check_int, check_positive
from ..rl.problem import RLProblem
from ._registry import PROBLEMS

__all__ = ["rl_synthetic", "random_kernel"]


def random_kernel(S: int, A: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """P[s, a, s'] with, for each (s, a), a support of size k ~ U{1, …, S − 1} (at least 1) drawn without
    replacement and U[0, 1) weights normalised over it (§4.5)."""
    P = torch.zeros(S, A, S, dtype=dtype)
    top = max(1, S - 1)
    for s in range(S):
        for a in range(A):
            k = int(torch.randint(1, top + 1, (1,), generator=generator))
            support = torch.randperm(S, generator=generator)[:k]
            weights = torch.rand(k, generator=generator, dtype=dtype)
            weights = weights + (weights.sum() == 0).to(dtype)  # all-zero draws (probability 0 in exact arithmetic)
            P[s, a, support] = weights / weights.sum()
    return P


@PROBLEMS.register
def rl_synthetic(n_states: int = 10, n_actions: int = 5, dim: int = 100, gamma: float = 0.5, tau: float = 1.0,
                 seed: int = 0, *, dtype: torch.dtype = torch.float64, device: Any = "cpu") -> RLProblem:
    """The synthetic bilevel-RL problem of SoBiRL (Yang, Gao & Yuan, AISTATS 2025): a random 10-state MDP with rewards c_sa·xᵀMx, named ``"rl_synthetic"``.

    Args:
        n_states, n_actions: |S|, |A| (defaults 10, 5).   dim: dimension of x (default 100).
        gamma, tau: discount and entropy weight (defaults 0.5, 1).
        seed: seeds a CPU ``torch.Generator`` before anything is drawn, in order: the kernel P (§4.5), the
            reward scales c_sa = U·U′, x₀ ~ N(0, I), M (dim × dim, N(0, 1) entries).
        dtype, device: of every tensor (default float64 on CPU).
    """
    check_int("rl_synthetic", "n_states", n_states, 2)
    check_int("rl_synthetic", "n_actions", n_actions, 1)
    check_int("rl_synthetic", "dim", dim, 1)
    check_int("rl_synthetic", "seed", seed, 0)
    check_positive("rl_synthetic", "tau", tau)
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma < 1:
        raise ValueError(f"rl_synthetic: gamma must be a number in [0, 1); got {gamma!r}.")
    gen = torch.Generator().manual_seed(seed)
    P = random_kernel(n_states, n_actions, gen)
    c = torch.rand(n_states, n_actions, generator=gen, dtype=torch.float64) * torch.rand(
        n_states, n_actions, generator=gen, dtype=torch.float64)
    x0 = torch.randn(dim, generator=gen, dtype=torch.float64)
    Mq = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    P, c, x0, Mq = (t.to(dtype=dtype, device=device) for t in (P, c, x0, Mq))
    Msym = Mq + Mq.T
    rho = torch.full((n_states,), 1.0 / n_states, dtype=dtype, device=device)

    def reward(x: torch.Tensor) -> torch.Tensor:
        return c * (x @ (Mq @ x))

    def reward_jacobian(x: torch.Tensor) -> torch.Tensor:
        return c.unsqueeze(-1) * (Msym @ x)

    def upper(x: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        return 0.5 * x.square().sum() + 0.5 * pi.square().sum()

    return RLProblem(P, reward, x0, gamma=gamma, tau=tau, rho=rho, upper=upper, reward_jacobian=reward_jacobian,
                     name="rl_synthetic", experiment="rl_synthetic",
                     info={"n_states": n_states, "n_actions": n_actions, "dim": dim, "phi_min": n_states / (2 * n_actions),
                           "seed": seed})
rl_synthetic.kind = "rl"  # bilevel.kinds: only RL solvers run on it
