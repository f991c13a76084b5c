"""Stochastic (mini-batch) versions of the solvers: the batch roles, ``hessian_batch``, the
``"stochastic/…"`` settings, the estimators' means and variances, convergence, and exact counts.

The test problem is a finite-sum quadratic written here with its closed forms (float64):

    g(x, y; S) = (1/|S|) Σ_{i∈S} ½ yᵀA_i y − yᵀ(B_i x + d_i),   f(x, y; U) = (1/|U|) Σ_{j∈U} ½‖y − c_j‖² + (α/2)‖x‖²,

A_i = Ā + E_i with Σ E_i = 0 (every A_i SPD), so the full-data problem is the quadratic with Ā, B̄, d̄, c̄ and
y*(x) = Ā⁻¹(B̄x + d̄), ∇φ(x) = αx + B̄ᵀĀ⁻¹(y*(x) − c̄) exactly.
"""

from __future__ import annotations

import math

import pytest
import torch

import bilevel
from bilevel import ClosedForms
from bilevel.linear_solvers.base import LinearSolver
from bilevel.linear_solvers.gd import GD
from bilevel.sampling import MiniBatch
from bilevel.solvers import SOLVERS, aid

F64 = torch.float64


class _Point:
    """Second-order oracles of the finite-sum quadratic at (x, y) on one batch (the batch's means)."""

    def __init__(self, A, B, d, x, y):
        self.A, self.B, self.d, self.x, self.y = A, B, d, x, y

    def grad_y_g(self):
        return self.A @ self.y - self.B @ self.x - self.d

    def hvp(self, u):
        return self.A @ u

    def cross(self, u):
        return -(self.B.T @ u)

    def cross_t(self, w):
        return -(self.B @ w)


def finite_sum_quadratic(n=200, n_f=100, dx=4, dy=8, condition=10.0, noise=0.3, alpha=1.0, seed=0,
                         experiment=None):
    """The finite-sum quadratic of the module docstring: n lower samples, n_f upper samples."""
    gen = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(dy, dy, generator=gen, dtype=F64))
    eig = torch.linspace(1.0, condition, dy, dtype=F64)
    A_bar = (basis * eig) @ basis.T
    E = torch.randn(n, dy, dy, generator=gen, dtype=F64)
    E = 0.5 * (E + E.transpose(1, 2))
    E = E - E.mean(0)
    E = E * (noise / torch.linalg.matrix_norm(E, ord=2).max())  # ‖E_i‖ ≤ noise < λ_min(Ā) = 1: A_i SPD
    As = A_bar + E
    Bs = torch.randn(n, dy, dx, generator=gen, dtype=F64) / math.sqrt(dx) + torch.randn(dy, dx, generator=gen,
                                                                                        dtype=F64)
    ds = torch.randn(n, dy, generator=gen, dtype=F64)
    cs = torch.randn(n_f, dy, generator=gen, dtype=F64)
    x0 = torch.randn(dx, generator=gen, dtype=F64)
    y0 = torch.randn(dy, generator=gen, dtype=F64)
    A, B, d, c = As.mean(0), Bs.mean(0), ds.mean(0), cs.mean(0)
    A_inv = torch.linalg.inv(A)

    def mean(t, batch):
        return t.mean(0) if batch is None else t.index_select(0, batch).mean(0)

    def means(batch):
        if batch is None:
            return A, B, d
        return mean(As, batch), mean(Bs, batch), mean(ds, batch)

    def f(x, y, batch=None):
        cb = c if batch is None else mean(cs, batch)
        # ½‖y − c_j‖² averaged: ½‖y‖² − yᵀc̄_U + const; the constant keeps f the true mean
        sq = (cs.square().sum(1)).mean() if batch is None else cs.index_select(0, batch).square().sum(1).mean()
        return 0.5 * y.square().sum() - torch.dot(y, cb) + 0.5 * sq + 0.5 * alpha * x.square().sum()

    def g(x, y, batch=None):
        Ab, Bb, db = means(batch)
        return 0.5 * torch.dot(y, Ab @ y) - torch.dot(y, Bb @ x + db)

    def hypergradient(x):
        return alpha * x + B.T @ (A_inv @ (A_inv @ (B @ x + d) - c))

    cf = ClosedForms(
        grad_x_f=lambda x, y, batch: alpha * x,
        grad_y_f=lambda x, y, batch: y - (c if batch is None else mean(cs, batch)),
        grad_y_g=lambda x, y, batch: (lambda Ab, Bb, db: Ab @ y - Bb @ x - db)(*means(batch)),
        grad_x_g=lambda x, y, batch: -(means(batch)[1].T @ y),
        linearize=lambda x, y, batch: _Point(*means(batch), x, y),
        y_star=lambda x, y_init=None: A_inv @ (B @ x + d),
        hypergradient=hypergradient,
    )
    L = float(torch.linalg.eigvalsh(As).max())
    hess_phi = alpha * torch.eye(dx, dtype=F64) + (A_inv @ B).T @ (A_inv @ B)
    presets = {"*": {"lr_x": 1.0 / float(torch.linalg.eigvalsh(hess_phi).max()), "lr_y": 1.0 / L, "eta": 1.0 / L}}
    info = {"ground_truth": True, "A": A, "B": B, "c": c, "d": d, "A_inv": A_inv, "L": L}
    return bilevel.BilevelProblem(f, g, x0, y0, name="finite_sum_quadratic", closed_forms=cf, presets=presets,
                                  n_samples=n, n_samples_f=n_f, experiment=experiment, info=info)


@pytest.fixture(scope="module")
def fsq():
    return finite_sum_quadratic()


# ---- interface 2: stochastic settings ------------------------------------------------------------------
def test_stochastic_settings_are_looked_up_first(fsq):
    problem = finite_sum_quadratic(experiment="hyperclean/mnist")
    solver = aid(v_solver=GD(), name="probe", settings={
        "hyperclean": {"inner_steps": 3, "lr_x": 7.0},
        "stochastic/hyperclean": {"inner_steps": 6, "v_steps": 9},
        "stochastic/hyperclean/mnist": {"v_steps": 4},
    })
    det = solver.bind(problem)
    sto = solver.bind(problem, stochastic=True)
    assert not det.stochastic and sto.stochastic
    assert (det.inner.steps, det.v_solver.steps, det.lr_x) == (3, 5, 7.0)  # GD's library default Q = 5
    # most specific stochastic key, then stochastic/hyperclean, then the deterministic keys
    assert (sto.inner.steps, sto.v_solver.steps, sto.lr_x) == (6, 4, 7.0)
    # re-binding a bound copy with the other flag binds its configuration again
    assert det.bind(problem, stochastic=True).inner.steps == 6 and det.bind(problem) is det
    with pytest.raises(TypeError, match="stochastic must be True or False"):
        solver.bind(problem, stochastic="yes")


def test_solve_binds_stochastic_and_records_it(fsq):
    solver = SOLVERS["amigo_gd"].create(inner_steps=2, v_steps=2)
    full = bilevel.solve(fsq, solver, max_iter=3, eval_every=10)
    mini = bilevel.solve(fsq, solver, max_iter=3, eval_every=10, batches=MiniBatch(16))
    assert full.options["stochastic"] is False and mini.options["stochastic"] is True


# ---- interface 1: hessian_batch --------------------------------------------------------------------------
class _Spy(bilevel.OracleWrapper):
    """Records the batch of every HVP, in order, per point."""

    def __init__(self, inner):
        super().__init__(inner)
        self.hvp_batches = []
        self.cross_batches = []

    def at(self, x, y, batch=None):
        spy, point = self, self.inner.at(x, y, batch)

        class P(bilevel.oracles.PointWrapper):
            def hvp(self, u):
                spy.hvp_batches.append(batch)
                return point.hvp(u)

            def cross(self, u):
                spy.cross_batches.append(batch)
                return point.cross(u)

        return P(point)


def _key(batch):
    return None if batch is None else tuple(batch.tolist())


@pytest.mark.parametrize("mode", ["iteration", "product", "epoch"])
def test_hessian_batch_modes(fsq, mode):
    Q, K = 4, 3
    solver = aid(v_solver=GD(steps=Q), inner_steps=1, hessian_batch=mode, v_init="randn")
    spy = _Spy(bilevel.Oracles(fsq))
    bilevel.solve(fsq, solver, max_iter=K, eval_every=100, batches=MiniBatch(8), oracles=spy)
    keys = [_key(b) for b in spy.hvp_batches]
    assert len(keys) == Q * K
    per_iter = [keys[i * Q:(i + 1) * Q] for i in range(K)]
    if mode == "product":
        assert all(len(set(it)) == Q for it in per_iter)  # a fresh batch per product
    else:
        assert all(len(set(it)) == 1 for it in per_iter)  # one operator per v-solve
        # "epoch" with the default starts_epoch (every call its own epoch) draws anew every iteration
        assert len({it[0] for it in per_iter}) == K


class _EveryOther(GD):
    """GD whose epochs are two calls long (starts_epoch at even k)."""

    def starts_epoch(self, state, k):
        return k % 2 == 0


def test_hessian_batch_epoch_holds_the_draw_within_an_epoch(fsq):
    solver = aid(v_solver=_EveryOther(steps=2), inner_steps=1, hessian_batch="epoch", v_init="randn")
    spy = _Spy(bilevel.Oracles(fsq))
    bilevel.solve(fsq, solver, max_iter=6, eval_every=100, batches=MiniBatch(8), oracles=spy)
    per_iter = [_key(spy.hvp_batches[2 * i]) for i in range(6)]
    assert per_iter[0] == per_iter[1] and per_iter[2] == per_iter[3] and per_iter[4] == per_iter[5]
    assert len({per_iter[0], per_iter[2], per_iter[4]}) == 3


def test_starts_epoch_default_is_true():
    assert LinearSolver.starts_epoch(GD(eta=0.1, steps=1), None, 3) is True


@pytest.mark.parametrize("mode", ["iteration", "product", "epoch"])
def test_hessian_batch_full_batch_is_bit_identical(fsq, mode):
    base = bilevel.solve(fsq, aid(v_solver=GD(steps=3)), max_iter=20, eval_every=5)
    other = bilevel.solve(fsq, aid(v_solver=GD(steps=3), hessian_batch=mode), max_iter=20, eval_every=5)
    strip = lambda res: [{k: v for k, v in row.items() if k != "time"} for row in res.history]
    assert strip(base) == strip(other) and torch.equal(base.x, other.x)


def test_no_hvp_draw_without_a_product(fsq):
    """A randomised Neumann draw p = 0 makes no product, so no HVP batch is drawn (defect 3)."""
    solver = SOLVERS["ttsa"].create(v_steps=1)  # p ~ U{0}: never a product
    spy = _Spy(bilevel.Oracles(fsq))
    res = bilevel.solve(fsq, solver, max_iter=5, eval_every=100, batches=MiniBatch(8), oracles=spy)
    assert res.counts.hvp == 0 and spy.hvp_batches == []
    assert res.counts.samples_g == 5 * (8 + 8)  # 1 y-step and 1 cross product per iteration
