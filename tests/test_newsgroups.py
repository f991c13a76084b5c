"""20 Newsgroups ℓ2-regularisation selection: closed forms vs dense autodiff and finite differences on small random
sparse instances (both sparse backends, full data and mini-batches), the split, feature subsampling, bad inputs,
every solver on a small instance, the dense-solve refusal, and, when the archive is present, the full problem
and one LancBiO iteration on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import bilevel
from bilevel.kinds import solvers_for
from bilevel.linear_solvers import Exact
from bilevel.linear_solvers.exact import readable_bytes
from bilevel.oracles import Oracles
from bilevel.problem import ProblemError
from bilevel.problems import PROBLEMS, newsgroups
from bilevel.problems.newsgroups import SCALES, _ScipyRows, _TorchRows, most_frequent_features, stratified_halves
from bilevel.solvers import aid, get_solver
from bilevel.testing import check_oracles
from conftest import needs_shared_data

F64 = torch.float64
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def random_documents(n_train=60, n_test=30, p=40, classes=4, density=0.15, seed=0):
    """(train_X, train_labels, test_X, test_labels): non-negative sparse rows of unit ℓ2 norm (as the
    experiment's features), every class present in the training documents."""
    rng = np.random.default_rng(seed)

    def docs(n):
        X = sp.random(n, p, density=density, random_state=rng, format="csr")
        X = X + sp.csr_matrix((np.ones(n), (np.arange(n), rng.integers(0, p, n))), shape=(n, p))  # no empty row
        norms = np.sqrt(np.asarray(X.multiply(X).sum(1)).ravel())
        return sp.csr_matrix(sp.diags(1.0 / norms) @ X)

    train_labels = np.concatenate([np.arange(classes), rng.integers(0, classes, n_train - classes)])
    return docs(n_train), train_labels, docs(n_test), rng.integers(0, classes, n_test)


DATA = random_documents()


@pytest.fixture(scope="module", params=["scipy", "torch"])
def small(request):
    return newsgroups(seed=1, data=DATA, backend=request.param)


# ---- a dense reference (autodiff through dense matrices) ------------------------------------------------------
class Dense:
    """g, f of the problem written densely from the problem's own split, differentiated by autograd."""

    def __init__(self, problem, data=DATA):
        train_X, train_labels = data[0], data[1]
        tr, va = problem.info["train_indices"], problem.info["val_indices"]
        self.Xt = torch.tensor(train_X[tr].toarray(), dtype=F64)
        self.yt = torch.tensor(train_labels[tr])
        self.Xv = torch.tensor(train_X[va].toarray(), dtype=F64)
        self.yv = torch.tensor(train_labels[va])
        self.p, self.C = problem.x0.numel(), problem.dy // problem.dx

    def g(self, x, y, batch=None):
        X, labels = (self.Xt, self.yt) if batch is None else (self.Xt[batch], self.yt[batch])
        W = y.view(self.p, self.C)
        reg = (torch.exp(x)[:, None] * W ** 2).sum() / (2 * self.p * self.C)
        return torch.nn.functional.cross_entropy(X @ W, labels) + reg

    def f(self, x, y, batch=None):
        X, labels = (self.Xv, self.yv) if batch is None else (self.Xv[batch], self.yv[batch])
        return torch.nn.functional.cross_entropy(X @ y.view(self.p, self.C), labels)


def autodiff(ref, x, y, u, w, batch=None, batch_f=None):
    """Every oracle of the dense reference by autograd: ∇_y f, ∇_x g, ∇_y g, A u, J u, Jᵀ w."""
    x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    (gy_f,) = torch.autograd.grad(ref.f(x, y, batch_f), y)
    gx, gy = torch.autograd.grad(ref.g(x, y, batch), (x, y), create_graph=True)
    hvp, cross = torch.autograd.grad(gy, (y, x), grad_outputs=u, retain_graph=True)
    (cross_t,) = torch.autograd.grad(gx, y, grad_outputs=w)
    return {"grad_y_f": gy_f, "grad_x_g": gx.detach(), "grad_y_g": gy.detach(), "hvp": hvp, "cross": cross,
            "cross_t": cross_t}


def closed(problem, x, y, u, w, batch=None, batch_f=None):
    o = Oracles(problem)
    point = o.at(x, y, batch)
    return {"grad_y_f": o.grad_y_f(x, y, batch_f), "grad_x_g": o.grad_x_g(x, y, batch),
            "grad_y_g": o.grad_y_g(x, y, batch), "hvp": point.hvp(u), "cross": point.cross(u),
            "cross_t": point.cross_t(w)}


def random_point(problem, seed=3):
    gen = torch.Generator().manual_seed(seed)
    x = 0.5 * torch.randn(problem.dx, generator=gen, dtype=F64)
    y = torch.randn(problem.dy, generator=gen, dtype=F64)
    u = torch.randn(problem.dy, generator=gen, dtype=F64)
    w = torch.randn(problem.dx, generator=gen, dtype=F64)
    return x, y, u, w


# ---- closed forms -------------------------------------------------------------------------------------------
def test_closed_forms_equal_dense_autodiff(small):
    ref = Dense(small)
    x, y, u, w = random_point(small)
    got, want = closed(small, x, y, u, w), autodiff(ref, x, y, u, w)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-14, msg=name)
    torch.testing.assert_close(Oracles(small).grad_x_f(x, y), torch.zeros_like(x))
    with torch.no_grad():
        assert float(small.g_value(x, y)) == pytest.approx(float(ref.g(x, y)), rel=1e-12)
        assert float(small.f_value(x, y)) == pytest.approx(float(ref.f(x, y)), rel=1e-12)


def test_closed_forms_equal_central_finite_differences(small):
    x, y, _, _ = random_point(small, seed=5)
    report = check_oracles(small, x, y, n_directions=3, rtol=1e-6)
    assert report.ok
    assert all(report[name].source == "closed form" for name in ("hvp", "cross", "cross_t", "grad_y_g"))


def test_autodiff_through_f_and_g_matches_the_closed_forms(small):
    """f and g differentiate to any order through the sparse products (solvers without a closed form fall back
    to them): ∇_y g and A u by autograd equal the closed forms."""
    x, y, u, _ = random_point(small, seed=7)
    yr = y.clone().requires_grad_(True)
    (gy,) = torch.autograd.grad(small.g_value(x, yr), yr, create_graph=True)
    (hvp,) = torch.autograd.grad(gy, yr, grad_outputs=u)
    o = Oracles(small)
    torch.testing.assert_close(gy.detach(), o.grad_y_g(x, y), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(hvp, o.at(x, y).hvp(u), rtol=1e-12, atol=1e-15)


def test_batch_closed_forms_equal_the_dense_computation_on_the_batch(small):
    """A batch (with a repeated index) is the batch mean over its own rows: the same values as the dense
    computation on exactly those rows."""
    ref = Dense(small)
    x, y, u, w = random_point(small, seed=11)
    batch = torch.tensor([4, 0, 4, 17, 9])
    batch_f = torch.tensor([2, 2, 13])
    got, want = closed(small, x, y, u, w, batch, batch_f), autodiff(ref, x, y, u, w, batch, batch_f)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-14, msg=name)
    with torch.no_grad():
        assert float(small.g_value(x, y, batch)) == pytest.approx(float(ref.g(x, y, batch)), rel=1e-12)
        assert float(small.f_value(x, y, batch_f)) == pytest.approx(float(ref.f(x, y, batch_f)), rel=1e-12)


def test_batch_products_read_only_the_batch_rows(monkeypatch):
    """The sparse products of a batch run on the batch's gathered rows (|B| rows), gathered once per batch
    object, never on the full matrix."""
    problem = newsgroups(seed=0, data=DATA, backend="scipy")
    seen, gathered = [], []
    mul, rows = _ScipyRows.mul, _ScipyRows.rows
    monkeypatch.setattr(_ScipyRows, "mul", lambda self, W: seen.append(self.n) or mul(self, W))
    monkeypatch.setattr(_ScipyRows, "rows", lambda self, idx: gathered.append(idx.numel()) or rows(self, idx))
    x, y, u, _ = random_point(problem)
    batch = torch.tensor([1, 5, 5, 8])
    o = Oracles(problem)
    o.grad_y_g(x, y, batch)
    point = o.at(x, y, batch)
    point.hvp(u)
    point.hvp(u)
    assert seen == [4] * 4 and gathered == [4]  # X W for ∇_y g; at the point X W once (Π), then X V per A u
    assert problem.n_samples == problem.info["n_train"] and problem.n_samples_f == problem.info["n_val"]


def test_cross_products_and_grad_x_g_read_no_data(small, monkeypatch):
    x, y, u, w = random_point(small)
    point = Oracles(small).at(x, y)
    for cls in (_ScipyRows, _TorchRows):
        monkeypatch.setattr(cls, "mul", lambda self, W: pytest.fail("J·V, Jᵀ·w and ∇_x g need no X W"))
    point.cross(u), point.cross_t(w), Oracles(small).grad_x_g(x, y)


# ---- data, split, features ----------------------------------------------------------------------------------
def test_stratified_halves():
    labels = np.repeat(np.arange(5), [7, 8, 9, 10, 11])  # 45 documents, three odd classes
    a, b = stratified_halves(labels, np.random.default_rng(0))
    assert a.size == 23 and b.size == 22 and np.intersect1d(a, b).size == 0
    assert np.array_equal(np.union1d(a, b), np.arange(45))
    for c in range(5):
        assert abs(np.count_nonzero(labels[a] == c) - np.count_nonzero(labels[b] == c)) <= 1
    again, _ = stratified_halves(labels, np.random.default_rng(0))
    other, _ = stratified_halves(labels, np.random.default_rng(1))
    assert np.array_equal(a, again) and not np.array_equal(a, other)
    even = np.repeat(np.arange(20), 4)
    a, b = stratified_halves(even, np.random.default_rng(0))
    assert all(np.count_nonzero(even[a] == c) == 2 for c in range(20))


def test_problem_split_sizes_seed_and_shapes(small):
    info = small.info
    assert (info["n_train"], info["n_val"], info["n_test"]) == (30, 30, 30)
    assert small.dx == 40 and small.dy == 40 * 4 and small.y0.abs().sum() == 0 and small.x0.abs().sum() == 0
    assert small.unflatten_y(small.y0).shape == (40, 4)
    assert small.experiment == "newsgroups" and small.presets == {"*": SCALES}
    again, other = newsgroups(seed=1, data=DATA), newsgroups(seed=2, data=DATA)
    assert again.info["val_indices"] == info["val_indices"] != other.info["val_indices"]
    metrics = small.metrics(small.unflatten_x(small.x0), small.unflatten_y(small.y0))
    assert set(metrics) == {"val_loss", "val_accuracy", "test_loss", "test_accuracy"}
    assert metrics["test_loss"] == pytest.approx(np.log(4)) and metrics["val_loss"] == pytest.approx(np.log(4))


def test_feature_subsampling_keeps_the_most_frequent_columns():
    X = sp.csr_matrix(np.array([[1, 0, 1, 1], [0, 0, 1, 1], [1, 0, 0, 1.0]]))
    assert most_frequent_features(X, 1).tolist() == [3]
    assert most_frequent_features(X, 2).tolist() == [0, 3]  # a tie (columns 0 and 2): the lower index
    assert most_frequent_features(X, 3).tolist() == [0, 2, 3]
    problem = newsgroups(data=DATA, n_features=10)
    assert problem.dx == 10 and problem.dy == 40 and problem.name == "newsgroups-p10"
    kept = most_frequent_features(DATA[0], 10)
    rows = DATA[0][:, kept]
    assert problem.info["n_features_all"] == 40 and problem.info["nnz_train"] <= rows.nnz


def test_float32_and_both_backends_agree():
    x, y, u, _ = random_point(newsgroups(data=DATA))
    values = []
    for backend, dtype in (("scipy", F64), ("torch", F64), ("scipy", torch.float32), ("torch", torch.float32)):
        problem = newsgroups(data=DATA, backend=backend, dtype=dtype)
        o = Oracles(problem)
        xx, yy, uu = (t.to(dtype) for t in (x, y, u))
        values.append((o.grad_y_g(xx, yy).double(), o.at(xx, yy).hvp(uu).double()))
    for grad, hvp in values[1:]:
        torch.testing.assert_close(grad, values[0][0], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(hvp, values[0][1], rtol=1e-5, atol=1e-7)


# ---- bad inputs: one line each, what was wrong, what was received, what to do ----------------------------------
BAD = [
    ({"data": DATA[:3]}, ProblemError, r"data must be a tuple \(train_X, train_labels, test_X, test_labels\); got tuple of length 3"),
    ({"data": ([1, 2], DATA[1], DATA[2], DATA[3])}, ProblemError, r"data train_X must be a 2-D scipy.sparse matrix .* got list"),
    ({"data": (DATA[0], DATA[1][:-1], DATA[2], DATA[3])}, ProblemError, r"train_labels has 59 labels but train_X has 60 rows"),
    ({"data": (DATA[0], DATA[1] * 0.5, DATA[2], DATA[3])}, ProblemError, r"train_labels must be a 1-D array of integer class labels; got dtype float64"),
    ({"data": (DATA[0], DATA[1] - 1, DATA[2], DATA[3])}, ProblemError, r"train_labels must hold class labels 0, 1, \.\.\.; got -1"),
    ({"data": (DATA[0], DATA[1], DATA[2][:, :5], DATA[3])}, ProblemError, r"train_X has 40 features but test_X has 5; build both with one vocabulary"),
    ({"data": (DATA[0] * np.nan, DATA[1], DATA[2], DATA[3])}, ProblemError, r"train_X contains NaN or Inf"),
    ({"data": DATA, "n_features": 41}, ProblemError, r"n_features=41 but the data has only 40 features; pass at most 40"),
    ({"data": DATA, "n_features": 0}, ValueError, r"n_features"),
    ({"data": DATA, "backend": "cupy"}, ValueError, r"backend.*cupy"),
    ({"data": DATA, "features": "tfidf"}, ValueError, r"features.*tfidf"),
    ({"data": DATA, "dtype": torch.float16}, ProblemError, r"dtype must be torch.float64 or torch.float32 .*; got torch.float16"),
    ({"data": DATA, "seed": -1}, ValueError, r"seed"),
]


@pytest.mark.parametrize("options, error, match", BAD, ids=[m[:40] for _, _, m in BAD])
def test_bad_input(options, error, match):
    with pytest.raises(error, match=match) as info:
        newsgroups(**options)
    assert "\n" not in str(info.value) and str(info.value).startswith("newsgroups")


def test_registered_with_the_solvers_published_settings():
    assert PROBLEMS["newsgroups"] is newsgroups
    problem = newsgroups(data=DATA)
    expected = {  # Ji, Yang & Liang 2021: T = 10, Q = 10, η = 0.5, θ = λ = 100
        "stocbio": {"inner_steps": 10, "v_steps": 10, "eta": 0.5}, "amigo_gd": {"inner_steps": 10, "v_steps": 10},
        "amigo_cg": {"inner_steps": 10, "v_steps": 10}, "bsa": {"inner_steps": 10, "v_steps": 10},
        "ttsa": {"v_steps": 10}, "soba": {"eta": 0.5}, "subbio": {"inner_steps": 10},
        "lancbio": {"inner_steps": 10}, "itd": {"inner_steps": 10}, "stable": {"v_steps": 10},
    }
    for name, values in expected.items():
        opts = get_solver(name).resolve(problem)
        assert opts["lr_x"] == 100.0 and opts.get("lr_y", 100.0) == 100.0, name
        for key, value in values.items():
            assert opts[key] == value, (name, key)
    assert get_solver("stocbio").resolve(problem, stochastic=True)["v_steps"] == 10


# ---- runs ---------------------------------------------------------------------------------------------------
#: steps that suit the small random instance (its curvature differs from the full problem's, whose scales are
#: λ = θ = 100)
SMALL_STEPS = {"lr_x": 1.0, "lr_y": 1.0}


@pytest.mark.parametrize("name", solvers_for("classic"))
def test_every_solver_runs_on_a_small_instance(name):
    problem = newsgroups(seed=0, data=DATA)
    res = bilevel.solve(problem, get_solver(name, **SMALL_STEPS), max_iter=3, eval_every=3, true_hypergradient=False)
    assert res.status == "max_iter", res.message
    assert np.isfinite(res.history.last()["test_loss"])


def test_runs_on_mini_batches():
    problem = newsgroups(seed=0, data=DATA)
    for name in ("stocbio", "lancbio", "soba"):
        res = bilevel.solve(problem, get_solver(name, **SMALL_STEPS), max_iter=4, eval_every=4,
                            batches=bilevel.sampling.MiniBatch(8), true_hypergradient=False)
        assert res.status == "max_iter", (name, res.message)
        assert res.counts.samples_g > 0


def test_the_dense_exact_solve_refuses_and_says_how_much_memory_it_needs():
    big = newsgroups(data=random_documents(p=210, classes=20, n_train=60), n_features=205)  # dy = 4100 > 4096
    with pytest.raises(ValueError, match=r"b has 4100 entries.*4100x4100 float64 matrix \(134 MB\)\. Use CG or Lanczos"):
        bilevel.solve(big, aid(v_solver=Exact(), **SMALL_STEPS), max_iter=1, true_hypergradient=False)
    dy = 130107 * 20
    assert readable_bytes(8.0 * dy * dy) == "54.2 TB"
    assert readable_bytes(999.0) == "999 bytes" and readable_bytes(2.5e18) == "2.5e+03 PB"


# ---- the real data -------------------------------------------------------------------------------------------
#: the shared archive present and verified (a fresh clone has none: the test skips)
needs_archive = needs_shared_data("20newsgroups")


@needs_archive
def test_full_problem_builds_and_one_lancbio_iteration_runs():
    problem = newsgroups(seed=0, data_dir=str(SHARED))
    info = problem.info
    assert (problem.dx, problem.dy) == (130107, 2602140)
    assert (info["n_train"], info["n_val"], info["n_test"], info["n_classes"]) == (5657, 5657, 7532, 20)
    res = bilevel.solve(problem, bilevel.solvers.lancbio(), max_iter=1, eval_every=1, true_hypergradient=False)
    assert res.status == "max_iter", res.message
    last = res.history.last()
    assert last["test_loss"] < np.log(20) and last["test_accuracy"] > 0.2


def test_missing_archive_is_one_friendly_line(tmp_path, monkeypatch):
    monkeypatch.setenv("BILEVEL_OFFLINE", "1")
    with pytest.raises(ProblemError, match=r"^newsgroups: the 20 Newsgroups data could not be loaded: .* — ") as info:
        newsgroups(data_dir=str(tmp_path))
    assert "\n" not in str(info.value)
