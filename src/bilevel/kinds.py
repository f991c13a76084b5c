"""Problem kinds: which solvers may run on which problems.

``"classic"``: ``BilevelProblem`` (g strongly convex in y; the AID machinery, implicit differentiation through
∇²_yy g).  ``"rl"``: ``bilevel.rl.RLProblem`` (an entropy-regularised MDP whose lower level is not convex in the
policy; its hypergradient has a first-order form and must never be routed through the strong-convexity
machinery).  A solver declares the kinds it supports (``Solver.kinds``); ``Solver.bind`` and ``solve`` refuse
a mismatch with a one-line message that names the solvers that fit.
"""

from __future__ import annotations

from typing import Any

KIND_PLURAL = {"classic": "classic bilevel problems", "rl": "bilevel RL problems"}
KIND_TEXT = {
    "classic": "a classic bilevel problem (lower level g strongly convex in y)",
    "rl": "a bilevel RL problem (entropy-regularised MDP lower level, not convex in the policy)",
}


def problem_kind(problem: Any) -> str:
    return getattr(problem, "kind", "classic")


def solver_kinds(solver: Any) -> tuple[str, ...]:
    return tuple(getattr(solver, "kinds", ("classic",)))


def solvers_for(kind: str) -> list[str]:
    """Names of the registered solvers that support problems of ``kind``."""
    from .solvers.base import SOLVERS

    return sorted(name for name, entry in SOLVERS.items() if kind in solver_kinds(entry))


def problems_for(kind: str) -> list[str]:
    """Names of the registered problem families of ``kind`` (a factory declares ``kind``; default classic)."""
    from .problems import PROBLEMS

    return sorted(name for name, entry in PROBLEMS.items() if problem_kind(entry) == kind)


def check_kind(solver: Any, problem: Any) -> None:
    """Raise a one-line ``ValueError`` when ``solver`` does not support ``problem``'s kind."""
    kind = problem_kind(problem)
    kinds = solver_kinds(solver)
    if kind in kinds:
        return
    name = getattr(solver, "name", type(solver).__name__)
    fits = ", ".join(solvers_for(kind)) or "none registered"
    handles = " and ".join(KIND_PLURAL.get(k, f"{k!r} problems") for k in kinds)
    raise ValueError(
        f"solver {name!r} handles {handles}, but problem {getattr(problem, 'name', '?')!r} is "
        f"{KIND_TEXT.get(kind, kind)} — use a solver for {kind!r} problems: {fits}."
    )
