"""Truncated Neumann-series estimates of A⁻¹b, fixed length or with randomised truncation.

For 0 < η < 2/λ_max, A⁻¹ = η Σ_{i≥0} (I − ηA)^i.  Neither variant is warm-started: every call rebuilds
its sum from b (``state.v`` only records the last output).

Fixed length, ``randomized=False``: stocBiO (Ji, Yang & Liang, "Bilevel optimization: convergence analysis
and enhanced design", ICML 2021) and the matrix-free sums used for STABLE (Chen, Sun & Yin, "A
single-timescale method for stochastic bilevel optimization", AISTATS 2022)::

    r_0 ← b;  r_i ← r_{i−1} − η A r_{i−1}  (i = 1..Q);  v ← η (r_0 + r_1 + … + r_Q)
    = η Σ_{i=0..Q} (I − ηA)^i b                                     Q matvecs per call

Randomised truncation, ``randomized=True``: BSA (Ghadimi & Wang, "Approximation methods for bilevel
programming", arXiv:1802.02246, 2018) and TTSA (Hong, Wai, Wang & Yang, "A two-timescale stochastic
algorithm framework for bilevel optimization", arXiv:2007.05170, 2020; SIAM J. Optim. 2023)::

    p ~ U{0, …, Q−1}  (torch.randint with the caller's generator)
    v ← b;  repeat p times: v ← v − η A v;  v ← Q·η·v                p matvecs, (Q − 1)/2 expected

so that E[v] = η Σ_{i<Q} (I − ηA)^i b.  The drawn p is kept in ``state.last_p``.

``HybridNeumann`` (compatibility only) is the LancBiO reference code's synthetic TTSA/BSA estimator: the
randomised sum with c = η (no Q factor) followed by Q GD steps.

Curvature evidence: every product A r gives the Rayleigh quotient rᵀAr/‖r‖² of a series term; a quotient
≤ 0 proves A is not positive definite, where the series diverges (event ``"indefinite"``,
``SolveInfo.curvature``); read with the call's one finiteness read-back.

Reference defaults of the LancBiO experiments (Yang, Gao & Yuan, ICLR 2025), Q = ``steps``, η = ``eta``:

    ==========================  ===========  ===========  ===========
    Q / η                       Syn          HC           Stoc
    stocBiO (fixed)             10 / 1e-5    10 / 0.05    9 / 0.1
    BSA (randomized)            10 / 1e-5    10 / 0.05    9 / 0.1
    TTSA (randomized)           10 / 1e-5    10 / 0.05    9 / 0.1
    STABLE (fixed, 2 sums)      —            20 / 0.05    —
    ==========================  ===========  ===========  ===========
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Mapping, Optional

import torch
from torch import Tensor

from .._validation import check_bool
from .base import (
    LINEAR_SOLVERS,
    Curvature,
    LinearSolver,
    MatVec,
    SolveInfo,
    initial_v,
    read_back_quotients,
    track_quotients,
)
from .gd import GD, GDState


@dataclass(frozen=True)
class NeumannState:
    """v: the last output (not used as a start).  last_p: the last drawn truncation p (randomised only)."""

    v: Tensor
    last_p: Optional[int] = None
    #: (smallest, largest) Rayleigh quotient rᵀAr/‖r‖² of the last call's series terms, () if it made no product
    quotients: tuple = ()


@LINEAR_SOLVERS.register
@dataclass(frozen=True, kw_only=True)
class Neumann(LinearSolver):
    """Truncated Neumann series with constant ``eta`` (η) and ``steps`` (Q) terms.

    Options: ``eta`` (η > 0; presettable, no library default; the series converges for η < 2/λ_max);
    ``steps`` (Q ≥ 1; presettable, library default 10); ``randomized`` (default False: the fixed-length
    sum of stocBiO/STABLE; True: the randomised truncation of BSA/TTSA, p ~ U{0, …, Q−1} drawn from the
    ``generator`` given to ``solve``).
    """

    name: ClassVar[str] = "neumann"
    uses_initial_v: ClassVar[bool] = False
    presettable: ClassVar[tuple[str, ...]] = ("eta", "steps")
    defaults: ClassVar[Mapping[str, Any]] = {"steps": 10}
    examples: ClassVar[Mapping[str, Any]] = {"eta": 0.1}

    eta: Optional[float] = None
    steps: Optional[int] = None
    randomized: bool = False

    def validate(self, options: Mapping[str, Any]) -> None:
        self._check_eta_steps(options)
        check_bool("Neumann", "randomized", options["randomized"])

    @property
    def random_cost(self) -> bool:
        return self.randomized

    def init(self, b: Tensor, v0: Optional[Tensor] = None) -> NeumannState:
        self.require_resolved()
        return NeumannState(v=initial_v(b, v0))

    def expected_matvecs(self, k: int) -> Optional[float]:
        self.require_resolved()
        return (self.steps - 1) / 2.0 if self.randomized else float(self.steps)

    def total_matvecs(self, iterations: int, v0_zero: bool = True) -> float:
        """Q·K (fixed: stocBiO); K(Q − 1)/2 expected (randomised: p ~ U{0, …, Q−1} has mean (Q − 1)/2).
        The sum starts from b whatever v0 is, so no product is ever skipped."""
        self.require_resolved()
        return float(max(iterations, 0)) * self.expected_matvecs(0)

    def solve(
        self,
        matvec: MatVec,
        b: Tensor,
        state: NeumannState,
        *,
        k: int = 0,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[Tensor, NeumannState, SolveInfo]:
        self.require_resolved()
        b = b.detach()
        eta = self.eta
        last_p = state.last_p
        quotients = None  # the smallest and largest rᵀAr/‖r‖² met, kept on the device

        def product(r: Tensor) -> Tensor:
            nonlocal quotients
            ar = matvec(r).detach()
            quotients = track_quotients(quotients, r, ar)
            return ar

        if self.randomized:
            device = generator.device if generator is not None else None
            p = int(torch.randint(self.steps, (1,), generator=generator, device=device))
            v = b
            for _ in range(p):
                v = v - eta * product(v)
            v = (self.steps * eta) * v  # a new tensor even when p = 0: never alias b
            last_p, matvecs = p, p
        else:
            r, total = b, b
            for _ in range(self.steps):
                r = r - eta * product(r)
                total = total + r
            v = eta * total
            matvecs = self.steps
        smallest, largest = quotients if quotients is not None else (None, None)
        finite, _, curv, extremes = read_back_quotients(v, smallest, largest)
        events = () if finite else ("nonfinite",)
        curvature = None
        if curv is not None:
            events += ("indefinite",)
            curvature = Curvature("Neumann: the Rayleigh quotient rᵀAr/‖r‖² of a series term", curv)
        return v, replace(state, v=v, last_p=last_p, quotients=extremes), SolveInfo(matvecs=matvecs, events=events,
                                                                                    curvature=curvature)

    def spectrum(self, state: NeumannState) -> Optional[tuple[float, float]]:
        """The extreme Rayleigh quotients of the last call's series terms r_i = (I − ηA)^i b (in [λ_min, λ_max];
        when η > 2/λ_max the terms turn towards the top eigenvector, so the largest nears λ_max)."""
        return state.quotients or None


@LINEAR_SOLVERS.register
@dataclass(frozen=True, kw_only=True)
class HybridNeumann(LinearSolver):
    """Compatibility only: the LancBiO reference code's synthetic TTSA/BSA estimator, not a published one.

    p ~ U{0, …, Q−1};  v ← η (I − ηA)^p b  (c = η, no Q factor);  then Q GD steps v ← v − η (A v − b).
    Cost per call: p + Q matvecs, (Q − 1)/2 + Q expected.  E[v] is not the truncated Neumann series (the
    estimate is biased by design), which is why the canonical estimator (``Neumann(randomized=True)``)
    is the default of TTSA and BSA.

    Options: ``eta`` (η > 0; presettable, no library default); ``steps`` (Q ≥ 1; presettable, library
    default 10).  The state is a ``NeumannState`` (``last_p``: the drawn p).
    """

    name: ClassVar[str] = "hybrid_neumann"
    uses_initial_v: ClassVar[bool] = False
    presettable: ClassVar[tuple[str, ...]] = ("eta", "steps")
    defaults: ClassVar[Mapping[str, Any]] = {"steps": 10}
    examples: ClassVar[Mapping[str, Any]] = {"eta": 0.1}

    eta: Optional[float] = None
    steps: Optional[int] = None

    def validate(self, options: Mapping[str, Any]) -> None:
        self._check_eta_steps(options)

    @property
    def random_cost(self) -> bool:
        return True

    def _neumann(self) -> Neumann:
        return Neumann(eta=self.eta, steps=self.steps, randomized=True)

    def init(self, b: Tensor, v0: Optional[Tensor] = None) -> NeumannState:
        self.require_resolved()
        return self._neumann().init(b, v0)

    def expected_matvecs(self, k: int) -> Optional[float]:
        self.require_resolved()
        return (self.steps - 1) / 2.0 + self.steps

    def total_matvecs(self, iterations: int, v0_zero: bool = True) -> float:
        """K((Q − 1)/2 + Q) expected: the GD stage starts from η(I − ηA)^p b ≠ 0, so none is skipped."""
        self.require_resolved()
        return float(max(iterations, 0)) * ((self.steps - 1) / 2.0 + self.steps)

    def solve(
        self, matvec: MatVec, b: Tensor, state: NeumannState, *, k: int = 0,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[Tensor, NeumannState, SolveInfo]:
        self.require_resolved()
        v, drawn, first = self._neumann().solve(matvec, b, state, k=k, generator=generator)
        # the canonical estimator scales by Q·η; the reference's hybrid by η only
        v = v / self.steps
        gd_state = GDState(v=v, v_is_zero=not bool(torch.any(v != 0)))
        v, _, second = GD(eta=self.eta, steps=self.steps).solve(matvec, b, gd_state, k=k)
        events = first.events + tuple(e for e in second.events if e != "indefinite" or e not in first.events)
        info = SolveInfo(matvecs=first.matvecs + second.matvecs, events=events,
                         curvature=first.curvature or second.curvature)
        return v, replace(drawn, v=v), info


def neumann(**options: Any) -> Neumann:
    """Configure a truncated Neumann series (fixed or ``randomized=True``); see ``Neumann`` for the options."""
    return Neumann(**options)


def hybrid_neumann(**options: Any) -> HybridNeumann:
    """Configure the reference code's hybrid Neumann + GD estimator (compatibility); see ``HybridNeumann``."""
    return HybridNeumann(**options)


def randomized_neumann(compat_hybrid: bool = False, owner: str = "randomized_neumann") -> LinearSolver:
    """The randomised-truncation Neumann estimator of TTSA and BSA, or with ``compat_hybrid=True`` the
    reference code's hybrid (compatibility only); ``owner`` names the caller in the error for a non-bool."""
    check_bool(owner, "compat_hybrid", compat_hybrid)
    return HybridNeumann() if compat_hybrid else Neumann(randomized=True)
