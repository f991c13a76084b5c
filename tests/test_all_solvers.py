"""Registry-driven tests: every registered solver, with the budgets it declares in ``checks``.

A new algorithm file is picked up here automatically; it must declare honest budgets next to its code
(``checks``) and document its oracle cost (``expected_counts``).
"""

import inspect

import pytest
import torch

import bilevel
from bilevel.cli import main
from bilevel.kinds import solvers_for
from bilevel.solvers import SOLVERS

NAMES = solvers_for("classic")  # RL solvers: tests/test_rl.py


@pytest.fixture(scope="module")
def problems():
    return {
        "quadratic": bilevel.problems.quadratic(dx=5, dy=20, condition=100.0, seed=0),
        "synthetic": bilevel.problems.synthetic(n=100, condition=100.0, seed=0),
        # large and ill-conditioned enough not to be solved exactly within the count test's K
        "counts": bilevel.problems.quadratic(dx=4, dy=60, condition=1e3, seed=1),
    }


def _solver(name, extra=None, section=None):
    cls = SOLVERS[name]
    opts = dict(cls.checks.get(section, {}).get("options", {})) if section else {}
    opts.update(extra or {})
    return cls.create(**opts)


def test_registry_covers_the_seeds_solvers():
    expected = {"lancbio", "subbio", "amigo_gd", "amigo_cg", "soba", "ttsa", "stocbio", "bsa", "stable",
                "f2sa", "bome", "pbgd", "hjfbio", "itd"}
    missing = expected - set(SOLVERS)
    assert not missing, f"not registered: {sorted(missing)}"


@pytest.mark.parametrize("name", NAMES)
def test_declares_budgets_and_documents_itself(name):
    cls = SOLVERS[name]
    assert {"quadratic", "synthetic"} <= set(cls.checks), f"{name}: checks must give both budgets"
    doc = inspect.getdoc(cls) or ""
    assert "cost" in doc.lower(), f"{name}: the docstring must state the oracle cost per iteration"
    assert any(str(year) in doc for year in range(2010, 2027)), f"{name}: the docstring must cite the paper"
    module_doc = inspect.getdoc(inspect.getmodule(cls)) or ""
    assert module_doc, f"{name}: its module needs a docstring"


@pytest.mark.parametrize("problem_name", ["quadratic", "synthetic"])
@pytest.mark.parametrize("name", NAMES)
def test_reduces_true_hypergradient(problems, name, problem_name):
    budget = SOLVERS[name].checks[problem_name]
    solver = _solver(name, section=problem_name)
    K = budget["max_iter"]
    res = bilevel.solve(problems[problem_name], solver, max_iter=K, eval_every=max(1, K // 10),
                        true_hypergradient=True)
    assert res.status == "max_iter", res.message
    h = res.history.column("hypergrad_norm")
    assert h[0] / h[-1] >= budget["reduction"], (name, problem_name, h)
    if "hypergrad_tol" in budget:
        assert h[-1] <= budget["hypergrad_tol"], (name, problem_name, h[-1])


@pytest.mark.parametrize("name", NAMES)
def test_oracle_counts_match_documentation(problems, name):
    cls = SOLVERS[name]
    problem = problems["counts"]
    solver = _solver(name, section="counts")
    K = 400 if cls.random_cost else 30
    res = bilevel.solve(problem, solver, max_iter=K, eval_every=10 ** 6, true_hypergradient=False, seed=5)
    assert res.status == "max_iter", res.message
    expected = solver.bind(problem).expected_counts(K)
    counts = res.counts.as_dict()
    for key, value in expected.items():
        if cls.random_cost and key == "hvp":
            # the truncation level p is random: the total is within a few standard deviations of its mean
            assert abs(counts[key] - value) <= 0.15 * value, (name, key, counts[key], value)
        else:
            assert counts[key] == value, (name, key, counts[key], value)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_inputs_untouched(problems, name):
    problem = problems["synthetic"]
    x0, y0 = problem.x0, problem.y0
    runs = [bilevel.solve(problem, _solver(name, section="synthetic"), max_iter=25, eval_every=8, seed=2)
            for _ in range(2)]
    strip = lambda res: [{k: v for k, v in row.items() if k != "time"} for row in res.history]
    assert strip(runs[0]) == strip(runs[1])
    assert torch.equal(runs[0].x, runs[1].x)
    assert torch.equal(problem.x0, x0) and torch.equal(problem.y0, y0)


@pytest.mark.parametrize("name", NAMES)
def test_absurd_step_size_diverges(problems, name):
    res = bilevel.solve(problems["quadratic"], _solver(name, {"lr_x": 1e12}, section="quadratic"),
                        max_iter=300, eval_every=1)
    assert res.status == "diverged", (name, res.status, res.message)
    assert torch.isfinite(res.x).all()
    assert "smaller" in res.message


@pytest.mark.parametrize("name", NAMES)
def test_cli_runs_every_solver(tmp_path, capsys, name):
    out = tmp_path / f"{name}.csv"
    code = main(["run", "synthetic", "--solver", name, "--max-iter", "12", "--eval-every", "4",
                 "-P", "n=40", "-P", "condition=100", "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr()
    assert out.exists()
    assert main(["list", "solvers"]) == 0
    assert name in capsys.readouterr().out


@pytest.mark.parametrize("name", NAMES)
def test_published_settings_name_real_options(name):
    """Every entry of a solver's per-experiment settings is an option it accepts (a misspelt or foreign key
    would be silently ignored by the lookup)."""
    settings = SOLVERS[name].create().settings
    for experiment, table in settings.items():
        for key, value in table.items():
            try:
                SOLVERS[name].create(**{key: value})
            except (TypeError, ValueError) as err:
                raise AssertionError(f"{name}: settings[{experiment!r}][{key!r}] = {value!r}: {err}") from None
