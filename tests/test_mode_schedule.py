"""Lanczos mode schedule (plain until k₀, then residual) and LancBiO's hyper-cleaning presets (issue 12)."""

import pytest
import torch

import bilevel
from bilevel.linear_solvers import Lanczos
from bilevel.schedules import DimensionSchedule
from bilevel.solvers.lancbio import PRESETS
from conftest import spd_matrix

F64 = torch.float64


def _system(n=30, condition=50.0, seed=0):
    A = spd_matrix(n, condition, seed)
    b = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    return A, b


def _run(solver, A, b, iters):
    state, out = solver.init(b), []
    for k in range(iters):
        v, state, info = solver.solve(lambda u: A @ u, b, state, k=k)
        out.append((v, state, info))
    return out


@pytest.mark.parametrize("k0", [1, 7, 12])
def test_switches_exactly_at_k0_with_restart_from_last_plain_v(k0):
    A, b = _system()
    sched = DimensionSchedule(m0=1, growth=1.5, period=4, m_max=6)
    mixed = _run(Lanczos(m=sched, plain_until=k0), A, b, 80)
    plain = _run(Lanczos(m=sched, mode="plain"), A, b, k0)
    for k in range(k0):  # before k₀: plain mode, bit for bit
        assert torch.equal(mixed[k][0], plain[k][0])
        assert "mode_switch" not in mixed[k][2].events
        assert mixed[k][2].matvecs == 1
    v_last, _, info = mixed[k0]
    assert info.events[:2] == ("mode_switch", "restart")
    assert info.matvecs == 2  # w = A v̄ with v̄ = v_{k₀−1} ≠ 0, and the Lanczos step
    state = mixed[k0][1]
    assert state.vbar is mixed[k0 - 1][0]  # the base point is the last plain estimate itself
    assert state.j == 1
    assert sum("mode_switch" in r[2].events for r in mixed) == 1
    # after k₀: exactly a residual-mode run restarted at k₀ (its epochs follow m(k) from k₀)
    for k in range(k0 + 1, 80):
        expect_restart = mixed[k - 1][1].j >= sched(k)
        assert ("restart" in mixed[k][2].events) == expect_restart
    # counts equal the documented cost (total_matvecs)
    solver = Lanczos(m=sched, plain_until=k0)
    assert sum(r[2].matvecs for r in mixed) == solver.total_matvecs(80)
    assert solver.total_matvecs(k0) == k0  # 1 HVP per plain iteration
    # the estimate still converges on a fixed system
    assert float((A @ mixed[-1][0] - b).norm()) < 1e-4 * float(b.norm())


def test_plain_until_zero_is_residual_mode_bit_for_bit():
    A, b = _system()
    ref = _run(Lanczos(m=4), A, b, 20)
    got = _run(Lanczos(m=4, plain_until=0), A, b, 20)
    assert all(torch.equal(r[0], g[0]) and r[2] == g[2] for r, g in zip(ref, got))


def test_starts_epoch_at_the_switch():
    A, b = _system()
    solver = Lanczos(m=3, plain_until=5)
    runs = _run(solver, A, b, 5)
    assert solver.starts_epoch(runs[-1][1], 5)
    assert solver.expected_matvecs(4) == 1.0 and solver.expected_matvecs(5) == pytest.approx(1 + 1 / 3)


@pytest.mark.parametrize("kwargs, match", [
    ({"plain_until": -1}, "plain_until must be an integer >= 0"),
    ({"plain_until": 2.5}, "plain_until must be an integer >= 0"),
    ({"plain_until": 10, "mode": "plain"}, "plain_until switches plain mode to residual mode"),
])
def test_bad_plain_until(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Lanczos(**kwargs)


def test_published_preset_has_the_reference_dimension_schedule():
    """The reference: cap 300 while plain (never reached), cap 10 from k = 250; the preset's cap 10 gives the same
    m(k) for every k."""
    reference = DimensionSchedule(m0=1, growth=1.3, period=50, m_max=300, switch_at=250, switch_m_max=10)
    preset = PRESETS["hyperclean-published"]
    assert preset["plain_until"] == 250
    assert [preset["m"](k) for k in range(3000)] == [reference(k) for k in range(3000)]
    assert [PRESETS["hyperclean-residual"]["m"](k) for k in range(400)] == [reference(k) for k in range(400)]


@pytest.mark.filterwarnings("ignore:.*never reaches its cap")
def test_preset_on_hyperclean_counts_and_options():
    problem = bilevel.problems.hyperclean("digits", corruption=0.8, seed=0, dtype=F64)
    solver = bilevel.solvers.lancbio(preset="hyperclean-published", plain_until=6)  # given options win
    res = bilevel.solve(problem, solver, max_iter=20, eval_every=5)
    assert res.options["plain_until"] == 6
    bound = solver.bind(problem)
    assert res.counts.hvp == bound.expected_counts(20)["hvp"] == 6 + 2 * 14  # m = 1 after k₀: a restart (2 HVPs) every iteration
    assert res.events["mode_switch"] == 1
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        bilevel.solvers.lancbio(preset="nope")


@pytest.mark.filterwarnings("ignore:.*never reaches its cap")
def test_fast_preset_three_y_steps_and_an_early_switch():
    """"hyperclean-fast": T = 3, plain for k < 100, the published m(k); its counts are the documented cost."""
    preset = PRESETS["hyperclean-fast"]
    assert (preset["inner_steps"], preset["plain_until"]) == (3, 100)
    assert [preset["m"](k) for k in range(400)] == [PRESETS["hyperclean-published"]["m"](k) for k in range(400)]
    problem = bilevel.problems.hyperclean("digits", corruption=0.8, seed=0, dtype=F64)
    solver = bilevel.solvers.lancbio(preset="hyperclean-fast")
    res = bilevel.solve(problem, solver, max_iter=104, eval_every=52)
    assert (res.options["inner_steps"], res.options["plain_until"]) == (3, 100)
    expected = solver.bind(problem).expected_counts(104)
    assert res.counts.grad_y_g == expected["grad_y_g"] == 3 * 104
    # plain: 1 HVP per iteration; k₀ = 100 restarts (2 HVPs); m = 3 from there: 1, 1, then k = 103 restarts (2)
    assert [solver.bind(problem).v_solver.m(k) for k in (98, 100, 103)] == [2, 3, 3]
    assert res.counts.hvp == expected["hvp"] == 100 + 2 + 1 + 1 + 2
    assert res.events["mode_switch"] == 1


def test_default_settings_are_the_published_schedule():
    """Deterministic hyper-cleaning defaults to the reference's run (plain for k < 250, then residual); the
    earlier default, residual from k = 0, is the preset "hyperclean-residual"."""
    problem = bilevel.problems.hyperclean("digits", corruption=0.8, seed=0, dtype=F64)
    bound = bilevel.solvers.lancbio().bind(problem)
    assert bound.v_solver.plain_until == 250
    assert bound.v_solver.total_matvecs(3) == 3  # plain mode: one HVP per iteration
    assert bound.v_solver.total_matvecs(252) == 250 + 2 + 1  # k₀ = 250 restarts (2 HVPs), then m(250) = 3
    residual = bilevel.solvers.lancbio(preset="hyperclean-residual").bind(problem)
    assert residual.v_solver.plain_until == 0 and residual.v_solver.total_matvecs(3) == 1 + 2 + 2
    plain = bilevel.solvers.lancbio(mode="plain").bind(problem)  # plain mode ignores the setting
    assert plain.v_solver.mode == "plain"
