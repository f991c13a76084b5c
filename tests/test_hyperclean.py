"""Data hyper-cleaning: splits, corruption, closed forms vs autodiff, the MLP path, metrics, short runs."""

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import bilevel
from bilevel.cli import main
from bilevel.oracles import Oracles
from bilevel.problems.hyperclean import corrupt, detection_scores, hyperclean
from conftest import needs_shared_data

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = needs_shared_data("mnist", "kmnist")  # the files present and verified, not merely the folder


@pytest.fixture(scope="module")
def small():
    return hyperclean("digits", corruption=0.6, seed=0, n_train=200, n_val=300)


def test_shift_corruption_is_always_wrong_and_exact_rate():
    labels = np.arange(1000) % 10
    noisy, idx = corrupt(labels, 0.8, "shift", 10, np.random.default_rng(0))
    assert idx.size == 800 and (noisy[idx] != labels[idx]).all()
    untouched = np.setdiff1d(np.arange(1000), idx)
    assert (noisy[untouched] == labels[untouched]).all()
    uni, idx_u = corrupt(labels, 0.8, "uniform", 10, np.random.default_rng(0))
    assert 0 < (uni[idx_u] == labels[idx_u]).mean() < 0.25  # a uniform draw keeps ~1/10 of the labels


def test_problem_info_split_and_determinism(small):
    info = small.info
    assert info["n_train"] == 200 and info["n_val"] == 300 and info["n_test"] == 597
    assert info["realised_corruption"] == pytest.approx(math.floor(0.6 * 200) / 200)
    again = hyperclean("digits", corruption=0.6, seed=0, n_train=200, n_val=300)
    other = hyperclean("digits", corruption=0.6, seed=1, n_train=200, n_val=300)
    assert torch.equal(again.y0, small.y0) and not torch.equal(other.y0, small.y0)
    assert small.metrics(small.unflatten_x(small.x0), small.unflatten_y(small.y0)) == \
        again.metrics(again.unflatten_x(again.x0), again.unflatten_y(again.y0))
    assert small.dy == 10 * 65 and small.dx == 200  # 8×8 digits + bias column


def test_closed_forms_equal_autodiff(small):
    auto = hyperclean("digits", corruption=0.6, seed=0, n_train=200, n_val=300, closed_forms=False)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(small.dx, generator=gen, dtype=torch.float64)
    y = small.y0 + 0.1 * torch.randn(small.dy, generator=gen, dtype=torch.float64)
    u = torch.randn(small.dy, generator=gen, dtype=torch.float64)
    w = torch.randn(small.dx, generator=gen, dtype=torch.float64)
    cf, ad = Oracles(small), Oracles(auto)
    for name in ("grad_x_f", "grad_y_f", "grad_y_g", "grad_x_g"):
        torch.testing.assert_close(getattr(cf, name)(x, y), getattr(ad, name)(x, y), rtol=1e-10, atol=1e-13)
    pc, pa = cf.at(x, y), ad.at(x, y)
    torch.testing.assert_close(pc.hvp(u), pa.hvp(u), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(pc.cross(u), pa.cross(u), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(pc.cross_t(w), pa.cross_t(w), rtol=1e-10, atol=1e-13)
    counts = bilevel.Counts()
    cf_counted = bilevel.CountingOracles(Oracles(small), counts)
    point = cf_counted.at(x, y)
    point.hvp(u), point.cross(u)
    assert counts.linearize == 0  # the closed forms build no autodiff graph


def test_closed_forms_match_finite_differences(small):
    bilevel.testing.check_oracles(small, rtol=1e-6)


def test_mlp_lower_level_runs_through_generic_oracles():
    prob = hyperclean("digits", corruption=0.5, seed=0, n_train=150, n_val=150, model="mlp", hidden=16)
    assert set(prob.unflatten_y(prob.y0)) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    bilevel.testing.check_oracles(prob, rtol=1e-5)
    res = bilevel.solve(prob, bilevel.solvers.lancbio(lr_x=50.0, m=5), max_iter=20, eval_every=10)
    assert res.status == "max_iter" and res.counts.linearize == 20
    assert "test_accuracy" in res.history.last()


def test_short_lancbio_run_raises_validation_accuracy():
    prob = hyperclean("digits", corruption=0.8, seed=0)
    # residual mode from k = 0: the default's plain phase (k < 250) is slow on the 600 digits
    res = bilevel.solve(prob, bilevel.solvers.lancbio(preset="hyperclean-residual"), max_iter=150, eval_every=50)
    first, last = res.history[0], res.history.last()
    assert last["val_accuracy"] > first["val_accuracy"] + 0.05, (first["val_accuracy"], last["val_accuracy"])
    assert last["detect_auc"] > 0.7  # low weights go to the corrupted samples
    assert res.counts.grad_x_f == 150


def test_detection_scores_against_brute_force():
    gen = torch.Generator().manual_seed(0)
    x = torch.round(torch.randn(60, generator=gen, dtype=torch.float64) * 2) / 2  # ties on purpose
    corrupted = torch.rand(60, generator=gen) < 0.4
    out = detection_scores(x, corrupted)
    pos, neg = (-x)[corrupted], (-x)[~corrupted]
    pairs = [(1.0 if p > q else 0.5 if p == q else 0.0) for p, q in itertools.product(pos.tolist(), neg.tolist())]
    assert out["detect_auc"] == pytest.approx(sum(pairs) / len(pairs))
    flagged = x < 0
    tp = int((flagged & corrupted).sum())
    assert out["detect_precision"] == pytest.approx(tp / int(flagged.sum()))
    assert out["detect_recall"] == pytest.approx(tp / int(corrupted.sum()))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dataset": "mnistt"}, "Did you mean 'mnist'"),
        ({"corruption": 1.0}, "corruption must be a rate in"),
        ({"corruption_mode": "random"}, "corruption_mode must be one of"),
        ({"model": "cnn"}, "model must be one of"),
        ({"n_train": 5000}, "only 1200 training images"),
        ({"reg": 0.0}, "reg must be finite and > 0"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        hyperclean(**{"dataset": "digits", **kwargs})


def test_cli_run_hyperclean_digits(tmp_path, capsys):
    out = tmp_path / "hc.csv"
    code = main(["run", "hyperclean", "--dataset", "digits", "--corruption", "0.8", "--solver", "lancbio",
                 "--max-iter", "20", "--eval-every", "10", "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr()
    text = out.read_text()
    assert "test_accuracy" in text and "detect_f1" in text and "residual" in text


@needs_shared
def test_mnist_problem_from_shared_data():
    prob = hyperclean("mnist", corruption=0.8, seed=1, data_dir=str(SHARED))
    info = prob.info
    assert (info["n_train"], info["n_val"], info["n_test"]) == (5000, 5000, 10000)
    assert prob.dy == 7850 and prob.dx == 5000 and info["realised_corruption"] == 0.8
    res = bilevel.solve(prob, bilevel.solvers.lancbio(), max_iter=30, eval_every=29)
    assert res.history.last()["val_accuracy"] > res.history[0]["val_accuracy"]


@needs_shared
def test_kmnist_offline_split_is_documented():
    prob = hyperclean("kmnist", corruption=0.6, seed=0, data_dir=str(SHARED))
    info = prob.info
    assert info["n_val"] == 5000 and info["n_test"] == 10000 - (5000 - 2011)
    assert "2011" in info["split_note"] and "test split" in info["split_note"]
