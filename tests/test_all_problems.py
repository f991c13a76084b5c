"""Registry-driven problem tests: every registered problem family (a new file is picked up here).

Each is built with its factory's defaults (the built-ins that would be large by default get small sizes
below), then its oracles are checked against central finite differences and a short LancBiO run must
work end to end.
"""

import inspect
import warnings

import pytest

import bilevel
from bilevel.problems import PROBLEMS
from bilevel.testing import check_oracles

#: small instances of the built-in families whose defaults are paper-sized
SMALL = {
    "synthetic": {"n": 40, "condition": 100.0},
    "hyperclean": {"dataset": "digits", "corruption": 0.5, "n_train": 120, "n_val": 80},
}
NAMES = sorted(PROBLEMS)


def build(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PROBLEMS.create(name, **SMALL.get(name, {}))


@pytest.mark.parametrize("name", NAMES)
def test_factory_is_documented_and_builds_a_problem(name):
    assert inspect.getdoc(PROBLEMS[name]), f"{name}: the factory needs a docstring"
    problem = build(name)
    assert isinstance(problem, bilevel.BilevelProblem)
    assert set(problem.presets) <= {"*"}, f"{name}: a problem carries only solver-neutral scales"


@pytest.mark.parametrize("name", NAMES)
def test_oracles_match_finite_differences(name):
    problem = build(name)
    assert check_oracles(problem, n_directions=2, rtol=1e-5).ok


@pytest.mark.parametrize("name", NAMES)
def test_lancbio_runs_on_it(name):
    problem = build(name)
    res = bilevel.solve(problem, bilevel.solvers.lancbio(**({} if problem.preset("lr_x") else {"lr_x": 0.1}),
                                                         **({} if problem.preset("lr_y") else {"lr_y": 0.1})),
                        max_iter=5, eval_every=2, true_hypergradient=False)
    assert res.status == "max_iter", res.message
    assert len(res.history) == 3
