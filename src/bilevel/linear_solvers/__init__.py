"""v-solvers: approximate v ≈ A⁻¹b for A = ∇²_yy g given through HVPs, one file each.

All share the ``LinearSolver`` interface (``init`` / ``solve``, state carried across outer iterations);
``linear_solve`` uses one on a fixed system.
"""

from .base import LinearSolver, LinearSolveResult, SolveInfo, linear_solve
from .cg import CG
from .exact import Exact
from .gd import GD
from .lanczos import Lanczos, LanczosState
from .neumann import Neumann
from .subspace2d import Subspace2D

LINEAR_SOLVERS = {cls.name: cls for cls in (Lanczos, Subspace2D, CG, GD, Neumann, Exact)}

__all__ = [
    "CG", "Exact", "GD", "LINEAR_SOLVERS", "Lanczos", "LanczosState", "LinearSolveResult", "LinearSolver",
    "Neumann", "SolveInfo", "Subspace2D", "linear_solve",
]
