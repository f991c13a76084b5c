"""v-solvers: approximate v ≈ A⁻¹b for A = ∇²_yy g given through HVPs, one file each.

All share the ``LinearSolver`` interface (``init`` / ``solve`` with immutable states carried across outer
iterations; ``resolved`` fills presettable options; ``total_matvecs`` documents the cost);
``linear_solve`` uses one on a fixed system.  Every v-solver class registers itself in ``LINEAR_SOLVERS``
(a ``bilevel.registry.Registry``: ``LINEAR_SOLVERS["cg"]``, ``LINEAR_SOLVERS.create("cg", steps=5)``);
adding one is a new module in this package.
"""

from .base import LINEAR_SOLVERS, LinearSolver, LinearSolveResult, SolveInfo, linear_solve
from .cg import CG, CGState, cg
from .exact import Exact, ExactState, exact
from .gd import GD, GDState, gd
from .lanczos import BasisFill, Lanczos, LanczosState, lanczos
from .neumann import HybridNeumann, Neumann, NeumannState, hybrid_neumann, neumann
from .subspace2d import Subspace2D, Subspace2DState, subspace2d

LINEAR_SOLVERS.discover()

__all__ = [
    "BasisFill", "CG", "CGState", "Exact", "ExactState", "GD", "GDState", "HybridNeumann", "LINEAR_SOLVERS",
    "Lanczos", "LanczosState", "LinearSolveResult", "LinearSolver", "Neumann", "NeumannState", "SolveInfo",
    "Subspace2D", "Subspace2DState", "cg", "exact", "gd", "hybrid_neumann", "lanczos", "linear_solve",
    "neumann", "subspace2d",
]
