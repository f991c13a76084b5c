"""Dynamic Lanczos v-solver of LancBiO (Yang, Gao, Yuan, "Tackling the bilevel optimization with Lanczos",
ICLR 2025), algorithms.md §2.4–§2.9.

One Lanczos step per outer iteration, each with that iteration's Hessian A_k, building a Krylov basis
Q_j that is carried across iterations (the "dynamic" subspace) and restarted every m iterations.

Residual mode (default).  At a restart (iteration k_h): v̄ ← v_{k−1}, w ← A_k v̄, r ← b_k − w,
q_1 ← r/‖r‖.  At every iteration k (basis size j = k − k_h + 1):

    u      = A_k q_j − β_j q_{j−1}                   (1 HVP)
    α_j    = q_jᵀ u;   ω = u − α_j q_j;   β_{j+1} = ‖ω‖;   q_{j+1} = ω / β_{j+1}
    r_k    = b_k − w                                  (w from the restart: stale by design)
    s      = T_j⁻¹ Q_jᵀ r_k                           (Galerkin, default)
       or  argmin_s ‖(Q_jᵀ r_k, q_{j+1}ᵀ r_k) − T̄_j s‖   (subproblem="minres", T̄_j = [T_j; β_{j+1} e_jᵀ])
    v_k    = v̄ + Q_j s

Plain mode (compatibility, §2.9): restart basis b_k/‖b_k‖, no base point, v_k = Q_j T_j⁻¹ Q_jᵀ b_k, and a
sliding window of the last m vectors instead of periodic restarts.

Cost per outer iteration: 1 HVP, plus 1 at each restart (none when v̄ = 0): **1 + 1/m on average**
(2 while m = 1; plain mode 1; ``exact_residual=True`` adds 1 on non-restart iterations).  Vector work is
O(j·dy) for Q_jᵀ r_k and Q_j s, each one matrix–vector product on a preallocated basis.

Options (paper symbol → name): m (subspace dimension = restart period) → ``m`` (an int or a
``DimensionSchedule``); ε_b → ``eps_breakdown``; ε_p → ``eps_pivot``; ε_r → ``eps_restart``;
μ_lb → ``mu_lb``.

Guards, recorded as events (§2.7): ``breakdown`` (β_{j+1} ≤ ε_b·max(|α_j|, ‖u‖): no normalisation,
restart next iteration); ``indefinite`` (an LDLᵀ pivot of T_j ≤ ε_p·max|α|: this iteration uses the
minimal-residual solve, or clamped eigenvalues with ``fallback="eig"``, and the next one restarts);
``discarded`` (non-finite or, with μ_lb, exploding correction: v_k ← v̄, restart next);
``restart``; ``restart_skipped`` (residual already ≤ ε_r‖b‖: keep v̄).
The small tridiagonal problems are solved in float64 whatever the tensor dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Union

import torch
from torch import Tensor

from .._validation import check_bool, check_choice, check_positive
from ..schedules import DimensionSchedule, as_dimension_schedule
from ._tridiagonal import ldl_solve, minres_solve
from .base import LinearSolver, MatVec, SolveInfo, initial_v, known_zero


@dataclass
class LanczosState:
    """Carried across outer iterations.  ``Q[:j]`` is the basis; ``Q[j]`` holds q_{j+1} when valid."""

    v: Tensor
    v_is_zero: bool
    vbar: Tensor
    w: Tensor
    w_is_zero: bool
    Q: Tensor
    j: int = 0
    alpha: list = field(default_factory=list)
    beta: list = field(default_factory=list)  # beta[i] = T[i, i+1], i.e. β_{i+2} in 1-based symbols
    beta_next: float = 0.0
    has_next: bool = False
    restart_pending: bool = True
    restarts: int = 0
    m: int = 0

    def T(self) -> Tensor:
        """T_j as a dense float64 matrix (diagnostics and tests)."""
        t = torch.diag(torch.tensor(self.alpha, dtype=torch.float64))
        if self.j > 1:
            off = torch.tensor(self.beta, dtype=torch.float64)
            t += torch.diag(off, 1) + torch.diag(off, -1)
        return t

    def basis(self) -> Tensor:
        return self.Q[: self.j]


@dataclass(frozen=True, kw_only=True)
class Lanczos(LinearSolver):
    """Dynamic Lanczos with restarts and residual correction (LancBiO's v-solver); see module docstring.

    Reference defaults: synthetic m = DimensionSchedule(1, 1.1, 20, 80); deterministic hyper-cleaning
    DimensionSchedule(1, 1.3, 50, 10); stochastic hyper-cleaning DimensionSchedule(1, 1.3, 50, 30,
    switch_at=500, switch_m_max=50).
    """

    name: ClassVar[str] = "lanczos"

    m: Union[int, DimensionSchedule] = 10
    mode: str = "residual"
    subproblem: str = "galerkin"
    reorth: str = "none"
    exact_residual: bool = False
    fallback: str = "minres"
    eps_breakdown: Optional[float] = None
    eps_pivot: float = 1e-10
    eps_restart: Optional[float] = None
    mu_lb: Optional[float] = None

    def __post_init__(self) -> None:
        owner = "Lanczos"
        try:
            sched = as_dimension_schedule(self.m)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{owner}: {err}") from None
        object.__setattr__(self, "m", sched)
        check_choice(owner, "mode", self.mode, ("residual", "plain"))
        check_choice(owner, "subproblem", self.subproblem, ("galerkin", "minres"))
        check_choice(owner, "reorth", self.reorth, ("none", "full"))
        check_choice(owner, "fallback", self.fallback, ("minres", "eig"))
        check_bool(owner, "exact_residual", self.exact_residual)
        if self.exact_residual and self.mode == "plain":
            raise ValueError(f"{owner}: exact_residual applies to mode='residual' only; got mode='plain'.")
        check_positive(owner, "eps_pivot", self.eps_pivot, allow_zero=True)
        for name in ("eps_breakdown", "eps_restart", "mu_lb"):
            if getattr(self, name) is not None:
                check_positive(owner, name, getattr(self, name), allow_zero=(name != "mu_lb"))

    @property
    def schedule(self) -> DimensionSchedule:
        return self.m  # normalised in __post_init__

    def expected_matvecs(self, k: int) -> float:
        if self.mode == "plain":
            return 1.0
        m = self.schedule(k)
        return 1.0 + 1.0 / m + (0.0 if not self.exact_residual else 1.0 - 1.0 / m)

    # ------------------------------------------------------------------------------------------------
    def init(self, b: Tensor, v0: Optional[Tensor] = None) -> LanczosState:
        v = initial_v(b, v0)
        rows = self.schedule.cap + 2  # basis + q_next (+1 spare for the plain window before trimming)
        return LanczosState(
            v=v,
            v_is_zero=known_zero(v0),
            vbar=v.clone(),
            w=torch.zeros_like(b),
            w_is_zero=True,
            Q=torch.empty((rows, b.numel()), dtype=b.dtype, device=b.device),
        )

    def _eps(self, dtype: torch.dtype) -> tuple[float, float]:
        double = dtype == torch.float64
        eps_b = self.eps_breakdown if self.eps_breakdown is not None else (1e-10 if double else 1e-5)
        eps_r = self.eps_restart if self.eps_restart is not None else (1e-14 if double else 1e-7)
        return eps_b, eps_r

    def solve(
        self, matvec: MatVec, b: Tensor, state: LanczosState, *, k: int = 0, generator: Any = None
    ) -> tuple[Tensor, LanczosState, SolveInfo]:
        st = state
        events: list[str] = []
        matvecs = 0
        eps_b, eps_r = self._eps(b.dtype)
        m = self.schedule(k)
        st.m = m
        switch = self.schedule.switch_at is not None and k == self.schedule.switch_at
        plain = self.mode == "plain"

        if st.restart_pending or switch or (not plain and st.j >= m):
            if plain:
                base, base_norm = b, float(torch.linalg.vector_norm(b))
            else:
                st.vbar = st.v
                if st.v_is_zero:
                    st.w, st.w_is_zero = torch.zeros_like(b), True
                else:
                    st.w, st.w_is_zero = matvec(st.vbar), False
                    matvecs += 1
                base = b if st.w_is_zero else b - st.w
                base_norm = float(torch.linalg.vector_norm(base))
            st.j, st.alpha, st.beta, st.beta_next, st.has_next = 0, [], [], 0.0, False
            if not (base_norm > eps_r * float(torch.linalg.vector_norm(b))) or not math.isfinite(base_norm):
                # nothing to correct (or b = 0): keep v̄ and try again next iteration
                st.restart_pending = True
                if plain:
                    st.v, st.v_is_zero = torch.zeros_like(b), True
                events.append("restart_skipped")
                return st.v, st, SolveInfo(matvecs, tuple(events), 0)
            torch.div(base, base_norm, out=st.Q[0])
            st.has_next, st.restart_pending = True, False
            st.restarts += 1
            events.append("restart")
        elif self.exact_residual and not st.w_is_zero:  # w = 0 exactly when v̄ = 0: nothing to refresh
            st.w = matvec(st.vbar)
            matvecs += 1

        # ---- one Lanczos step with the current Hessian ------------------------------------------------
        j = st.j
        q = st.Q[j]
        u = matvec(q)
        matvecs += 1
        if j > 0:
            u = u - st.beta_next * st.Q[j - 1]
        a = float(torch.dot(q, u))
        omega = u - a * q
        if self.reorth == "full":
            for _ in range(2):  # twice is enough (Kahan–Parlett)
                basis = st.Q[: j + 1]
                omega = omega - basis.T @ (basis @ omega)
        beta_new = float(torch.linalg.vector_norm(omega))
        st.alpha.append(a)
        if j > 0:
            st.beta.append(st.beta_next)
        st.j = j = j + 1
        st.beta_next = beta_new
        if not (beta_new > eps_b * max(abs(a), float(torch.linalg.vector_norm(u)))) or not math.isfinite(beta_new):
            st.has_next, st.restart_pending = False, True
            events.append("breakdown")
        else:
            torch.div(omega, beta_new, out=st.Q[j])
            st.has_next = True
        if plain and j > m:
            self._drop_oldest(st)
            j = st.j

        # ---- small projected problem ------------------------------------------------------------------
        rk = b if plain or st.w_is_zero else b - st.w
        rows = st.Q[: j + 1] if (self.subproblem == "minres" and st.has_next) else st.Q[:j]
        proj = (rows @ rk).tolist()
        c = proj[:j]
        c_next = proj[j] if len(proj) > j else 0.0
        s = None
        if self.subproblem == "galerkin":
            s = ldl_solve(st.alpha, st.beta, c, self.eps_pivot)
            if s is None:
                events.append("indefinite")
                st.restart_pending = True
                if self.fallback == "eig":
                    s = self._eig_solve(st, c)
                else:
                    c_next = float(torch.dot(st.Q[j], rk)) if st.has_next else 0.0
                    sol = minres_solve(st.alpha, st.beta, st.beta_next if st.has_next else 0.0, c, c_next)
                    s = sol[0] if sol is not None else None
        else:
            sol = minres_solve(st.alpha, st.beta, st.beta_next if st.has_next else 0.0, c, c_next)
            s = sol[0] if sol is not None else None

        base_v = None if plain else st.vbar
        if s is None or not all(math.isfinite(t) for t in s):
            events.append("discarded")
            st.restart_pending = True
            v = torch.zeros_like(b) if plain else st.vbar
            st.v, st.v_is_zero = v, plain or st.v_is_zero
            return v, st, SolveInfo(matvecs, tuple(events), j)
        dv = st.Q[:j].T @ torch.tensor(s, dtype=b.dtype, device=b.device)
        if self.mu_lb is not None and float(torch.linalg.vector_norm(dv)) > float(torch.linalg.vector_norm(rk)) / self.mu_lb:
            events.append("discarded")
            st.restart_pending = True
            v = torch.zeros_like(b) if plain else st.vbar
            st.v = v
            return v, st, SolveInfo(matvecs, tuple(events), j)
        v = dv if base_v is None else base_v + dv
        st.v, st.v_is_zero = v, False
        return v, st, SolveInfo(matvecs, tuple(events), j)

    # ------------------------------------------------------------------------------------------------
    def _eig_solve(self, st: LanczosState, c: list) -> Optional[list]:
        """Clamp T_j's eigenvalues at max(μ_lb, ε_p‖T_j‖) and solve (fallback="eig")."""
        T = st.T()
        evals, evecs = torch.linalg.eigh(T)
        floor = max(self.mu_lb or 0.0, self.eps_pivot * float(evals.abs().max()))
        if not floor > 0:
            return None
        evals = evals.clamp_min(floor)
        s = evecs @ ((evecs.T @ torch.tensor(c, dtype=torch.float64)) / evals)
        return s.tolist()

    @staticmethod
    def _drop_oldest(st: LanczosState) -> None:
        """Plain mode's sliding window: forget q_1 and the first row/column of T."""
        last = st.j + (1 if st.has_next else 0)
        st.Q[: last - 1].copy_(st.Q[1:last].clone())
        st.alpha.pop(0)
        st.beta.pop(0)
        st.j -= 1
