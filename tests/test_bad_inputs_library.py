"""Library-level bad inputs and the outcome each must have: an exact exception class and message, a warning,
or an exact run status and message.  One row per input, in the spirit of torch.optim's ``optim_db``; the rows
cover the wrong and misleading behaviours fixed by issue 9 (lower levels that are not strongly convex,
NaN/Inf blame, low precision, ...) and behaviours that were already good, so that they stay good.

The CLI and benchmark rows live in their own files; the problem-definition table is
``tests/test_problem_validation.py`` and the architecture checks ``tests/test_architecture.py``.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch

import bilevel
from bilevel import BilevelProblem, Oracles, OracleWrapper
from bilevel.callbacks import Checkpoint, EarlyStopping
from bilevel.checkpoint import CheckpointError
from bilevel.linear_solvers import LINEAR_SOLVERS
from bilevel.problem import ProblemError
from bilevel.problems import get_problem
from bilevel.rl import RLProblem
from bilevel.solvers import aid, get_solver
from bilevel.truth import solve_lower
from conftest import toy

F64 = torch.float64


# ---- expected outcomes -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Raises:
    error: type
    match: str


@dataclass(frozen=True)
class Status:
    status: str
    match: str


@dataclass(frozen=True)
class Warns:
    warning: type
    match: str


@dataclass(frozen=True)
class Row:
    id: str
    call: Callable[[], Any]
    expect: Any
    note: str = ""


# ---- small problems ------------------------------------------------------------------------------------
def quad():
    return bilevel.problems.quadratic(dx=3, dy=5, condition=10.0, seed=0)




def _g(x, y):
    return 0.5 * (y ** 2).sum() - (x * y).sum()


def nan_f():  # f = ... + sqrt(x₀): NaN once x₀ < 0
    return BilevelProblem(lambda x, y: ((y - 1) ** 2).sum() + torch.sqrt(x[0]) + x[1] ** 2, _g,
                          torch.ones(2, dtype=F64), torch.zeros(2, dtype=F64))


def nan_g():  # g = ... + sqrt(x₀ + 0.5)·y₀: NaN once x₀ < −0.5
    return BilevelProblem(lambda x, y: ((y - 1) ** 2).sum() + ((x + 2) ** 2).sum(),
                          lambda x, y: _g(x, y) + torch.sqrt(x[0] + 0.5) * y[0],
                          torch.ones(2, dtype=F64), torch.zeros(2, dtype=F64))


def vector_f_later():  # a scalar at x0, a vector once x₀ ≤ 0
    def f(x, y):
        value = ((y - 1) ** 2).sum() + ((x + 2) ** 2).sum()
        return value if float(x[0]) > 0 else (y - 1) ** 2

    return BilevelProblem(f, _g, torch.ones(2, dtype=F64), torch.zeros(2, dtype=F64))


class _Interrupting(OracleWrapper):
    """Ctrl-C at the 7th ∇_y g call."""

    calls = 0

    def grad_y_g(self, x, y, batch=None):
        type(self).calls += 1
        if type(self).calls == 7:
            raise KeyboardInterrupt
        return super().grad_y_g(x, y, batch)


def interrupted_run():
    problem = quad()
    _Interrupting.calls = 0
    return bilevel.solve(problem, get_solver("lancbio"), max_iter=50, oracles=_Interrupting(Oracles(problem)))


def solve(problem, solver, **kw):
    return lambda: bilevel.solve(problem() if callable(problem) else problem, solver() if callable(solver) else solver,
                                 **kw)


lancbio = lambda **kw: get_solver("lancbio", **kw)  # noqa: E731

ROWS = [
    # ---- solve(): arguments (already good) ----
    Row("problem not a BilevelProblem", solve(lambda: "synthetic", lancbio), Raises(TypeError, r"problem must be a bilevel\.BilevelProblem; got str")),
    Row("solver factory without parentheses", lambda: bilevel.solve(quad(), bilevel.solvers.lancbio),
        Raises(TypeError, r"solver must be a bilevel solver instance; got Algorithm\. Did you forget the parentheses, e\.g\. bilevel\.solvers\.lancbio\(\)\?")),
    Row("solver class without parentheses", lambda: bilevel.solve(quad(), bilevel.solvers.STABLE),
        Raises(TypeError, r"got .*\. Did you forget the parentheses")),
    Row("negative max_iter", solve(quad, lancbio, max_iter=-1), Raises(ValueError, r"^solve: max_iter must be >= 0; got -1\.$")),
    Row("float max_iter", solve(quad, lancbio, max_iter=10.5), Raises(TypeError, r"^solve: max_iter must be an integer >= 0; got float \(10\.5\)\.$")),
    Row("bool max_iter", solve(quad, lancbio, max_iter=True), Raises(TypeError, r"max_iter must be an integer >= 0; got bool")),
    Row("eval_every 0", solve(quad, lancbio, eval_every=0), Raises(ValueError, r"^solve: eval_every must be >= 1; got 0\.$")),
    Row("negative seed", solve(quad, lancbio, seed=-3), Raises(ValueError, r"^solve: seed must be >= 0; got -3\.$")),
    Row("tol 0", solve(quad, lancbio, tol=0), Raises(ValueError, r"^solve: tol must be finite and > 0; got 0\.$")),
    Row("tol NaN", solve(quad, lancbio, tol=math.nan), Raises(ValueError, r"^solve: tol must be finite and > 0; got nan\.$")),
    Row("tol a string", solve(quad, lancbio, tol="1e-6"), Raises(TypeError, r"^solve: tol must be a number; got str \('1e-6'\)\.$")),
    Row("negative max_time", solve(quad, lancbio, max_time=-1.0), Raises(ValueError, r"^solve: max_time must be finite and > 0; got -1\.0\.$")),
    Row("callback not callable", solve(quad, lancbio, callback=3), Raises(TypeError, r"^solve: callback must be callable\(row\) -> bool; got int\.$")),
    Row("wrong oracles object", solve(quad, lancbio, oracles=object()),
        Raises(TypeError, r"^solve: oracles must provide grad_x_f, grad_y_f, grad_f, grad_y_g, grad_x_g, grad_g, at; got object\. Wrap bilevel\.Oracles\(problem\)")),
    Row("oracles of another problem", lambda: bilevel.solve(quad(), lancbio(), oracles=Oracles(quad())),
        Raises(ValueError, r"^solve: the oracles were built for another problem; build them with this problem\.$")),
    Row("batches not a batch source", solve(quad, lancbio, batches=[1, 2]), Raises(TypeError, r"^solve: batches must be a batch source with start\(roles, generator\), e\.g\. bilevel\.FullBatch\(\); got list\.$")),
    Row("curvature_patience 0 (new)", solve(quad, lancbio, curvature_patience=0), Raises(ValueError, r"^solve: curvature_patience must be >= 1; got 0\.$")),
    Row("curvature_patience a string (new)", solve(quad, lancbio, curvature_patience="5"), Raises(TypeError, r"^solve: curvature_patience must be an integer >= 1; got str \('5'\)\.$")),
    # ---- names and options (already good) ----
    Row("unknown solver name", lambda: get_solver("lancbo"), Raises(ValueError, r"^unknown solver 'lancbo'\. Did you mean 'lancbio'\?")),
    Row("unknown problem name", lambda: get_problem("synthetc"), Raises(ValueError, r"^unknown problem 'synthetc'\. Did you mean 'synthetic'\?")),
    Row("unknown v-solver name", lambda: LINEAR_SOLVERS.create("lanczo"), Raises(ValueError, r"^unknown v-solver 'lanczo'\. Did you mean 'lanczos'\?")),
    Row("unknown option, near a short name", lambda: lancbio(inner_step=3), Raises(TypeError, r"^LancBiO: unknown option 'inner_step'\. Did you mean 'inner_steps'\?")),
    Row("unknown part in a dotted option", lambda: lancbio(**{"v_solve.m": 3}), Raises(TypeError, r"^LancBiO: unknown part 'v_solve' in 'v_solve\.m'\. Did you mean 'v_solver'\?")),
    Row("unknown option of a part", lambda: lancbio(**{"v_solver.mm": 3}), Raises(TypeError, r"^LancBiO: unknown option 'v_solver\.mm'\. Did you mean 'v_solver\.m'\?")),
    Row("unknown option of a class solver", lambda: get_solver("stable", inner_steps=3), Raises(TypeError, r"^STABLE: unknown option 'inner_steps'")),
    Row("m = 0", lambda: lancbio(m=0), Raises(ValueError, r"^LancBiO: Lanczos: DimensionSchedule: m0 must be an integer >= 1; got 0\.$")),
    Row("bad choice with a suggestion", lambda: lancbio(subproblem="minre"), Raises(ValueError, r"^LancBiO: subproblem must be one of \['galerkin', 'minres'\]; got 'minre'\. Did you mean 'minres'\? \(subproblem sets v_solver\.subproblem\)$")),
    Row("v_init not a choice", lambda: lancbio(v_init="ones"), Raises(ValueError, r"^LancBiO: v_init must be one of \['zeros', 'randn'\]; got 'ones'\.")),
    Row("mu_lb 0", lambda: lancbio(mu_lb=0.0), Raises(ValueError, r"^LancBiO: mu_lb must be finite and > 0; got 0\.0")),
    Row("bool option given 1", lambda: lancbio(exact_residual=1), Raises(TypeError, r"^LancBiO: exact_residual must be True or False; got int \(1\)")),
    Row("keep_basis given a string", lambda: lancbio(keep_basis="yes"), Raises(TypeError, r"^LancBiO: keep_basis must be True or False; got str \('yes'\)")),
    Row("lr_x a string", lambda: lancbio(lr_x="fast"), Raises(TypeError, r"^LancBiO: lr_x must be a number, a schedule or 'auto'; got str \('fast'\)\.$")),
    Row("automatic steps on a concave lower level (new)",
        solve(lambda: BilevelProblem(lambda x, y: (y ** 2).sum(), lambda x, y: -((y - x) ** 2).sum(), torch.ones(2, dtype=F64), torch.zeros(2, dtype=F64)), lancbio),
        Raises(ValueError, r"^LancBiO: automatic steps: the largest Ritz value of ∇²_yy g at \(x0, y0\) is -2, so no step can be derived from it \(is g\(x0, ·\) convex and finite there\?\) — pass lr_y, or start where g is convex in y\.$")),
    Row("automatic θ and η on a concave lower level (new)",
        solve(lambda: BilevelProblem(lambda x, y: (y ** 2).sum(), lambda x, y: -((y - x) ** 2).sum(), torch.ones(2, dtype=F64), torch.zeros(2, dtype=F64)), bilevel.solvers.subbio),
        Raises(ValueError, r"^SubBiO: automatic steps: .* — pass lr_y and eta, or start where g is convex in y\.$")),
    Row("eta='auto' on a v-solver used alone (new)", lambda: bilevel.linear_solvers.gd(eta="auto", steps=3).init(torch.zeros(2, dtype=F64)),
        Raises(ValueError, r"^GD: eta='auto' is filled at every step by an AID solver \(bilevel\.solvers\.aid\); on its own pass a number, e\.g\. GD\(eta=0\.1\)\.$")),
    Row("freeze_x_first without epochs", lambda: get_solver("amigo_cg", freeze_x_first=2), Raises(ValueError, r"^AmIGO-CG: freeze_x_first needs an epoch-based v-solver \(Lanczos\); CG has no epochs\.$")),
    Row("v_solver not a v-solver", lambda: aid(v_solver="cg", lr_x=1.0), Raises(TypeError, r"^aid: v_solver must be a v-solver such as bilevel\.linear_solvers\.lanczos\(m=10\); got str \('cg'\)\.$")),
    Row("option left without a value (AID solvers, ITD, F2SA, STABLE and HJFBiO fill step sizes automatically; PBGD only θ)",
        solve(lambda: BilevelProblem(lambda x, y: (y ** 2).sum(), _g, torch.ones(2, dtype=F64), torch.zeros(2, dtype=F64)), lambda: get_solver("pbgd")),
        Raises(ValueError, r"^PBGD: lr_x has no value: pass lr_x=\.\.\. \(problem 'custom' has no scale for it\); PBGD sets only θ \(lr_y\) from curvature: α_x must stay stable on F_γ, whose x-curvature grows like γ and no estimate of ∇²_yy g bounds — pass lr_x \(e\.g\. 0\.03 at γ = 300 with inner_steps=1\)\.$")),
    Row("BOME asked for an automatic lr_x (new)", lambda: get_solver("bome", lr_x="auto"),
        Raises(TypeError, r"^BOME: lr_x cannot be 'auto' \(only lr_y is: ξ_x must stay stable at the barrier weight ω, whose x-curvature no curvature estimate of g bounds\); pass a number, e\.g\. lr_x=0\.01\.$")),
    Row("PBGD asked for an automatic lr_x (new)", lambda: get_solver("pbgd", lr_x="auto"),
        Raises(TypeError, r"^PBGD: lr_x cannot be 'auto' \(only lr_y is: F_γ's x-curvature grows like γ and no curvature estimate of g bounds it\); pass a number, e\.g\. lr_x=0\.03 at gamma=300\.$")),
    Row("PBGD given a string step (new)", lambda: get_solver("pbgd", lr_y="big"),
        Raises(TypeError, r"^PBGD: lr_y must be a number, a schedule or 'auto'; got str \('big'\)\.$")),
    Row("ITD given a string step (new)", lambda: get_solver("itd", lr_y="big"),
        Raises(TypeError, r"^ITD: lr_y must be a number, a schedule or 'auto'; got str \('big'\)\.$")),
    Row("ITD's automatic steps on a concave lower level (new)",
        solve(lambda: BilevelProblem(lambda x, y: (y ** 2).sum(), lambda x, y: -((y - x) ** 2).sum(), torch.ones(2, dtype=F64), torch.zeros(2, dtype=F64)), lambda: get_solver("itd")),
        Raises(ValueError, r"^ITD: automatic steps: the largest Ritz value of ∇²_yy g at \(x0, y0\) is -2, so no step can be derived")),
    Row("BOME without lr_x: its x-block step is not set by curvature (new)",
        solve(lambda: BilevelProblem(lambda x, y: (y ** 2).sum(), _g, torch.ones(2, dtype=F64), torch.zeros(2, dtype=F64)), lambda: get_solver("bome")),
        Raises(ValueError, r"^BOME: lr_x has no value: pass lr_x=\.\.\. \(problem 'custom' has no scale for it\); BOME sets only θ \(lr_y\) from curvature: ξ_x must stay stable at the barrier weight ω, whose x-curvature no estimate of ∇²_yy g bounds — pass lr_x \(e\.g\. 0\.01\), and lr_y_outer \(ξ_y < θ\) for accuracy\.$")),
    Row("STABLE given a string step (new)", lambda: get_solver("stable", eta="small"),
        Raises(TypeError, r"^STABLE: eta must be a number, a schedule or 'auto'; got str \('small'\)\.$")),
    Row("HJFBiO given a string step (new)", lambda: get_solver("hjfbio", lr_y="big"),
        Raises(TypeError, r"^HJFBiO: lr_y must be a number, a schedule or 'auto'; got str \('big'\)\.$")),
    # ---- damping (new) ----
    Row("negative damping", lambda: lancbio(damping=-1.0), Raises(ValueError, r"^LancBiO: damping must be finite and >= 0; got -1\.0\.$")),
    Row("infinite damping", lambda: get_solver("amigo_cg", damping=math.inf), Raises(ValueError, r"^AmIGO-CG: damping must be finite and >= 0; got inf\.$")),
    Row("damping a string", lambda: get_solver("soba", damping="0.1"), Raises(TypeError, r"^SOBA: damping must be a number; got str \('0\.1'\)\.$")),
    Row("damping on a solver without it", lambda: get_solver("stable", damping=0.1), Raises(TypeError, r"^STABLE: unknown option 'damping'")),
    # ---- problems and points (already good) ----
    Row("non-scalar f", lambda: BilevelProblem(lambda x, y: y * 2, _g, torch.ones(2, dtype=F64), torch.zeros(2, dtype=F64)),
        Raises(ProblemError, r"^f must return a scalar; got a tensor of shape \(2,\)\. Reduce it, e\.g\. with \.mean\(\) or \.sum\(\)\.$")),
    Row("f turns non-scalar mid-run (new)", solve(vector_f_later, lambda: lancbio(lr_x=0.3, lr_y=0.5), max_iter=50),
        Raises(ProblemError, r"^f must return a scalar at every point; at this \(x, y\) it returned a tensor of shape \(2,\)\. Reduce it")),
    Row("mismatched x shape for the ground truth", lambda: solve_lower(quad(), torch.zeros(4, dtype=F64)),
        Raises(ValueError, r"^x must have 3 entries \(the problem's dx\); got shape \(4,\)\.$")),
    # ---- statuses: lower levels that are not strongly convex (issue 9, wrong before) ----
    Row("g linear in y, LancBiO, tol", solve(lambda: toy("linear"), lancbio, tol=1e-6),
        Status("not_strongly_convex", r"^the lower level is not strongly convex in y where the iterates are: the v-solver saw curvature evidence in 5 consecutive iterations \(0–4; .*Lanczos: the smallest Ritz value of T_1 = 0.*pass damping=δ")),
    Row("g linear in y, AmIGO-CG, tol", solve(lambda: toy("linear"), lambda: get_solver("amigo_cg"), tol=1e-6),
        Status("not_strongly_convex", r"CG: the curvature pᵀAp/‖p‖² along a search direction = 0")),
    Row("g indefinite, SubBiO, tol", solve(lambda: toy("indefinite"), lambda: get_solver("subbio"), tol=1e-6),
        Status("not_strongly_convex", r"SubBiO: the smallest eigenvalue of the 2×2 system H = WᵀAW = -2")),
    Row("g concave, LancBiO (ran to f = 9e88 before)", solve(lambda: toy("concave"), lancbio, max_iter=500),
        Status("not_strongly_convex", r"Lanczos: the smallest Ritz value of T_1 = -2\b.*‖∇_y g‖ grew at every inner step")),
    Row("g concave, stocBiO", solve(lambda: toy("concave"), lambda: get_solver("stocbio")),
        Status("not_strongly_convex", r"Neumann: the Rayleigh quotient rᵀAr/‖r‖² of a series term = -2")),
    Row("g concave, SOBA", solve(lambda: toy("concave"), lambda: get_solver("soba")),
        Status("not_strongly_convex", r"GD: the Rayleigh quotient vᵀAv/‖v‖² at an iterate = -2")),
    Row("mu_lb above λ_min = 1", solve(lambda: bilevel.problems.quadratic(dx=5, dy=20, condition=100.0, seed=0), lambda: lancbio(mu_lb=2.0), max_iter=200),
        Status("not_strongly_convex", r"not mu_lb-strongly convex.*< mu_lb = 2\. The bound mu_lb=2 given to the v-solver is too large")),
    Row("g linear, curvature_patience=None, tol", solve(lambda: toy("linear"), lambda: get_solver("amigo_cg"), tol=1e-6, max_iter=100, curvature_patience=None),
        Status("max_iter", r"met tol at iteration\(s\) 70, 80, 90, 99, but on an estimate whose v-solve saw curvature evidence, so that did not count as converged")),
    # ---- statuses: NaN/Inf (misleading before: blamed the step sizes) ----
    Row("f NaN mid-run", solve(nan_f, lambda: get_solver("soba", lr_x=0.3, lr_y=0.5, eta=0.5)),
        Status("diverged", r"the first non-finite value came from ∇f = \(∇_x f, ∇_y f\), call 1 of that kind in the step, at a finite point .* f\(x, y\) itself is nan there")),
    Row("g NaN mid-run", solve(nan_g, lambda: lancbio(lr_x=0.3, lr_y=0.5)),
        Status("diverged", r"the first non-finite value came from ∇_y g \(inner steps\), call 1 .* g\(x, y\) itself is nan there")),
    Row("absurd lr_x", solve(quad, lambda: lancbio(lr_x=1e12), eval_every=1),
        Status("diverged", r"had grown .* beyond its start: the run was diverging; the step sizes are likely too large \(lr_x=1e\+12")),
    # ---- statuses that were already good ----
    Row("Ctrl-C inside an oracle", interrupted_run, Status("stopped", r"^interrupted \(KeyboardInterrupt\) during iteration 1; the 1 completed iterations")),
    Row("callback asks to stop", solve(quad, lancbio, callback=lambda row: True), Status("stopped", r"^the callback asked to stop at iteration 0\.$")),
    # ---- outer torch.optim optimizer, callbacks, checkpoints (issue 13) ----
    Row("outer: unknown optimizer name (new)", lambda: lancbio(outer="adan"),
        Raises(ValueError, r"^LancBiO: unknown outer 'adan'\. Did you mean 'adam'\? Names: adadelta, .*\(or a dotted path, e\.g\. 'torch\.optim\.NAdam'\)\.$")),
    Row("outer: LBFGS needs a closure (new)", lambda: lancbio(outer="lbfgs"),
        Raises(ValueError, r"^LancBiO: outer='lbfgs' cannot drive x: it needs a closure")),
    Row("outer: not an optimizer (new)", lambda: lancbio(outer=torch.nn.Linear),
        Raises(TypeError, r"^LancBiO: outer must be a torch\.optim class, its name or a dotted path")),
    Row("outer: dotted path that does not import (new)", lambda: lancbio(outer="torch.optim.Adamm"),
        Raises(ValueError, r"^LancBiO: outer='torch\.optim\.Adamm' does not import \(AttributeError")),
    Row("outer: unknown optimizer option (new)", lambda: lancbio(outer="adam", **{"outer.lrr": 0.1}),
        Raises(TypeError, r"^LancBiO: unknown outer option 'lrr' for Adam\. Did you mean 'lr'\? Valid: lr, betas")),
    Row("outer: bad optimizer value (new)", lambda: lancbio(outer="sgd", outer_options={"lr": -1.0}),
        Raises(ValueError, r"^LancBiO: outer SGD\(lr=-1\.0\) rejects its options: Invalid learning rate")),
    Row("outer and lr_x both (new)", lambda: lancbio(outer="adam", lr_x=0.5),
        Raises(ValueError, r"^LancBiO: lr_x=0\.5 and outer='adam' both set the x-step; give the optimizer's step size as outer_options")),
    Row("outer_options without outer (new)", lambda: lancbio(outer_options={"lr": 0.1}),
        Raises(ValueError, r"^LancBiO: outer_options given without outer; pass outer=")),
    Row("outer_options not a dict (new)", lambda: lancbio(outer="adam", outer_options=0.1),
        Raises(TypeError, r"^LancBiO: outer_options must be a dict of keyword arguments")),
    Row("outer scheduler that needs a metric (new)", lambda: lancbio(outer="adam", outer_scheduler="reducelronplateau"),
        Raises(ValueError, r"^LancBiO: outer_scheduler='reducelronplateau' cannot drive x: its step needs a metric")),
    Row("outer scheduler without its argument (new)", lambda: lancbio(outer="adam", outer_scheduler="steplr"),
        Raises(TypeError, r"^LancBiO: outer_scheduler StepLR\(\) failed: .*'step_size'; give its arguments in outer_scheduler_options")),
    Row("callbacks not a list (new)", solve(quad, lancbio, callbacks=3),
        Raises(TypeError, r"^solve: callbacks must be a list of callback objects \(bilevel\.callbacks\); got int\.$")),
    Row("callbacks entry without hooks (new)", solve(quad, lancbio, callbacks=[3]),
        Raises(TypeError, r"^solve: callbacks\[0\] has none of the hooks on_start, on_iteration, on_evaluation, on_end and is not callable; got int\.$")),
    Row("callbacks entry a class (new)", solve(quad, lancbio, callbacks=[EarlyStopping]),
        Raises(TypeError, r"^solve: callbacks\[0\] is the class EarlyStopping; pass an instance, e\.g\. EarlyStopping\(\.\.\.\)\.$")),
    Row("resume_from not a path (new)", solve(quad, lancbio, resume_from=3),
        Raises(TypeError, r"^solve: resume_from must be a checkpoint file or folder path; got int\.$")),
    Row("resume_from missing (new)", solve(quad, lancbio, resume_from="/nonexistent/ckpt.pt"),
        Raises(CheckpointError, r"^resume_from: no checkpoint at '/nonexistent/ckpt\.pt'; give a checkpoint file or folder\.$")),
    Row("EarlyStopping mode (new)", lambda: EarlyStopping("f", mode="lower"),
        Raises(ValueError, r"^EarlyStopping: mode must be one of \['min', 'max'\]; got 'lower'\.$")),
    Row("EarlyStopping patience 0 (new)", lambda: EarlyStopping("f", patience=0),
        Raises(ValueError, r"^EarlyStopping: patience must be >= 1; got 0\.$")),
    Row("Checkpoint every 0 (new)", lambda: Checkpoint("ckpt", every=0),
        Raises(ValueError, r"^Checkpoint: every must be >= 1; got 0\.$")),
    Row("early stopping ends the run (new)", solve(quad, lancbio, eval_every=5, callbacks=[EarlyStopping("hypergrad_norm", mode="max", patience=2)]),
        Status("stopped", r"^early stopping at iteration 10: hypergrad_norm has not increased by more than min_delta=0 for 2 evaluations \(best ")),
    # ---- warnings ----
    Row("bfloat16 problem (new)", solve(lambda: bilevel.problems.quadratic(dx=3, dy=5, seed=0, dtype=torch.bfloat16), lancbio, max_iter=2, true_hypergradient=False),
        Warns(UserWarning, r"problem 'quadratic' is in bfloat16; supported dtypes are float32 and float64")),
    Row("float16 problem (new)", solve(lambda: bilevel.problems.quadratic(dx=3, dy=5, seed=0, dtype=torch.float16), lancbio, max_iter=2, true_hypergradient=False),
        Warns(UserWarning, r"is in float16; supported dtypes are float32 and float64")),
    # ---- bilevel RL (issue 14): problem kinds and the RL inputs ----
    Row("AID solver on an RL problem (new)", solve(lambda: get_problem("rl_synthetic", dim=4), lancbio),
        Raises(ValueError, r"^solver 'lancbio' handles classic bilevel problems, but problem 'rl_synthetic' is a bilevel RL "
               r"problem \(entropy-regularised MDP lower level, not convex in the policy\) — use a solver for 'rl' "
               r"problems: .*m_sobirl")),
    Row("RL solver on a classic problem (new)", solve(quad, lambda: get_solver("m_sobirl")),
        Raises(ValueError, r"^solver 'm_sobirl' handles bilevel RL problems, but problem 'quadratic' is a classic bilevel "
               r"problem \(lower level g strongly convex in y\) — use a solver for 'classic' problems: .*lancbio")),
    Row("trajectory solver without a trajectory loss (new)",
        solve(lambda: get_problem("rl_synthetic", dim=4), lambda: get_solver("stoc_sobirl", lr_x=0.1)),
        Raises(ValueError, r"^solver 'stoc_sobirl' samples trajectories and needs a trajectory loss, but problem "
               r"'rl_synthetic' has its upper loss only as a function of the policy — use m_sobirl or sobirl")),
    Row("zeroth-order sampled values without a trajectory loss (new)",
        solve(lambda: get_problem("rl_synthetic", dim=4), lambda: get_solver("zeroth_order", trajectories=5)),
        Raises(ValueError, r"^zeroth_order: trajectories=5 samples episode losses, but problem 'rl_synthetic' has no "
               r"trajectory loss — pass trajectories=0")),
    Row("mini-batches on an RL problem (new)",
        solve(lambda: get_problem("rl_synthetic", dim=4), lambda: get_solver("m_sobirl"), batches=bilevel.MiniBatch(4)),
        Raises(ValueError, r"^solve: an RL problem draws its own samples \(transitions, trajectories\); got "
               r"batches=MiniBatch — leave batches unset\.$")),
    Row("RL solver option out of range (new)", lambda: get_solver("m_sobirl", sweeps=0),
        Raises(ValueError, r"^M-SoBiRL: sweeps must be >= 1; got 0\.$")),
    Row("rl_synthetic gamma 1 (new)", lambda: get_problem("rl_synthetic", gamma=1.0),
        Raises(ValueError, r"^rl_synthetic: gamma must be a number in \[0, 1\); got 1\.0\.$")),
    Row("fourrooms lambda without a published beta_reg (new)", lambda: get_problem("fourrooms", lam=0.01),
        Raises(ValueError, r"^fourrooms: beta_reg has no published value for lam=0\.01 .* — pass beta_reg=\.\.\.$")),
    Row("RLProblem kernel not a distribution (new)",
        lambda: RLProblem(torch.ones(2, 1, 2, dtype=F64), lambda x: x.sum() * torch.ones(2, 1, dtype=F64),
                          torch.zeros(1, dtype=F64), gamma=0.5, tau=1.0, rho=torch.full((2,), 0.5, dtype=F64),
                          upper=lambda x, pi: pi.sum()),
        Raises(ProblemError, r"^P must hold probability distributions \(non-negative, summing to 1 over its last "
               r"axis\); got sums in \[2, 2\]\.$")),
    Row("data-parallel oracles without a process group (new)",
        lambda: __import__("bilevel.distributed").distributed.DataParallelOracles(Oracles(quad())),
        Raises(RuntimeError, r"^bilevel\.distributed: torch\.distributed is not initialised; got no default process "
               r"group\. Call bilevel\.distributed\.init\(\) \(under torchrun\)")),
    Row("distributed.init outside torchrun (new)",
        lambda: __import__("bilevel.distributed").distributed.init(),
        Raises(RuntimeError, r"^bilevel\.distributed\.init: environment variable RANK is not set; launch with torchrun")),
    Row("RL seeds batch with a repeated seed (new)",
        lambda: __import__("bilevel.rl").rl.solve_rl_seeds(get_problem("rl_synthetic", dim=4), get_solver("m_sobirl"), [1, 1]),
        Raises(ValueError, r"^solve_rl_seeds: seeds must be a non-empty list of distinct seeds; got \[1, 1\]\.$")),
    Row("RL seeds batch of an AID solver (new)",
        lambda: __import__("bilevel.rl").rl.solve_rl_seeds(get_problem("rl_synthetic", dim=4), lancbio(), [0]),
        Raises(ValueError, r"^solver 'lancbio' handles classic bilevel problems, but problem 'rl_synthetic' is a bilevel RL")),
    Row("RL run resumed from a folder without checkpoints (new)",
        solve(lambda: get_problem("rl_synthetic", dim=4), lambda: get_solver("m_sobirl"), resume_from="/nonexistent-h14b"),
        Raises(CheckpointError, r"^resume_from: no checkpoint at '/nonexistent-h14b'; give a checkpoint file or folder\.$")),
    Row("RL run resumed with resume_from not a path (new)",
        solve(lambda: get_problem("rl_synthetic", dim=4), lambda: get_solver("m_sobirl"), resume_from=3),
        Raises(TypeError, r"^solve: resume_from must be a checkpoint file or folder path; got int\.$")),
    Row("RL run diverges (new)", solve(lambda: get_problem("rl_synthetic", seed=0), lambda: get_solver("m_sobirl", lr_x=1e3),
                                       max_iter=200, eval_every=1000),
        Status("diverged", r"^non-finite values appeared at iteration \d+; .* The step size is likely too large \(lr_x=1000\)")),
]


def _run_quiet(call):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call()


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row):
    expect = row.expect
    if isinstance(expect, Raises):
        with pytest.raises(expect.error) as info:
            _run_quiet(row.call)
        assert type(info.value) is expect.error  # the exact class, not a subclass
        text = str(info.value)
        assert re.search(expect.match, text), text
        assert "\n" not in text  # one line
    elif isinstance(expect, Status):
        res = _run_quiet(row.call)
        assert res.status == expect.status, (res.status, res.message)
        assert re.search(expect.match, res.message), res.message
        assert res.success == (expect.status not in ("diverged", "not_strongly_convex"))
    else:
        with pytest.warns(expect.warning, match=expect.match):
            row.call()


def test_table_size():
    assert len(ROWS) >= 25
    assert len({r.id for r in ROWS}) == len(ROWS)
