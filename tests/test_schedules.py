"""Schedules are pure integer/float functions of k and follow the reference tables (Yang, Gao & Yuan, LancBiO, ICLR 2025: the subspace-dimension schedule)."""

import pytest

from bilevel.schedules import Constant, DimensionSchedule, Piecewise, PowerDecay, as_schedule


def _changes(schedule, horizon):
    out, prev = [], None
    for k in range(horizon):
        m = schedule(k)
        assert isinstance(m, int)
        if m != prev:
            out.append((m, k))
            prev = m
    return out


def test_synthetic_dimension_schedule_values():
    values = [m for m, _ in _changes(DimensionSchedule(1, 1.1, 20, 80), 2000)]
    assert values == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 21, 24, 27, 30, 33, 37, 41, 46, 51,
                      57, 63, 70, 77, 80]
    assert dict(_changes(DimensionSchedule(1, 1.1, 20, 80), 2000))[80] == 559


def test_hyperclean_dimension_schedule_table():
    changes = _changes(DimensionSchedule(1, 1.3, 50, 10), 3000)
    assert changes == [(1, 0), (2, 49), (3, 99), (4, 149), (6, 199), (8, 249), (10, 299)]


def test_stochastic_schedule_with_phase_switch():
    s = DimensionSchedule(1, 1.3, 50, 30, switch_at=500, switch_m_max=50)
    changes = dict((m, k) for m, k in _changes(s, 1000))
    assert changes[26] == 449 and changes[30] == 499 and changes[39] == 549 and changes[50] == 599
    assert s.cap == 50


def test_fixed_dimension_and_unreachable_cap_helper():
    assert all(DimensionSchedule(m0=20)(k) == 20 for k in range(0, 5000, 97))
    s = DimensionSchedule(1, 1.3, 50, 300)
    assert s.first_reaching(300, 250) is None  # the reference switches phase at 250: its cap 300 is never used
    assert s.first_reaching(300, 3000) == 949
    assert s.first_reaching(8, 3000) == 249


def test_step_size_schedules():
    assert Constant(0.5)(123) == 0.5
    p = Piecewise((0.1, 0.05), (500,))
    assert p(499) == 0.1 and p(500) == 0.05
    d = PowerDecay(1.0, 0.4, offset=1, floor=0.01)
    assert d(0) == 1.0 and d(1) == pytest.approx(2 ** -0.4) and d(10 ** 9) == 0.01
    assert as_schedule(3, "lr")(7) == 3.0


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: DimensionSchedule(m0=0), "m0 must be an integer >= 1; got 0"),
        (lambda: DimensionSchedule(1, 0.5, 10, 5), "growth must be a finite number >= 1; got 0.5"),
        (lambda: DimensionSchedule(1, 1.1, 10, None), "needs a cap m_max"),
        (lambda: DimensionSchedule(5, 1.1, 10, 3), r"m_max \(3\) must be >= m0 \(5\)"),
        (lambda: DimensionSchedule(1, 1.1, 10, 5, switch_at=3), "give both switch_at and switch_m_max"),
        (lambda: Piecewise((1.0,), (3,)), "one more value than boundaries"),
        (lambda: as_schedule(-1.0, "lr_x"), "lr_x must be a positive finite number; got -1.0"),
        (lambda: as_schedule("big", "lr_x"), "lr_x must be a number or a schedule"),
    ],
)
def test_bad_schedules(build, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build()
