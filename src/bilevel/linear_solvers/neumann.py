"""Truncated Neumann-series estimates of A⁻¹b, fixed length or with randomised truncation.

For 0 < η < 2/λ_max, A⁻¹ = η Σ_{i≥0} (I − ηA)^i.  Neither variant is warm-started: every call rebuilds
its sum from b (``state.v`` only records the last output).

Fixed length (stocBiO, Ji et al. 2021; STABLE's matrix-free sums, Chen et al. 2022), ``randomized=False``::

    r_0 ← b;  r_i ← r_{i−1} − η A r_{i−1}  (i = 1..Q);  v ← η (r_0 + r_1 + … + r_Q)
    = η Σ_{i=0..Q} (I − ηA)^i b                                     Q matvecs per call

Randomised truncation (BSA, Ghadimi & Wang 2018; TTSA, Hong et al. 2020), ``randomized=True``::

    p ~ U{0, …, Q−1}  (torch.randint with the caller's generator)
    v ← b;  repeat p times: v ← v − η A v;  v ← Q·η·v                p matvecs, (Q − 1)/2 expected

so that E[v] = η Σ_{i<Q} (I − ηA)^i b.  The drawn p is kept in ``state.last_p``.

Reference defaults (algorithms.md §3.4–3.7), Q = ``steps``, η = ``eta``:

    ==========================  ===========  ===========  ===========
    Q / η                       Syn          HC           Stoc
    stocBiO (fixed)             10 / 1e-5    10 / 0.05    9 / 0.1
    BSA (randomized)            10 / 1e-5    10 / 0.05    9 / 0.1
    TTSA (randomized)           10 / 1e-5    10 / 0.05    9 / 0.1
    STABLE (fixed, 2 sums)      —            20 / 0.05    —
    ==========================  ===========  ===========  ===========
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import Tensor

from .._validation import check_bool, check_int, check_positive
from .base import LinearSolver, MatVec, SolveInfo, initial_v


@dataclass
class NeumannState:
    """v: the last output (not used as a start).  last_p: the last drawn truncation p (randomised only)."""

    v: Tensor
    last_p: Optional[int] = None


@dataclass(frozen=True, kw_only=True)
class Neumann(LinearSolver):
    """Truncated Neumann series with constant ``eta`` (η) and ``steps`` (Q) terms.

    Options: ``eta`` (η > 0, required; the series converges for η < 2/λ_max); ``steps`` (Q ≥ 1,
    default 10); ``randomized`` (default False: the fixed-length sum of stocBiO/STABLE; True: the
    randomised truncation of BSA/TTSA, p ~ U{0, …, Q−1} drawn from the ``generator`` given to ``solve``).
    """

    name: ClassVar[str] = "neumann"

    eta: float
    steps: int = 10
    randomized: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "eta", check_positive("Neumann", "eta", self.eta))
        check_int("Neumann", "steps", self.steps, minimum=1)
        check_bool("Neumann", "randomized", self.randomized)

    def init(self, b: Tensor, v0: Optional[Tensor] = None) -> NeumannState:
        return NeumannState(v=initial_v(b, v0))

    def expected_matvecs(self, k: int) -> Optional[float]:
        return (self.steps - 1) / 2.0 if self.randomized else float(self.steps)

    def solve(
        self,
        matvec: MatVec,
        b: Tensor,
        state: NeumannState,
        *,
        k: int = 0,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[Tensor, NeumannState, SolveInfo]:
        b = b.detach()
        eta = self.eta
        if self.randomized:
            device = generator.device if generator is not None else None
            p = int(torch.randint(self.steps, (1,), generator=generator, device=device))
            v = b
            for _ in range(p):
                v = v - eta * matvec(v).detach()
            v = (self.steps * eta) * v  # a new tensor even when p = 0: never alias b
            state.last_p, matvecs = p, p
        else:
            r, total = b, b
            for _ in range(self.steps):
                r = r - eta * matvec(r).detach()
                total = total + r
            v = eta * total
            matvecs = self.steps
        events = () if bool(torch.isfinite(v).all()) else ("nonfinite",)
        state.v = v
        return v, state, SolveInfo(matvecs=matvecs, events=events)
