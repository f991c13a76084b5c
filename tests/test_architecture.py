"""The architecture: algorithms from parts, options resolved once, immutable states, one data path,
wrapped oracles, one registry mechanism (one new file adds a solver or a problem)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bilevel
from bilevel.inner import GD, INNER_SOLVERS
from bilevel.kinds import solvers_for
from bilevel.linear_solvers import LINEAR_SOLVERS, cg, lanczos, neumann
from bilevel.oracles import Oracles, OracleWrapper, PointWrapper
from bilevel.problems import PROBLEMS
from bilevel.sampling import Batches, FullBatch, full_batches
from bilevel.solvers import SOLVERS, aid, amigo_cg, lancbio, stocbio

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quad():
    return bilevel.problems.quadratic(dx=5, dy=20, condition=100.0, seed=0)


def _strip(res):
    return [{k: v for k, v in row.items() if k != "time"} for row in res.history]


# ---- parts ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("named,assembled", [
    (lambda: amigo_cg(v_steps=5, inner_steps=10),
     lambda: aid(v_solver=cg(steps=5, warm_start=True), inner=GD(steps=10))),
    (lambda: lancbio(m=20), lambda: aid(v_solver=lanczos(m=20), inner=GD(steps=5))),
    (lambda: stocbio(v_steps=10, inner_steps=10),
     lambda: aid(v_solver=neumann(steps=10, randomized=False), inner=GD(steps=10))),
])
def test_aid_from_parts_reduces_the_true_hypergradient_like_the_named_factory(quad, named, assembled):
    runs = []
    for make in (named, assembled):
        runs.append(bilevel.solve(quad, make(), max_iter=150, eval_every=15, true_hypergradient=True))
    named_run, assembled_run = runs
    h = assembled_run.history.column("hypergrad_norm")
    assert h[0] / h[-1] >= 3.0, h  # every one reduces ‖∇φ‖ (stocBiO's Neumann floor is the weakest)
    # the same parts give the same run as the factory that wraps them, to the last bit
    assert _strip(named_run) == _strip(assembled_run)


def test_part_options_by_dotted_and_short_names():
    assert lancbio(m=20).v_solver.m == 20
    assert lancbio(**{"v_solver.m": 20}) == lancbio(m=20)
    assert lancbio(**{"inner.steps": 3}).inner.steps == 3 == lancbio(inner_steps=3).inner.steps
    assert lancbio(lr_y=0.5).inner.lr == 0.5
    assert amigo_cg(v_steps=7).v_solver.steps == 7 == amigo_cg(**{"v_solver.steps": 7}).v_solver.steps
    assert lancbio(eps_breakdown=1e-8, eps_restart=1e-9).v_solver.eps_breakdown == 1e-8  # every Lanczos option
    with pytest.raises(TypeError, match="Did you mean 'v_solver.m'"):
        lancbio(**{"v_solver.mm": 3})
    with pytest.raises(TypeError, match="unknown part 'vsolver'"):
        lancbio(**{"vsolver.m": 3})


def test_cli_and_yaml_take_dotted_options(tmp_path, capsys):
    from bilevel.bench.config import load
    from bilevel.cli import main

    out = tmp_path / "run.csv"
    assert main(["run", "quadratic", "--solver", "lancbio", "-O", "v_solver.m=4", "-O", "inner.steps=2",
                 "--max-iter", "3", "--no-progress", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.exists() and "lancbio" in text
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("name: t\nproblem: {name: quadratic}\nseeds: [0]\nrun: {max_iter: 2}\n"
                   "solvers:\n  - name: lancbio\n    options: {v_solver: {m: [2, 3]}, inner_steps: 2}\n")
    specs = load(str(cfg))
    assert sorted(s.solver_options["v_solver.m"] for s in specs) == [2, 3]
    assert {s.label for s in specs} == {"LancBiO (v_solver.m=2)", "LancBiO (v_solver.m=3)"}


def test_freeze_x_first_is_checked_in_one_place_by_the_v_solver_property():
    assert lancbio(freeze_x_first=1).freeze_x_first == 1  # Lanczos has restart epochs
    for v_solver in (cg(steps=3), neumann(eta=0.1, steps=3)):
        with pytest.raises(ValueError, match="freeze_x_first needs an epoch-based v-solver"):
            aid(v_solver=v_solver, freeze_x_first=2)


# ---- resolve once, immutable states ---------------------------------------------------------------------
def test_bind_resolves_once_into_a_frozen_solver(quad):
    solver = lancbio()
    assert solver.v_solver.m is None and solver.lr_x is None and not solver.bound
    bound = solver.bind(quad)
    assert bound.bound and bound.bind(quad) is bound
    assert bound.lr_x == quad.preset("lr_x") and bound.inner.lr == quad.preset("lr_y") and bound.v_solver.m == 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        bound.lr_x = 1.0
    assert solver.v_solver.m is None  # the user's configuration is untouched


def _snapshot(obj, depth=0):
    """A deep copy of every tensor and plain value reachable through dataclass fields, tuples and dicts."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if depth > 6:
        return None
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {f.name: _snapshot(getattr(obj, f.name), depth + 1) for f in dataclasses.fields(obj)}
        if "Q" in out and hasattr(obj, "rows"):
            # Lanczos' copy-on-write buffer: a state owns Q[:rows]; later rows belong to later states
            out["Q"] = obj.Q[: obj.rows].clone()
        return out
    if isinstance(obj, (tuple, list)):
        return [_snapshot(v, depth + 1) for v in obj]
    if isinstance(obj, dict):
        return {k: _snapshot(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (int, float, str, bool, type(None))):
        return obj
    return None  # generators and other objects are not part of the comparison


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("name", solvers_for("classic"))
def test_a_step_never_changes_the_previous_state(quad, name):
    bound = SOLVERS[name].create().bind(quad)
    oracles = bilevel.CountingOracles(Oracles(quad), bilevel.Counts())
    state = bound.init(quad, oracles, torch.Generator().manual_seed(0))
    for k in range(12):  # long enough for Lanczos restarts and ITD/F2SA inner loops
        before = _snapshot(state)
        new = bound.step(state, oracles, full_batches(k))
        assert _same(_snapshot(state), before), f"{name}: step {k} changed the state it was given"
        assert new.k == state.k + 1 and new is not state
        state = new


def test_stepping_twice_from_one_state_gives_the_same_result(quad):
    """A state is a value: branching from it (as the run does after a divergence) is safe."""
    for name in ("lancbio", "amigo_cg", "subbio"):
        bound = SOLVERS[name].create().bind(quad)
        oracles = Oracles(quad)
        state = bound.init(quad, oracles, torch.Generator().manual_seed(0))
        for k in range(5):
            state = bound.step(state, oracles, full_batches(k))
        first = bound.step(state, oracles, full_batches(5))
        second = bound.step(state, oracles, full_batches(5))
        assert torch.equal(first.x, second.x) and torch.equal(first.v, second.v), name


# ---- wrapped oracles, the data path ---------------------------------------------------------------------
class Recorder(OracleWrapper):
    def __init__(self, inner):
        super().__init__(inner)
        self.calls = []

    def grad_f(self, x, y, batch=None):
        self.calls.append("grad_f")
        return super().grad_f(x, y, batch)

    def grad_y_g(self, x, y, batch=None):
        self.calls.append("grad_y_g")
        return super().grad_y_g(x, y, batch)

    def at(self, x, y, batch=None):
        owner = self

        class Point(PointWrapper):
            def hvp(self, u):
                owner.calls.append("hvp")
                return super().hvp(u)

            def cross(self, u):
                owner.calls.append("cross")
                return super().cross(u)

        return Point(super().at(x, y, batch))


@pytest.mark.parametrize("name", ["lancbio", "amigo_cg", "soba"])
def test_solve_routes_every_call_through_a_users_wrapper(quad, name):
    wrapper = Recorder(Oracles(quad))
    res = bilevel.solve(quad, SOLVERS[name].create(), max_iter=20, eval_every=100, oracles=wrapper)
    c = res.counts
    assert wrapper.calls.count("grad_f") == c.grad_x_f == c.grad_y_f == 20
    assert wrapper.calls.count("hvp") == c.hvp > 0
    assert wrapper.calls.count("cross") == c.cross == 20
    # ∇_y g: the inner steps (SOBA's first y-direction comes from the point, not from grad_y_g)
    assert wrapper.calls.count("grad_y_g") == c.grad_y_g - (20 if name == "soba" else 0)
    plain = bilevel.solve(quad, SOLVERS[name].create(), max_iter=20, eval_every=100)
    assert torch.equal(plain.x, res.x)  # wrapping changes nothing numerically


def test_solve_rejects_oracles_that_are_not_oracles(quad):
    with pytest.raises(TypeError, match="oracles must provide"):
        bilevel.solve(quad, lancbio(), max_iter=1, oracles=object())
    other = bilevel.problems.quadratic(dx=5, dy=20, condition=10.0, seed=1)
    with pytest.raises(ValueError, match="another problem"):
        bilevel.solve(quad, lancbio(), max_iter=1, oracles=Oracles(other))
    with pytest.raises(TypeError, match="batch source"):
        bilevel.solve(quad, lancbio(), max_iter=1, batches=[None])


def test_batches_share_draws_within_a_group_and_full_batch_draws_nothing():
    drawn = []

    def draw(group, index):
        drawn.append((group, index))
        return f"{group}:{index}"

    b = Batches(3, {"inner": "inner", "upper": "upper", "hvp": "hessian", "cross": "hessian", "lower": "lower"}, draw)
    assert b("hvp") == b("cross") == "hessian:0" and b("inner", 2) == "inner:2" and b("inner", 2) == "inner:2"
    assert drawn == [("hessian", 0), ("inner", 2)]
    with pytest.raises(ValueError, match="Did you mean 'inner'"):
        b("iner")
    stream = FullBatch().start({}, torch.Generator())
    assert stream(0)("hvp") is None and stream(5).full
    with pytest.raises(ValueError, match="unknown batch role"):
        FullBatch().start({"hessian": "x"}, torch.Generator())


def test_samples_are_counted_per_level():
    problem = bilevel.problems.hyperclean(dataset="digits", corruption=0.8, seed=0, n_train=300, n_val=200)
    res = bilevel.solve(problem, lancbio(), max_iter=5, eval_every=100)
    c = res.counts
    assert problem.n_samples == 300 and problem.n_samples_f == 200
    assert c.samples_f == (c.grad_x_f + c.grad_y_f) * 200
    assert c.samples_g == (c.grad_y_g + c.grad_x_g + c.hvp + c.cross + c.cross_t + c.linearize) * 300
    assert res.history.last()["samples"] == c.samples_f + c.samples_g


# ---- one registry mechanism; one new file ------------------------------------------------------------------
@pytest.mark.parametrize("registry,bad,good", [
    (SOLVERS, "lancbo", "lancbio"), (LINEAR_SOLVERS, "lanczo", "lanczos"), (INNER_SOLVERS, "gdd", "gd"),
    (PROBLEMS, "quadratik", "quadratic"),
])
def test_every_registry_suggests_the_nearest_name(registry, bad, good):
    with pytest.raises(ValueError, match=f"Did you mean '{good}'"):
        registry.lookup(bad)
    assert good in registry and registry.lookup(good) is registry[good]


TOY_SOLVER = '''"""Toy: plain AID with two GD steps on v (a test of the one-file promise; Smith, Toy Venue 2024)."""

from ..linear_solvers.gd import GD
from .aid import aid, algorithm


@algorithm("toy_aid", "ToyAID", checks={
    "quadratic": {"max_iter": 200, "reduction": 1e3},
    "synthetic": {"max_iter": 250, "reduction": 1e3},
})
def toy_aid(**options):
    """ToyAID (Smith, Toy Venue 2024): AID with two warm-started GD steps on v.

    Oracle cost per iteration: T ∇_y g, 1 ∇_y f, 1 ∇_x f, 2 HVPs (1 the first time), 1 cross product.
    """
    return aid(name="toy_aid", label="ToyAID", v_solver=GD(steps=2, warm_start=True), defaults={"inner_steps": 5},
               **options)
'''

TOY_PROBLEM = '''"""Toy ridge problem (a test of the one-file promise)."""

import torch

from ..problem import BilevelProblem
from ._registry import PROBLEMS


@PROBLEMS.register
def toy_ridge(dim: int = 4, seed: int = 0) -> BilevelProblem:
    """min_x ½‖y*(x) − 1‖², y*(x) = argmin_y ½‖y − x‖² + ½‖y‖²  (y* = x/2)."""
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(dim, generator=gen, dtype=torch.float64)
    return BilevelProblem(lambda x, y: 0.5 * ((y - 1) ** 2).sum(),
                          lambda x, y: 0.5 * ((y - x) ** 2).sum() + 0.5 * (y ** 2).sum(),
                          x0, torch.zeros(dim, dtype=torch.float64), name="toy_ridge",
                          presets={"*": {"lr_x": 1.0, "lr_y": 0.5, "eta": 0.5}})
'''


@pytest.mark.slow
def test_one_new_file_adds_a_solver_and_a_problem_everywhere(tmp_path):
    """Copy the package, drop one solver file and one problem file in, edit nothing else: the registry,
    the CLI listing and the shared registry-driven tests pick both up."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "bilevel", src / "bilevel", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "bilevel" / "solvers" / "toy_aid.py").write_text(TOY_SOLVER)
    (src / "bilevel" / "problems" / "toy_ridge.py").write_text(TOY_PROBLEM)
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1"}
    listing = subprocess.run([sys.executable, "-c", "import sys; from bilevel.cli import main; "
                              "sys.exit(main(['list']))"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "toy_aid" in listing.stdout and "toy_ridge" in listing.stdout
    which = subprocess.run([sys.executable, "-c", "import bilevel; print(bilevel.__file__)"], env=env,
                           capture_output=True, text=True, cwd=tmp_path)
    assert str(src) in which.stdout  # the copy, not the installed package, was imported
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "toy_aid or toy_ridge",
         str(ROOT / "tests" / "test_all_solvers.py"), str(ROOT / "tests" / "test_all_problems.py")],
        env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    summary = tests.stdout.strip().splitlines()[-1]
    passed = int(summary.split(" passed")[0].split()[-1])
    assert passed >= 8 and "failed" not in summary, summary


def test_no_built_in_problem_names_a_solver():
    problems = [bilevel.problems.quadratic(), bilevel.problems.synthetic(n=20, condition=10.0),
                bilevel.problems.hyperclean(dataset="digits", corruption=0.5, n_train=100, n_val=100)]
    assert [p.experiment for p in problems] == [None, "synthetic", "hyperclean/digits"]
    for problem in problems:
        assert set(problem.presets) <= {"*"}, (problem.name, problem.presets)
