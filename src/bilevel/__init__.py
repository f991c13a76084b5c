"""bilevel: gradient-based bilevel optimisation with Krylov-subspace hypergradients.

    min_x φ(x) = f(x, y*(x)),   y*(x) = argmin_y g(x, y)   (g strongly convex in y)

Front door: ``bilevel.solve(problem, solver, ...) -> Result``.  Problems: ``bilevel.problems``;
algorithms: ``bilevel.solvers`` (LancBiO, SubBiO, ...); v-solvers: ``bilevel.linear_solvers``;
checks for your own problems: ``bilevel.testing``.
"""

from . import linear_solvers, problems, schedules, solvers, testing, truth
from .history import History
from .oracles import Counts, Linearization, Oracles
from .problem import BilevelProblem, ClosedForms, ProblemError
from .result import Result
from .run import solve
from .schedules import Constant, DimensionSchedule, Piecewise, PowerDecay

__version__ = "0.1.0"

__all__ = [
    "BilevelProblem", "ClosedForms", "Constant", "Counts", "DimensionSchedule", "History", "Linearization",
    "Oracles", "Piecewise", "PowerDecay", "ProblemError", "Result", "linear_solvers", "problems",
    "schedules", "solve", "solvers", "testing", "truth",
]
