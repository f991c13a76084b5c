"""Problems on a batch of sample indices (the finite-sum forms of quadratic and synthetic, hyper-cleaning on
a batch): closed forms equal autodiff of f/g on the same batch, batch means average to the full-data value,
the full-data ground truth is exact.  Float64 throughout."""

from __future__ import annotations

import pytest
import torch

import bilevel
from bilevel.oracles import Oracles
from bilevel.problems import quadratic, synthetic, synthetic_data
from bilevel.sampling import MiniBatch
from bilevel.testing import check_oracles
from bilevel.truth import true_hypergradient

TIGHT = dict(rtol=1e-10, atol=1e-12)


def _point(problem, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    x = problem.x0 + scale * torch.randn(problem.dx, generator=gen, dtype=torch.float64)
    y = problem.y0 + scale * torch.randn(problem.dy, generator=gen, dtype=torch.float64)
    u = torch.randn(problem.dy, generator=gen, dtype=torch.float64)
    w = torch.randn(problem.dx, generator=gen, dtype=torch.float64)
    return x, y, u, w


def _oracle_values(problem, x, y, u, w, batch_g, batch_f):
    """Every oracle (and f, g) at one point, lower-level ones on batch_g, upper-level ones on batch_f."""
    o = Oracles(problem)
    point = o.at(x, y, batch_g)
    return {
        "f": problem.f_value(x, y, batch_f), "g": problem.g_value(x, y, batch_g),
        "grad_x_f": o.grad_x_f(x, y, batch_f), "grad_y_f": o.grad_y_f(x, y, batch_f),
        "grad_y_g": o.grad_y_g(x, y, batch_g), "grad_x_g": o.grad_x_g(x, y, batch_g),
        "point.grad_y_g": point.grad_y_g(), "hvp": point.hvp(u), "cross": point.cross(u), "cross_t": point.cross_t(w),
    }


def _assert_same(got, want, **tol):
    for name in want:
        torch.testing.assert_close(got[name], want[name], **(tol or TIGHT), msg=lambda m, name=name: f"{name}: {m}")


def _index_sets(n, seed=0):
    """A few batches of [0, n): one with a repeated index (a permutation batch crossing an epoch end may
    repeat one), a single index, all of them."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    return [perm[: max(1, n // 3)], torch.cat([perm[:3], perm[:1]]), perm[:1], torch.arange(n)]


# ---- quadratic ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quad():
    return quadratic(4, 7, 30.0, seed=1, n_samples=12, n_samples_f=5)


@pytest.fixture(scope="module")
def quad_auto():
    return quadratic(4, 7, 30.0, seed=1, n_samples=12, n_samples_f=5, closed_forms=False)


def test_quadratic_declares_its_data(quad):
    assert (quad.n_samples, quad.n_samples_f) == (12, 5)
    assert quadratic(3, 4).n_samples is None and quadratic(3, 4).n_samples_f is None
    lower_only = quadratic(3, 4, n_samples=6)
    assert (lower_only.n_samples, lower_only.n_samples_f) == (6, 1)  # a deterministic f is one sample
    upper_only = quadratic(3, 4, n_samples_f=6)
    assert (upper_only.n_samples, upper_only.n_samples_f) == (1, 6)
    assert "c_samples" not in lower_only.info and "A_samples" not in upper_only.info


def test_quadratic_finite_sum_keeps_the_instance_draws(quad):
    plain = quadratic(4, 7, 30.0, seed=1)
    assert torch.equal(quad.x0, plain.x0) and torch.equal(quad.y0, plain.y0)
    # the per-sample perturbations are centred: the full data is the deterministic instance up to round-off
    for key in ("A", "B", "c", "d"):
        torch.testing.assert_close(quad.info[key], plain.info[key], rtol=0, atol=1e-13)
    flat = quadratic(4, 7, 30.0, seed=1, n_samples=12, noise=0.0)
    torch.testing.assert_close(flat.info["A_samples"], plain.info["A"].expand(12, 7, 7), rtol=0, atol=1e-13)


def test_quadratic_per_sample_hessians_are_spd_and_average_to_A(quad):
    A_s, mu, noise = quad.info["A_samples"], quad.info["mu"], quad.info["noise"]
    torch.testing.assert_close(A_s, A_s.transpose(1, 2), rtol=0, atol=0)
    lowest = torch.linalg.eigvalsh(A_s).min()
    assert lowest >= (1 - noise) * mu - 1e-12  # Aᵢ ⪰ (1 − noise) A
    torch.testing.assert_close(A_s.mean(0), quad.info["A"], **TIGHT)
    torch.testing.assert_close(quad.info["B_samples"].mean(0), quad.info["B"], **TIGHT)
    torch.testing.assert_close(quad.info["d_samples"].mean(0), quad.info["d"], **TIGHT)
    torch.testing.assert_close(quad.info["c_samples"].mean(0), quad.info["c"], **TIGHT)
    assert quad.info["L_max"] >= quad.info["L"]
    spread = (A_s - quad.info["A"]).abs().max()
    assert spread > 0.1  # the samples differ


@pytest.mark.parametrize("which", range(4))
def test_quadratic_closed_forms_equal_autodiff_on_a_batch(quad, quad_auto, which):
    x, y, u, w = _point(quad, seed=which)
    batch_g = _index_sets(12, seed=which)[which]
    batch_f = _index_sets(5, seed=which + 10)[which]
    _assert_same(_oracle_values(quad, x, y, u, w, batch_g, batch_f),
                 _oracle_values(quad_auto, x, y, u, w, batch_g, batch_f))


def test_quadratic_batch_values_are_per_sample_means(quad):
    """On a batch, every value is the mean of the single-sample values (duplicates counted), and the mean
    over all samples is the full-data value (batch None)."""
    x, y, u, w = _point(quad, seed=5)
    single_g = [_oracle_values(quad, x, y, u, w, torch.tensor([i]), torch.tensor([i % 5])) for i in range(12)]
    single_f = [_oracle_values(quad, x, y, u, w, torch.tensor([j % 12]), torch.tensor([j])) for j in range(5)]
    full = _oracle_values(quad, x, y, u, w, None, None)
    lower = ("g", "grad_y_g", "grad_x_g", "point.grad_y_g", "hvp", "cross", "cross_t")
    for name in lower:
        torch.testing.assert_close(torch.stack([s[name] for s in single_g]).mean(0), full[name], **TIGHT)
    for name in ("grad_x_f", "grad_y_f"):
        torch.testing.assert_close(torch.stack([s[name] for s in single_f]).mean(0), full[name], **TIGHT)
    batch = torch.tensor([3, 7, 3, 0])
    on_batch = _oracle_values(quad, x, y, u, w, batch, None)
    for name in lower:
        want = torch.stack([single_g[i][name] for i in batch.tolist()]).mean(0)
        torch.testing.assert_close(on_batch[name], want, **TIGHT)
    everything = _oracle_values(quad, x, y, u, w, torch.arange(12), torch.arange(5))
    _assert_same(everything, full)
    # f on a batch is the mean of the per-sample fⱼ (the spread of the targets included)
    fj = torch.stack([s["f"] for s in single_f])
    torch.testing.assert_close(fj.mean(), full["f"], **TIGHT)
    torch.testing.assert_close(quad.f_value(x, y, torch.tensor([1, 4])), fj[[1, 4]].mean(), **TIGHT)


def test_quadratic_full_data_ground_truth_is_exact(quad, quad_auto):
    x, y, u, w = _point(quad, seed=7)
    o = Oracles(quad)
    # AID at y* with the full-data oracles and a dense solve of the v-system (A's columns from HVPs)
    y_star = quad.closed_forms.y_star(x, None)
    torch.testing.assert_close(o.grad_y_g(x, y_star), torch.zeros(quad.dy, dtype=torch.float64), rtol=0, atol=1e-12)
    point = o.at(x, y_star)
    A = torch.stack([point.hvp(e) for e in torch.eye(quad.dy, dtype=torch.float64)], 1)
    v = torch.linalg.solve(A, o.grad_y_f(x, y_star))
    aid = o.grad_x_f(x, y_star) - point.cross(v)
    torch.testing.assert_close(quad.closed_forms.hypergradient(x), aid, **TIGHT)
    # the pure autodiff path of bilevel.truth (Newton–CG, CG on the full sums) agrees
    truth = true_hypergradient(quad_auto, x)
    torch.testing.assert_close(truth.grad, aid, rtol=1e-8, atol=1e-10)
    assert truth.phi == pytest.approx(float(quad.f_value(x, y_star)), rel=1e-10)
    # x* is stationary and phi_star is φ(x*) of the full sums
    x_star = quad.info["x_star"]
    assert float(quad.closed_forms.hypergradient(x_star).norm()) < 1e-10
    assert quad.info["phi_star"] == pytest.approx(float(quad.f_value(x_star, quad.closed_forms.y_star(x_star, None))))
    assert check_oracles(quad, n_directions=2, rtol=1e-6).ok


def test_quadratic_runs_on_mini_batches(quad):
    res = bilevel.solve(quad, bilevel.solvers.soba(), max_iter=6, eval_every=3, batches=MiniBatch(4, sizes={"upper": 2}))
    assert res.status == "max_iter", res.message
    last = res.history.last()
    assert last["samples_g"] > 0 and last["samples_f"] > 0
    assert last["samples_f"] % 2 == 0  # upper calls see batches of 2 of the 5 targets


@pytest.mark.parametrize("kwargs, match", [
    ({"n_samples": 0}, "n_samples must be >= 1"),
    ({"n_samples_f": 1.5}, "n_samples_f must be an integer"),
    ({"n_samples": 4, "noise": 1.0}, "noise must be in"),
    ({"n_samples": 4, "noise": -0.1}, "noise must be finite and >= 0"),
])
def test_quadratic_bad_finite_sum_options(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        quadratic(3, 4, **kwargs)


# ---- synthetic ---------------------------------------------------------------------------------------


def _autodiff_twin(problem):
    """The same f and g with no closed forms: every oracle by autodiff of f/g on the batch."""
    return bilevel.BilevelProblem(problem.f, problem.g, problem.x0, problem.y0, n_samples=problem.n_samples,
                                  n_samples_f=problem.n_samples_f, name="autodiff-twin")


@pytest.fixture(scope="module")
def syn():
    return synthetic(n=25, condition=100.0, seed=2, n_samples=9, n_samples_f=4)


def test_synthetic_declares_its_data_and_keeps_the_instance(syn):
    plain = synthetic(n=25, condition=100.0, seed=2)
    assert (syn.n_samples, syn.n_samples_f) == (9, 4) and plain.n_samples is None
    assert (synthetic(n=25, condition=100.0, seed=2, n_samples=3).n_samples_f,
            synthetic(n=25, condition=100.0, seed=2, n_samples_f=3).n_samples) == (1, 1)
    assert torch.equal(syn.x0, plain.x0) and torch.equal(syn.y0, plain.y0)
    info = syn.info
    assert info["sin_weights"].shape == (9, 25) and info["targets"].shape == (4, 25)
    ones = torch.ones(25, dtype=torch.float64)
    torch.testing.assert_close(info["sin_weights"].mean(0), ones, **TIGHT)
    torch.testing.assert_close(info["d3_samples"].mean(0), synthetic_data(25, 100.0, 2).d3, **TIGHT)
    torch.testing.assert_close(info["tilts"].mean(0), 0 * ones, **TIGHT)
    torch.testing.assert_close(info["targets"].mean(0), 0 * ones, **TIGHT)
    assert (info["sin_weights"] - 1).abs().max() <= info["noise"] + 1e-15 and (info["d3_samples"] >= 0).all()
    # on the full data the finite-sum problem is the paper's problem: same values, oracles, ground truth
    x, y, u, w = _point(syn, seed=1, scale=0.3)
    _assert_same(_oracle_values(syn, x, y, u, w, None, None), _oracle_values(plain, x, y, u, w, None, None),
                 rtol=0, atol=0)
    torch.testing.assert_close(true_hypergradient(syn, x).grad, true_hypergradient(plain, x).grad, rtol=0, atol=0)


@pytest.mark.parametrize("which", range(4))
def test_synthetic_closed_forms_equal_autodiff_on_a_batch(syn, which):
    x, y, u, w = _point(syn, seed=which, scale=0.3)
    batch_g = _index_sets(9, seed=which)[which]
    batch_f = _index_sets(4, seed=which + 10)[which]
    _assert_same(_oracle_values(syn, x, y, u, w, batch_g, batch_f),
                 _oracle_values(_autodiff_twin(syn), x, y, u, w, batch_g, batch_f))


def test_synthetic_batch_values_are_per_sample_means(syn):
    x, y, u, w = _point(syn, seed=4, scale=0.3)
    single_g = [_oracle_values(syn, x, y, u, w, torch.tensor([k]), None) for k in range(9)]
    single_f = [_oracle_values(syn, x, y, u, w, None, torch.tensor([j])) for j in range(4)]
    full = _oracle_values(syn, x, y, u, w, None, None)
    for name in ("g", "grad_y_g", "grad_x_g", "point.grad_y_g", "hvp", "cross", "cross_t"):
        torch.testing.assert_close(torch.stack([s[name] for s in single_g]).mean(0), full[name], **TIGHT)
    for name in ("f", "grad_x_f", "grad_y_f"):
        torch.testing.assert_close(torch.stack([s[name] for s in single_f]).mean(0), full[name], **TIGHT)
    _assert_same(_oracle_values(syn, x, y, u, w, torch.arange(9), torch.arange(4)), full)


def test_synthetic_per_sample_lower_levels_are_strongly_convex(syn):
    x, y, _, _ = _point(syn, seed=6, scale=1.0)
    o, eye = Oracles(syn), torch.eye(25, dtype=torch.float64)
    bound = 1 - abs(syn.info["c0"]) * (1 + syn.info["noise"])
    for k in range(9):
        point = o.at(x, y, torch.tensor([k]))
        H = torch.stack([point.hvp(e) for e in eye], 1)
        assert float(torch.linalg.eigvalsh(0.5 * (H + H.T)).min()) >= bound - 1e-10


def test_synthetic_full_batch_hypergradient_equals_the_ground_truth(syn):
    """AID with every oracle on the batch of all samples (the per-sample path), y* and v* solved densely,
    equals bilevel.truth's ∇φ of the full problem."""
    x = syn.x0 + 0.2
    truth = true_hypergradient(syn, x)
    o, everything, all_f = Oracles(syn), torch.arange(9), torch.arange(4)
    point = o.at(x, truth.y_star, everything)
    torch.testing.assert_close(point.grad_y_g(), torch.zeros(25, dtype=torch.float64), rtol=0, atol=1e-6)
    H = torch.stack([point.hvp(e) for e in torch.eye(25, dtype=torch.float64)], 1)
    v = torch.linalg.solve(H, o.grad_y_f(x, truth.y_star, all_f))
    aid = o.grad_x_f(x, truth.y_star, all_f) - point.cross(v)
    torch.testing.assert_close(aid, truth.grad, rtol=1e-8, atol=1e-10)


def test_synthetic_runs_on_mini_batches(syn):
    res = bilevel.solve(syn, bilevel.solvers.soba(), max_iter=4, eval_every=2, batches=MiniBatch(3))
    assert res.status == "max_iter", res.message
    assert res.history.last()["samples_f"] > 0


@pytest.mark.parametrize("kwargs, match", [
    ({"n_samples": 4, "noise": 1.0}, "noise must be in"),
    ({"n_samples": 4, "c0": 0.9, "noise": 0.2}, r"\|c0\|·\(1 \+ noise\) < 1"),
    ({"n_samples": -1}, "n_samples must be >= 1"),
])
def test_synthetic_bad_finite_sum_options(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        synthetic(n=10, condition=10.0, **kwargs)
