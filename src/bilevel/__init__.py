"""bilevel: gradient-based bilevel optimisation with Krylov-subspace hypergradients.

    min_x φ(x) = f(x, y*(x)),   y*(x) = argmin_y g(x, y)   (g strongly convex in y)

Front door: ``bilevel.solve(problem, solver, ...) -> Result``.  Problems: ``bilevel.problems``;
algorithms: ``bilevel.solvers`` (LancBiO, SubBiO, ...); v-solvers: ``bilevel.linear_solvers``;
checks for your own problems: ``bilevel.testing``.
"""

from . import inner, linear_solvers, problems, sampling, schedules, solvers, testing, truth
from .history import History
from .oracles import CountingOracles, Counts, Linearization, Oracles, OracleWrapper, PointWrapper
from .problem import BilevelProblem, ClosedForms, ProblemError
from .result import Result
from .run import solve
from .sampling import Batches, FullBatch, MiniBatch
from .schedules import Constant, DimensionSchedule, Piecewise, PowerDecay

__version__ = "0.1.0"

__all__ = [
    "Batches", "BilevelProblem", "ClosedForms", "Constant", "CountingOracles", "Counts", "DimensionSchedule",
    "FullBatch", "MiniBatch", "History", "Linearization", "OracleWrapper", "Oracles", "Piecewise", "PointWrapper",
    "PowerDecay", "ProblemError", "Result", "inner", "linear_solvers", "problems", "sampling", "schedules",
    "solve", "solvers", "testing", "truth",
]
