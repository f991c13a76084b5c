"""Problems on a batch of sample indices (the finite-sum forms of quadratic and synthetic, hyper-cleaning on
a batch): closed forms equal autodiff of f/g on the same batch, batch means average to the full-data value,
the full-data ground truth is exact.  Float64 throughout."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import bilevel
from bilevel.oracles import Oracles
from bilevel.problems import hyperclean, quadratic, synthetic, synthetic_data
from bilevel.sampling import MiniBatch
from bilevel.testing import check_oracles
from bilevel.truth import true_hypergradient
from conftest import SHARED_DATA, needs_shared_data

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


# ---- hyper-cleaning ----------------------------------------------------------------------------------


class _OpLog(TorchDispatchMode):
    """Records every aten op run inside it."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


#: ops that read a tensor back to the host (item, int(), bool(), tolist), make one from host data, copy one
#: across devices/dtypes, or synchronise (nonzero, masked indexing)
_HOST_OPS = {"aten._local_scalar_dense", "aten.lift_fresh", "aten._to_copy", "aten.nonzero", "aten.copy_"}


@pytest.fixture(scope="module")
def hc():
    return hyperclean("digits", corruption=0.6, seed=0, n_train=200, n_val=300)


@pytest.fixture(scope="module")
def hc_auto():
    return hyperclean("digits", corruption=0.6, seed=0, n_train=200, n_val=300, closed_forms=False)


def _hc_point(problem, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(problem.dx, generator=gen, dtype=torch.float64)
    y = problem.y0 + 0.1 * torch.randn(problem.dy, generator=gen, dtype=torch.float64)
    u = torch.randn(problem.dy, generator=gen, dtype=torch.float64)
    w = torch.randn(problem.dx, generator=gen, dtype=torch.float64)
    return x, y, u, w


def test_hyperclean_declares_its_data(hc):
    assert (hc.n_samples, hc.n_samples_f) == (200, 300)
    assert len(hc.info["val_train_indices"]) == 300 and hc.info["val_test_indices"] == []
    assert min(hc.info["val_train_indices"]) >= 200  # validation is disjoint from training


@pytest.mark.parametrize("which", range(4))
def test_hyperclean_closed_forms_equal_autodiff_on_a_batch(hc, hc_auto, which):
    x, y, u, w = _hc_point(hc, which)
    batch_g = _index_sets(200, seed=which)[which]
    batch_f = _index_sets(300, seed=which + 10)[which]
    _assert_same(_oracle_values(hc, x, y, u, w, batch_g, batch_f),
                 _oracle_values(hc_auto, x, y, u, w, batch_g, batch_f), rtol=1e-10, atol=1e-14)


def test_hyperclean_batch_touches_only_its_coordinates(hc):
    x, y, u, w = _hc_point(hc, 5)
    batch = torch.tensor([17, 3, 150, 3])  # index 3 drawn twice
    off = torch.ones(200, dtype=torch.bool)
    off[batch] = False
    o = Oracles(hc)
    point = o.at(x, y, batch)
    Jv, gx = point.cross(u), o.grad_x_g(x, y, batch)
    assert (Jv[off] == 0).all() and (gx[off] == 0).all()
    assert (Jv[batch] != 0).all() and (gx[batch] != 0).all()
    # index 3 counts twice: its entry is the sum of two single-draw terms of the batch mean
    single = o.at(x, y, torch.tensor([3])).cross(u)[3]
    torch.testing.assert_close(Jv[3], 2 * single / 4, **TIGHT)
    # nothing off the batch is read: changing x and w there changes nothing
    x2, w2 = x.clone(), w.clone()
    x2[off] = torch.randn(int(off.sum()), dtype=torch.float64)
    w2[off] = 1e3
    again = o.at(x2, y, batch)
    torch.testing.assert_close(again.hvp(u), point.hvp(u), rtol=0, atol=0)
    torch.testing.assert_close(again.cross_t(w2), point.cross_t(w), rtol=0, atol=0)
    torch.testing.assert_close(o.grad_y_g(x2, y, batch), o.grad_y_g(x, y, batch), rtol=0, atol=0)
    torch.testing.assert_close(hc.g_value(x2, y, batch), hc.g_value(x, y, batch), rtol=0, atol=0)


def test_hyperclean_batch_means_average_to_the_full_value(hc):
    """Equal-size batches partitioning the data: the mean of the batch values is the full-data value (for
    ∇_x g and J·v too, each batch carrying 1/|𝓑| on its own coordinates)."""
    x, y, u, w = _hc_point(hc, 6)
    parts_g = torch.randperm(200, generator=torch.Generator().manual_seed(1)).view(8, 25)
    parts_f = torch.randperm(300, generator=torch.Generator().manual_seed(2)).view(6, 50)
    full = _oracle_values(hc, x, y, u, w, None, None)
    on_g = [_oracle_values(hc, x, y, u, w, b, None) for b in parts_g]
    on_f = [_oracle_values(hc, x, y, u, w, None, b) for b in parts_f]
    for name in ("g", "grad_y_g", "grad_x_g", "point.grad_y_g", "hvp", "cross", "cross_t"):
        torch.testing.assert_close(torch.stack([v[name] for v in on_g]).mean(0), full[name], rtol=1e-10, atol=1e-14)
    for name in ("f", "grad_y_f", "grad_x_f"):
        torch.testing.assert_close(torch.stack([v[name] for v in on_f]).mean(0), full[name], rtol=1e-10, atol=1e-14)
    _assert_same(_oracle_values(hc, x, y, u, w, torch.arange(200), torch.arange(300)), full, rtol=1e-12, atol=1e-15)


def test_hyperclean_batch_oracles_stay_on_the_device(hc):
    """No value is read back to the host, made from host data or copied across devices by the batch
    oracles (the indices are used where they are, with index_select / index_add)."""
    x, y, u, w = _hc_point(hc, 7)
    batch_g, batch_f = torch.tensor([5, 9, 120]), torch.tensor([0, 299])
    o = Oracles(hc)
    with _OpLog() as log:
        point = o.at(x, y, batch_g)
        point.grad_y_g(), point.hvp(u), point.cross(u), point.cross_t(w)
        o.grad_y_g(x, y, batch_g), o.grad_x_g(x, y, batch_g), o.grad_y_f(x, y, batch_f), o.grad_x_f(x, y, batch_f)
        hc.g_value(x, y, batch_g), hc.f_value(x, y, batch_f)
    assert "aten.index_select" in log.ops and not log.ops & _HOST_OPS, log.ops & _HOST_OPS
    mlp = hyperclean("digits", corruption=0.5, seed=0, n_train=60, n_val=40, model="mlp", hidden=8)
    o = Oracles(mlp)
    x, y = mlp.x0, mlp.y0
    with _OpLog() as log:
        point = o.at(x, y, batch_g % 60)
        point.hvp(y), point.cross(y), o.grad_y_g(x, y, batch_g % 60), o.grad_y_f(x, y, batch_f % 40)
    assert not log.ops & _HOST_OPS, log.ops & _HOST_OPS


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_hyperclean_batch_oracles_do_not_synchronise_on_cuda():
    """On a GPU, the batch oracles (indices drawn on the device by MiniBatch) run without a host sync."""
    prob = hyperclean("digits", corruption=0.6, seed=0, n_train=200, n_val=300, device="cuda")
    stream = MiniBatch(16).start({}, torch.Generator().manual_seed(0), prob)
    batches = stream(0)
    batch_g, batch_f = batches("hvp"), batches("upper")
    assert batch_g.device.type == "cuda"
    x, y = prob.x0 + 0.1, prob.y0
    o = Oracles(prob)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        point = o.at(x, y, batch_g)
        v = point.hvp(y)
        point.cross(v), point.cross_t(x), point.grad_y_g()
        o.grad_y_g(x, y, batch_g), o.grad_x_g(x, y, batch_g), o.grad_y_f(x, y, batch_f)
        prob.g_value(x, y, batch_g), prob.f_value(x, y, batch_f)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_hyperclean_mlp_on_a_batch():
    mlp = hyperclean("digits", corruption=0.5, seed=0, n_train=60, n_val=40, model="mlp", hidden=8)
    assert (mlp.n_samples, mlp.n_samples_f) == (60, 40)
    x = torch.randn(60, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y, o = mlp.y0, Oracles(mlp)
    u = torch.randn(mlp.dy, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    batch = torch.tensor([4, 41, 7])
    off = torch.ones(60, dtype=torch.bool)
    off[batch] = False
    point = o.at(x, y, batch)
    assert (point.cross(u)[off] == 0).all() and (o.grad_x_g(x, y, batch)[off] == 0).all()
    # the batch value is the mean of the single-sample values; equal batches average to the full value
    single = [o.at(x, y, torch.tensor([i])).hvp(u) for i in batch.tolist()]
    torch.testing.assert_close(point.hvp(u), torch.stack(single).mean(0), **TIGHT)
    parts = torch.arange(60).view(4, 15)
    for name in ("grad_y_g", "grad_x_g"):
        mean = torch.stack([getattr(o, name)(x, y, b) for b in parts]).mean(0)
        torch.testing.assert_close(mean, getattr(o, name)(x, y), **TIGHT)
    f_parts = torch.stack([o.grad_y_f(x, y, b) for b in torch.arange(40).view(4, 10)]).mean(0)
    torch.testing.assert_close(f_parts, o.grad_y_f(x, y), **TIGHT)


def test_hyperclean_runs_on_mini_batches(hc):
    res = bilevel.solve(hc, bilevel.solvers.soba(), max_iter=6, eval_every=3, batches=MiniBatch(32))
    assert res.status == "max_iter", res.message
    assert res.history.last()["samples_f"] > 0 and "test_accuracy" in res.history.last()


@needs_shared_data("mnist")
def test_hyperclean_stochastic_mnist_split():
    """§4.3: training = the first 20000 training-split images, validation = 5000 drawn from training-split
    images 20000–59999, test = the 10000 test images.  Batch index i is training image i: ∇_P g on the
    one-sample batch {i} at P = 0 is σ(x_i)(1/C − e_ỹᵢ) x̃ᵢᵀ, which recovers the features of image i."""
    from bilevel.datasets import load_dataset

    prob = hyperclean("mnist", corruption=0.5, seed=1, n_train=20000, n_val=5000, data_dir=str(SHARED_DATA))
    info = prob.info
    assert (info["n_train"], info["n_val"], info["n_test"]) == (20000, 5000, 10000)
    assert (prob.n_samples, prob.n_samples_f, prob.dx) == (20000, 5000, 20000)
    val = info["val_train_indices"]
    assert len(set(val)) == 5000 and min(val) >= 20000 and max(val) <= 59999 and info["val_test_indices"] == []
    assert info["realised_corruption"] == 0.5
    again = hyperclean("mnist", corruption=0.5, seed=1, n_train=20000, n_val=5000, data_dir=str(SHARED_DATA))
    other = hyperclean("mnist", corruption=0.5, seed=2, n_train=20000, n_val=5000, data_dir=str(SHARED_DATA))
    assert again.info["val_train_indices"] == val and other.info["val_train_indices"] != val

    ds = load_dataset("mnist", data_dir=str(SHARED_DATA))

    def features(image):
        flat = torch.from_numpy(image.reshape(-1).astype("float64")) / ds.pixel_max
        return torch.cat([(flat - ds.mean) / ds.std, torch.ones(1, dtype=torch.float64)])

    o, x, P0 = Oracles(prob), prob.x0, torch.zeros(prob.dy, dtype=torch.float64)
    for i in (0, 12345, 19999):
        G = o.grad_y_g(x, P0, torch.tensor([i])).view(10, 785)
        row = G.abs().sum(1).argmax()  # the (noisy) label's row, −0.45 x̃ᵢ
        torch.testing.assert_close(G[row] / (0.5 * (0.1 - 1)), features(ds.train_images[i]), rtol=1e-12, atol=1e-12)
    for j in (0, 4999):
        F = o.grad_y_f(x, P0, torch.tensor([j])).view(10, 785)  # (1/C − e_yⱼ) x̃ⱼᵀ, clean label
        label = int(F.abs().sum(1).argmax())
        assert label == ds.train_labels[val[j]]
        torch.testing.assert_close(F[label] / (0.1 - 1), features(ds.train_images[val[j]]), rtol=1e-12, atol=1e-12)


# ---- user problems -----------------------------------------------------------------------------------


def test_the_user_problem_example_in_the_docstring_runs():
    """The mini-batch example of BilevelProblem's docstring, run as written (indexing its own tensors)."""
    import inspect
    import textwrap

    doc = inspect.getdoc(bilevel.BilevelProblem)
    block = doc.split("per feature::\n", 1)[1].split("\n\n    Index with", 1)[0].split("\nIndex with", 1)[0]
    code = textwrap.dedent(block)
    torch.manual_seed(0)
    scope = {"torch": torch, "bilevel": bilevel, "BilevelProblem": bilevel.BilevelProblem}
    exec(compile(code, "BilevelProblem example", "exec"), scope)
    problem, result = scope["problem"], scope["result"]
    assert (problem.n_samples, problem.n_samples_f) == (1000, 200)
    assert result.status == "max_iter", result.message
    last = result.history.last()
    assert last["samples_g"] > 0 and last["samples_f"] > 0
    # a batch is the mean of its samples: equal batches average to the full value
    y = torch.randn(20)
    parts = torch.arange(1000).view(10, 100)
    mean = torch.stack([problem.g_value(problem.x0, y, b) for b in parts]).mean()
    torch.testing.assert_close(mean, problem.g_value(problem.x0, y), rtol=1e-5, atol=1e-6)
