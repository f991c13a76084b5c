"""Step sizes from curvature, for problems without published settings or scales (``"auto"``).

An AID solver bound to a problem on which ``lr_y`` (θ), the v-solver's ``eta`` (η) or ``lr_x`` (λ) is
left unset — no user value, no published setting for the problem's experiment, no problem scale — fills
it with ``"auto"`` (and any of them can be asked for explicitly: ``lancbio(lr_x="auto")``,
``-O lr_y=auto``).  Given values, the solver's ``SETTINGS`` and the problem's ``presets`` always win.

The first-order F2SA uses the same rules for its θ and ξ (``F2SA.auto_steps``), with secant products of ∇_y g
(``SecantPoint``) in place of HVPs for the start estimate; BOME and PBGD only for θ (secant start estimate).
AdaGrad-norm for PBGD's α_x was tried and left out: its penalised y starts far from its target and moves by θ/γ
per step, so the early x-directions γ(∇_x g(x, y) − ∇_x g(x, ŷ)) are large and AdaGrad-norm's sum keeps α_x tiny
(measured: reduction 3 in 1000 iterations on the zoo quadratics at γ = 300, T = 1, where the tuned α_x = 0.03
reaches 1e3 in 2000; 58 at the default γ = 10, its O(1/γ) bias).  ITD (HVP start estimate, the Rayleigh quotients
of its backward pass's HVPs; an iteration whose unroll grows is rejected) sets θ and λ.  STABLE
(HVP start estimate, Neumann Rayleigh quotients) and HJFBiO (secant start estimate, the Rayleigh quotients of its
finite differences) use the mixin ``FirstOrderAuto`` with ``eta`` too; what each keeps current is in its docstring.

Curvature estimate L̂ ≈ L = λ_max(∇²_yy g), μ̂ ≈ λ_min(∇²_yy g):

    start      ``probes`` = min(10, dy) Lanczos steps with full reorthogonalisation on the HVP oracle at
               (x_0, y_0) (full data; under mini-batches the AID loop makes it at its first iteration on that
               iteration's own ``hvp`` draw, whose samples are counted), from a random unit vector drawn with the run's generator; L̂_0 and μ̂_0
               are the largest and smallest Ritz values of the tridiagonal T (Kaniel–Paige: the extreme
               Ritz values converge first; they satisfy λ_min ≤ μ̂ and L̂ ≤ λ_max, with equality once
               probes = dy).  Cost: ``probes`` HVPs and one autodiff graph build, once.
    each step  from the v-solver's own work, no extra oracle call (``LinearSolver.spectrum``): the Ritz
               values of LancBiO's T_j, of the Lanczos matrix of CG's α, β, of SubBiO's 2 × 2 system
               H = WᵀAW, the Rayleigh quotients of the GD and Neumann iterates (which turn towards the top
               eigenvector exactly when η > 2/λ_max).  L̂ ← max(L̂, largest Ritz value) (L̂ never decreases: a
               rise in curvature along the run is taken at once, a fall only costs speed; event
               ``auto_L_raised`` when it rises by more than 10 %); μ̂ ← min(μ̂, smallest Ritz value): the
               smallest curvature met.
    safeguard  gradient descent on a convex L-smooth g(x, ·) with θ ≤ 2/L never increases ‖∇_y g‖ (each
               step multiplies the gradient by an averaged I − θ∇²g), so ‖∇_y g‖ growing at some inner step
               (beyond round-off: 1000 ulps of ‖y‖, at least two gradients in the iteration; under
               mini-batches both norms are taken on one batch B — the last inner step's ∇_y g_B(y_{T−1}) and
               one extra ∇_y g_B(y_T), counted — since GD on the convex g_B with θ ≤ 2/L_B cannot raise it
               either, while gradients on different batches differ by sampling) means θ is too large for the curvature met (or g is not convex there): L̂ ← 2 L̂,
               event ``auto_step_shrunk``, and λ's sum Σ‖D_i‖² restarts from 0 (estimates made with a diverging
               y are not hypergradients; without the restart a burst of them would shrink λ for good).  A limit: the
               iterations while y recovers still add their large D_i, so a θ several times too large (L̂_0 ≤ L/5
               in the tests) leaves λ small for long; a start estimate 2.5× too small recovers fully.  This is
               the sufficient-decrease proxy for "g rises": the inner loop sees ∇_y g, not g, and values of g
               would cost extra calls.

Steps from L̂ (δ: ``damping``):   θ = 1/L̂   (GD on g(x, ·): contracts for θ < 2/L)
                                   η = 1/(L̂ + δ)   (GD, Neumann, 2-D subspace v-solvers; same reason)

Outer step λ (``lr_x``), needing no Lipschitz constant of ∇φ, on the estimate D_k = ∇_x f − J_k v_k:

    λ_k = c / sqrt(b_0² + Σ_{i≤k} ‖D_i‖²),   c = 1, b_0 = 0   (λ_k = 0 while every D_i = 0)

AdaGrad-norm (Ward, Wu & Bottou, "AdaGrad stepsizes: sharp convergence over nonconvex landscapes", ICML 2019;
JMLR 2020): on a smooth φ it converges for any c > 0 and b_0 without knowing L_φ (the sum grows until the
step is small enough); no step is longer than c = 1 in x's units (the first is exactly 1), which suits
log-scale hyperparameters such as log-penalties.  Cost: one squared norm and a few scalars per iteration,
on the device (no host read).

Chosen from measurements on the zoo of tests/test_auto_steps.py (iterations to a 1e3 reduction of the true
‖∇φ‖ in 1000; the tuned presets of the built-in quadratic need 15 at κ = 1 and 40–120 at κ = 1e2, SOBA 510):

    ============================================  ===========  ============  ==========  ===========
    rule                                          κ = 1        κ = 1e2       ridge       logistic
    AdaGrad-norm, c = 1 (default)                 35–40        40–120        > 1000      790–830
    DoG (Ivgi, Hinder & Carmon, ICML 2023),       90–100       80–140        680–710     170–320
      r_ε = 1e-4 (1 + ‖x_0‖)                      (ramp-up)                              (SOBA 720)
    DoG, r_ε = 1 + ‖x_0‖                          10           40–130        140–500     —
                                                                             SOBA: x ran away to 228
    ============================================  ===========  ============  ==========  ===========

DoG (λ_k = r̄_k / sqrt(Σ‖D_i‖²), r̄_k = max(r_ε, max_{i≤k} ‖x_i − x_0‖)) learns its scale from the distance
travelled, which made it faster on ridge and logistic regression; but with r_ε small it misses the 3×-presets
bound at κ = 1, and with r_ε large a single-loop method (SOBA), whose early estimates D_k grow as v_k
converges, lets every step be as long as the distance already travelled and runs away.  AdaGrad-norm meets
the presets bound and never diverged; it is slower on ridge and logistic regression (budgets in the tests).
``AutoSteps(x_rule="dog")`` (with ``R_EPS``) keeps DoG for comparison.

Visibility.  ``AIDState.auto`` holds the current values (``StepState``); ``solve`` logs them at every
evaluation (history columns ``lr_x``, ``lr_y``, ``eta`` for the automatic ones, and ``L_est``, ``mu_est``)
and records the last ones in ``Result.options`` with ``"auto"``: the comma-separated names that were
automatic (e.g. ``"lr_x,lr_y"``).  The safeguard's host read makes one device synchronisation per
iteration (auto runs only).  ``mu_est`` is the smallest Ritz value met: each is an upper bound on λ_min
of the Hessian it came from (Cauchy interlacing), exact once the Krylov space is invariant (see the tests);
for strong-convexity checks, a value ≤ 0 is evidence of non-convexity (which the v-solvers already report
as curvature evidence), a small positive one bounds the condition number from below by L̂/μ̂.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import torch
from torch import Tensor

#: the value that asks for an automatic step (an option left unset becomes it when nothing else applies)
AUTO = "auto"

#: automatic options of the AID loop, by their short names, and the rule ``bilevel show`` prints
RULES = {
    "lr_x": "AdaGrad-norm: λ_k = 1 / sqrt(Σ_{i≤k} ‖D_i‖²), D_i the hypergradient estimates",
    "lr_y": "θ = 1/L̂, L̂ ≈ λ_max(∇²_yy g) from a Lanczos start and the solver's own Ritz values or quotients",
    "eta": "η = 1/L̂, L̂ ≈ λ_max(∇²_yy g) from a Lanczos start and the solver's own Ritz values or quotients",
}

#: Lanczos steps of the start estimate (at most dy)
PROBES = 10

X_RULES = ("dog", "adagrad")

#: the DoG comparison rule's initial distance r_ε, relative to 1 + ‖x_0‖ (see the module docstring)
R_EPS = 1e-4


def is_auto(value: Any) -> bool:
    """Whether an option value asks for an automatic step."""
    return isinstance(value, str) and value == AUTO


def _dot64(a: Tensor, b: Tensor) -> float:
    return float(torch.dot(a.reshape(-1).to(torch.float64), b.reshape(-1).to(torch.float64)))


def tridiagonal_extremes(alpha, beta) -> Optional[tuple[float, float]]:
    """(smallest, largest) eigenvalue of the symmetric tridiagonal matrix with diagonal ``alpha`` and
    off-diagonal ``beta`` (float64), None when empty or not finite."""
    if not alpha or not all(math.isfinite(t) for t in (*alpha, *beta)):
        return None
    t = torch.diag(torch.tensor(list(alpha), dtype=torch.float64))
    if len(alpha) > 1:
        off = torch.tensor(list(beta[: len(alpha) - 1]), dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    ev = torch.linalg.eigvalsh(t)
    return float(ev[0]), float(ev[-1])


def lanczos_extremes(matvec: Callable[[Tensor], Tensor], like: Tensor, steps: int,
                     generator: Optional[torch.Generator]) -> tuple[float, float, int]:
    """Extreme Ritz values of A (given by ``matvec`` on tensors shaped like ``like``) after ``steps``
    Lanczos steps with full reorthogonalisation from a random unit vector: (smallest, largest, products).

    Exactly ``steps`` products (≤ dy): after a breakdown (an invariant subspace found) the recurrence
    continues from a new random vector orthogonal to the basis (β = 0 there), so the count is fixed."""
    n = like.numel()
    steps = max(1, min(int(steps), n))
    shape, dtype, device = like.shape, like.dtype, like.device

    def fresh(basis: list[Tensor]) -> Optional[Tensor]:
        q = torch.randn(n, generator=generator, dtype=dtype, device=device)
        for _ in range(2):  # twice is enough for orthogonality to working precision
            for u in basis:
                q = q - _dot64(u, q) * u
        norm = float(torch.linalg.vector_norm(q))
        return q / norm if norm > 0 else None

    basis: list[Tensor] = []
    alpha: list[float] = []
    beta: list[float] = []
    q = fresh(basis)
    for j in range(steps):
        basis.append(q)
        w = matvec(q.reshape(shape)).detach().reshape(-1)
        alpha.append(_dot64(q, w))
        if j == steps - 1:
            break
        for _ in range(2):
            for u in basis:
                w = w - _dot64(u, w) * u
        b = float(torch.linalg.vector_norm(w))
        scale = max(abs(a) for a in alpha) or 1.0
        if not math.isfinite(b):
            break
        if b <= 1e-10 * scale:
            q = fresh(basis)
            if q is None:
                break
            beta.append(0.0)
        else:
            q = w / b
            beta.append(b)
    ext = tridiagonal_extremes(alpha, beta)
    if ext is None:
        return math.nan, math.nan, len(alpha)
    return ext[0], ext[1], len(alpha)


class SecantPoint:
    """First-order stand-in for the HVP oracle at (x, y), for methods that make no second-order call (F2SA):
    A u ≈ (∇_y g(x, y + h u) − ∇_y g(x, y)) / h with h = sqrt(ε)(1 + ‖y‖)/‖u‖ (exact on a quadratic g; error
    O(h‖∇³g‖) otherwise).  Cost: one ∇_y g per product, plus one at y."""

    def __init__(self, oracles: Any, x: Tensor, y: Tensor) -> None:
        self.oracles, self.x, self.y = oracles, x, y
        self.grad = oracles.grad_y_g(x, y)
        self.scale = math.sqrt(torch.finfo(y.dtype).eps) * (1.0 + float(torch.linalg.vector_norm(y)))

    def hvp(self, u: Tensor) -> Tensor:
        h = self.scale / max(float(torch.linalg.vector_norm(u)), 1e-300)
        return (self.oracles.grad_y_g(self.x, self.y + h * u) - self.grad) / h


@dataclass(frozen=True)
class StepState:
    """The automatic steps of a run (immutable; each step returns a new one).

    L, mu: the current estimates L̂, μ̂;  L0, mu0: the start estimates.  delta: the v-system's damping δ.
    lam: the last λ (0-dim tensor, None before the first x-step);  sumsq: Σ‖D_i‖² (0-dim tensor);
    rbar: max(r_ε, max‖x_i − x_0‖) (0-dim tensor);  x0: x_0."""

    L: float
    mu: float
    L0: float
    mu0: float
    delta: float = 0.0
    lam: Optional[Tensor] = None
    sumsq: Optional[Tensor] = None
    rbar: Optional[Tensor] = None
    x0: Optional[Tensor] = None

    @property
    def theta(self) -> float:
        """θ = 1/L̂."""
        return 1.0 / self.L

    @property
    def eta(self) -> float:
        """η = 1/(L̂ + δ)."""
        return 1.0 / (self.L + self.delta)


@dataclass(frozen=True)
class AutoSteps:
    """Which of the AID loop's steps are automatic (``lr_x``, ``lr_y``, ``eta``), and how (module docstring).

    probes: Lanczos steps (HVPs) of the start estimate, ≤ dy.   x_rule: "adagrad" (AdaGrad-norm, the default)
    or "dog" (DoG, kept for comparison; module docstring).  from_defaults: other options whose value came from
    the solver's defaults for an automatic λ (LancBiO's growing m, ``lancbio.AUTO_DEFAULTS``)."""

    lr_x: bool = False
    lr_y: bool = False
    eta: bool = False
    probes: int = PROBES
    x_rule: str = "adagrad"
    from_defaults: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """The automatic step sizes."""
        return tuple(n for n in ("lr_x", "lr_y", "eta") if getattr(self, n))

    @property
    def listed(self) -> tuple[str, ...]:
        """What ``Result.options["auto"]`` lists: the automatic steps and the options chosen for them."""
        return self.names + self.from_defaults

    @property
    def needs_curvature(self) -> bool:
        return self.lr_y or self.eta

    def _curvature_steps(self) -> str:
        """The automatic steps set from curvature, as the options to pass instead ("lr_y and eta")."""
        return " and ".join(name for name, on in (("lr_y", self.lr_y), ("eta", self.eta)) if on)

    def start(self, point: Any, x: Tensor, y: Tensor, generator: Optional[torch.Generator],
              delta: float = 0.0) -> StepState:
        """The start estimate (``probes`` HVPs at the point's (x_0, y_0) when θ or η is automatic)."""
        lo = hi = math.nan
        if self.needs_curvature:
            lo, hi, _ = lanczos_extremes(point.hvp, y, self.probes, generator)
            if not (math.isfinite(hi) and hi > 0):
                raise ValueError(
                    f"automatic steps: the largest Ritz value of ∇²_yy g at (x0, y0) is {hi:.6g}, so no step can be "
                    f"derived from it (is g(x0, ·) convex and finite there?) — pass {self._curvature_steps()}, or start "
                    "where g is convex in y."
                )
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        return StepState(L=hi, mu=lo, L0=hi, mu0=lo, delta=delta, sumsq=zero, x0=x,
                         rbar=zero + R_EPS * (1.0 + float(torch.linalg.vector_norm(x))))

    def x_step(self, st: StepState, x: Tensor, d: Tensor) -> tuple[Tensor, StepState]:
        """x_{k+1} = x_k − λ_k D_k with λ_k from the rule (no host read)."""
        sumsq = st.sumsq + torch.sum(d * d)
        if self.x_rule == "dog":
            rbar = torch.maximum(st.rbar, torch.linalg.vector_norm(x - st.x0))
            scale = rbar
        else:
            rbar, scale = st.rbar, torch.ones_like(sumsq)
        lam = torch.where(sumsq > 0, scale / torch.sqrt(sumsq), torch.zeros_like(sumsq))
        return x - lam * d, replace(st, lam=lam, sumsq=sumsq, rbar=rbar)

    def observe(self, st: StepState, grew: Optional[Tensor], spectrum: Optional[tuple[float, float]]
                ) -> tuple[StepState, tuple[str, ...]]:
        """The estimates after a step: the v-solver's Ritz values (``spectrum``, of A + δI) and the inner
        loop's growth flag (one host read)."""
        if not self.needs_curvature:
            return st, ()
        L, mu, events = st.L, st.mu, []
        if spectrum is not None:
            lo, hi = spectrum[0] - st.delta, spectrum[1] - st.delta
            if math.isfinite(hi) and hi > L:
                if hi > 1.1 * L:  # counted when it matters (the rise itself is always taken)
                    events.append("auto_L_raised")
                L = hi
            if math.isfinite(lo) and lo < mu:
                mu = lo
        sumsq = st.sumsq
        if grew is not None and bool(grew):
            L = 2.0 * L
            events.append("auto_step_shrunk")
            # the estimates D_i made with the too-large θ are not hypergradients: they must not shrink λ for good
            sumsq = torch.zeros_like(sumsq) if sumsq is not None else None
        if L == st.L and mu == st.mu:
            return st, tuple(events)
        return replace(st, L=L, mu=mu, sumsq=sumsq), tuple(events)

    def record(self, st: StepState) -> dict[str, float]:
        """The current values, for the history and ``Result.options``."""
        out: dict[str, float] = {}
        if self.lr_x and st.lam is not None:
            out["lr_x"] = float(st.lam)
        if self.lr_y:
            out["lr_y"] = st.theta
        if self.eta:
            out["eta"] = st.eta
        if self.needs_curvature:
            out["L_est"], out["mu_est"] = st.L, st.mu
        return out


class FirstOrderAuto:
    """Mixin of the class solvers (F2SA, HJFBiO, STABLE, ITD; BOME and PBGD for θ only) whose ``lr_x`` (x-step),
    ``lr_y`` (θ) and, where listed, ``eta`` (η) become automatic when nothing sets them (``auto_options``): θ = η =
    1/L̂ from a start estimate (secant products of ∇_y g, no HVP, unless ``auto_hvp``: STABLE, ITD), AdaGrad-norm
    for the x-step (this module's rules).  The solver's step
    calls ``auto_steps.observe`` with its own growth flag and Rayleigh quotients, where it has them."""

    #: options that become "auto" when nothing sets them
    auto_options: tuple[str, ...] = ("lr_x", "lr_y")
    #: the start estimate from HVPs (second-order solvers) instead of secant products of ∇_y g
    auto_hvp: bool = False

    def unset_value(self, name: str) -> Any:
        return AUTO if name in self.auto_options else None

    def bind(self, problem: Any, stochastic: bool = False):
        bound = super().bind(problem, stochastic)  # type: ignore[misc]
        object.__setattr__(bound, "_probes", min(PROBES, problem.dy))  # the start estimate's secant products
        return bound

    def auto_value(self, owner: str, name: str, value: Any) -> bool:
        """Whether ``value`` of option ``name`` is "auto" (allowed); another string is a one-line TypeError."""
        if isinstance(value, str) and name in self.auto_options:
            if not is_auto(value):
                raise TypeError(f"{owner}: {name} must be a number, a schedule or 'auto'; got str ({value!r}).")
            return True
        return False

    @property
    def auto_steps(self) -> Optional[AutoSteps]:
        """Which steps are automatic, None when none is."""
        flags = {n: is_auto(getattr(self, n, None)) for n in ("lr_x", "lr_y", "eta") if n in self.auto_options}
        if not any(flags.values()):
            return None
        return AutoSteps(**flags, probes=getattr(self, "_probes", PROBES))

    def auto_start(self, oracles: Any, x: Tensor, y: Tensor, generator: Any) -> Optional[StepState]:
        """The start estimate (``probes`` + 1 ∇_y g, or ``probes`` HVPs with ``auto_hvp``, when θ or η is
        automatic; full data), None without automatic steps."""
        rules = self.auto_steps
        if rules is None:
            return None
        try:
            point = (oracles.at(x, y) if self.auto_hvp else SecantPoint(oracles, x, y)) if rules.needs_curvature \
                else None
            return rules.start(point, x, y, generator)
        except ValueError as err:
            raise ValueError(f"{getattr(self, 'label', type(self).__name__)}: {err}") from None

    def auto_start_counts(self) -> int:
        """∇_y g calls of the start estimate (secant products)."""
        rules = self.auto_steps
        return rules.probes + 1 if rules is not None and rules.needs_curvature and not self.auto_hvp else 0

    def auto_watch_counts(self, iterations: int) -> int:
        """∇_y g calls of the growth safeguard under mini-batches (one same-batch gradient per iteration,
        ``GD.run_watched``), for solvers whose automatic θ drives a watched inner loop (F2SA, BOME)."""
        rules = self.auto_steps
        return iterations if rules is not None and rules.lr_y and getattr(self, "stochastic", False) else 0

    def auto_start_hvps(self) -> int:
        """HVPs of the start estimate (``auto_hvp``)."""
        rules = self.auto_steps
        return rules.probes if rules is not None and rules.needs_curvature and self.auto_hvp else 0
