"""A table of bad inputs and the clear error each must raise (type, and the words of the message)."""

from __future__ import annotations

import math

import pytest
import torch

from bilevel.problem import BilevelProblem, ProblemError
from bilevel.problems import get_problem, quadratic, synthetic
from bilevel.testing import check_hypergradient, check_oracles
from bilevel.truth import solve_lower, true_hypergradient

X0 = torch.zeros(2, dtype=torch.float64)
Y0 = torch.ones(3, dtype=torch.float64)


def f_ok(x, y):
    return (y.square().sum() + x.square().sum()) / 2


def g_ok(x, y):
    return (y - x.sum()).square().sum() / 2


def _raise_inside(x, y):
    raise KeyError("missing column 'price'")


CASES = {
    # ---- BilevelProblem ----
    "f returns a vector": (
        lambda: BilevelProblem(lambda x, y: y * 2, g_ok, X0, Y0),
        ProblemError,
        ["f must return a scalar", "(3,)"],
    ),
    "f not callable": (lambda: BilevelProblem(3.0, g_ok, X0, Y0), ProblemError, ["f must be callable", "float"]),
    "f with one argument": (lambda: BilevelProblem(lambda x: x.sum(), g_ok, X0, Y0), ProblemError, ["(x, y)", "signature"]),
    "x0 a list": (lambda: BilevelProblem(f_ok, g_ok, [0.0, 1.0], Y0), TypeError, ["x0", "list"]),
    "int dtype x0": (
        lambda: BilevelProblem(f_ok, g_ok, torch.zeros(2, dtype=torch.int64), Y0),
        TypeError,
        ["x0", "floating-point", "torch.int64"],
    ),
    "NaN in y0": (
        lambda: BilevelProblem(f_ok, g_ok, X0, torch.tensor([1.0, math.nan], dtype=torch.float64)),
        ValueError,
        ["y0", "NaN"],
    ),
    "empty dict y0": (lambda: BilevelProblem(f_ok, g_ok, X0, {}), ValueError, ["y0", "empty dict"]),
    "x0/y0 dtype mismatch": (
        lambda: BilevelProblem(f_ok, g_ok, X0.float(), Y0),
        ProblemError,
        ["x0 and y0", "torch.float32", "torch.float64"],
    ),
    "g independent of y": (
        lambda: BilevelProblem(f_ok, lambda x, y: x.sum(), X0, Y0),
        ProblemError,
        ["g does not depend on y"],
    ),
    "f raising inside": (
        lambda: BilevelProblem(_raise_inside, g_ok, X0, Y0),
        ProblemError,
        ["calling f(x0, y0", "KeyError", "price"],
    ),
    "g not finite": (
        lambda: BilevelProblem(f_ok, lambda x, y: (y / 0.0).sum(), X0, Y0),
        ProblemError,
        ["g(x0, y0) is not finite"],
    ),
    "presets not a mapping": (
        lambda: BilevelProblem(f_ok, g_ok, X0, Y0, presets=[("lr_x", 1.0)]),
        ProblemError,
        ["presets must map", "lr_x"],
    ),
    "closed_forms of the wrong type": (
        lambda: BilevelProblem(f_ok, g_ok, X0, Y0, closed_forms={"hvp": None}),
        ProblemError,
        ["closed_forms must be a bilevel.ClosedForms", "dict"],
    ),
    # ---- registry ----
    "unknown problem name": (lambda: get_problem("synthetc"), ValueError, ["'synthetc'", "Did you mean 'synthetic'"]),
    "unknown problem option": (
        lambda: get_problem("synthetic", n=10, conditon=10.0),
        TypeError,
        ["'conditon'", "Did you mean 'condition'"],
    ),
    # ---- synthetic ----
    "synthetic n=0": (lambda: synthetic(n=0), ValueError, ["synthetic", "n must be >= 1", "got 0"]),
    "synthetic n float": (lambda: synthetic(n=10.0), TypeError, ["n must be an integer", "10.0"]),
    "synthetic condition=0.5": (lambda: synthetic(n=5, condition=0.5), ValueError, ["condition must be >= 1", "0.5"]),
    "synthetic condition=inf": (lambda: synthetic(n=5, condition=math.inf), ValueError, ["condition", "inf"]),
    "synthetic c0 too large": (lambda: synthetic(n=5, condition=10.0, c0=1.5), ValueError, ["c0", "strongly convex", "1.5"]),
    "synthetic negative seed": (lambda: synthetic(n=5, condition=10.0, seed=-1), ValueError, ["seed", "-1"]),
    "synthetic int dtype": (lambda: synthetic(n=5, condition=10.0, dtype=torch.int32), TypeError, ["dtype", "torch.int32"]),
    # ---- quadratic ----
    "quadratic dx=-1": (lambda: quadratic(dx=-1), ValueError, ["quadratic", "dx must be >= 1", "-1"]),
    "quadratic dy string": (lambda: quadratic(dy="10"), TypeError, ["dy must be an integer", "'10'"]),
    "quadratic condition=0": (lambda: quadratic(condition=0), ValueError, ["condition", "> 0", "got 0"]),
    "quadratic negative alpha": (lambda: quadratic(alpha=-0.1), ValueError, ["alpha", "-0.1"]),
    "quadratic alpha=0 with dx > dy": (lambda: quadratic(dx=5, dy=3, alpha=0.0), ValueError, ["alpha = 0", "singular"]),
    "quadratic closed_forms not bool": (lambda: quadratic(closed_forms="yes"), TypeError, ["closed_forms", "'yes'"]),
    "quadratic bad device": (lambda: quadratic(device="gpu9"), ValueError, ["device", "'gpu9'"]),
    # ---- truth / testing ----
    "truth x of the wrong size": (
        lambda: true_hypergradient(quadratic(dx=3, dy=4), torch.zeros(5, dtype=torch.float64)),
        ValueError,
        ["x must have 3 entries", "(5,)"],
    ),
    "solve_lower negative max_iter": (
        lambda: solve_lower(quadratic(closed_forms=False), torch.zeros(5, dtype=torch.float64), max_iter=-2),
        ValueError,
        ["max_iter", "-2"],
    ),
    "check_hypergradient n_directions=0": (
        lambda: check_hypergradient(quadratic(), n_directions=0),
        ValueError,
        ["n_directions", "got 0"],
    ),
    "check_oracles y of the wrong size": (
        lambda: check_oracles(quadratic(dx=2, dy=3), y=torch.zeros(4, dtype=torch.float64)),
        ValueError,
        ["y must have 3 entries"],
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_raises_a_clear_error(case):
    build, error, words = CASES[case]
    with pytest.raises(error) as info:
        build()
    message = str(info.value)
    for word in words:
        assert word in message, f"{case}: {word!r} not in message {message!r}"


def test_problem_error_is_a_value_error():
    # callers may catch ValueError generally
    assert issubclass(ProblemError, ValueError)


def test_valid_inputs_are_accepted_and_not_mutated():
    # the control for the table: the same constructors with good inputs work
    x0, y0 = X0.clone(), Y0.clone()
    problem = BilevelProblem(f_ok, g_ok, x0, y0, presets={"*": {"lr_x": 0.5}})
    assert problem.preset("lr_x") == 0.5
    problem.x0.add_(1.0)  # a copy: neither the problem nor the caller's tensor changes
    assert torch.equal(problem.x0, X0) and torch.equal(x0, X0)
    assert quadratic(dx=1, dy=1, condition=1).dy == 1
    assert synthetic(n=1, condition=1.0).dx == 1
    assert get_problem("quadratic", alpha=0.0, dx=2, dy=3).info["alpha"] == 0.0
