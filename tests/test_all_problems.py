"""Registry-driven problem tests: every registered problem family (a new file is picked up here).

Each is built with its factory's defaults (the built-ins that would be large by default get small sizes
below), then its oracles are checked against central finite differences and a short LancBiO run must
work end to end.
"""

import inspect
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import bilevel
from bilevel.kinds import problems_for
from bilevel.problems import PROBLEMS
from bilevel.testing import check_oracles

#: small instances of the built-in families whose defaults are paper-sized
SMALL = {
    "synthetic": {"n": 40, "condition": 100.0},
    "hyperclean": {"dataset": "digits", "corruption": 0.5, "n_train": 120, "n_val": 80},
}
NAMES = problems_for("classic")  # RL problems: tests/test_rl.py


def _documents(seed=0, n=60, p=40, classes=4):
    """A small random stand-in for 20 Newsgroups: non-negative sparse rows of unit ℓ2 norm."""
    rng = np.random.default_rng(seed)
    X = sp.random(n, p, density=0.15, random_state=rng, format="csr") + sp.eye(n, p, format="csr")
    X = sp.csr_matrix(sp.diags(1.0 / np.sqrt(np.asarray(X.multiply(X).sum(1)).ravel())) @ X)
    labels = np.arange(n) % classes
    return X[: n // 2 + 10], labels[: n // 2 + 10], X[n // 2 + 10:], labels[n // 2 + 10:]


SMALL["newsgroups"] = {"data": _documents()}
#: solver steps for small instances whose curvature differs from the full problem's (20 Newsgroups' published
#: scales λ = θ = 100 suit its p = 130107 features, not 40)
STEPS = {"newsgroups": {"lr_x": 1.0, "lr_y": 1.0}}


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
    steps = STEPS.get(name) or {**({} if problem.preset("lr_x") else {"lr_x": 0.1}),
                                **({} if problem.preset("lr_y") else {"lr_y": 0.1})}
    res = bilevel.solve(problem, bilevel.solvers.lancbio(**steps),
                        max_iter=5, eval_every=2, true_hypergradient=False)
    assert res.status == "max_iter", res.message
    assert len(res.history) == 3
