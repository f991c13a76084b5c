"""Evaluation of a solver's iterate, outside the timed region and with uncounted oracles.

Every metric is taken at the solver's own iterate (x_k, y_k, v_k): the triple on which step k's x-update
was computed (reference defect §6.4: never at x_{k+1} with a stale y).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor

from . import truth
from .oracles import Oracles
from .problem import BilevelProblem


def _norm(t: Tensor) -> float:
    return float(torch.linalg.vector_norm(t))


def _relative(error: Tensor, reference: Tensor) -> float:
    ref = _norm(reference)
    return _norm(error) / ref if ref > 0 else _norm(error)


class Evaluator:
    """Callable ``(x, y, v) -> dict`` of metrics; warm-starts the ground-truth solves across calls.

    Columns: ``f`` (upper objective at (x_k, y_k)), ``grad_y_g_norm``, ``residual`` (‖A_k v_k − b_k‖),
    ``hypergrad_est_norm`` (‖D_k‖, D_k = ∇_x f − J_k v_k), and with ``true_hypergradient``:
    ``hypergrad_norm`` (‖∇φ(x_k)‖), ``hypergrad_rel_error`` (‖D_k − ∇φ(x_k)‖ / ‖∇φ(x_k)‖), ``phi``,
    ``inner_rel_error`` (‖y_k − y*(x_k)‖ / ‖y*(x_k)‖, when y* is known), and the split of the estimate's
    error into its two causes, with D̂_k = ∇_x f(x_k, y_k) − J_k A_k⁻¹ b_k (v solved exactly at y_k):
    ``hypergrad_error_from_y`` = ‖D̂_k − ∇φ‖ / ‖∇φ‖ (y_k ≠ y*: the inner solver lags) and
    ``hypergrad_error_from_v`` = ‖D_k − D̂_k‖ / ‖∇φ‖ (v_k ≠ A_k⁻¹ b_k: the v-solver lags); their sum bounds
    ``hypergrad_rel_error``.  A_k⁻¹ b_k is solved by CG warm-started at v_k (a few products; skipped when
    A_k is not positive definite).  Relative errors are absolute when the reference is 0.
    ``Result.summary`` reads them to say why an estimate is poor.  The problem's own ``metrics(x, y)``
    (test accuracy, ...) are added.
    """

    def __init__(self, problem: BilevelProblem, true_hypergradient: bool) -> None:
        self.problem = problem
        self.oracles = Oracles(problem)  # uncounted
        self.true_hypergradient = true_hypergradient
        self._y_star: Optional[Tensor] = None
        self._v_star: Optional[Tensor] = None
        self.rhs_norm: Optional[float] = None  # ‖b_k‖ of the last call with a v (for the relative residual)

    def __call__(self, x: Tensor, y: Tensor, v: Optional[Tensor]) -> dict[str, Any]:
        o, p = self.oracles, self.problem
        with torch.no_grad():
            row: dict[str, Any] = {"f": float(p.f_value(x, y))}
        row["grad_y_g_norm"] = _norm(o.grad_y_g(x, y))
        estimate = None
        if v is not None:
            point = o.at(x, y)
            gx_f, b = o.grad_f(x, y)
            row["residual"] = _norm(point.hvp(v) - b)
            self.rhs_norm = _norm(b)
            estimate = gx_f - point.cross(v)
            row["hypergrad_est_norm"] = _norm(estimate)
        if self.true_hypergradient:
            t = truth.true_hypergradient(
                p, x, y_init=self._y_star if self._y_star is not None else y,
                v_init=self._v_star if self._v_star is not None else v,
            )
            self._y_star, self._v_star = t.y_star, t.v_star
            gnorm = _norm(t.grad)
            row["hypergrad_norm"] = gnorm
            if estimate is not None:
                row["hypergrad_rel_error"] = _norm(estimate - t.grad) / gnorm if gnorm > 0 else math.nan
            if t.phi is not None:
                row["phi"] = float(t.phi)
            if t.y_star is not None:
                row["inner_rel_error"] = _relative(y - t.y_star, t.y_star)
            if estimate is not None and gnorm > 0:
                try:
                    v_hat = truth.solve_adjoint(p, x, y, v_init=v, rtol=1e-8)
                except truth.GroundTruthError:
                    v_hat = None
                if v_hat is not None:
                    exact_v = gx_f - point.cross(v_hat)
                    row["hypergrad_error_from_y"] = _norm(exact_v - t.grad) / gnorm
                    row["hypergrad_error_from_v"] = _norm(estimate - exact_v) / gnorm
        if p.metrics is not None:
            with torch.no_grad():
                extra = p.metrics(p.unflatten_x(x), p.unflatten_y(y))
            row.update({str(k): float(val) for k, val in dict(extra).items()})
        return row
