"""O(j) solves with a symmetric tridiagonal T (diagonal ``alpha``, off-diagonal ``beta``), in float64.

These run on Python floats: j is at most a few hundred, and a device round trip per entry would cost
more than the arithmetic.  Both return ``None`` when the system is unsafe to solve (the guards of the
Lanczos v-solver, see ``lanczos.py``).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence


def ldl_solve(alpha: Sequence[float], beta: Sequence[float], rhs: Sequence[float], eps_pivot: float) -> Optional[list]:
    """Solve T s = rhs by T = L D Lᵀ (L unit lower bidiagonal).

    Returns None unless every pivot d_i is finite and > eps_pivot · max|α|: an indefinite or nearly
    singular T (possible in the dynamic setting, where T mixes Hessians of several iterates).
    """
    j = len(alpha)
    scale = max(abs(a) for a in alpha)
    threshold = eps_pivot * scale
    d = [0.0] * j
    low = [0.0] * j  # low[i] = L[i, i-1]
    d[0] = alpha[0]
    if not (d[0] > threshold and math.isfinite(d[0])):
        return None
    for i in range(1, j):
        low[i] = beta[i - 1] / d[i - 1]
        d[i] = alpha[i] - low[i] * beta[i - 1]
        if not (d[i] > threshold and math.isfinite(d[i])):
            return None
    z = list(rhs)
    for i in range(1, j):
        z[i] -= low[i] * z[i - 1]
    for i in range(j):
        z[i] /= d[i]
    for i in range(j - 2, -1, -1):
        z[i] -= low[i + 1] * z[i + 1]
    return z


def positive_pivots(alpha: Sequence[float], beta: Sequence[float], eps_pivot: float, shift: float = 0.0) -> bool:
    """Whether every LDLᵀ pivot of T − shift·I is finite and > eps_pivot · max|α| (Sylvester's law of
    inertia: the number of pivots ≤ 0 is the number of eigenvalues of T ≤ shift, so with eps_pivot = 0 this
    is exactly λ_min(T) > shift).  O(j), no solve."""
    threshold = eps_pivot * max(abs(a) for a in alpha)
    d = alpha[0] - shift
    if not (d > threshold and math.isfinite(d)):
        return False
    for i in range(1, len(alpha)):
        d = alpha[i] - shift - beta[i - 1] * beta[i - 1] / d
        if not (d > threshold and math.isfinite(d)):
            return False
    return True


def minres_solve(
    alpha: Sequence[float], beta: Sequence[float], beta_next: float, rhs: Sequence[float], rhs_next: float
) -> Optional[tuple[list, float]]:
    """argmin_s ‖(rhs, rhs_next) − T̄ s‖₂ with T̄ = [T ; β_next e_jᵀ] ((j+1) × j), by Givens QR.

    T̄ has bandwidth one below and above the diagonal, so R has two super-diagonals and the whole
    factorisation is O(j).  Returns (s, residual norm of the small problem), or None if T̄ is rank
    deficient (only possible when β_next = 0 and T is singular).
    """
    j = len(alpha)
    sub = list(beta) + [beta_next]  # sub[i] = T̄[i+1, i]
    g = list(rhs) + [rhs_next]
    rows = []  # R rows as (R[i,i], R[i,i+1], R[i,i+2])
    cur0, cur1, cur2 = alpha[0], (beta[0] if j > 1 else 0.0), 0.0  # row 0 at cols 0, 1, 2
    for i in range(j):
        # the untouched row i+1 of T̄ at cols i, i+1, i+2
        n0 = sub[i]
        n1 = alpha[i + 1] if i + 1 < j else 0.0
        n2 = beta[i + 1] if i + 1 < j - 1 else 0.0
        rho = math.hypot(cur0, n0)
        if not (rho > 0.0 and math.isfinite(rho)):
            return None
        cs, sn = cur0 / rho, n0 / rho
        rows.append((rho, cs * cur1 + sn * n1, cs * cur2 + sn * n2))
        cur0, cur1, cur2 = -sn * cur1 + cs * n1, -sn * cur2 + cs * n2, 0.0
        g[i], g[i + 1] = cs * g[i] + sn * g[i + 1], -sn * g[i] + cs * g[i + 1]
    s = [0.0] * j
    for i in range(j - 1, -1, -1):
        acc = g[i]
        if i + 1 < j:
            acc -= rows[i][1] * s[i + 1]
        if i + 2 < j:
            acc -= rows[i][2] * s[i + 2]
        s[i] = acc / rows[i][0]
    if not all(math.isfinite(v) for v in s):
        return None
    return s, abs(g[j])
