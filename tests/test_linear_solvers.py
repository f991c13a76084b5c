"""The v-solvers CG, GD, Neumann, Exact and Subspace2D against dense linear algebra.

Every system is float64 and seeded.  ``spd`` builds A = Q diag(λ) Qᵀ with log-spaced λ ∈ [1, cond], so
λ_min = 1, λ_max = cond and κ(A) = cond.  Products with A go through ``Counted``, which also counts them.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from bilevel.linear_solvers.base import linear_solve
from bilevel.linear_solvers.cg import CG
from bilevel.linear_solvers.exact import Exact
from bilevel.linear_solvers.gd import GD
from bilevel.linear_solvers.neumann import Neumann
from bilevel.linear_solvers.subspace2d import Subspace2D

N = 40
CONDS = [1.0, 10.0, 1e2, 1e4]
F64 = torch.float64


def spd(cond: float, n: int = N, seed: int = 0):
    """(A, b, A⁻¹b, eigenvalues) for a random SPD A with condition number ``cond``."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    eig = torch.logspace(0.0, math.log10(cond), n, dtype=F64)
    a = (q * eig) @ q.T
    a = 0.5 * (a + a.T)
    b = torch.randn(n, generator=g, dtype=F64)
    return a, b, torch.linalg.solve(a, b), eig


class Counted:
    """``u ↦ A u`` that counts its calls."""

    def __init__(self, a: torch.Tensor) -> None:
        self.a, self.calls = a, 0

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.a @ u


def rel(u: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(u - ref) / torch.linalg.vector_norm(ref))


def neumann_sum(a: torch.Tensor, b: torch.Tensor, eta: float, terms: int) -> torch.Tensor:
    """η Σ_{i<terms} (I − ηA)^i b, densely."""
    m = torch.eye(a.shape[0], dtype=a.dtype) - eta * a
    term, total = b.clone(), torch.zeros_like(b)
    for _ in range(terms):
        total += term
        term = m @ term
    return eta * total


def energy_error(a: torch.Tensor, v: torch.Tensor, v_star: torch.Tensor) -> float:
    e = v - v_star
    return float(torch.sqrt(e @ (a @ e)))


def one_of_each(eta: float):
    """One configuration of every solver (both Neumann variants)."""
    return [
        CG(steps=4),
        GD(eta=eta, steps=4),
        Neumann(eta=eta, steps=6),
        Neumann(eta=eta, steps=6, randomized=True),
        Exact(),
        Subspace2D(eta=eta),
    ]


# ---- agreement with a dense solve ---------------------------------------------------------------------


@pytest.mark.parametrize("cond", CONDS)
def test_cg_matches_dense_solve(cond):
    a, b, v_star, _ = spd(cond)
    res = linear_solve(Counted(a), b, CG(steps=20), rtol=1e-12, max_calls=200)
    assert res.converged
    assert rel(res.v, v_star) < 1e-8


@pytest.mark.parametrize("cond", CONDS)
def test_exact_matches_dense_solve(cond):
    a, b, v_star, _ = spd(cond)
    mv = Counted(a)
    solver = Exact()
    v, state, info = solver.solve(mv, b, solver.init(b))
    assert rel(v, v_star) < 1e-8
    assert info.matvecs == mv.calls == N and info.events == ()
    assert state.v is v


@pytest.mark.parametrize("cond", [1.0, 10.0, 1e2])
def test_gd_converges_within_its_contraction_budget(cond):
    # From v = 0 with η = 1/λ_max the residual is (I − ηA)^t b, so ‖r_t‖ ≤ (1 − 1/κ)^t ‖b‖ ≤ e^(−t/κ) ‖b‖:
    # t = κ ln(1e10) steps are enough for rtol = 1e-10.
    a, b, v_star, eig = spd(cond)
    steps = 5
    budget = math.ceil(cond * math.log(1e10) / steps) + 1
    res = linear_solve(Counted(a), b, GD(eta=1.0 / float(eig[-1]), steps=steps), rtol=1e-10, max_calls=budget)
    assert res.converged, (res.calls, res.residual)
    assert rel(res.v, v_star) < 1e-8 * cond


@pytest.mark.parametrize("cond", [1.0, 10.0, 1e2])
def test_subspace2d_converges_within_its_contraction_budget(cond):
    # S_k contains the GD step v_prev − η(A v_prev − b), and the Galerkin point is A-norm optimal on S_k, so
    # ‖e_k‖_A ≤ (1 − 1/κ) ‖e_{k−1}‖_A (η = 1/λ_max).  With ‖e_1‖_A ≤ ‖b‖/√λ_min and ‖r‖ ≤ √λ_max ‖e‖_A,
    # 1 + κ ln(√κ · 1e10) calls are enough for rtol = 1e-10 (measured: 172 calls at κ = 10, 1748 at 100).
    a, b, v_star, eig = spd(cond)
    budget = 1 + math.ceil(cond * math.log(math.sqrt(cond) * 1e10))
    solver = Subspace2D(eta=1.0 / float(eig[-1]))
    res = linear_solve(Counted(a), b, solver, rtol=1e-10, max_calls=budget)
    assert res.converged, (res.calls, res.residual)
    assert rel(res.v, v_star) < 1e-8 * cond
    # The A-norm error never increases from one call to the next.
    state, errors = solver.init(b), []
    for _ in range(50):
        v, state, _ = solver.solve(Counted(a), b, state)
        errors.append(energy_error(a, v, v_star))
    assert all(e1 <= e0 * (1 + 1e-12) + 1e-14 for e0, e1 in zip(errors, errors[1:]))


# ---- CG -------------------------------------------------------------------------------------------------


def test_cg_with_n_steps_from_zero_is_exact_in_one_call():
    # Exact arithmetic gives n; in floating point this holds while orthogonality survives (κ = 10 here;
    # at κ = 1e4 and n = 40 one call only reaches about 1e-1).
    a, b, v_star, _ = spd(10.0)
    mv = Counted(a)
    solver = CG(steps=N)
    v, _, info = solver.solve(mv, b, solver.init(b))
    assert rel(v, v_star) < 1e-10
    assert info.matvecs == mv.calls == N


def test_cg_warm_start_continues_from_state_v():
    a, b, _, _ = spd(1e2)
    solver = CG(steps=3)
    state = solver.init(b)
    v1, state, _ = solver.solve(Counted(a), b, state)
    v1_copy = v1.clone()
    v2, state, info2 = solver.solve(Counted(a), b, state)
    # The second call is CG started at v1: the same as a fresh run whose v0 is v1.
    v_ref, _, info_ref = solver.solve(Counted(a), b, solver.init(b, v1_copy))
    assert torch.allclose(v2, v_ref, rtol=0, atol=1e-14)
    assert info2.matvecs == info_ref.matvecs == 4
    assert torch.equal(v1, v1_copy)  # the first output was not modified by the second call
    assert torch.linalg.vector_norm(a @ v2 - b) < torch.linalg.vector_norm(a @ v1 - b)
    # warm_start=False restarts from 0 every call: the second call repeats the first.
    cold = CG(steps=3, warm_start=False)
    st = cold.init(b)
    w1, st, _ = cold.solve(Counted(a), b, st)
    w2, st, _ = cold.solve(Counted(a), b, st)
    assert torch.equal(w1, w2) and torch.equal(w1, v1_copy)


@pytest.mark.parametrize("cond, calls, drop", [(1e2, 15, 0.1), (1e4, 50, 0.8)])
def test_cg_error_decreases_monotonically_across_calls(cond, calls, drop):
    # Each warm-started call is a CG run from state.v, which minimises the A-norm error over a set that
    # contains state.v, so ‖v − v*‖_A = ‖A v − b‖_{A⁻¹} decreases strictly every call.  The 2-norm
    # residual of restarted CG is not monotone call by call (at κ = 1e4 it first rises above ‖b‖), but it
    # falls overall: measured 0.04‖b‖ after 15 calls at κ = 1e2 and 0.74‖b‖ after 50 calls at κ = 1e4.
    a, b, v_star, _ = spd(cond)
    solver = CG(steps=3)
    state = solver.init(b)
    errors, residuals = [energy_error(a, torch.zeros_like(b), v_star)], [float(torch.linalg.vector_norm(b))]
    for _ in range(calls):
        v, state, info = solver.solve(Counted(a), b, state)
        assert info.events == ()
        errors.append(energy_error(a, v, v_star))
        residuals.append(float(torch.linalg.vector_norm(a @ v - b)))
    assert all(e1 < e0 for e0, e1 in zip(errors, errors[1:]))
    assert residuals[-1] < drop * residuals[0]


def test_cg_rtol_stops_early():
    a, b, _, _ = spd(1e2)
    mv = Counted(a)
    solver = CG(steps=200, rtol=1e-6)
    v, state, info = solver.solve(mv, b, solver.init(b))
    assert info.events == ("converged",)
    assert info.matvecs == mv.calls < 200
    assert state.residual_norm <= 1e-6 * float(torch.linalg.vector_norm(b))
    assert float(torch.linalg.vector_norm(a @ v - b)) <= 2e-6 * float(torch.linalg.vector_norm(b))
    assert solver.expected_matvecs(0) is None


def test_cg_stops_on_exactly_zero_residual():
    a = torch.diag(torch.tensor([2.0, 3.0], dtype=F64))
    b = torch.tensor([1.0, 0.0], dtype=F64)  # an eigenvector: one step solves it exactly
    solver = CG(steps=5)
    mv = Counted(a)
    v, state, info = solver.solve(mv, b, solver.init(b))
    assert torch.equal(v, torch.tensor([0.5, 0.0], dtype=F64))
    assert info.events == ("converged",) and info.matvecs == mv.calls == 1
    v2, state, info2 = solver.solve(mv, b, state)  # residual product only, then nothing to do
    assert torch.equal(v2, v) and info2.events == ("converged",) and info2.matvecs == 1


def test_cg_indefinite_stops_and_keeps_last_good_v():
    a = torch.diag(torch.tensor([1.0, -5.0], dtype=F64))
    b = torch.tensor([1.0, 1.0], dtype=F64)  # bᵀA b = −4 < 0
    solver = CG(steps=5)
    v, state, info = solver.solve(Counted(a), b, solver.init(b))
    assert info.events == ("indefinite",) and info.matvecs == 1
    assert torch.equal(v, torch.zeros(2, dtype=F64)) and state.v_is_zero
    v0 = torch.tensor([0.0, 0.3], dtype=F64)  # r = (1, 2.5): rᵀA r < 0 again
    v, _, info = solver.solve(Counted(a), b, solver.init(b, v0))
    assert info.events == ("indefinite",) and info.matvecs == 2
    assert torch.equal(v, v0)


# ---- GD -------------------------------------------------------------------------------------------------


def test_gd_from_zero_is_the_truncated_neumann_sum_and_warm_start_continues():
    a, b, _, eig = spd(10.0)
    eta = 1.0 / float(eig[-1])
    solver = GD(eta=eta, steps=4)
    state = solver.init(b)
    v1, state, _ = solver.solve(Counted(a), b, state)
    # Q steps from 0 give η Σ_{i<Q} (I − ηA)^i b.
    assert torch.allclose(v1, neumann_sum(a, b, eta, 4), rtol=1e-13, atol=0)
    v2, state, _ = solver.solve(Counted(a), b, state)
    long = GD(eta=eta, steps=8)
    v8, _, _ = long.solve(Counted(a), b, long.init(b))
    assert torch.allclose(v2, v8, rtol=1e-13, atol=0)
    cold = GD(eta=eta, steps=4, warm_start=False)
    st = cold.init(b, v1.clone())
    w1, st, _ = cold.solve(Counted(a), b, st)
    w2, st, _ = cold.solve(Counted(a), b, st)
    assert torch.equal(w1, w2) and torch.allclose(w1, v1, rtol=1e-13, atol=0)


def test_gd_reports_divergence():
    a, b, _, eig = spd(10.0)
    solver = GD(eta=1e3 / float(eig[-1]), steps=200)  # far beyond 2/λ_max
    _, _, info = solver.solve(Counted(a), b, solver.init(b))
    assert info.events == ("nonfinite",)


# ---- Neumann --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_neumann_fixed_equals_the_truncated_series(steps):
    a, b, _, eig = spd(10.0)
    eta = 1.0 / float(eig[-1])
    mv = Counted(a)
    solver = Neumann(eta=eta, steps=steps)
    v, state, info = solver.solve(mv, b, solver.init(b))
    assert torch.allclose(v, neumann_sum(a, b, eta, steps + 1), rtol=1e-12, atol=0)  # i = 0..Q
    assert info.matvecs == mv.calls == steps and state.v is v


def test_neumann_error_decreases_with_more_terms():
    a, b, v_star, eig = spd(10.0)
    eta = 1.0 / float(eig[-1])
    errors = []
    for steps in [1, 2, 4, 8, 16, 32, 64, 128]:
        solver = Neumann(eta=eta, steps=steps)
        v, _, _ = solver.solve(Counted(a), b, solver.init(b))
        errors.append(rel(v, v_star))
    assert all(e1 < e0 for e0, e1 in zip(errors, errors[1:]))
    assert errors[-1] < 1e-5


def test_randomized_neumann_enumerates_to_the_truncated_series():
    # Seeds are tried until every p ∈ {0, …, Q−1} has been drawn; each output is checked against its own p,
    # so the test does not depend on which seed gives which p.
    a, b, _, eig = spd(10.0)
    eta, steps = 1.0 / float(eig[-1]), 6
    solver = Neumann(eta=eta, steps=steps, randomized=True)
    m = torch.eye(N, dtype=F64) - eta * a
    by_p = {}
    for seed in range(500):
        mv = Counted(a)
        v, state, info = solver.solve(mv, b, solver.init(b), generator=torch.Generator().manual_seed(seed))
        p = state.last_p
        assert 0 <= p < steps
        assert info.matvecs == mv.calls == p
        expected = steps * eta * (torch.linalg.matrix_power(m, p) @ b)
        assert torch.allclose(v, expected, rtol=1e-12, atol=0)
        by_p.setdefault(p, v)
        if len(by_p) == steps:
            break
    assert sorted(by_p) == list(range(steps))
    mean = torch.stack([by_p[p] for p in range(steps)]).mean(dim=0)
    assert torch.allclose(mean, neumann_sum(a, b, eta, steps), rtol=1e-12, atol=0)  # i < Q
    assert solver.expected_matvecs(0) == sum(range(steps)) / steps == (steps - 1) / 2


def test_randomized_neumann_without_generator_uses_the_global_rng():
    a, b, _, eig = spd(10.0)
    solver = Neumann(eta=1.0 / float(eig[-1]), steps=5, randomized=True)
    v, state, info = solver.solve(Counted(a), b, solver.init(b))
    assert 0 <= state.last_p < 5 and info.matvecs == state.last_p


# ---- Exact ----------------------------------------------------------------------------------------------


def test_exact_falls_back_on_an_indefinite_matrix():
    a = torch.diag(torch.tensor([2.0, -1.0], dtype=F64))
    b = torch.tensor([1.0, 1.0], dtype=F64)
    solver = Exact()
    v, _, info = solver.solve(Counted(a), b, solver.init(b))
    assert info.events == ("indefinite",) and info.matvecs == 2
    assert torch.allclose(v, torch.tensor([0.5, -1.0], dtype=F64), rtol=1e-14, atol=0)


def test_exact_refuses_large_systems():
    a, b, _, _ = spd(10.0, n=5)
    solver = Exact(max_dim=4)
    mv = Counted(a)
    with pytest.raises(ValueError, match=r"5 entries.*max_dim = 4.*CG or Lanczos"):
        solver.solve(mv, b, solver.init(b))
    assert mv.calls == 0


# ---- Subspace2D -----------------------------------------------------------------------------------------


def galerkin(a: torch.Tensor, b: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """argmin over span(basis) of ½ vᵀA v − bᵀv, densely."""
    w, _ = torch.linalg.qr(basis)
    return w @ torch.linalg.solve(w.T @ a @ w, w.T @ b)


def test_subspace2d_is_exact_on_a_2x2_system_from_the_second_call():
    a = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=F64)
    b = torch.tensor([1.0, -2.0], dtype=F64)
    v_star = torch.linalg.solve(a, b)
    solver = Subspace2D(eta=0.2)
    mv = Counted(a)
    state = solver.init(b)
    v1, state, info1 = solver.solve(mv, b, state)
    assert info1.matvecs == 1 and state.dim == 1
    assert torch.allclose(v1, (b @ b) / (b @ a @ b) * b, rtol=1e-14, atol=0)
    assert rel(v1, v_star) > 1e-2
    v2, state, info2 = solver.solve(mv, b, state)
    assert info2.matvecs == 3 and state.dim == 2 and info2.events == ()
    assert rel(v2, v_star) < 1e-13
    assert mv.calls == 4


def test_subspace2d_collinear_fallback_is_the_exact_line_search_along_b():
    a, b, _, eig = spd(10.0)
    eta = 0.5 / float(eig[-1])  # keeps I − ηA well conditioned (eigenvalues in [0.5, 1))
    # v_prev = (I − ηA)⁻¹ b makes p = (I − ηA) v_prev parallel to b up to rounding.
    v0 = torch.linalg.solve(torch.eye(N, dtype=F64) - eta * a, b)
    solver = Subspace2D(eta=eta)
    mv = Counted(a)
    v, state, info = solver.solve(mv, b, solver.init(b, v0))
    assert info.events == ("collinear",) and info.matvecs == mv.calls == 2 and state.dim == 1
    assert torch.allclose(v, (b @ b) / (b @ a @ b) * b, rtol=1e-12, atol=0)


@pytest.mark.parametrize("cond", [10.0, 1e4])
def test_subspace2d_is_the_galerkin_projection_onto_its_subspace(cond):
    a, b, _, eig = spd(cond)
    eta = 1.0 / float(eig[-1])
    solver = Subspace2D(eta=eta)
    # 1-D (from v = 0): span{b}.
    v1, state, _ = solver.solve(Counted(a), b, solver.init(b))
    assert torch.allclose(v1, galerkin(a, b, b[:, None]), rtol=1e-12, atol=0)
    # 2-D: span{b, (I − ηA) v_prev}, from v1 and from an unrelated v0.
    v0 = torch.randn(N, generator=torch.Generator().manual_seed(7), dtype=F64)
    for v_prev, st in [(v1, state), (v0, solver.init(b, v0))]:
        p = v_prev - eta * (a @ v_prev)
        v, st, info = solver.solve(Counted(a), b, st)
        assert st.dim == 2 and info.events == ()
        assert torch.allclose(v, galerkin(a, b, torch.stack([b, p], dim=1)), rtol=1e-10, atol=0)


def test_subspace2d_zero_rhs_returns_zero_without_products():
    a, b, _, eig = spd(10.0)
    solver = Subspace2D(eta=1.0 / float(eig[-1]))
    v0 = torch.ones(N, dtype=F64)
    mv = Counted(a)
    v, state, info = solver.solve(mv, torch.zeros(N, dtype=F64), solver.init(b, v0))
    assert info.events == ("zero_rhs",) and info.matvecs == mv.calls == 0
    assert torch.equal(v, torch.zeros(N, dtype=F64)) and state.v_is_zero
    _, _, info = solver.solve(mv, b, state)  # v_prev = 0 now: p needs no product
    assert info.matvecs == 1


def test_subspace2d_indefinite_guards():
    solver = Subspace2D(eta=0.1)
    b = torch.tensor([1.0, 1.0], dtype=F64)
    # A indefinite on R² but positive along b: the 2-D solve is refused, the 1-D one is used.
    a = torch.diag(torch.tensor([2.0, -1.0], dtype=F64))
    state = solver.init(b)
    v1, state, info = solver.solve(Counted(a), b, state)
    assert info.events == () and torch.allclose(v1, 2.0 * b, rtol=1e-14, atol=0)  # ‖b‖²/bᵀAb = 2
    v2, state, info = solver.solve(Counted(a), b, state)
    assert info.events == ("indefinite",) and info.matvecs == 3 and state.dim == 1
    assert torch.allclose(v2, 2.0 * b, rtol=1e-14, atol=0)
    # Negative curvature along b as well: v_prev is kept.
    a = torch.diag(torch.tensor([1.0, -2.0], dtype=F64))
    v0 = torch.tensor([0.25, -0.5], dtype=F64)
    v, state, info = solver.solve(Counted(a), b, solver.init(b, v0))
    assert info.events == ("indefinite",) and info.matvecs == 3 and state.dim == 0
    assert torch.equal(v, v0)


# ---- oracle counts --------------------------------------------------------------------------------------

ETA = 1e-2  # = 1/λ_max for the κ = 100 system used below

COUNT_CASES = [
    # (solver, v0: None | "zeros" | "random", matvecs per call, expected_matvecs)
    (CG(steps=4), None, [4, 5, 5], 5.0),
    (CG(steps=4), "zeros", [4, 5], 5.0),
    (CG(steps=4), "random", [5, 5], 5.0),
    (CG(steps=4, warm_start=False), "random", [4, 4, 4], 4.0),
    (GD(eta=ETA, steps=4), None, [3, 4, 4], 4.0),
    (GD(eta=ETA, steps=4), "random", [4, 4], 4.0),
    (GD(eta=ETA, steps=4, warm_start=False), "random", [3, 3, 3], 3.0),
    (GD(eta=ETA, steps=1), None, [0, 1, 1], 1.0),  # SOBA's single v-step
    (Neumann(eta=ETA, steps=6), "random", [6, 6, 6], 6.0),
    (Subspace2D(eta=ETA), None, [1, 3, 3], 3.0),
    (Subspace2D(eta=ETA), "zeros", [1, 3], 3.0),
    (Subspace2D(eta=ETA), "random", [3, 3], 3.0),
    (Exact(), "random", [N, N], None),
]


@pytest.mark.parametrize("solver, v0_kind, per_call, expected", COUNT_CASES, ids=lambda c: repr(c)[:40])
def test_matvec_counts_equal_the_documented_costs(solver, v0_kind, per_call, expected):
    a, b, _, _ = spd(1e2)
    v0 = {None: None, "zeros": torch.zeros(N, dtype=F64), "random": torch.randn(N, dtype=F64)}[v0_kind]
    state = solver.init(b, v0)
    for call, want in enumerate(per_call):
        mv = Counted(a)
        _, state, info = solver.solve(mv, b, state, k=call)
        assert mv.calls == info.matvecs == want, (call, mv.calls, info.matvecs)
    assert solver.expected_matvecs(len(per_call)) == expected
    if expected is not None:
        assert isinstance(expected, float)


# ---- inputs, aliasing, determinism, dtypes, autograd ----------------------------------------------------


@pytest.mark.parametrize("index", range(6))
def test_inputs_are_never_mutated_or_aliased(index):
    a, b, _, _ = spd(1e2)
    solver = one_of_each(ETA)[index]
    v0 = torch.randn(N, generator=torch.Generator().manual_seed(3), dtype=F64)
    b_copy, v0_copy = b.clone(), v0.clone()
    state = solver.init(b, v0)
    gen = torch.Generator().manual_seed(0)
    outputs = []
    for k in range(3):
        v, state, _ = solver.solve(Counted(a), b, state, k=k, generator=gen)
        assert v.data_ptr() not in (b.data_ptr(), v0.data_ptr())
        outputs.append((v, v.clone()))
    assert torch.equal(b, b_copy) and torch.equal(v0, v0_copy)
    for v, snapshot in outputs:  # earlier outputs are not modified by later calls
        assert torch.equal(v, snapshot)


@pytest.mark.parametrize("index", range(6))
def test_same_seed_gives_identical_outputs(index):
    a, b, _, _ = spd(1e2)
    solver = one_of_each(ETA)[index]

    def run():
        gen, state, out = torch.Generator().manual_seed(123), solver.init(b), []
        for k in range(4):
            v, state, info = solver.solve(Counted(a), b, state, k=k, generator=gen)
            out.append((v.clone(), info))
        return out

    first, second = run(), run()
    for (v1, i1), (v2, i2) in zip(first, second):
        assert torch.equal(v1, v2) and i1 == i2


@pytest.mark.parametrize("index", range(6))
def test_outputs_follow_the_dtype_of_b(index):
    a, b, v_star, _ = spd(10.0)
    a32, b32 = a.float(), b.float()
    solver = one_of_each(0.1)[index]
    state = solver.init(b32)
    for k in range(3):
        v, state, _ = solver.solve(lambda u: a32 @ u, b32, state, k=k, generator=torch.Generator().manual_seed(0))
        assert v.dtype == torch.float32 and v.device == b32.device
        assert state.v.dtype == torch.float32
    if isinstance(solver, Exact):  # float64 inside: as accurate as float32 products allow
        assert rel(v.double(), v_star) < 1e-5


@pytest.mark.parametrize("index", range(6))
def test_state_is_detached_from_autograd_graphs(index):
    a, b, _, _ = spd(10.0)
    a_leaf = a.clone().requires_grad_(True)
    b_leaf = b.clone().requires_grad_(True)
    solver = one_of_each(0.1)[index]
    state = solver.init(b_leaf.detach())
    for k in range(2):
        v, state, _ = solver.solve(lambda u: a_leaf @ u, b_leaf, state, k=k)
        assert not v.requires_grad and not state.v.requires_grad


def test_v0_must_match_b():
    b = torch.zeros(3, dtype=F64)
    with pytest.raises(ValueError, match="v0 must match b"):
        CG(steps=5).init(b, torch.zeros(4, dtype=F64))


# ---- configuration ------------------------------------------------------------------------------------

BAD_OPTIONS = [
    # (factory, kwargs, exception, fragments of the message)
    (CG, {"steps": 0}, ValueError, ["CG: steps must be >= 1; got 0."]),
    (CG, {"steps": 2.5}, TypeError, ["CG", "steps", "2.5"]),
    (CG, {"steps": True}, TypeError, ["CG", "steps", "True"]),
    (CG, {"rtol": -1e-3}, ValueError, ["CG", "rtol", "-0.001"]),
    (CG, {"rtol": float("nan")}, ValueError, ["CG", "rtol", "nan"]),
    (CG, {"warm_start": "yes"}, TypeError, ["CG", "warm_start", "'yes'"]),
    (CG, {"warm_start": 1}, TypeError, ["CG", "warm_start", "1"]),
    (CG, {"step": 5}, TypeError, ["step"]),
    (GD, {"eta": -1}, ValueError, ["GD: eta must be finite and > 0; got -1."]),
    (GD, {"eta": 0.0}, ValueError, ["GD", "eta", "0.0"]),
    (GD, {"eta": float("nan")}, ValueError, ["GD", "eta", "nan"]),
    (GD, {"eta": float("inf")}, ValueError, ["GD", "eta", "inf"]),
    (GD, {"eta": "0.1"}, TypeError, ["GD", "eta", "'0.1'"]),
    (GD, {"eta": 0.1, "steps": 0}, ValueError, ["GD", "steps", "0"]),
    (GD, {"eta": 0.1, "warm_start": None}, TypeError, ["GD", "warm_start", "None"]),
    (Neumann, {"eta": -1}, ValueError, ["Neumann", "eta", "-1"]),
    (Neumann, {"eta": 0.1, "steps": 2.5}, TypeError, ["Neumann", "steps", "2.5"]),
    (Neumann, {"eta": 0.1, "steps": 0}, ValueError, ["Neumann", "steps", "0"]),
    (Neumann, {"eta": 0.1, "randomized": "yes"}, TypeError, ["Neumann", "randomized", "'yes'"]),
    (Neumann, {"eta": 0.1, "randomised": True}, TypeError, ["randomised"]),
    (Exact, {"max_dim": 0}, ValueError, ["Exact", "max_dim", "0"]),
    (Exact, {"max_dim": 10.0}, TypeError, ["Exact", "max_dim", "10.0"]),
    (Subspace2D, {"eta": float("nan")}, ValueError, ["Subspace2D", "eta", "nan"]),
    (Subspace2D, {"eta": 0.1, "eps": -1.0}, ValueError, ["Subspace2D", "eps", "-1.0"]),
    (Subspace2D, {"eta": 0.1, "eps": float("inf")}, ValueError, ["Subspace2D", "eps", "inf"]),
]


@pytest.mark.parametrize("factory, kwargs, exc, fragments", BAD_OPTIONS, ids=lambda c: repr(c)[:30])
def test_invalid_options_are_rejected_with_a_clear_message(factory, kwargs, exc, fragments):
    with pytest.raises(exc) as err:
        factory(**kwargs)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_options_are_keyword_only_frozen_and_normalised():
    with pytest.raises(TypeError):
        CG(5)  # positional options are refused
    solver = GD(eta=1, steps=3)
    assert isinstance(solver.eta, float) and solver.eta == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        solver.steps = 4
    assert CG(rtol=1).rtol == 1.0 and Subspace2D(eta=0.1, eps=0).eps == 0.0
    names = {cls.name for cls in (CG, GD, Neumann, Exact, Subspace2D)}
    assert names == {"cg", "gd", "neumann", "exact", "subspace2d"}
    # Solving never changes the configuration.
    before = dataclasses.asdict(solver)
    a, b, _, _ = spd(10.0)
    solver.solve(Counted(a), b, solver.init(b))
    assert dataclasses.asdict(solver) == before


# ---- immutable states ---------------------------------------------------------------------------------

from bilevel.linear_solvers import (  # noqa: E402
    LINEAR_SOLVERS,
    HybridNeumann,
    Lanczos,
    LinearSolver,
    cg,
    exact,
    gd,
    hybrid_neumann,
    lanczos,
    neumann,
    subspace2d,
)
from bilevel.registry import Registry  # noqa: E402
from bilevel.schedules import DimensionSchedule  # noqa: E402


def every_solver(eta: float):
    """One configuration of every registered v-solver, plus the Lanczos variants that take other paths."""
    return one_of_each(eta) + [
        HybridNeumann(eta=eta, steps=4),
        Lanczos(m=4),
        Lanczos(m=3, mode="plain"),
        Lanczos(m=DimensionSchedule(m0=1, growth=1.5, period=2, m_max=5), subproblem="minres", reorth="full"),
        Lanczos(m=3, exact_residual=True),
    ]


def snapshot(state) -> dict:
    """Deep copy of what a state shows: every field; tensors cloned (of Lanczos' shared basis buffer only the
    rows the state owns); the shared write marker ``fill`` by identity (it is bookkeeping, meant to move)."""
    out = {}
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        if isinstance(value, torch.Tensor):
            out[f.name] = (value[: state.rows] if f.name == "Q" else value).clone()
        else:
            out[f.name] = value if f.name == "fill" else copy.deepcopy(value)
    return out


def assert_same(state, snap: dict, ignore: tuple[str, ...] = ()) -> None:
    for name, want in snap.items():
        if name in ignore:
            continue
        got = getattr(state, name)
        if isinstance(want, torch.Tensor):
            got = got[: state.rows] if name == "Q" else got
            assert got.shape == want.shape and torch.equal(got, want), name
        elif name == "fill":
            assert got is want, name
        else:
            assert got == want, name


@pytest.mark.parametrize("index", range(11))
def test_solve_never_modifies_its_input_state(index):
    a, b, _, _ = spd(1e2)
    solver = every_solver(ETA)[index]
    v0 = torch.randn(N, generator=torch.Generator().manual_seed(5), dtype=F64)
    for start in (None, v0):
        state = solver.init(b, start)
        history = []  # every state of the run, with its snapshot: later calls must not change any of them
        for k in range(9):
            before = snapshot(state)
            v, new_state, info = solver.solve(Counted(a), b, state, k=k, generator=torch.Generator().manual_seed(k))
            assert new_state is not state
            assert_same(state, before)
            # stepping again from the same state (a branch) gives the same answer and leaves both states alone
            after = snapshot(new_state)
            v2, branch, info2 = solver.solve(Counted(a), b, state, k=k, generator=torch.Generator().manual_seed(k))
            assert torch.equal(v, v2) and info == info2
            assert_same(branch, after, ignore=("fill",))  # equal content (in a buffer of its own for Lanczos)
            assert_same(state, before)
            assert_same(new_state, after)
            history.append((state, before))
            state = new_state
        for old, snap in history:
            assert_same(old, snap)


@pytest.mark.parametrize("index", range(11))
def test_states_are_frozen(index):
    _, b, _, _ = spd(10.0)
    state = every_solver(ETA)[index].init(b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.v = torch.zeros_like(b)


# ---- presettable options and the validation hook ------------------------------------------------------


def test_presettable_options_may_be_unset_until_resolved():
    _, b, _, _ = spd(10.0)
    for cls, names in [(GD, ("eta", "steps")), (CG, ("steps",)), (Neumann, ("eta", "steps")),
                       (Subspace2D, ("eta",)), (HybridNeumann, ("eta", "steps")), (Lanczos, ("m",))]:
        solver = cls()
        assert not solver.is_resolved and solver.missing == names and cls.presettable == names
        with pytest.raises(ValueError, match=rf"^{cls.__name__}: {names[0]} has no value; pass {names[0]}=\.\.\."):
            solver.init(b)
    assert Exact().is_resolved and Exact().missing == ()
    # library defaults fill what the values do not; eta has none
    assert CG().resolved({}) == CG(steps=5)
    assert Lanczos().resolved({}).m == 10 and Lanczos().resolved({}).schedule == DimensionSchedule(m0=10)
    with pytest.raises(ValueError) as err:
        GD().resolved({"steps": 3})
    assert str(err.value) == "GD: eta has no value; pass eta=... (e.g. GD(eta=0.1))"
    with pytest.raises(ValueError) as err:
        CG().init(b)
    assert str(err.value).startswith("CG: steps has no value; pass steps=... (e.g. CG(steps=5))")
    assert "\n" not in str(err.value)


def test_resolved_takes_values_then_defaults_and_keeps_what_is_set():
    values = {"eta": 0.5, "steps": 3, "lr_x": 1.0, "warm_start": None}  # lr_x is not a GD option: ignored
    assert GD().resolved(values) == GD(eta=0.5, steps=3)
    assert GD(steps=2).resolved(values) == GD(eta=0.5, steps=2)  # the user's value wins over presets
    assert GD().resolved({"eta": 1}).steps == 5 and isinstance(GD().resolved({"eta": 1}).eta, float)
    assert CG().resolved({"rtol": 1e-3}).rtol == 1e-3  # any None option may be filled
    solver = GD(eta=0.1, steps=4)
    assert solver.resolved(values) is solver  # nothing to fill
    sched = DimensionSchedule(m0=1, growth=1.3, period=50, m_max=10)
    assert Lanczos(mode="plain").resolved({"m": sched}) == Lanczos(m=sched, mode="plain")
    with pytest.raises(ValueError, match="GD: eta must be finite and > 0; got -1"):
        GD().resolved({"eta": -1})  # the result is validated by the same hook
    with pytest.raises(ValueError, match="m0 must be an integer >= 1; got 0"):
        Lanczos().resolved({"m": 0})


def test_options_and_option_names():
    assert CG.option_names() == ("steps", "rtol", "warm_start")
    assert CG(steps=3).options() == {"steps": 3, "rtol": None, "warm_start": True}
    assert HybridNeumann.option_names() == ("eta", "steps")
    for cls in LINEAR_SOLVERS.values():
        assert set(cls.option_names()) == {f.name for f in dataclasses.fields(cls)}
        assert set(cls.presettable) <= set(cls.option_names()) and set(cls.defaults) <= set(cls.presettable)


def test_validate_is_the_one_hook():
    calls = []

    class Spy(GD):
        def validate(self, options):
            calls.append(dict(options))
            super().validate(options)

    Spy = dataclasses.dataclass(frozen=True, kw_only=True)(Spy)
    Spy().resolved({"eta": 0.2})
    assert calls == [
        {"eta": None, "steps": None, "warm_start": True},
        {"eta": 0.2, "steps": 5, "warm_start": True},
    ]


# ---- declared properties, costs and warnings ----------------------------------------------------------


def test_declared_properties():
    assert [n for n, c in LINEAR_SOLVERS.items() if c.has_epochs] == ["lanczos"]
    random = {type(s).__name__ + ("(randomized)" if getattr(s, "randomized", False) else "")
              for s in every_solver(ETA) if s.random_cost}
    assert random == {"Neumann(randomized)", "HybridNeumann"}
    assert CG().warm_start and GD().warm_start


def run_counted(solver, a, b, v0, iterations, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mv, state, draws = Counted(a), solver.init(b, v0), []
    for k in range(iterations):
        before = mv.calls
        _, state, info = solver.solve(mv, b, state, k=k, generator=gen)
        assert info.matvecs == mv.calls - before
        draws.append(getattr(state, "last_p", None))
    return mv.calls, draws


DETERMINISTIC = [
    CG(steps=4), CG(steps=4, warm_start=False), CG(steps=1),
    GD(eta=ETA, steps=4), GD(eta=ETA, steps=4, warm_start=False), GD(eta=ETA, steps=1),
    Neumann(eta=ETA, steps=6), Subspace2D(eta=ETA),
    Lanczos(m=4), Lanczos(m=1), Lanczos(m=3, exact_residual=True), Lanczos(m=3, mode="plain"),
    Lanczos(m=DimensionSchedule(m0=1, growth=2.0, period=3, m_max=6, switch_at=9, switch_m_max=2)),
    Lanczos(m=DimensionSchedule(m0=2, growth=1.5, period=2, m_max=5), exact_residual=True, subproblem="minres"),
]


@pytest.mark.parametrize("solver", DETERMINISTIC, ids=lambda s: repr(s)[:60])
@pytest.mark.parametrize("v0_kind", ["none", "zeros", "random"])
def test_total_matvecs_equals_the_counted_products(solver, v0_kind):
    a, b, _, _ = spd(1e2)
    v0 = {"none": None, "zeros": torch.zeros(N, dtype=F64),
          "random": torch.randn(N, generator=torch.Generator().manual_seed(1), dtype=F64)}[v0_kind]
    for iterations in (0, 1, 2, 5, 14):
        counted, _ = run_counted(solver, a, b, v0, iterations)
        assert solver.total_matvecs(iterations, v0_zero=v0_kind != "random") == counted, iterations
        assert isinstance(solver.total_matvecs(iterations), float)


def test_total_matvecs_of_the_documented_formulas():
    K, Q = 7, 4
    assert CG(steps=Q).total_matvecs(K) == (Q + 1) * K - 1  # AmIGO-CG
    assert GD(eta=ETA, steps=Q).total_matvecs(K) == Q * K - 1  # AmIGO-GD
    assert GD(eta=ETA, steps=1).total_matvecs(K) == K - 1  # SOBA
    assert Subspace2D(eta=ETA).total_matvecs(K) == 3 * K - 2  # SubBiO
    assert Neumann(eta=ETA, steps=Q).total_matvecs(K) == Q * K  # stocBiO
    assert Neumann(eta=ETA, steps=Q, randomized=True).total_matvecs(K) == K * (Q - 1) / 2  # TTSA, BSA
    assert HybridNeumann(eta=ETA, steps=Q).total_matvecs(K) == K * ((Q - 1) / 2 + Q)
    assert Lanczos(m=5).total_matvecs(50) == 50 + 10 - 1  # 1 + 1/m per call, no product at the first restart
    assert Lanczos(m=5, mode="plain").total_matvecs(50) == 50


@pytest.mark.parametrize("solver", [Neumann(eta=ETA, steps=6, randomized=True), HybridNeumann(eta=ETA, steps=6)],
                         ids=["neumann", "hybrid"])
def test_total_matvecs_is_the_expectation_of_random_costs(solver):
    a, b, _, _ = spd(1e2)
    extra = 6 if isinstance(solver, HybridNeumann) else 0  # Q GD products after the draw
    totals = []
    for seed in range(300):
        counted, draws = run_counted(solver, a, b, None, 5, seed=seed)
        assert counted == sum(draws) + 5 * extra  # exactly the drawn truncations
        totals.append(counted)
    # p ~ U{0, …, 5}: mean 2.5, standard deviation 1.71 per call, so the mean of 300 runs of 5 calls is
    # within 0.6 of its expectation with overwhelming probability (the seeds are fixed anyway)
    assert abs(sum(totals) / len(totals) - solver.total_matvecs(5)) < 0.6
    assert solver.total_matvecs(5) == 5 * (2.5 + extra)


def test_total_matvecs_refusals():
    with pytest.raises(ValueError, match=r"CG: with rtol=0.001 the number of CG iterations depends on the data"):
        CG(steps=4, rtol=1e-3).total_matvecs(10)
    with pytest.raises(ValueError, match="Exact: every call makes dy products"):
        Exact().total_matvecs(10)
    with pytest.raises(ValueError, match="GD: eta has no value"):
        GD().total_matvecs(10)


def test_budget_warnings():
    sched = DimensionSchedule(m0=1, growth=1.3, period=50, m_max=10)
    assert Lanczos(m=sched).budget_warnings(100) == [
        f"the subspace dimension never reaches its cap 10 within max_iter=100 (it gets to {sched(99)}); {sched!r}."
    ]
    assert Lanczos(m=sched).budget_warnings(100_000) == []
    assert Lanczos(m=10).budget_warnings(3) == []
    for solver in one_of_each(ETA) + [HybridNeumann(eta=ETA)]:
        assert solver.budget_warnings(3) == []


# ---- registry and factories ---------------------------------------------------------------------------


def test_registry_lists_every_v_solver():
    assert isinstance(LINEAR_SOLVERS, Registry)
    assert set(LINEAR_SOLVERS) == {"lanczos", "subspace2d", "cg", "gd", "neumann", "hybrid_neumann", "exact"}
    assert LINEAR_SOLVERS["cg"] is CG and LINEAR_SOLVERS["hybrid_neumann"] is HybridNeumann
    assert all(issubclass(cls, LinearSolver) and cls.name == name for name, cls in LINEAR_SOLVERS.items())
    assert LINEAR_SOLVERS.create("gd", eta=0.1) == GD(eta=0.1)
    with pytest.raises(ValueError, match="Did you mean 'neumann'"):
        LINEAR_SOLVERS["neuman"]


def test_lowercase_factories():
    pairs = [
        (lanczos(m=4), Lanczos(m=4)), (subspace2d(eta=0.1), Subspace2D(eta=0.1)), (cg(steps=3), CG(steps=3)),
        (gd(eta=0.1), GD(eta=0.1)), (neumann(eta=0.1, randomized=True), Neumann(eta=0.1, randomized=True)),
        (hybrid_neumann(eta=0.1), HybridNeumann(eta=0.1)), (exact(max_dim=8), Exact(max_dim=8)),
    ]
    for made, direct in pairs:
        assert type(made) is type(direct) and made == direct
    with pytest.raises(TypeError, match="Did you mean 'steps'"):
        cg(step=3)
