"""Fused closed forms of linear hyper-cleaning (issue 12): products reused across points equal the unfused ones
bit for bit, and autodiff to 1e-10 (float64)."""

import sys
import warnings

import pytest
import torch

import bilevel
from bilevel.oracles import Oracles
from bilevel.problems.hyperclean import hyperclean

F64 = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-13}


def _problems():
    kw = {"corruption": 0.6, "seed": 0, "n_train": 200, "n_val": 300}
    return (hyperclean("digits", fused=True, **kw), hyperclean("digits", fused=False, **kw),
            hyperclean("digits", closed_forms=False, **kw))


def test_fused_equals_unfused_equals_autodiff_across_points():
    fused, plain, auto = _problems()
    gen = torch.Generator().manual_seed(5)
    x1 = torch.randn(fused.dx, generator=gen, dtype=F64)
    x2 = x1 + 0.3 * torch.randn(fused.dx, generator=gen, dtype=F64)
    y1 = fused.y0 + 0.1 * torch.randn(fused.dy, generator=gen, dtype=F64)
    y2 = y1 + 0.1 * torch.randn(fused.dy, generator=gen, dtype=F64)
    v = torch.randn(fused.dy, generator=gen, dtype=F64)
    of, op, oa = Oracles(fused), Oracles(plain), Oracles(auto)
    # the pattern of one LancBiO iteration and the next restart: J_1 v at point 1, then A_2 v, J_2 v at point 2
    results = []
    for o in (of, op, oa):
        p1 = o.at(x1, y1)
        jv1 = p1.cross(v)
        p2 = o.at(x2, y2)
        av2, jv2 = p2.hvp(v), p2.cross(v)
        b_first, b_again = o.grad_f(x2, y2)[1], o.grad_f(x2, y2)[1]
        results.append((jv1, av2, jv2, b_first, b_again))
    for a, b in zip(results[0], results[1]):
        assert torch.equal(a, b)  # fused == unfused, bit for bit
    for a, b in zip(results[0], results[2]):
        torch.testing.assert_close(a, b, **TOL)  # == autodiff
    assert of.at(x2, y2)._closed.products.hits >= 2  # A_2 v and J_2 v reused X̃ vᵀ from J_1 v


def test_in_place_write_invalidates_the_product():
    fused, plain, _ = _problems()
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(fused.dx, generator=gen, dtype=F64)
    v = torch.randn(fused.dy, generator=gen, dtype=F64)
    pf, pp = Oracles(fused).at(x, fused.y0), Oracles(plain).at(x, plain.y0)
    pf.cross(v)
    v.mul_(2.0)  # same tensor, new contents: must not hit
    assert torch.equal(pf.hvp(v), pp.hvp(v)) and torch.equal(pf.cross(v), pp.cross(v))
    y = fused.y0.clone()
    b1 = Oracles(fused).grad_f(x, y)[1]
    y.add_(0.5)
    assert not torch.equal(Oracles(fused).grad_f(x, y)[1], b1)
    torch.testing.assert_close(Oracles(fused).grad_f(x, y)[1], Oracles(plain).grad_f(x, y)[1], rtol=0, atol=0)


@pytest.mark.parametrize("options", [{}, {"preset": "hyperclean-published", "plain_until": 7}, {"m": 3}])
def test_lancbio_runs_fused_and_unfused_are_bit_identical(options):
    fused, plain, _ = _problems()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rf = bilevel.solve(fused, bilevel.solvers.lancbio(**options), max_iter=30, eval_every=5)
        rp = bilevel.solve(plain, bilevel.solvers.lancbio(**options), max_iter=30, eval_every=5)
    assert torch.equal(rf.x, rp.x) and torch.equal(rf.y, rp.y)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(rf.history) == strip(rp.history)
    assert rf.counts == rp.counts  # the oracle counts are the calls, fused or not


def test_mini_batch_points_key_the_products_on_their_rows():
    fused, plain, _ = _problems()
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(fused.dx, generator=gen, dtype=F64)
    v = torch.randn(fused.dy, generator=gen, dtype=F64)
    b1, b2 = torch.arange(0, 50), torch.arange(50, 120)
    lin_f, lin_p = fused.closed_forms.linearize, plain.closed_forms.linearize
    for batch in (b1, b2, b1):
        pf, pp = lin_f(x, fused.y0, batch), lin_p(x, plain.y0, batch)
        assert torch.equal(pf.cross(v), pp.cross(v)) and torch.equal(pf.hvp(v), pp.hvp(v))


def test_bad_fused_option():
    with pytest.raises(TypeError, match="fused"):
        hyperclean("digits", fused="yes")


def test_synthetic_fused_equals_unfused_bit_for_bit():
    fused = bilevel.problems.synthetic(n=60, condition=100.0, seed=0, fused=True)
    plain = bilevel.problems.synthetic(n=60, condition=100.0, seed=0, fused=False)
    gen = torch.Generator().manual_seed(8)
    x, y, v = (torch.randn(60, generator=gen, dtype=F64) for _ in range(3))
    pf, pp = Oracles(fused).at(x, y), Oracles(plain).at(x, y)
    assert torch.equal(pf.hvp(v), pp.hvp(v))
    pf2 = Oracles(fused).at(x + 0.1, y)
    assert torch.equal(pf2.hvp(v), Oracles(plain).at(x + 0.1, y).hvp(v))
    assert pf2._closed._products.hits == 1  # G v from the first point
    assert torch.equal(pf2.grad_y_g(), Oracles(plain).at(x + 0.1, y).grad_y_g())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rf = bilevel.solve(fused, bilevel.solvers.lancbio(), max_iter=40, eval_every=1)
        rp = bilevel.solve(plain, bilevel.solvers.lancbio(), max_iter=40, eval_every=1)
    assert torch.equal(rf.x, rp.x)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(rf.history) == strip(rp.history)


# ---- the padded layout (float32's fast products) and the Π memo ---------------------------------------------


def test_padded_layout_products_equal_plain_ones():
    from bilevel.problems.hyperclean import _Layout

    gen = torch.Generator().manual_seed(9)
    X = torch.randn(300, 65, generator=gen, dtype=F64)
    P, R = torch.randn(10, 65, generator=gen, dtype=F64), torch.randn(300, 10, generator=gen, dtype=F64)
    plain, padded = _Layout(X, 10, False), _Layout(X, 10, True)
    assert padded.width == 16 and plain.width == 0
    torch.testing.assert_close(padded.logits(P), X @ P.T, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(padded.rtx(R), R.T @ X, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(padded.softmax(R), torch.softmax(R, dim=1), rtol=1e-12, atol=1e-15)
    assert torch.equal(plain.logits(P), X @ P.T) and torch.equal(plain.rtx(R), R.T @ X)
    assert _Layout(X, 17, True).width == 32


def test_padded_problem_closed_forms_equal_plain_and_autodiff():
    kw = {"corruption": 0.6, "seed": 0, "n_train": 200, "n_val": 300}
    padded, plain = hyperclean("digits", layout="padded", **kw), hyperclean("digits", layout="plain", **kw)
    auto = hyperclean("digits", closed_forms=False, **kw)
    assert (padded.info["layout"], plain.info["layout"], hyperclean("digits", **kw).info["layout"]) == \
        ("padded", "plain", "plain")  # auto: plain in float64, so float64 histories are unchanged
    assert hyperclean("digits", dtype=torch.float32, **kw).info["layout"] == "padded"
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(padded.dx, generator=gen, dtype=F64)
    y = padded.y0 + 0.1 * torch.randn(padded.dy, generator=gen, dtype=F64)
    v, u = torch.randn(padded.dy, generator=gen, dtype=F64), torch.randn(padded.dx, generator=gen, dtype=F64)
    outs = []
    for prob in (padded, plain, auto):
        o = Oracles(prob)
        pt = o.at(x, y)
        outs.append((pt.grad_y_g(), pt.hvp(v), pt.cross(v), pt.cross_t(u), *o.grad_f(x, y), o.grad_x_g(x, y)))
    for a, b, c in zip(*outs):
        torch.testing.assert_close(a, b, **TOL)
        torch.testing.assert_close(a, c, **TOL)


def test_float32_padded_run_agrees_with_plain():
    kw = {"corruption": 0.6, "seed": 0, "n_train": 200, "n_val": 300, "dtype": torch.float32}
    runs = []
    for layout in ("padded", "plain"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs.append(bilevel.solve(hyperclean("digits", layout=layout, **kw),
                                      bilevel.solvers.lancbio(preset="hyperclean-published"), max_iter=40, eval_every=10))
    a, b = runs
    torch.testing.assert_close(a.x, b.x, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(a.y, b.y, rtol=1e-3, atol=1e-4)
    assert abs(a.history.last()["test_accuracy"] - b.history.last()["test_accuracy"]) <= 1 / 597 + 1e-12


def test_linearisation_softmax_serves_the_next_inner_step(monkeypatch):
    """Π at y_{k+1} is formed once: by the linearisation point, then read by the next iteration's first inner
    step (same y, x changed); unfused runs form it twice.  Counted on the training layout's logits."""
    hc = sys.modules["bilevel.problems.hyperclean"]  # the module (bilevel.problems.hyperclean is the factory)
    calls = {"n": 0}
    original = hc._Layout.logits

    def counting(self, P):
        if self.X.shape[0] == 200:  # training rows only (validation has 300)
            calls["n"] += 1
        return original(self, P)

    monkeypatch.setattr(hc._Layout, "logits", counting)
    kw = {"corruption": 0.6, "seed": 0, "n_train": 200, "n_val": 300}
    per_run = []
    for fused in (True, False):
        calls["n"] = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = bilevel.solve(hyperclean("digits", fused=fused, **kw), bilevel.solvers.lancbio(preset="hyperclean-published"),
                              max_iter=20, eval_every=20, true_hypergradient=False)
        per_run.append(calls["n"])
    # at least one forward pass saved per iteration: the cross point and the next first inner step read Π
    assert per_run[1] - per_run[0] >= 20, per_run
    assert r.status is not None


def test_bad_layout_option():
    with pytest.raises(ValueError, match="layout"):
        hyperclean("digits", layout="fast")
