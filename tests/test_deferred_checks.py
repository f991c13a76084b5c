"""The solve loop reads the device once per evaluation chunk (issue 15): its finiteness, inner-growth,
curvature and time checks then take exactly the decisions of a read after every step.

A run with a per-iteration callback reads after every step (the callback gets a checked state); the same run
without it finds the first non-finite iterate only at the chunk's read and rewinds (replays the chunk from its
start).  Both must end at the same
iteration with the same status, iterates, counts, events and message."""

import warnings

import pytest
import torch

import bilevel
from bilevel.kinds import solvers_for
from bilevel.solvers import SOLVERS, lancbio
from conftest import toy

F64 = torch.float64


@pytest.fixture(scope="module")
def quad():
    return bilevel.problems.quadratic(dx=5, dy=20, condition=100.0, seed=0)


class _EveryStep:
    """A per-iteration callback that does nothing: its presence makes the loop read after every step."""

    def on_iteration(self, k, run):
        pass


def _pair(problem, make, max_iter=40, chunk=40, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        every = bilevel.solve(problem, make(), max_iter=max_iter, eval_every=chunk, callbacks=[_EveryStep()], **kw)
        chunked = bilevel.solve(problem, make(), max_iter=max_iter, eval_every=chunk, **kw)
    return every, chunked


def _same_end(a, b):
    assert (a.status, a.iterations, a.message) == (b.status, b.iterations, b.message)
    assert a.counts.as_dict() == b.counts.as_dict()
    assert dict(a.events) == dict(b.events)
    for name in ("x", "y", "v"):  # (v is None for solvers without one)
        assert (getattr(a, name) is None and getattr(b, name) is None) or torch.equal(getattr(a, name),
                                                                                     getattr(b, name)), name


@pytest.mark.parametrize("name", solvers_for("classic"))
def test_divergence_inside_a_chunk_ends_where_a_read_per_step_ends(quad, name):
    # lr_x = 1e12 makes every solver's iterate non-finite at iteration 13 or 14: inside the chunk 1..39
    cls = SOLVERS[name]
    opts = dict(cls.checks.get("quadratic", {}).get("options", {}), lr_x=1e12)
    every, chunked = _pair(quad, lambda: cls.create(**opts))
    assert every.status == "diverged" and 1 < every.iterations < 39, (every.iterations, every.message)
    assert "non-finite values appeared" in every.message
    _same_end(every, chunked)
    assert torch.isfinite(chunked.x).all() and torch.isfinite(chunked.y).all()
    assert chunked.history[0]["iteration"] == 0 and len(chunked.history) == 1


def test_divergence_rewinds_the_outer_optimizer_and_the_generator(quad):
    # Adam's moments and the run's generator (random v_0) are the mutable pieces a rewind restores
    every, chunked = _pair(quad, lambda: lancbio(outer="sgd", outer_options={"lr": 1e12, "momentum": 0.5},
                                                 v_init="randn"))
    assert every.status == "diverged" and every.iterations > 1
    _same_end(every, chunked)


def test_chunked_reads_count_inner_growth_per_iteration():
    # θ too large: ‖∇_y g‖ grows at every inner step (the flag is read with the chunk, counted per iteration)
    prob = bilevel.problems.quadratic(dx=3, dy=8, condition=10.0, seed=1)
    every, chunked = _pair(prob, lambda: lancbio(lr_y=2.5, m=3), max_iter=30, chunk=30)
    _same_end(every, chunked)
    assert every.events.get("inner_growth", 0) > 5 and "grew at every inner step" in chunked.message


@pytest.mark.parametrize("kind", ["indefinite", "concave"])
def test_chunked_reads_stop_on_persistent_curvature_evidence_at_the_same_iteration(kind):
    every, chunked = _pair(toy(kind), lambda: lancbio(), max_iter=100, chunk=50)
    _same_end(every, chunked)
    assert chunked.status == "not_strongly_convex" and 1 < chunked.iterations < 50
    assert chunked.history.last()["iteration"] == chunked.iterations - 1  # the stop's own row


def test_a_finite_run_is_identical_and_its_flags_are_counted(quad):
    every, chunked = _pair(quad, lambda: lancbio(lr_y=0.1), max_iter=25, chunk=10)
    _same_end(every, chunked)
    assert chunked.status == "max_iter"
    strip = [{k: v for k, v in row.items() if k != "time"} for row in every.history.to_dicts()]
    assert strip == [{k: v for k, v in row.items() if k != "time"} for row in chunked.history.to_dicts()]
