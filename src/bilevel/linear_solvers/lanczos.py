"""Dynamic Lanczos v-solver of LancBiO (Yang, Gao & Yuan, "LancBiO: dynamic Lanczos-aided bilevel
optimization via Krylov subspace", ICLR 2025).

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

Plain mode (compatibility with the LancBiO reference code): restart basis b_k/‖b_k‖, no base point, v_k = Q_j T_j⁻¹ Q_jᵀ b_k, and a
sliding window of the last m vectors instead of periodic restarts.

Mode schedule (``plain_until`` = k₀ > 0, with ``mode="residual"``): plain mode for iterations k < k₀, residual
mode from k₀ on.  The switch is clean: iteration k₀ restarts (events ``mode_switch`` and ``restart``) with
base point v̄ = v_{k₀−1}, the last plain estimate, w = A_{k₀} v̄ (1 HVP), q_1 = (b_{k₀} − w)/‖b_{k₀} − w‖; the
plain window is dropped.  Each phase has its own dimension cap through the schedule's phase switch:
``DimensionSchedule(..., m_max=<plain cap>, switch_at=k₀, switch_m_max=<residual cap>)``.  Cost: 1 HVP per
iteration before k₀, 1 + 1/m on average after (``total_matvecs`` counts it exactly).  This is what the
LancBiO reference code runs on deterministic hyper-cleaning (k₀ = 250, plain cap 300, then 10).

Cost per outer iteration: 1 HVP, plus 1 at each restart (none when v̄ = 0): **1 + 1/m on average**
(2 while m = 1; plain mode 1; ``exact_residual=True`` adds 1 on non-restart iterations).  Vector work is
O(j·dy) for Q_jᵀ r_k and Q_j s, each one matrix–vector product on a preallocated basis.

Options (paper symbol → name): m (subspace dimension = restart period) → ``m`` (an int or a
``DimensionSchedule``); ε_b → ``eps_breakdown``; ε_p → ``eps_pivot``; ε_r → ``eps_restart``;
μ_lb → ``mu_lb``.

``rescale_base=True`` (residual mode; a library option for mini-batches, not in the paper): at a restart,
after w = A_k v̄, scale the base point by the exact line search of the model along it, shrink only:
t = clip(b_kᵀv̄ / v̄ᵀw, 0, 1), v̄ ← t v̄, w ← t w (two dot products, no HVP; event ``base_rescaled`` when
t < 1).  Under noise v̄ = v_{k−1} can be worse than 0 for the new batch's system (a Galerkin solve on a
near-singular T_j, an over-long step along directions the batch barely curves); the scaling keeps such an
error from being carried into every later epoch.

Guards, recorded as events (a robust-implementation layer of this library, not part of the paper): ``breakdown`` (β_{j+1} ≤ ε_b·max(|α_j|, ‖u‖): no normalisation,
restart next iteration); ``indefinite`` (an LDLᵀ pivot of T_j ≤ ε_p·max|α|: this iteration uses the
minimal-residual solve, or clamped eigenvalues with ``fallback="eig"``, and the next one restarts);
``discarded`` (non-finite or, with μ_lb, exploding correction: v_k ← v̄, restart next);
``restart``; ``restart_skipped`` (residual already ≤ ε_r‖b‖: keep v̄);  ``below_mu_lb`` (with μ_lb: the
LDLᵀ pivots of T_j − μ_lb·I are not all positive, i.e. by Sylvester's law of inertia a Ritz value of T_j is
< μ_lb, which contradicts the bound: the Galerkin solve is kept and the next iteration restarts).
``indefinite`` and ``below_mu_lb`` carry the smallest Ritz value as ``SolveInfo.curvature`` (curvature
evidence: Ritz values of one Hessian lie in [λ_min, λ_max], so a negative one proves it indefinite; T_j
mixes the Hessians of the epoch's iterates).  With ``subproblem="minres"`` the pivots are checked for this
evidence only (the minimal-residual solve needs no definite T_j; nothing restarts).
The small tridiagonal problems are solved in float64 whatever the tensor dtype, and in a lower precision
(float32) the recurrence's inner products α_j = q_jᵀu and β_{j+1} = ‖ω‖ and the projection Q_jᵀ r_k accumulate
in float64 (a cast of j + 2 vectors of length dy per iteration, no HVP); the vectors stay in the run's dtype.

Operator epochs (mini-batches).  ``starts_epoch(state, k)`` says whether ``solve(state, k=k)`` begins a new
epoch: in residual mode exactly when it restarts, in plain mode at a restart and after every m(k) Lanczos
steps.  With ``aid(hessian_batch="epoch")`` the AID loop draws the HVP batch only then and holds it for
the epoch, so w = A v̄ and every Lanczos step of the epoch use one batch's Hessian (T_j the projection of
one operator, up to the drift of (x, y) within the epoch); with ``"iteration"`` each call's products use
that iteration's batch and T_j mixes the Hessians of several batches.

States are immutable.  The basis lives in a buffer preallocated for the largest m and shared
copy-on-write by consecutive states: a state owns rows ``Q[:rows]`` (q_1 … q_j, plus q_{j+1} when
``has_next``); a step writes the next row in place only if no other state has written beyond those rows
(the shared ``fill`` marker), else it first copies the owned rows to a fresh buffer (a branch: stepping
twice from one state).  A restart starts a fresh buffer unless the old one is provably unused.

Memory.  A state whose next call restarts (``restarts_at(state, k + 1)``: a pending restart, a full basis in
residual mode, a schedule or mode switch) never has its rows read again, so it lets go of its buffer (``Q``
with no rows; j, α, β stay, ``basis()`` says so; ``keep_basis=True`` keeps the rows for diagnostics, with the
same results bit for bit): a restart then does not hold the old basis next to the new one.  Within a step u and
ω are formed in q_{j+1}'s row, r_k = b_k − w is formed only to be projected, and v = v̄ + Q_j s is written over
Q_j s, so the step's dy-sized temporaries are A q_j and one more (α_j q_j, then Q_j s).  Held: v, v̄, w and at
most m + 1 basis rows (m + 2 are reserved; untouched rows of ``torch.empty`` are not resident).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, ClassVar, Mapping, Optional, Union

import torch
from torch import Tensor

from .._validation import check_bool, check_choice, check_positive
from ..auto_steps import tridiagonal_extremes
from ..schedules import DimensionSchedule, as_dimension_schedule
from ._tridiagonal import ldl_solve, minres_solve, positive_pivots
from .base import LINEAR_SOLVERS, Curvature, LinearSolver, MatVec, SolveInfo, initial_v, known_zero


class BasisFill:
    """The one mutable piece of a Lanczos run: shared by every state that uses one basis buffer, it records
    how many leading rows of that buffer have been written (by whichever state got furthest).  A state may
    write its next row in place only while ``rows`` equals the rows it owns."""

    __slots__ = ("rows",)

    def __init__(self, rows: int = 0) -> None:
        self.rows = rows

    def __repr__(self) -> str:
        return f"BasisFill(rows={self.rows})"


def _zeros_like(b: Tensor) -> Tensor:
    """w = 0 (while v̄ = 0) as a broadcast view of one stored zero: no dy-sized allocation.  Read only where
    ``w_is_zero`` is False, it is never written."""
    return b.new_zeros(()).expand(b.shape)


def _to_device(values: list, like: Tensor) -> Tensor:
    """Host floats as a vector on ``like``'s device and dtype.  On CUDA through pinned memory without blocking:
    a copy from pageable memory would synchronise the stream (a second sync per step after the step's read)."""
    host = torch.tensor(values, dtype=like.dtype)
    if like.device.type != "cuda":
        return host if like.device.type == "cpu" else host.to(like.device)
    return host.pin_memory().to(like.device, non_blocking=True)


def _tridiagonal(alpha: tuple, beta: tuple) -> Tensor:
    t = torch.diag(torch.tensor(alpha, dtype=torch.float64))
    if len(alpha) > 1:
        off = torch.tensor(beta, dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return t


@dataclass(frozen=True)
class LanczosState:
    """Carried across outer iterations; never modified (``solve`` returns a new state).

    ``Q`` is the shared preallocated buffer (``cap + 2`` rows): this state owns ``Q[:rows]``, i.e. the basis
    ``Q[:j]`` and, when ``has_next``, q_{j+1} in ``Q[j]``; rows beyond are not this state's and may be
    written by a later state.  ``fill`` is the buffer's shared write marker (see ``BasisFill``).
    """

    v: Tensor
    v_is_zero: bool
    vbar: Tensor
    w: Tensor
    w_is_zero: bool
    Q: Tensor
    fill: BasisFill
    j: int = 0
    alpha: tuple = ()
    beta: tuple = ()  # beta[i] = T[i, i+1], i.e. β_{i+2} in 1-based symbols
    beta_next: float = 0.0
    has_next: bool = False
    restart_pending: bool = True
    restarts: int = 0
    m: int = 0
    epoch_steps: int = 0  # Lanczos steps since the current operator epoch began (see ``Lanczos.starts_epoch``)

    @property
    def rows(self) -> int:
        """Leading rows of ``Q`` that belong to this state."""
        return self.j + (1 if self.has_next else 0)

    def T(self) -> Tensor:
        """T_j as a dense float64 matrix (diagnostics and tests)."""
        return _tridiagonal(self.alpha, self.beta)

    def basis(self) -> Tensor:
        """Q_j (j × n).  A state whose next call restarts holds no rows unless ``keep_basis=True``."""
        if self.j and not self.Q.shape[0]:
            raise ValueError(f"this Lanczos state let go of its basis (j = {self.j}; its next call restarts, so the "
                             "rows were released to save memory); build the solver with keep_basis=True to keep it.")
        return self.Q[: self.j]


@LINEAR_SOLVERS.register
@dataclass(frozen=True, kw_only=True)
class Lanczos(LinearSolver):
    """Dynamic Lanczos with restarts and residual correction (LancBiO's v-solver); see module docstring.

    Reference defaults: synthetic m = DimensionSchedule(1, 1.1, 20, 80); deterministic hyper-cleaning
    DimensionSchedule(1, 1.3, 50, 10); stochastic hyper-cleaning DimensionSchedule(1, 1.3, 50, 30,
    switch_at=500, switch_m_max=50).  ``m`` is presettable (library default 10).
    """

    name: ClassVar[str] = "lanczos"
    presettable: ClassVar[tuple[str, ...]] = ("m",)
    defaults: ClassVar[Mapping[str, Any]] = {"m": 10}
    has_epochs: ClassVar[bool] = True

    m: Optional[Union[int, DimensionSchedule]] = None
    mode: str = "residual"
    subproblem: str = "galerkin"
    reorth: str = "none"
    exact_residual: bool = False
    rescale_base: Optional[bool] = None  # None: off, unless an algorithm's published settings turn it on
    fallback: str = "minres"
    eps_breakdown: Optional[float] = None
    eps_pivot: float = 1e-10
    eps_restart: Optional[float] = None
    mu_lb: Optional[float] = None
    plain_until: Optional[int] = None  # k₀: plain mode for k < k₀, residual from k₀ (None: settings, else as 0)
    keep_basis: bool = False  # True: a state keeps its basis rows even when its next call restarts (diagnostics)

    def validate(self, options: Mapping[str, Any]) -> None:
        owner = "Lanczos"
        if options["m"] is not None:
            try:
                sched = as_dimension_schedule(options["m"])
            except (TypeError, ValueError) as err:
                raise type(err)(f"{owner}: {err}") from None
            object.__setattr__(self, "_schedule", sched)  # m stays as given (records show what was set)
        check_choice(owner, "mode", options["mode"], ("residual", "plain"))
        check_choice(owner, "subproblem", options["subproblem"], ("galerkin", "minres"))
        check_choice(owner, "reorth", options["reorth"], ("none", "full"))
        check_choice(owner, "fallback", options["fallback"], ("minres", "eig"))
        check_bool(owner, "exact_residual", options["exact_residual"])
        check_bool(owner, "keep_basis", options["keep_basis"])
        if options["rescale_base"] is not None:
            check_bool(owner, "rescale_base", options["rescale_base"])
        for name in ("exact_residual", "rescale_base"):
            if options[name] and options["mode"] == "plain":
                raise ValueError(f"{owner}: {name} applies to mode='residual' only (plain mode has no base point); "
                                 "got mode='plain'.")
        check_positive(owner, "eps_pivot", options["eps_pivot"], allow_zero=True)
        k0 = options["plain_until"]
        if k0 is not None:
            if isinstance(k0, bool) or not isinstance(k0, int) or k0 < 0:
                raise ValueError(f"{owner}: plain_until must be an integer >= 0 (the iteration k0 of the switch "
                                 f"from plain to residual mode; 0 = residual from the start); got {k0!r}.")
            if k0 and options["mode"] == "plain":
                raise ValueError(f"{owner}: plain_until switches plain mode to residual mode, so it needs "
                                 f"mode='residual'; got mode='plain', plain_until={k0}. Pass one of the two.")
        for name in ("eps_breakdown", "eps_restart", "mu_lb"):
            if options[name] is not None:
                check_positive(owner, name, options[name], allow_zero=(name != "mu_lb"))

    def resolved(self, values: Mapping[str, Any] = {}) -> "Lanczos":
        """``LinearSolver.resolved``, except that values of ``rescale_base`` and ``plain_until`` found in published
        settings are not taken in plain mode, which has no base point and no switch (either given explicitly
        in plain mode is still an error)."""
        if self.mode == "plain" and ("rescale_base" in values or "plain_until" in values):
            values = {k: v for k, v in values.items() if k not in ("rescale_base", "plain_until")}
        return super().resolved(values)

    @property
    def schedule(self) -> DimensionSchedule:
        self.require_resolved()
        return self._schedule  # built from m in validate

    def plain_at(self, k: int) -> bool:
        """Whether iteration k runs plain mode (``mode="plain"``, or k < ``plain_until``)."""
        return self.mode == "plain" or k < (self.plain_until or 0)

    def switches_mode_at(self, k: int) -> bool:
        """Whether iteration k is the mode schedule's switch k₀ = ``plain_until`` (plain → residual)."""
        return bool(self.plain_until) and k == self.plain_until

    def expected_matvecs(self, k: int) -> float:
        self.require_resolved()
        if self.plain_at(k):
            return 1.0
        m = self.schedule(k)
        return 1.0 + 1.0 / m + (0.0 if not self.exact_residual else 1.0 - 1.0 / m)

    def total_matvecs(self, iterations: int, v0_zero: bool = True) -> float:
        """One Lanczos product per call plus one at each restart (w = A v̄), except while v̄ = 0 (the first
        epoch of a run from v = 0); a restart happens at k = 0, when the basis already holds m(k) vectors,
        and at the schedule's ``switch_at``.  ``exact_residual`` adds one on non-restart calls (w refreshed)
        where w ≠ 0.  Plain mode: one per call.  (Breakdowns, skipped restarts and guards, which need an
        exactly solved or degenerate system, are not modelled.)  Mode schedule (``plain_until`` = k₀ > 0): one
        per call for k < k₀; at k₀ a restart from v̄ = v_{k₀−1} ≠ 0 (+1), then residual mode as above."""
        self.require_resolved()
        if self.mode == "plain":
            return float(max(iterations, 0))
        k0 = min(self.plain_until or 0, max(iterations, 0))
        sched, total, j, epoch = self.schedule, k0, 0, -1
        based = k0 > 0 or not v0_zero  # v̄ ≠ 0 from the first residual epoch on
        for k in range(k0, iterations):
            if k == k0 or j >= sched(k) or k == sched.switch_at:
                epoch, j = epoch + 1, 0
                total += 1 if (epoch or based) else 0  # A·v̄ (v̄ = 0 in the first epoch from v = 0)
            elif self.exact_residual and (epoch or based):
                total += 1  # diagnostic mode refreshes w = A_k v̄
            total += 1  # the Lanczos step
            j += 1
        return float(total)

    def budget_warnings(self, max_iter: int) -> list[str]:
        """Warns when a growing dimension schedule cannot reach its cap within ``max_iter`` iterations."""
        sched = self.schedule
        if sched.cap > sched.m0 and sched.first_reaching(sched.cap, max_iter) is None:
            return [
                f"the subspace dimension never reaches its cap {sched.cap} within max_iter={max_iter} "
                f"(it gets to {sched(max(max_iter - 1, 0))}); {sched!r}."
            ]
        return []

    def spectrum(self, state: LanczosState) -> Optional[tuple[float, float]]:
        """Extreme Ritz values of the current T_j (the basis's tridiagonal matrix; in the dynamic basis it mixes
        the Hessians of the epoch's iterates), None before the first step."""
        if state.j < 1:
            return None
        return tridiagonal_extremes(state.alpha[: state.j], state.beta[: state.j - 1])

    def curvature_fallback(self, events: Mapping[str, int], n: int) -> str:
        indefinite, below = events.get("indefinite", 0), events.get("below_mu_lb", 0)
        if self.subproblem == "minres":
            return "the minimal-residual solve, which needs no definite T_j, was used as usual (no restart)"
        how = ("clamped Ritz values" if self.fallback == "eig" else "the minimal-residual solve")
        parts = []
        if indefinite:
            parts.append(f"the indefinite-pivot fallback ({how} for that iteration, a restart at the next) was "
                         f"used {indefinite} times")
        if below:
            parts.append(f"a Ritz value below mu_lb restarted the basis {below} times")
        return "; ".join(parts) or f"the basis was restarted after each of those {n} iterations"

    # ------------------------------------------------------------------------------------------------
    def init(self, b: Tensor, v0: Optional[Tensor] = None) -> LanczosState:
        v = initial_v(b, v0)
        rows = self.schedule.cap + 2  # basis + q_next (+1 spare for the plain window before trimming)
        return LanczosState(
            v=v,
            v_is_zero=known_zero(v0),
            vbar=v,  # states are immutable: v̄ may share v's storage
            w=_zeros_like(b),
            w_is_zero=True,
            Q=torch.empty((rows, b.numel()), dtype=b.dtype, device=b.device),
            fill=BasisFill(0),
        )

    def starts_epoch(self, state: LanczosState, k: int) -> bool:
        """Whether ``solve(state, k=k)`` begins a new operator epoch, so that a caller holding the Hessian
        batch fixed within an epoch (``aid(hessian_batch="epoch")``) draws a fresh one now.

        Residual mode: exactly when that call restarts (a pending restart: the first call, after a
        breakdown, an indefinite T_j, a discarded or skipped correction; the basis already holding m(k)
        vectors; the schedule's ``switch_at``), so every product of an epoch — w = A v̄ and the Lanczos
        steps that build Q_j and T_j — uses one batch and T_j is the projection of one operator.
        Plain mode (no periodic restart: a sliding window of the last m vectors): at a restart (the first
        call, a breakdown, ``switch_at``) and then after every m(k) Lanczos steps, so each batch serves m
        consecutive products and the window spans at most two batches.  A pure function of (state, k).
        """
        self.require_resolved()
        return self.restarts_at(state, k) or (self.plain_at(k) and state.epoch_steps >= self.schedule(k))

    def restarts_at(self, state: LanczosState, k: int) -> bool:
        """Whether ``solve(state, k=k)`` restarts (a pure function of (state, k)): a pending restart, the
        schedule's ``switch_at`` or the mode switch k₀, or, in residual mode, a basis already holding m(k) vectors."""
        sched = self.schedule
        return (state.restart_pending or (sched.switch_at is not None and k == sched.switch_at)
                or self.switches_mode_at(k) or (not self.plain_at(k) and state.j >= sched(k)))

    def _eps(self, dtype: torch.dtype) -> tuple[float, float]:
        double = dtype == torch.float64
        eps_b = self.eps_breakdown if self.eps_breakdown is not None else (1e-10 if double else 1e-5)
        eps_r = self.eps_restart if self.eps_restart is not None else (1e-14 if double else 1e-7)
        return eps_b, eps_r

    def solve(
        self, matvec: MatVec, b: Tensor, state: LanczosState, *, k: int = 0, generator: Any = None
    ) -> tuple[Tensor, LanczosState, SolveInfo]:
        self.require_resolved()
        # A private mutable working copy: the input state and the tensors it owns are never written.
        st = SimpleNamespace(**vars(state))
        st.alpha, st.beta = list(state.alpha), list(state.beta)
        events: list[str] = []
        matvecs = 0
        eps_b, eps_r = self._eps(b.dtype)
        m = self.schedule(k)
        st.m = m
        plain = self.plain_at(k)
        wide = b.dtype == torch.float64  # else the inner products of the recurrence and Q_jᵀ r_k accumulate in float64
        if self.switches_mode_at(k):  # plain → residual: a forced restart from v̄ = v_{k₀−1}
            events.append("mode_switch")
        if self.starts_epoch(state, k):
            st.epoch_steps = 0

        if self.restarts_at(state, k):
            if plain:
                base = b
            else:
                st.vbar = st.v
                if st.v_is_zero:
                    st.w, st.w_is_zero = _zeros_like(b), True
                else:
                    st.w, st.w_is_zero = matvec(st.vbar), False
                    matvecs += 1
                    if self.rescale_base:
                        self._rescale_base(st, b, events)
            # the old buffer holds rows of a live state: the new epoch's basis goes to a fresh one (rows of
            # torch.empty are not resident until written)
            fresh = bool(state.rows or state.fill.rows) or not state.Q.shape[0]  # (no rows: a released buffer)
            Q = state.Q.new_empty((self.schedule.cap + 2, b.numel())) if fresh else st.Q
            if not plain:
                # r = b − w formed in q_1's slot, normalised there below: no dy-sized temporary
                base = b if st.w_is_zero else torch.sub(b, st.w, out=Q[0])
            # the restart's one host read (‖r‖ and ‖b‖ together): whether to skip it is decided before the
            # Lanczos step's product is spent (a skipped restart makes none)
            b_norm_t = torch.linalg.vector_norm(b)
            if base is b:
                base_norm = b_norm = float(b_norm_t)
            else:
                base_norm, b_norm = torch.stack([torch.linalg.vector_norm(base), b_norm_t]).tolist()
            st.j, st.alpha, st.beta, st.beta_next, st.has_next = 0, [], [], 0.0, False
            if not (base_norm > eps_r * b_norm) or not math.isfinite(base_norm):
                # nothing to correct (or b = 0): keep v̄ and try again next iteration
                st.restart_pending = True
                if plain:
                    st.v, st.v_is_zero = torch.zeros_like(b), True
                else:
                    st.v = st.vbar  # v̄ itself (rescale_base may have scaled it)
                events.append("restart_skipped")
                return st.v, self._freeze(st, k), SolveInfo(matvecs, tuple(events), 0)
            if fresh:
                st.Q, st.fill = Q, BasisFill(0)
            torch.div(base, base_norm, out=st.Q[0])
            st.fill.rows = 1
            st.has_next, st.restart_pending = True, False
            st.restarts += 1
            events.append("restart")
        elif self.exact_residual and not st.w_is_zero:  # w = 0 exactly when v̄ = 0: nothing to refresh
            st.w = matvec(st.vbar)
            matvecs += 1

        # ---- one Lanczos step with the current Hessian ------------------------------------------------
        j = st.j
        self._own(st, j + 1)
        q = st.Q[j]
        # u and ω are formed in q_{j+1}'s slot (owned by this lineage after _own, and not resident until written):
        # the step's only dy-sized temporaries are the product A q_j and α_j q_j.  Each operation is the
        # out-of-place one with an ``out=`` buffer, so the values are the same bit for bit.
        nxt = st.Q[j + 1]
        u = matvec(q)
        matvecs += 1
        st.epoch_steps += 1
        if j > 0:
            torch.mul(st.Q[j - 1], st.beta_next, out=nxt)
            u = torch.sub(u, nxt, out=nxt)
        a_t = torch.dot(q, u) if wide else torch.dot(q.double(), u.double())
        u_norm = torch.linalg.vector_norm(u)
        if j > 0:
            omega = torch.sub(u, a_t * q, out=nxt)
        else:  # u is A q_1 itself (not ours to overwrite): α_1 q_1 goes to the free slot first
            omega = torch.sub(u, torch.mul(q, a_t, out=nxt), out=nxt)
        u = None  # A q_j is no longer needed
        if self.reorth == "full":
            for _ in range(2):  # twice is enough (Kahan–Parlett)
                basis = st.Q[: j + 1]
                torch.sub(omega, basis.T @ (basis @ omega), out=nxt)
        # the step's one host read: the scalars (α_j, β_{j+1}, ‖u‖) and, for the Galerkin solve, Q_jᵀ r_k.  It
        # stays because the breakdown test decides whether q_{j+1} exists and the O(j) tridiagonal solve with its
        # pivot guards (``_tridiagonal``) runs on the host in float64: j scalar kernels per step on the device
        # would cost more than the read, and would not give the same bits
        scalars = [a_t, torch.linalg.vector_norm(omega if wide else omega.double()), u_norm]
        early = self.subproblem == "galerkin"  # rows Q_j are final before q_{j+1} is formed
        if early:
            scalars.append(self._project(st.Q[: j + 1], b, st, plain, wide))
        values = torch.cat([t.reshape(-1).to(torch.float64) for t in scalars]).tolist()
        a, beta_new, u_norm = values[:3]
        st.alpha.append(a)
        if j > 0:
            st.beta.append(st.beta_next)
        st.j = j = j + 1
        st.beta_next = beta_new
        if not (beta_new > eps_b * max(abs(a), u_norm)) or not math.isfinite(beta_new):
            st.has_next, st.restart_pending = False, True
            events.append("breakdown")
        else:
            torch.div(omega, beta_new, out=st.Q[j])  # in place: ω is already in this row
            st.fill.rows = j + 1
            st.has_next = True
        dropped = plain and j > m
        if dropped:
            self._drop_oldest(st)
            j = st.j

        # ---- small projected problem ------------------------------------------------------------------
        if early:
            proj = values[4:] if dropped else values[3:]
        else:
            rows = st.Q[: j + 1] if st.has_next else st.Q[:j]
            proj = self._project(rows, b, st, plain, wide).tolist()
        c = proj[:j]
        c_next = proj[j] if len(proj) > j else 0.0
        s = None
        curvature = None
        if self.subproblem == "galerkin":
            s = ldl_solve(st.alpha, st.beta, c, self.eps_pivot)
            if s is None:
                events.append("indefinite")
                curvature = self._ritz_evidence(st, 0.0)
                st.restart_pending = True
                if self.fallback == "eig":
                    s = self._eig_solve(st, c)
                else:
                    c_next = float(torch.dot(st.Q[j], self._residual(b, st, plain))) if st.has_next else 0.0
                    sol = minres_solve(st.alpha, st.beta, st.beta_next if st.has_next else 0.0, c, c_next)
                    s = sol[0] if sol is not None else None
            elif self.mu_lb is not None and not positive_pivots(st.alpha, st.beta, 0.0, self.mu_lb):
                # T_j is positive definite, but a Ritz value < μ_lb contradicts the given bound: keep the
                # Galerkin solve, restart next iteration (as after an indefinite T_j)
                events.append("below_mu_lb")
                curvature = self._ritz_evidence(st, self.mu_lb)
                st.restart_pending = True
        else:
            # the minimal-residual solve needs no definite T_j; its pivots are checked for the evidence only
            shift = self.mu_lb or 0.0
            if not positive_pivots(st.alpha, st.beta, 0.0 if shift else self.eps_pivot, shift):
                events.append("below_mu_lb" if shift else "indefinite")
                curvature = self._ritz_evidence(st, shift)
            sol = minres_solve(st.alpha, st.beta, st.beta_next if st.has_next else 0.0, c, c_next)
            s = sol[0] if sol is not None else None

        base_v = None if plain else st.vbar
        if s is None or not all(math.isfinite(t) for t in s):
            events.append("discarded")
            st.restart_pending = True
            v = torch.zeros_like(b) if plain else st.vbar
            st.v, st.v_is_zero = v, plain or st.v_is_zero
            return v, self._freeze(st, k), SolveInfo(matvecs, tuple(events), j, curvature)
        dv = st.Q[:j].T @ _to_device(s, b)
        if self.mu_lb is not None and (float(torch.linalg.vector_norm(dv))
                                       > float(torch.linalg.vector_norm(self._residual(b, st, plain))) / self.mu_lb):
            events.append("discarded")
            st.restart_pending = True
            v = torch.zeros_like(b) if plain else st.vbar
            st.v = v
            return v, self._freeze(st, k), SolveInfo(matvecs, tuple(events), j, curvature)
        v = dv if base_v is None else torch.add(base_v, dv, out=dv)  # v̄ + Q_j s, in dv's storage
        st.v, st.v_is_zero = v, False
        return v, self._freeze(st, k), SolveInfo(matvecs, tuple(events), j, curvature)

    # ------------------------------------------------------------------------------------------------
    @staticmethod
    def _rescale_base(st: SimpleNamespace, b: Tensor, events: list) -> None:
        """``rescale_base``: v̄ ← t v̄ and w ← t w with t = clip(bᵀv̄ / v̄ᵀw, 0, 1), the exact line search of the
        model ½vᵀA v − bᵀv along v̄ (w = A v̄ is the restart's product: no extra HVP), shrink only."""
        num, den = torch.stack([torch.dot(b, st.vbar), torch.dot(st.vbar, st.w)]).tolist()
        t = min(max(num / den, 0.0), 1.0) if den > 0 and math.isfinite(num / den) else 0.0
        if t < 1.0:
            st.vbar, st.w = t * st.vbar, t * st.w
            events.append("base_rescaled")

    @staticmethod
    def _residual(b: Tensor, st: SimpleNamespace, plain: bool) -> Tensor:
        """r_k = b_k − w (plain mode, or w = 0: b_k itself).  Formed where it is used and not kept: a dy-vector
        less in the step's peak memory; the rare second use (a fallback, the μ_lb test) forms it again."""
        return b if plain or st.w_is_zero else b - st.w

    @classmethod
    def _project(cls, rows: Tensor, b: Tensor, st: SimpleNamespace, plain: bool, wide: bool) -> Tensor:
        """Q_jᵀ r_k (float64 accumulation when ``wide`` is False: the run's dtype is lower than float64)."""
        rk = cls._residual(b, st, plain)
        return rows @ rk if wide else rows.double() @ rk.double()

    def _freeze(self, st: SimpleNamespace, k: int) -> LanczosState:
        state = LanczosState(**{**vars(st), "alpha": tuple(st.alpha), "beta": tuple(st.beta)})
        if self.keep_basis or not self.restarts_at(state, k + 1):
            return state
        # The next call (k + 1) restarts and never reads these rows: the state lets go of its buffer, so the
        # restart's fresh basis is not held next to the old one (peak memory: m + 1 dy-vectors less).  j, α, β
        # (T_j) stay for diagnostics; restart_pending makes the restart unconditional, so a call with another k
        # restarts too instead of reading rows that are gone.
        return dataclasses.replace(state, Q=st.Q.new_empty((0, st.Q.shape[1])), fill=BasisFill(0),
                                   restart_pending=True)

    @staticmethod
    def _ritz_evidence(st: SimpleNamespace, bound: float) -> Optional[Curvature]:
        """The smallest Ritz value of T_j (eigenvalues of a j × j float64 matrix; computed on events only);
        None when T_j is not finite (a non-finite product is no evidence about curvature)."""
        if not all(math.isfinite(t) for t in (*st.alpha, *st.beta)):
            return None
        lowest = float(torch.linalg.eigvalsh(_tridiagonal(tuple(st.alpha), tuple(st.beta)))[0])
        return Curvature(f"Lanczos: the smallest Ritz value of T_{st.j}", lowest, bound)

    @staticmethod
    def _own(st: SimpleNamespace, rows: int) -> None:
        """Before writing row ``rows`` of the buffer: if another state has already written there (a branch),
        continue in a fresh buffer holding a copy of the ``rows`` leading rows this lineage owns."""
        if st.fill.rows != rows:
            fresh = torch.empty_like(st.Q)
            fresh[:rows].copy_(st.Q[:rows])
            st.Q, st.fill = fresh, BasisFill(rows)

    def _eig_solve(self, st: SimpleNamespace, c: list) -> Optional[list]:
        """Clamp T_j's eigenvalues at max(μ_lb, ε_p‖T_j‖) and solve (fallback="eig")."""
        T = _tridiagonal(tuple(st.alpha), tuple(st.beta))
        evals, evecs = torch.linalg.eigh(T)
        floor = max(self.mu_lb or 0.0, self.eps_pivot * float(evals.abs().max()))
        if not floor > 0:
            return None
        evals = evals.clamp_min(floor)
        s = evecs @ ((evecs.T @ torch.tensor(c, dtype=torch.float64)) / evals)
        return s.tolist()

    @staticmethod
    def _drop_oldest(st: SimpleNamespace) -> None:
        """Plain mode's sliding window: forget q_1 and the first row/column of T.  The shifted window goes
        to a fresh buffer (shifting in place would change rows that earlier states own)."""
        last = st.j + (1 if st.has_next else 0)
        fresh = torch.empty_like(st.Q)
        fresh[: last - 1].copy_(st.Q[1:last])
        st.Q, st.fill = fresh, BasisFill(last - 1)
        st.alpha.pop(0)
        st.beta.pop(0)
        st.j -= 1


def lanczos(**options: Any) -> Lanczos:
    """Configure the dynamic Lanczos v-solver (LancBiO's); see ``Lanczos`` for the options."""
    return Lanczos(**options)
