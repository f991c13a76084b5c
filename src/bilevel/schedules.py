"""Step-size and subspace-dimension schedules: immutable, pure functions of the 0-based iteration k.

A plain number wherever a schedule is expected means a constant (``as_schedule``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union


class Schedule:
    """Base class: ``schedule(k)`` gives the value at 0-based iteration k."""

    def __call__(self, k: int) -> float:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(Schedule):
    value: float

    def __call__(self, k: int) -> float:
        return self.value


@dataclass(frozen=True)
class Piecewise(Schedule):
    """``values[i]`` from iteration ``boundaries[i-1]`` on; e.g. θ = 0.1 then 0.05 from k = 500 is
    ``Piecewise((0.1, 0.05), (500,))``."""

    values: tuple[float, ...]
    boundaries: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError(
                f"Piecewise: need one more value than boundaries; got {len(self.values)} values and "
                f"{len(self.boundaries)} boundaries."
            )
        if list(self.boundaries) != sorted(self.boundaries) or any(b < 0 for b in self.boundaries):
            raise ValueError(f"Piecewise: boundaries must be non-negative and increasing; got {self.boundaries}.")

    def __call__(self, k: int) -> float:
        i = 0
        while i < len(self.boundaries) and k >= self.boundaries[i]:
            i += 1
        return self.values[i]


@dataclass(frozen=True)
class PowerDecay(Schedule):
    """``max(floor, scale · (k + offset)^(−power))``: e.g. TTSA's λ_k = max(0.01, k^(−0.4)), k ≥ 1, is
    ``PowerDecay(1.0, 0.4, offset=1, floor=0.01)``."""

    scale: float
    power: float
    offset: int = 1
    floor: float = 0.0

    def __post_init__(self) -> None:
        if self.offset < 1:
            raise ValueError(f"PowerDecay: offset must be >= 1 so that (k + offset) > 0; got {self.offset}.")

    def __call__(self, k: int) -> float:
        return max(self.floor, self.scale * (k + self.offset) ** (-self.power))


ScheduleLike = Union[float, int, Schedule, Callable[[int], float]]


def as_schedule(value: ScheduleLike, name: str) -> Schedule | Callable[[int], float]:
    """Turn a number into ``Constant``; validate it is positive and finite. Callables pass through."""
    if isinstance(value, Schedule) or (callable(value) and not isinstance(value, (int, float))):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or a schedule; got {type(value).__name__} ({value!r}).")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number; got {value!r}.")
    return Constant(float(value))


@dataclass(frozen=True)
class DimensionSchedule:
    """LancBiO's subspace dimension m (= restart period), an integer function of k.

    m starts at ``m0``; at every 0-based k with (k + 1) mod ``period`` = 0 it becomes
    min(⌈m·``growth``⌉, ``m_max``) (the ceiling is taken of m·ρ − 1e-9 so that rounding cannot add one).
    The update at iteration k applies from k itself (HC: m = 2 from k = 49).  An optional phase switch at
    ``switch_at`` replaces the cap by ``switch_m_max`` (and the solver restarts there).
    ``growth = 1`` (or ``period = None``) gives a fixed m.
    """

    m0: int = 10
    growth: float = 1.0
    period: int | None = None
    m_max: int | None = None
    switch_at: int | None = None
    switch_m_max: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.m0, int) or isinstance(self.m0, bool) or self.m0 < 1:
            raise ValueError(f"DimensionSchedule: m0 must be an integer >= 1; got {self.m0!r}.")
        if not (isinstance(self.growth, (int, float)) and math.isfinite(self.growth) and self.growth >= 1):
            raise ValueError(f"DimensionSchedule: growth must be a finite number >= 1; got {self.growth!r}.")
        if self.period is not None and (not isinstance(self.period, int) or self.period < 1):
            raise ValueError(f"DimensionSchedule: period must be an integer >= 1 or None; got {self.period!r}.")
        for label in ("m_max", "switch_m_max"):
            val = getattr(self, label)
            if val is not None and (not isinstance(val, int) or val < 1):
                raise ValueError(f"DimensionSchedule: {label} must be an integer >= 1 or None; got {val!r}.")
        if self.m_max is not None and self.m_max < self.m0:
            raise ValueError(f"DimensionSchedule: m_max ({self.m_max}) must be >= m0 ({self.m0}).")
        if (self.switch_at is None) != (self.switch_m_max is None):
            raise ValueError("DimensionSchedule: give both switch_at and switch_m_max, or neither.")
        if self.growth > 1 and self.period is not None and self.m_max is None:
            raise ValueError("DimensionSchedule: a growing schedule needs a cap m_max.")

    @property
    def cap(self) -> int:
        """The largest m this schedule can ever return (for preallocating the basis)."""
        if self.growth > 1 and self.period:
            return max(self.m0, self.m_max or self.m0, self.switch_m_max or self.m0)
        return self.m0

    def __call__(self, k: int) -> int:
        m = self.m0
        if self.growth > 1 and self.period:
            # one update at the start of each iteration k' <= k with (k' + 1) % P == 0
            updates = (k + 1) // self.period
            for i in range(updates):
                at = (i + 1) * self.period - 1
                cap = self._cap_at(at)
                m = min(math.ceil(m * self.growth - 1e-9), cap)
                if m == cap and (self.switch_at is None or at >= self.switch_at):
                    break  # the cap is final: nothing changes any more
        if self.switch_at is not None and k >= self.switch_at:
            m = min(m, self.switch_m_max)
        return int(m)

    def _cap_at(self, k: int) -> int:
        if self.switch_at is not None and k >= self.switch_at:
            return self.switch_m_max
        return self.m_max if self.m_max is not None else self.m0

    def first_reaching(self, value: int, horizon: int) -> int | None:
        """First k < horizon at which m(k) >= value, or None (used to warn about unreachable caps)."""
        if self.switch_at is None:  # m(k) is non-decreasing: bisect
            if horizon <= 0 or self(horizon - 1) < value:
                return None
            lo, hi = 0, horizon - 1
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (mid + 1, hi) if self(mid) < value else (lo, mid)
            return lo
        for k in range(horizon):
            if self(k) >= value:
                return k
        return None


def as_dimension_schedule(m: int | DimensionSchedule) -> DimensionSchedule:
    if isinstance(m, DimensionSchedule):
        return m
    if isinstance(m, bool) or not isinstance(m, int):
        raise TypeError(f"m must be an int or a DimensionSchedule; got {type(m).__name__} ({m!r}).")
    return DimensionSchedule(m0=m)
