"""The float32 path (issue 12): LancBiO on linear hyper-cleaning in float32 agrees with float64 to the documented
tolerance (``bilevel.solvers.lancbio`` docstring: relative difference of x and y ≤ 1e-3 over the first 300
iterations on digits, the same test accuracy to within one test image; measured 5e-7 at 100 and 5e-5 at 300), and
the run summary names the dtype."""

import warnings

import pytest
import torch

import bilevel
from bilevel.linear_solvers import Lanczos
from conftest import spd_matrix


def _run(dtype, iters):
    problem = bilevel.problems.hyperclean("digits", corruption=0.8, seed=0, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return problem, bilevel.solve(problem, bilevel.solvers.lancbio(), max_iter=iters, eval_every=iters)


def test_float32_agrees_with_float64_on_hyperclean():
    _, r32 = _run(torch.float32, 100)
    problem, r64 = _run(torch.float64, 100)
    assert r32.x.dtype == torch.float32 and r32.y.dtype == torch.float32
    rel = lambda a, b: float((a.double() - b).norm() / b.norm())  # noqa: E731
    assert rel(r32.x, r64.x) <= 1e-3 and rel(r32.y, r64.y) <= 1e-3
    n_test = problem.info["n_test"]
    assert abs(r32.history.last()["test_accuracy"] - r64.history.last()["test_accuracy"]) <= 1 / n_test + 1e-12
    assert r32.counts == r64.counts
    assert r32.summary().splitlines()[0].endswith("solver time, float32")
    assert r64.summary().splitlines()[0].endswith("solver time, float64")
    assert r32.dtype == "float32"


def test_lanczos_float32_accumulates_in_float64():
    """α_j and the projections come from float64 accumulation: on a fixed system the float32 run's T_j matches the
    float64 run's to float32 rounding of the vectors, not of the sums."""
    A64 = spd_matrix(200, 100.0, 0)
    b64 = torch.randn(200, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = {}
    for dtype in (torch.float32, torch.float64):
        A, b = A64.to(dtype), b64.to(dtype)
        solver = Lanczos(m=8)
        state = solver.init(b)
        for k in range(8):
            v, state, _ = solver.solve(A.__matmul__, b, state, k=k)
        out[dtype] = (v, state)
    (v32, s32), (v64, s64) = out[torch.float32], out[torch.float64]
    assert v32.dtype == torch.float32 and isinstance(s32.alpha[0], float)
    assert s32.alpha == pytest.approx(s64.alpha, rel=1e-5)
    assert float((v32.double() - v64).norm() / v64.norm()) < 1e-4
