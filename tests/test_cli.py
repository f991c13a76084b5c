"""The command line: run (progress, summary, CSV + JSON), list, show, and errors."""

import csv
import itertools
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import bilevel
from bilevel.cli import SMALL_PROBLEM, _description, build_parser, default_threads, main


def test_run_writes_history_and_metadata(tmp_path, capsys):
    out = tmp_path / "hist.csv"
    code = main(["run", "synthetic", "--solver", "lancbio", "--max-iter", "60", "--eval-every", "20",
                 "-P", "n=60", "-P", "condition=100", "-O", "m=5", "--out", str(out), "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "solver lancbio on synthetic: max_iter after 60 iterations" in text
    assert "HVPs per iteration" in text
    rows = list(csv.DictReader(open(out)))
    assert [int(r["iteration"]) for r in rows] == [0, 20, 40, 59]
    for column in ("time", "hvp", "cross", "residual", "hypergrad_norm", "hypergrad_rel_error", "f"):
        assert column in rows[0]
    assert float(rows[-1]["hypergrad_norm"]) < float(rows[0]["hypergrad_norm"])
    meta = json.load(open(tmp_path / "hist.json"))
    assert meta["status"] == "max_iter" and meta["options"]["m"] == 5 and meta["counts"]["cross"] == 60


def test_cli_warnings_are_one_readable_line(tmp_path, capsys):
    main(["run", "synthetic", "-P", "n=40", "-P", "condition=100", "--max-iter", "5", "--no-progress",
          "--out", str(tmp_path / "w.csv")])
    err = capsys.readouterr().err
    assert "bilevel: warning: LancBiO: the subspace dimension never reaches its cap 80" in err
    assert "UserWarning" not in err


def test_run_subbio_on_quadratic_with_progress_bar(tmp_path, capsys):
    code = main(["run", "quadratic", "--solver", "subbio", "--max-iter", "30", "--out", str(tmp_path / "q.csv")])
    assert code == 0
    err = capsys.readouterr().err
    assert "subbio on quadratic" in err and "30/30" in err  # tqdm writes to stderr


def test_list_and_show(capsys):
    assert main(["list", "solvers"]) == 0
    listing = capsys.readouterr().out
    assert "lancbio" in listing and "subbio" in listing
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "problems:" in listing and "synthetic" in listing and "linear-solvers:" in listing and "lanczos" in listing
    assert main(["show", "lancbio"]) == 0
    shown = capsys.readouterr().out
    assert "subproblem" in shown and "'galerkin'" in shown and "1 + 1/m HVPs on average" in shown
    assert "lr_x" in shown and "v_solver.m [m]" in shown
    # a step size comes from the experiment's settings or the problem's scales, which a custom problem lacks
    assert re.search(r"\n  lr_x +from the experiment's settings or the problem's scales, else auto \(AdaGrad-norm: λ_k = 1 / sqrt", shown)
    assert re.search(r"\n  inner\.lr \[lr_y\] +from the experiment's settings or the problem's scales, else auto \(θ = 1/L̂", shown)
    assert re.search(r"\n  v_solver\.m \[m\] +from the experiment's settings or the problem's scales, else 10; "
                     r"with lr_x auto: auto \(DimensionSchedule\(", shown)
    assert "a BilevelProblem you build from callables has neither" in " ".join(shown.split())
    assert main(["show", "synthetic"]) == 0
    assert "condition" in capsys.readouterr().out


def test_errors_are_clear(capsys, tmp_path):
    assert main(["run", "synthetic", "--solver", "lancbo", "--out", str(tmp_path / "x.csv")]) == 2
    assert "Did you mean 'lancbio'" in capsys.readouterr().err
    assert main(["run", "synthetc", "--out", str(tmp_path / "x.csv")]) == 2
    assert "Did you mean 'synthetic'" in capsys.readouterr().err
    assert main(["run", "quadratic", "-O", "m=0", "--out", str(tmp_path / "x.csv")]) == 2
    assert "m0 must be an integer >= 1; got 0" in capsys.readouterr().err
    assert main(["show", "lanczoss"]) == 2
    assert "Did you mean 'lanczos'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # argparse's exit, code 2 like every usage error
        main(["run", "quadratic", "-O", "noequals"])
    assert info.value.code == 2
    assert "bilevel: argument -O/--solver-opt: expected KEY=VALUE; got 'noequals'" in capsys.readouterr().err


def test_diverged_run_exits_nonzero(tmp_path, capsys):
    code = main(["run", "quadratic", "-O", "lr_x=1e12", "-O", "lr_y=1.9", "--max-iter", "300",
                 "--no-progress", "--out", str(tmp_path / "d.csv")])
    assert code == 1
    assert "diverged" in capsys.readouterr().out
    assert (tmp_path / "d.csv").exists()


def test_console_script_is_installed(tmp_path):
    exe = shutil.which("bilevel", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("package not installed in this environment (run through `make test`)")
    proc = subprocess.run([exe, "list", "solvers"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "lancbio" in proc.stdout


def test_run_help_explains_every_option(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per option
    with pytest.raises(SystemExit) as info:
        main(["run", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    for action in run._actions:
        if not action.option_strings or action.dest in ("help", "traceback", "no_progress"):
            continue
        lines = text.splitlines()
        at = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith(action.option_strings[0]))
        block = " ".join([lines[at]] + list(itertools.takewhile(lambda ln: ln.startswith(" " * 8), lines[at + 1:])))
        assert "default" in block, block  # what happens when the option is not given
    for expected in ("--max-iter K +outer iterations \\(default: 1000\\)",
                     "--eval-every N +evaluate the metrics every N iterations and after the last one \\(default: 10\\)",
                     "--seed SEED +seeds everything random in the run.*\\(default: 0\\)",
                     "--dtype \\{float64,float32\\}\\s+floating-point type .*\\(default: the problem's, float64\\)",
                     "--threads N +torch threads for the run \\(default: 1 when dy·N < 1e\\+07"):
        assert re.search(expected, text), expected


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"bilevel {bilevel.__version__} (torch ")


def test_list_prints_whole_first_sentences(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    from bilevel.problems import PROBLEMS
    from bilevel.solvers import SOLVERS

    assert main(["list"]) == 0
    text = capsys.readouterr().out
    assert "above" not in text  # no docstring that leans on its module's text
    unwrapped = " ".join(text.split())
    for table in (SOLVERS, PROBLEMS):
        for name, entry in table.items():
            description = _description(entry)
            assert description.endswith((".", ")")), (name, description)
            assert f"{name} {description}" in unwrapped, name  # whole, though wrapped
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "ttsa TTSA — two-timescale stochastic approximation, single loop (Hong et al., SIAM J. Optim. 2023)." \
        in unwrapped


def _run_meta(tmp_path, name, *argv):
    out = tmp_path / f"{name}.csv"
    assert main(["run", *argv, "--no-progress", "--out", str(out)]) == 0
    return json.loads(out.with_suffix(".json").read_text()), list(csv.DictReader(open(out)))


def test_seed_seeds_the_problem_unless_given(tmp_path, capsys):
    common = ("hyperclean", "--dataset", "digits", "--max-iter", "2", "--eval-every", "1", "-P", "n_train=200",
              "-P", "n_val=200")
    m0, h0 = _run_meta(tmp_path, "s0", *common, "--seed", "0")
    m1, h1 = _run_meta(tmp_path, "s1", *common, "--seed", "1")
    m01, h01 = _run_meta(tmp_path, "p0s1", *common, "-P", "seed=0", "--seed", "1")
    assert (m0["seed"], m0["problem_seed"]) == (0, 0) and m0["problem_options"]["seed"] == 0
    assert (m1["seed"], m1["problem_seed"]) == (1, 1)
    assert (m01["seed"], m01["problem_seed"]) == (1, 0)
    assert h0[0]["f"] != h1[0]["f"] and h0[0]["test_accuracy"] != h1[0]["test_accuracy"]  # another instance
    assert [r["f"] for r in h01] == [r["f"] for r in h0]  # -P seed=0 keeps instance 0 (lancbio draws nothing)

    from bilevel.problems import hyperclean

    def corrupted(seed):
        return hyperclean("digits", n_train=200, n_val=200, seed=seed).info["corrupted_indices"]

    assert len(corrupted(0)) == len(corrupted(1)) == 160 and corrupted(0) != corrupted(1)


def test_metadata_holds_json_values_and_threads(tmp_path, capsys):
    meta, _ = _run_meta(tmp_path, "j", "hyperclean", "--dataset", "digits", "--corruption", "0.5", "--dtype",
                        "float64", "-P", "n_train=100", "-P", "n_val=100", "-P", "model='linear'",
                        "--max-iter", "1", "--threads", "2")
    assert meta["problem_options"] == {"n_train": 100, "n_val": 100, "model": "linear", "dataset": "digits",
                                       "corruption": 0.5, "dtype": "float64", "seed": 0}
    assert meta["threads"] == 2 and meta["interrupted"] is False and meta["limits"]["max_iter"] == 1
    meta, _ = _run_meta(tmp_path, "q", "quadratic", "--max-iter", "1")
    assert meta["threads"] == 1  # a small problem runs on one thread by default


def test_default_threads_rule():
    class Fake:
        def __init__(self, dy, n_samples=None):
            self.dy, self.n_samples = dy, n_samples

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_threads(Fake(650, 600)) == 1  # hyper-cleaning on digits
    assert default_threads(Fake(1000)) == 1  # synthetic, n = 1000: dy² = 1e6
    assert default_threads(Fake(7850, 5000)) == cores  # hyper-cleaning on MNIST
    assert default_threads(Fake(10_000)) == cores  # synthetic at the paper's n = 10⁴
    assert default_threads(Fake(7850, 20000), 256) == 1  # mini-batch hyper-cleaning on MNIST, B = 256
    assert default_threads(Fake(7850, 20000), 5000) == cores  # AmIGO-CG's reference batch of 5000
    assert default_threads(Fake(650, 600), 10**6) == 1  # a batch above N is the whole data set
    assert SMALL_PROBLEM == 10**7


DIGITS = ("hyperclean", "--dataset", "digits", "--max-iter", "3", "--eval-every", "1")


def test_run_on_minibatches_records_them_and_counts_samples(tmp_path, capsys):
    """`--batch-size B` draws every role's batch of B samples, `--batch ROLE=B` overrides one role; the
    metadata records the sampler, and the sample counts are the batch sizes times the calls."""
    meta, rows = _run_meta(tmp_path, "mb", *DIGITS, "--batch-size", "64", "--batch", "upper=32")
    assert meta["batches"] == {"size": 64, "sizes": {"upper": 32}, "share": {}, "mode": "permutation"}
    c = meta["counts"]
    assert c["samples_f"] == 32 * (c["grad_x_f"] + c["grad_y_f"]) > 0
    g_calls = sum(c[k] for k in ("grad_y_g", "grad_x_g", "hvp", "cross", "cross_t", "linearize"))
    assert c["samples_g"] == 64 * g_calls > 0 and c["samples"] == c["samples_f"] + c["samples_g"]
    assert [int(r["samples"]) for r in rows][-1] == c["samples"]
    assert {"epochs_f", "epochs_g"} <= set(rows[0])
    assert meta["threads"] == 1  # dy·B = 650·64: one thread
    # the same command again: the same batches, the same numbers
    again, rows2 = _run_meta(tmp_path, "mb2", *DIGITS, "--batch-size", "64", "--batch", "upper=32")
    assert [r["f"] for r in rows2] == [r["f"] for r in rows]
    # another --seed: other batches (and another instance)
    other, rows3 = _run_meta(tmp_path, "mb3", *DIGITS, "--batch-size", "64", "--batch", "upper=32", "--seed", "1")
    assert [r["f"] for r in rows3] != [r["f"] for r in rows]
    # a full-batch run records no sampler
    full, _ = _run_meta(tmp_path, "fb", *DIGITS)
    assert full["batches"] is None and full["counts"]["samples_f"] == 3 * 2 * 600


def test_run_fixed_slices_and_per_role_sizes(tmp_path, capsys):
    sizes = ("--batch", "inner=16", "--batch", "upper=8", "--batch", "hvp=4", "--batch", "cross=4",
             "--batch", "lower=2")
    meta, _ = _run_meta(tmp_path, "fs", *DIGITS, "--batch-mode", "fixed_slices", *sizes)
    assert meta["batches"] == {"size": None, "sizes": {"inner": 16, "upper": 8, "hvp": 4, "cross": 4, "lower": 2},
                               "share": {}, "mode": "fixed_slices"}
    c = meta["counts"]
    assert c["samples_f"] == 8 * (c["grad_x_f"] + c["grad_y_f"])
    assert c["samples_g"] == 16 * c["grad_y_g"] + 4 * (c["hvp"] + c["cross"]) + 2 * c["grad_x_g"]


def test_run_quadratic_finite_sum_on_minibatches(tmp_path, capsys):
    import inspect

    from bilevel.problems import quadratic

    if "n_samples" not in inspect.signature(quadratic).parameters:
        pytest.skip("the finite-sum quadratic (quadratic(n_samples=...)) has not landed")
    meta, rows = _run_meta(tmp_path, "qfs", "quadratic", "-P", "n_samples=50", "--batch-size", "8", "--max-iter", "3")
    assert meta["status"] == "max_iter" and meta["batches"]["size"] == 8
    c = meta["counts"]
    assert c["samples_f"] + c["samples_g"] == c["samples"] > 0 and c["samples_g"] % 8 == 0


def test_run_help_lists_the_batch_options(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--batch-size B mini-batches of B samples for every batch role" in text
    assert "(default: none, every oracle call sees the full data set)" in text
    assert "--batch ROLE=B batch size of one role, repeatable" in text
    assert "--batch-mode {permutation,fixed_slices}" in text and "(default: permutation)" in text
