"""Inner solvers for the lower variable y (warm-started from the previous outer iteration)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .oracles import Oracles


def gradient_steps(oracles: Oracles, x: Tensor, y: Tensor, steps: int, lr: float, batch: Any = None) -> Tensor:
    """T steps of gradient descent on g(x, ·):  y ← y − θ ∇_y g(x, y).   Cost: T ∇_y g."""
    for _ in range(steps):
        y = y - lr * oracles.grad_y_g(x, y, batch)
    return y
