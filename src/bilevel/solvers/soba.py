"""SOBA: single-loop simultaneous updates of x, y and v (Dagréou et al. 2022; algorithms.md §3.3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

from .._validation import check_int, check_positive
from ..linear_solvers.gd import GD
from .aid import AIDSolver
from .registry import register


@register
@dataclass(frozen=True, kw_only=True)
class SOBA(AIDSolver):
    """SOBA — stochastic bilevel algorithm, one step on every variable per iteration (Dagréou et al. 2022).

    Iteration k, every direction at (x_k, y_k, v_k) (order = "simultaneous", the default):

        D_y = ∇_y g(x_k, y_k);  D_v = A_k v_k − b_k;  D_x = ∇_x f(x_k, y_k) − ∇²_xy g(x_k, y_k) v_k
        y_{k+1} = y_k − θ_k D_y      (lr_y = θ)
        v_{k+1} = v_k − η D_v        (eta = η; one GD step, warm-started)
        x_{k+1} = x_k − λ_k D_x      (lr_x = λ)

    (Library sign convention v ≈ +A⁻¹b; the paper's v is the negative.)  ``order="sequential"`` is the
    reference's synthetic compatibility form (y, then v, then x at the updated y and v_{k+1}).

    Oracle cost per iteration: 1 ∇_y g (at the linearisation point), 1 ∇_y f, 1 ∇_x f, **1 HVP**,
    1 cross product.  The first iteration makes no HVP (v_0 = 0: v_1 = η b_0); its cross product with
    v_0 = 0 is still made by the shared simultaneous AID loop.  Total over K iterations: K − 1 HVPs
    (K with ``v_init="randn"``), K cross products, K ∇_y g.

    Step sizes: the published theory uses ρ_k ∝ k^(−2/5) for y and v and γ_k ∝ k^(−3/5) for x; pass
    schedules as lr_y and lr_x (e.g. ``PowerDecay(θ0, 0.4)``, ``PowerDecay(λ0, 0.6)``).  eta is a constant
    (the GD v-solver's step), as in the experiments.  inner_steps (T) defaults to 1 and is not taken from
    the problem's generic "*" preset (meant for double-loop methods), only from the user or a "soba" preset;
    T > 1 adds T − 1 plain y-steps after the simultaneous one.

    Reference defaults (algorithms.md §3.3):

        ======  ==================  =====================  ================================================
                η / θ / λ           K                      B
        Syn     1e-5 / 1e-5 / 1     30000                  —
        HC      0.05 / 0.1 / 500    6000 (log every 50)    full
        Stoc    0.1 / 0.1 / 100     20000                  128 (one training batch for HVP, cross and
                                                           y-step; one validation batch for b)
        ======  ==================  =====================  ================================================
    """

    name: ClassVar[str] = "soba"
    required: ClassVar[tuple[str, ...]] = ("lr_x", "lr_y", "eta")
    defaults: ClassVar[Mapping[str, Any]] = {"inner_steps": 1}
    default_order: ClassVar[str] = "simultaneous"

    eta: Optional[float] = None

    checks: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        # single loop: one y-step and one v-step per iteration, hence the longer budgets
        "quadratic": {"max_iter": 600, "reduction": 1e3},
        "synthetic": {"max_iter": 600, "reduction": 1e3},
    }

    def _check_options(self) -> None:
        owner = type(self).__name__
        if self.eta is not None:
            if not isinstance(self.eta, (int, float)) or isinstance(self.eta, bool):
                raise TypeError(
                    f"{owner}: eta must be a number (the constant v-step); got {type(self.eta).__name__} "
                    f"({self.eta!r}). Schedules are accepted by lr_x and lr_y."
                )
            check_positive(owner, "eta", self.eta)
        if self.inner_steps is not None:
            check_int(owner, "inner_steps", self.inner_steps, 1)
        if self.freeze_x_first:
            raise ValueError(f"{owner}: freeze_x_first needs an epoch-based v-solver (LancBiO); SOBA has no epochs.")

    def resolve(self, problem):
        opts = super().resolve(problem)
        check_int("SOBA", "inner_steps", opts["inner_steps"], 1)
        return opts

    def expected_hvps(self, opts: Mapping[str, Any], iterations: int) -> float:
        """One GD step per iteration; the first from v_0 = 0 needs no product."""
        if not iterations:
            return 0.0
        return float(iterations - (1 if self.v_init == "zeros" else 0))

    def make_v_solver(self, opts: Mapping[str, Any]) -> GD:
        return GD(eta=opts["eta"], steps=1, warm_start=True)


def soba(**options: Any) -> SOBA:
    """Configure SOBA; see ``SOBA`` for the options and defaults."""
    return SOBA.create(**options)
