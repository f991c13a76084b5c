"""The command line: run (progress, summary, CSV + JSON), list, show, and errors."""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

from bilevel.cli import main


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
    assert "lr_x" in shown and "problem scales" in shown and "v_solver.m [m]" in shown
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
    with pytest.raises(SystemExit):
        main(["run", "quadratic", "-O", "noequals"])


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
