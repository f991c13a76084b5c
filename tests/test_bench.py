"""Benchmark harness: config parsing and errors, end-to-end grid, resume after SIGKILL, failures, plots,
report, and the Dask backend on a loopback LocalCluster."""

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from bilevel.bench import ConfigError, SpecMismatch, load, parse, run_sweep, storage
from bilevel.bench.plot import plot, summarise
from bilevel.bench.report import report
from bilevel.cli import main
from bilevel.schedules import DimensionSchedule, PowerDecay

TINY = {
    "name": "tiny",
    "problem": {"name": "quadratic", "options": {"dy": 12}},
    "solvers": [{"name": "lancbio", "options": {"m": [2, 4]}}, "subbio"],
    "seeds": 2,
    "run": {"max_iter": 30, "eval_every": 10},
}


def _write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_parse_expands_sweeps_seeds_and_labels():
    specs = parse(TINY)
    assert len(specs) == (2 + 1) * 2
    labels = sorted({s.label for s in specs})
    assert labels == ["LancBiO (m=2)", "LancBiO (m=4)", "SubBiO"]
    assert sorted({s.seed for s in specs}) == [0, 1]
    assert len({s.run_id for s in specs}) == len(specs)
    assert parse(TINY)[0].run_id == specs[0].run_id  # ids are stable across parses
    other = dict(TINY, run={"max_iter": 31, "eval_every": 10})
    assert parse(other)[0].run_id != specs[0].run_id  # and change with anything that changes the run


def test_schedules_in_yaml(tmp_path):
    path = _write(tmp_path, """
        problem: {name: quadratic}
        solvers:
          - name: lancbio
            options:
              m: {schedule: dimension, m0: 1, growth: 1.1, period: 20, m_max: 80}
              lr_x: {schedule: power_decay, scale: 1.0, power: 0.4, offset: 1, floor: 0.01}
        run: {max_iter: 5}
    """)
    (spec,) = load(path)
    from bilevel.bench.config import decode

    assert decode(spec.solver_options["m"]) == DimensionSchedule(1, 1.1, 20, 80)
    assert decode(spec.solver_options["lr_x"]) == PowerDecay(1.0, 0.4, 1, 0.01)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"solver": []}, "unknown key 'solver'. Did you mean 'solvers'"),
        ({"problem": {"name": "quadratik"}}, "Did you mean 'quadratic'"),
        ({"problem": {"name": "quadratic", "options": {"dyy": 3}}}, "Did you mean 'dy'"),
        ({"solvers": [{"name": "lancbio", "options": {"lrx": 1.0}}]}, "Did you mean 'lr_x'"),
        ({"solvers": [{"name": "lancbo"}]}, "Did you mean 'lancbio'"),
        ({"solvers": [{"name": "lancbio", "option": {}}]}, "Did you mean 'options'"),
        ({"solvers": [{"name": "lancbio", "options": {"m": 0}}]}, "m0 must be an integer >= 1; got 0"),
        ({"solvers": [{"name": "lancbio", "options": {"m": []}}]}, "sweeps over an empty list"),
        ({"solvers": []}, "solvers must be a non-empty list"),
        ({"seeds": [1, 1]}, "duplicates"),
        ({"seeds": "three"}, "seeds must be a non-empty list"),
        ({"run": {"max_iters": 3}}, "Did you mean 'max_iter'"),
        ({"run": {"max_iter": 0}}, "run.max_iter must be a positive integer; got 0"),
        ({"run": {"max_time": -1}}, "run.max_time must be a positive number"),
        ({"solvers": ["lancbio", "lancbio"]}, "same runs"),
        ({"solvers": [{"name": "lancbio", "options": {"m": {"schedule": "dimensional"}}}]}, "Did you mean 'dimension'"),
    ],
)
def test_config_errors_are_clear(change, match):
    raw = dict(TINY)
    for key, value in change.items():
        if key == "solver":
            raw["solver"] = value
        else:
            raw[key] = value
    with pytest.raises(ConfigError, match=match):
        parse(raw)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="no experiment file"):
        load(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(_write(tmp_path, "problem: [unclosed\n"))


def test_tiny_grid_end_to_end(tmp_path):
    out = str(tmp_path / "out")
    summary = run_sweep(parse(TINY), out, n_jobs=2, progress=False)
    assert summary.ran == 6 and summary.statuses == {"max_iter": 6}
    folders = sorted(glob.glob(os.path.join(out, "runs", "*")))
    assert len(folders) == 6
    for folder in folders:
        assert sorted(os.listdir(folder)) == ["history.parquet", "meta.json"]
        meta = json.load(open(os.path.join(folder, "meta.json")))
        for key in ("run_id", "options", "seed", "env", "commit", "status", "counts", "label", "limits", "error"):
            assert key in meta
        assert meta["env"]["torch"].startswith("2.13") and meta["status"] == "max_iter"
        cols = storage.read_history(folder, meta)
        for column in ("iteration", "time", "hvp", "cross", "residual", "hypergrad_norm"):
            assert column in cols, column
        assert cols["iteration"] == [0, 10, 20, 29]
    again = run_sweep(parse(TINY), out, n_jobs=2, progress=False)
    assert again.skipped == 6 and again.ran == 0
    # the worker count does not change a single number: every run uses run.threads (default 1) threads
    one = str(tmp_path / "one")
    run_sweep(parse(TINY), one, n_jobs=1, progress=False)
    for folder in folders:
        meta = storage.read_meta(folder)
        assert meta["limits"]["threads"] == 1 and meta["env"]["threads"] == 1
        twin = storage.run_dir(one, meta["run_id"])
        cols, cols1 = storage.read_history(folder, meta), storage.read_history(twin, storage.read_meta(twin))
        assert {k: v for k, v in cols.items() if k != "time"} == {k: v for k, v in cols1.items() if k != "time"}


def test_csv_fallback_without_pyarrow(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "have_parquet", lambda: False)
    out = str(tmp_path / "out")
    run_sweep(parse(dict(TINY, seeds=1, solvers=["subbio"])), out, backend="sequential", progress=False)
    (folder,) = glob.glob(os.path.join(out, "runs", "*"))
    meta = storage.read_meta(folder)
    assert meta["history_file"] == "history.csv"
    assert storage.read_history(folder, meta)["iteration"] == [0, 10, 20, 29]


def test_failed_run_is_recorded_and_sweep_goes_on(tmp_path):
    raw = dict(TINY, problem={"name": "quadratic", "options": {"condition": [10.0, 0.5]}}, seeds=1,
               solvers=["subbio"])
    out = str(tmp_path / "out")
    summary = run_sweep(parse(raw), out, backend="sequential", progress=False)
    assert summary.statuses == {"failed": 1, "max_iter": 1}
    metas = [m for m, _ in storage.iter_runs(out)]
    failed = [m for m in metas if m["status"] == "failed"]
    assert len(failed) == 1 and "condition" in failed[0]["message"] and "Traceback" in failed[0]["error"]
    # failed runs are not retried unless asked
    assert run_sweep(parse(raw), out, backend="sequential", progress=False).ran == 0
    assert run_sweep(parse(raw), out, backend="sequential", progress=False, retry_failed=True).ran == 1


def test_sigkill_mid_sweep_resumes_without_duplicates(tmp_path):
    cfg = _write(tmp_path, """
        name: killme
        problem: {name: synthetic, options: {n: 150, condition: 100.0}}
        solvers:
          - name: lancbio
            options: {m: [2, 3, 4, 5]}
        seeds: [0, 1]
        run: {max_iter: 400, eval_every: 2}
    """)
    out = str(tmp_path / "out")
    cmd = [sys.executable, "-m", "bilevel.cli", "bench", cfg, "--out", out, "--backend", "sequential", "--no-progress"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(glob.glob(os.path.join(out, "runs", "*", "meta.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {os.path.basename(os.path.dirname(p)): json.load(open(p))["finished"]
                   for p in glob.glob(os.path.join(out, "runs", "*", "meta.json"))}
    assert 2 <= len(done_before) < 8, "the sweep should have been killed mid-way"
    assert subprocess.run(cmd, timeout=300).returncode == 0
    specs = load(cfg)
    metas = {m["run_id"]: m for m, _ in storage.iter_runs(out)}
    assert set(metas) == {s.run_id for s in specs}
    assert all(m["status"] == "max_iter" for m in metas.values())
    for run_id, finished in done_before.items():
        assert metas[run_id]["finished"] == finished  # finished runs were not redone
    for folder in glob.glob(os.path.join(out, "runs", "*")):
        assert sorted(os.listdir(folder)) == ["history.parquet", "meta.json"]  # no duplicates, no leftovers


def test_plot_and_report(tmp_path, capsys):
    out = str(tmp_path / "out")
    run_sweep(parse(TINY), out, backend="sequential", progress=False)
    for ext in ("png", "svg", "pdf"):
        path = plot(out, y="hypergrad_norm", x="time", path=str(tmp_path / f"fig.{ext}"))
        assert os.path.getsize(path) > 1000
    assert main(["plot", out, "--x", "hvp", "--y", "residual", "--out", str(tmp_path / "r.png")]) == 0
    assert main(["plot", out, "--y", "test_accuracy"]) == 2
    assert "no run" in capsys.readouterr().err
    path = report(out, target=1e-2, notes="Ran with `bilevel bench tiny.yaml`.")
    text = open(path).read()
    assert "Ran with `bilevel bench tiny.yaml`." in text
    assert "| LancBiO (m=2) | 2 | max_iter 2 |" in text and "SubBiO" in text
    assert "figures/hypergrad_norm_vs_time.png" in text
    assert os.path.exists(os.path.join(out, "figures", "hypergrad_norm_vs_time.png"))
    # several folders, one section each; relative targets (fraction of each run's final value)
    out2 = str(tmp_path / "out2")
    run_sweep(parse(dict(TINY, name="second", solvers=["subbio"])), out2, backend="sequential", progress=False)
    combined = str(tmp_path / "docs" / "both.md")
    assert main(["report", out, out2, "--out", combined, "--title", "Both", "--target-metric", "hypergrad_norm",
                 "--target-fraction", "2.0"]) == 0
    text = open(combined).read()
    assert text.startswith("# Both") and "## tiny" in text and "## second" in text
    assert "time to 2 × final hypergrad_norm" in text and "(2/2 reached)" in text
    assert os.path.exists(tmp_path / "docs" / "figures" / "out2_hypergrad_norm_vs_time.png")
    assert main(["report", out, out2]) == 2


def test_summarise_median_and_band():
    import numpy as np

    runs = [(np.array([0.0, 1.0, 2.0]), np.array([3.0, 2.0, 1.0])),
            (np.array([0.0, 1.0, 2.0]), np.array([5.0, 4.0, 3.0])),
            (np.array([0.0, 2.0]), np.array([4.0, 2.0]))]
    grid, med, q20, q80 = summarise(runs, points=3)
    assert list(grid) == [0.0, 1.0, 2.0]
    assert list(med) == [4.0, 4.0, 2.0]
    assert q20[0] == pytest.approx(3.4) and q80[0] == pytest.approx(4.6)
    # where a seed has ended, no median is drawn (it would be over fewer seeds)
    shorter = runs[:2] + [(np.array([0.0, 1.0]), np.array([4.0, 2.0]))]
    grid, med, _, _ = summarise(shorter, points=3)
    assert med[1] == 2.0 and np.isnan(med[2])  # values 2, 4, 2 at x = 1


def test_cli_bench_errors(tmp_path, capsys):
    cfg = _write(tmp_path, "problem: {name: quadratic}\nsolver: [lancbio]\n")
    assert main(["bench", cfg, "--out", str(tmp_path / "o")]) == 2
    assert "Did you mean 'solvers'" in capsys.readouterr().err
    ok = _write(tmp_path, "problem: {name: quadratic}\nsolvers: [lancbio]\nrun: {max_iter: 3}\n", "ok.yaml")
    assert main(["bench", ok, "--out", str(tmp_path / "o"), "--backend", "spark"]) == 2
    assert "unknown backend 'spark'" in capsys.readouterr().err


def test_dask_backend_on_local_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        out = str(tmp_path / "out")
        summary = run_sweep(parse(TINY), out, backend="dask", scheduler=cluster.scheduler_address, progress=False)
    assert summary.ran == 6 and summary.statuses == {"max_iter": 6}
    assert len(list(storage.iter_runs(out))) == 6


def test_overrides_and_per_solver_limits(tmp_path):
    path = _write(tmp_path, """
        problem: {name: synthetic, options: {n: 10000}}
        solvers:
          - lancbio
          - name: soba
            run: {max_iter: 300}
        seeds: [1, 2, 3]
        run: {max_iter: 100, eval_every: 50}
    """)
    specs = load(path, {"problem.options.n": "50", "seeds": "[4]", "solvers.0.options": "{m: [3, 4]}"})
    assert {s.problem_options["n"] for s in specs} == {50} and {s.seed for s in specs} == {4}
    assert sorted(s.label for s in specs) == ["LancBiO (m=3)", "LancBiO (m=4)", "SOBA"]
    assert {s.solver: s.limits["max_iter"] for s in specs} == {"lancbio": 100, "soba": 300}
    with pytest.raises(ConfigError, match="index '5'"):
        load(path, {"solvers.5.options": "{}"})
    with pytest.raises(ConfigError, match=r"solvers\[1\].run: unknown key 'max_iters'"):
        load(path, {"solvers.1.run": "{max_iters: 3}"})


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.yaml"))))
def test_shipped_configs_parse(path):
    specs = load(path)
    assert specs and len({s.run_id for s in specs}) == len(specs)


def test_exponent_floats_parse_as_numbers(tmp_path):
    path = _write(tmp_path, """
        problem: {name: synthetic, options: {n: 30, condition: 1.0e5}}
        solvers: [{name: lancbio, options: {lr_x: 1e-3}}]
        run: {max_iter: 2, tol: 1e-12}
    """)
    (spec,) = load(path, {"problem.options.condition": "2e4"})
    assert spec.problem_options["condition"] == 2e4 and spec.solver_options["lr_x"] == 1e-3
    assert spec.limits["tol"] == 1e-12


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.yaml"))))
def test_shipped_configs_have_numeric_options(path):
    for spec in load(path):
        for value in spec.problem_options.values():
            assert not isinstance(value, str) or not value[:1].isdigit(), (path, value)


def test_results_folder_records_its_experiment_and_refuses_another(tmp_path):
    base = dict(TINY, seeds=1, solvers=["subbio"])
    out = str(tmp_path / "out")
    first = parse(base)
    run_sweep(first, out, backend="sequential", progress=False)
    (record,) = storage.read_experiments(out)
    assert record["id"] == "tiny" and record["hash"] == first.hash and record["spec"]["run"]["threads"] == 1
    assert set(record["runs"]) == {s.run_id for s in first}
    assert run_sweep(parse(base), out, backend="sequential", progress=False).ran == 0  # same spec resumes
    other = parse(dict(base, problem={"name": "quadratic", "options": {"dy": 13}}, seeds=[0, 1]))
    with pytest.raises(SpecMismatch, match=r"differs from 'tiny' at: problem\.options\.dy, seeds\. Use another "
                                           r"--out, or --add-experiment"):
        run_sweep(other, out, backend="sequential", progress=False)
    assert len(storage.read_experiments(out)) == 1 and len(glob.glob(os.path.join(out, "runs", "*"))) == 1
    summary = run_sweep(other, out, backend="sequential", progress=False, add_experiment=True)
    assert summary.ran == 2 and summary.experiment == f"tiny@{other.hash[:8]}"
    assert [r["id"] for r in storage.read_experiments(out)] == ["tiny", summary.experiment]
    # a figure shows one experiment; the report has one section each
    with pytest.raises(ValueError, match="holds 2 experiments .*--experiment"):
        plot(out)
    path = plot(out, experiment="tiny")
    assert path.endswith(os.path.join("figures", "tiny_hypergrad_norm_vs_time.png"))
    text = open(report(out)).read()
    assert "## tiny (`out`)" in text and f"## {summary.experiment} (`out`)" in text
    assert text.count("| SubBiO | 1 |") == 1 and text.count("| SubBiO | 2 |") == 1
    only = open(report(out, experiments=["tiny"], path=str(tmp_path / "one.md"))).read()
    assert "| SubBiO | 1 |" in only and "| SubBiO | 2 |" not in only


def test_threads_are_part_of_the_run(tmp_path):
    one, two = parse(TINY), parse(dict(TINY, run={**TINY["run"], "threads": 2}))
    assert [s.limits["threads"] for s in (one[0], two[0])] == [1, 2]
    assert one[0].run_id != two[0].run_id and one.hash != two.hash
    with pytest.raises(ConfigError, match="run.threads must be a positive integer; got 0"):
        parse(dict(TINY, run={"threads": 0}))


def test_resume_redoes_damaged_runs_and_plot_report_skip_them(tmp_path):
    out = str(tmp_path / "out")
    specs = parse(dict(TINY, seeds=4, solvers=["subbio"]))
    run_sweep(specs, out, backend="sequential", progress=False)
    ids = [s.run_id for s in specs]
    folders = [storage.run_dir(out, i) for i in ids]

    def damage():
        meta = open(os.path.join(folders[0], "meta.json")).read()
        open(os.path.join(folders[0], "meta.json"), "w").write(meta[: len(meta) // 2])  # truncated meta.json
        data = open(os.path.join(folders[1], "history.parquet"), "rb").read()
        open(os.path.join(folders[1], "history.parquet"), "wb").write(data[: len(data) // 2])  # truncated history
        meta = json.load(open(os.path.join(folders[2], "meta.json")))
        json.dump({**meta, "rows": meta["rows"] + 1}, open(os.path.join(folders[2], "meta.json"), "w"))

    damage()
    warned = []
    assert plot(out, warn=warned.append)
    assert len(warned) == 1 and warned[0].startswith("skipped 3 unreadable run(s)") and ids[0] in warned[0]
    text = open(report(out)).read()
    assert "| SubBiO | 1 | max_iter 1 |" in text and "## Unreadable runs (skipped)" in text
    assert f"- `{ids[0]}`: meta.json is unreadable (" in text
    assert f"- `{ids[1]}`: history.parquet is unreadable (" in text
    assert f"- `{ids[2]}`: history.parquet has 4 rows where meta.json records 5" in text
    kept = os.stat(os.path.join(folders[3], "meta.json")).st_mtime_ns
    redone = []
    summary = run_sweep(specs, out, backend="sequential", progress=False, on_redo=lambda i, why: redone.append(i))
    assert redone == ids[:3] and summary.ran == 3 and summary.skipped == 1 and len(summary.redone) == 3
    assert os.stat(os.path.join(folders[3], "meta.json")).st_mtime_ns == kept
    runs, broken = storage.scan(out)
    assert len(runs) == 4 and not broken


def test_report_default_target_is_per_problem(tmp_path):
    out = str(tmp_path / "hc")
    raw = {"name": "hc", "problem": {"name": "hyperclean", "options": {"dataset": "digits"}},
           # residual mode from k = 0 reaches 0.8 on digits within 200 iterations (the default's plain phase
           # runs to k = 250)
           "solvers": [{"name": "lancbio", "options": {"preset": "hyperclean-residual"}}],
           "run": {"max_iter": 200, "eval_every": 50}}
    run_sweep(parse(raw), out, backend="sequential", progress=False)
    (meta, cols), = storage.iter_runs(out)
    assert meta["problem_options"] == {"dataset": "digits"}  # JSON values, not reprs
    assert "hypergrad_norm" not in cols and meta["rows"] == len(cols["iteration"])
    text = open(report(out)).read()
    assert "(dataset=digits)" in text and "time to test_accuracy ≥ 0.8 (s)" in text
    row = next(line for line in text.splitlines() if line.startswith("| LancBiO"))
    assert row.endswith("(1/1 reached) |"), row
    assert "figures/test_accuracy_vs_time.png" in text
    # a named metric takes its own default target; the quadratic problem keeps ‖∇φ‖ ≤ 1e-2
    assert "time to residual ≤ 1e-06 (s)" in open(report(out, target_metric="residual")).read()
    q = str(tmp_path / "q")
    run_sweep(parse(dict(TINY, seeds=1, solvers=["subbio"])), q, backend="sequential", progress=False)
    assert "time to hypergrad_norm ≤ 0.01 (s)" in open(report(q)).read()


def test_report_reads_old_folders(tmp_path):
    out = str(tmp_path / "old")
    run_sweep(parse(dict(TINY, seeds=1, solvers=["subbio"])), out, backend="sequential", progress=False)
    os.unlink(os.path.join(out, "experiment.json"))  # written before folders recorded their experiment
    (folder,) = glob.glob(os.path.join(out, "runs", "*"))
    meta = json.load(open(os.path.join(folder, "meta.json")))
    meta["problem_options"] = {"dy": "12", "dataset": "'digits'"}  # reprs, as older versions stored them
    del meta["rows"]
    json.dump(meta, open(os.path.join(folder, "meta.json"), "w"))
    text = open(report(out)).read()
    assert "(dy=12, dataset=digits)" in text and "| SubBiO | 1 |" in text
    # a bench into it with a config that does not describe its runs is refused
    with pytest.raises(SpecMismatch, match="already holds 1 run"):
        run_sweep(parse(dict(TINY, seeds=1, solvers=["lancbio"])), out, backend="sequential", progress=False)


def test_git_commit_takes_no_index_lock(tmp_path):
    """A plain `git status` refreshes a stale index (taking .git/index.lock); the bench's lookup must not."""
    import shutil

    from bilevel.bench.runner import GIT_STATUS, git_commit

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    assert "--no-optional-locks" in GIT_STATUS
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q"], ["git", "add", "f"], ["git", "commit", "-qm", "x"]):
        if cmd[1] == "add":
            (repo / "f").write_text("a\n")
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    index = repo / ".git" / "index"
    stale = os.stat(index).st_mtime + 5
    os.utime(repo / "f", (stale, stale))  # same content, new stat data: the index is stale
    before = (os.stat(index).st_mtime_ns, index.read_bytes())
    commit = git_commit(str(repo))
    assert commit and len(commit) == 40  # unchanged content: not dirty
    assert (os.stat(index).st_mtime_ns, index.read_bytes()) == before
    subprocess.run(["git", "status", "--porcelain"], cwd=repo, env=env, check=True, capture_output=True)
    assert index.read_bytes() != before[1]  # the premise: a plain status would have rewritten (locked) it


# ---------------------------------------------------------------------------------------------- mini-batches

DIGITS_MB = {
    "name": "digits-mb",
    "problem": {"name": "hyperclean", "options": {"dataset": "digits", "n_train": 200, "n_val": 100}},
    "batches": {"size": 32, "sizes": {"upper": 16}},
    "solvers": [
        "lancbio",
        {"name": "soba", "batches": {"size": 8}},
        {"name": "subbio", "batches": "full"},
        {"name": "amigo_gd", "batches": {"sizes": {"hvp": [4, 8]}, "mode": "fixed_slices"}},
    ],
    "seeds": [1],
    "run": {"max_iter": 3, "eval_every": 1},
}


def test_batches_sections_merge_sweep_and_identify_runs():
    e = parse(DIGITS_MB)
    by_label = {s.label: s for s in e}
    assert sorted(by_label) == ["AmIGO-GD (B_hvp=4)", "AmIGO-GD (B_hvp=8)", "LancBiO", "SOBA", "SubBiO"]
    assert by_label["LancBiO"].batches == {"size": 32, "sizes": {"upper": 16}, "share": {}, "mode": "permutation"}
    # a solver's own section merges over the top-level one, key by key and role by role
    assert by_label["SOBA"].batches == {"size": 8, "sizes": {"upper": 16}, "share": {}, "mode": "permutation"}
    assert by_label["AmIGO-GD (B_hvp=4)"].batches == {"size": 32, "sizes": {"upper": 16, "hvp": 4}, "share": {},
                                                      "mode": "fixed_slices"}
    assert by_label["SubBiO"].batches is None  # `full`: the full data set
    # the sampler is part of the run's identity and of the experiment's spec
    assert "batches" in by_label["LancBiO"].key() and "batches" not in by_label["SubBiO"].key()
    assert e.spec["batches"] == {"size": 32, "sizes.upper": 16} and e.spec["solvers"][1]["batches"] == {"size": 8}
    other = parse(dict(DIGITS_MB, batches={"size": 64, "sizes": {"upper": 16}}))
    ids = {s.label: s.run_id for s in other}
    assert ids["LancBiO"] != by_label["LancBiO"].run_id and ids["SubBiO"] == by_label["SubBiO"].run_id
    assert other.hash != e.hash
    # a config without the section keeps the ids and hash it had before samplers existed
    plain = parse(TINY)
    assert [s.run_id for s in plain][:3] == ["lancbio-6a1f82e424-seed0", "lancbio-7d987bb549-seed1",
                                             "lancbio-bb327dd8b3-seed0"] and plain.hash == "bb792bc82a01"
    assert parse(dict(TINY, batches=None)).hash == plain.hash
    # top-level `full`: every solver full-batch unless it has its own section
    e = parse(dict(DIGITS_MB, batches="full", solvers=DIGITS_MB["solvers"][:3]))
    assert {s.label: s.batches for s in e}["LancBiO"] is None
    assert {s.label: s.batches["size"] for s in e if s.batches} == {"SOBA": 8}
    # a sweep over the top-level size labels every solver that inherits it
    e = parse(dict(DIGITS_MB, batches={"size": [16, 32]}, solvers=["lancbio"]))
    assert [s.label for s in e] == ["LancBiO (B=16)", "LancBiO (B=32)"]


@pytest.mark.parametrize("change, match", [
    ({"batches": {"sise": 8}}, r"<config>: batches: unknown key 'sise'\. Did you mean 'size'\? Valid keys: size, sizes, "
                               r"share, mode\."),
    ({"batches": {"size": 8, "sizes": {"uper": 4}}}, r"<config>: batches\.sizes: unknown batch role 'uper'\. Did you "
                                                     r"mean 'upper'\?"),
    ({"batches": {"size": 8, "share": {"cross": "hessian"}}}, r"<config>: batches: .*unknown batch role 'hessian'"),
    ({"batches": {"size": 8, "mode": "fixed"}}, r"Did you mean 'fixed_slices'\?"),
    ({"batches": {"size": 0}}, r"<config>: batches: size must be >= 1; got 0"),
    ({"batches": {"size": "big"}}, r"<config>: batches: size must be an integer >= 1; got str"),
    ({"batches": {"sizes": {"upper": 8}}}, r"<config>: batches: give size \(B for every role\) or sizes for each role; "
                                           r"missing sizes for inner, hvp, cross, lower\. E\.g\. \{size: 256"),
    ({"batches": {"size": 8, "share": {"upper": "hvp"}}}, r"joins roles that read different levels' data"),
    ({"batches": 256}, r"<config>: batches must be a mapping like \{size: 256, .*or 'full'; got int"),
    ({"batches": {"size": 8, "sizes": [4]}}, r"batches\.sizes must be a mapping of roles, e\.g\. \{upper: 128\}"),
    ({"batches": {"size": []}}, r"option 'size' sweeps over an empty list"),
    ({"solvers": [{"name": "lancbio", "batch": {"size": 8}}]}, r"unknown key 'batch'\. Did you mean 'batches'\?"),
    ({"solvers": [{"name": "soba", "batches": {"size": -1}}]},
     r"solvers\[0\]\.batches \(merged over the top-level batches\): size must be >= 1; got -1"),
    ({"batch": {"size": 8}}, r"unknown key 'batch'\. Did you mean 'batches'\?"),
])
def test_batches_config_errors_are_clear(change, match):
    raw = {**DIGITS_MB, **change}
    with pytest.raises(ConfigError, match=match) as info:
        parse(raw)
    assert "\n" not in str(info.value)


def test_minibatch_sweep_end_to_end(tmp_path):
    """The runner builds each run's MiniBatch: sample counts are the batch sizes times the calls, the
    sampler is in meta.json, and a full-batch entry in the same sweep sees the whole data set."""
    raw = dict(DIGITS_MB, solvers=DIGITS_MB["solvers"][:3])
    out = str(tmp_path / "mb")
    summary = run_sweep(parse(raw), out, backend="sequential", progress=False)
    assert summary.statuses == {"max_iter": 3}, summary
    metas = {m["label"]: m for m in (storage.read_meta(f) for f in glob.glob(os.path.join(out, "runs", "*")))}
    for label, (b_f, b_g) in {"LancBiO": (16, 32), "SOBA": (16, 8), "SubBiO": (100, 200)}.items():
        c = metas[label]["counts"]
        assert c["samples_f"] == b_f * (c["grad_x_f"] + c["grad_y_f"]) > 0, label
        g_calls = sum(c[k] for k in ("grad_y_g", "grad_x_g", "hvp", "cross", "cross_t", "linearize"))
        assert c["samples_g"] == b_g * g_calls > 0, label
    assert metas["SOBA"]["batches"]["size"] == 8 and metas["SubBiO"]["batches"] is None
    record = json.load(open(os.path.join(out, "experiment.json")))
    assert json.dumps(record).count('"batches"') >= 2
    # resuming: the same spec, nothing rerun
    assert run_sweep(parse(raw), out, backend="sequential", progress=False).ran == 0
    # samples and epochs as x axes
    for x in ("samples", "epochs_g", "epochs_f"):
        assert main(["plot", out, "--x", x, "--y", "test_accuracy", "--out", str(tmp_path / f"{x}.png")]) == 0
    path = report(out, plots=["samples:test_accuracy"])
    text = open(path).read()
    assert "figures/test_accuracy_vs_samples.png" in text
    assert "- batches: LancBiO B=32 (upper 16); SOBA B=8 (upper 16); SubBiO full" in text
    assert "| iterations | HVPs | samples seen | epochs | solver time (s) |" in text
    soba = next(line for line in text.splitlines() if line.startswith("| SOBA |"))
    assert f"| {metas['SOBA']['counts']['samples']} |" in soba


def test_devices_one_per_run_at_a_time(tmp_path):
    """devices=: every run holds one device slot alone while it runs and is built there; the device is not
    part of the run's identity, so the runs and their numbers are those of a sweep without it."""
    out, plain = str(tmp_path / "dev"), str(tmp_path / "plain")
    summary = run_sweep(parse(TINY), out, devices=["cpu", "cpu"], progress=False)  # 2 workers, 2 slots
    assert summary.ran == 6 and summary.statuses == {"max_iter": 6}
    run_sweep(parse(TINY), plain, n_jobs=1, progress=False)
    for folder in sorted(glob.glob(os.path.join(out, "runs", "*"))):
        meta = storage.read_meta(folder)
        assert meta["device"] == "cpu"
        twin = storage.run_dir(plain, meta["run_id"])
        cols, cols1 = storage.read_history(folder, meta), storage.read_history(twin, storage.read_meta(twin))
        assert {k: v for k, v in cols.items() if k != "time"} == {k: v for k, v in cols1.items() if k != "time"}
    assert sorted(os.listdir(os.path.join(out, ".devices"))) == ["0.lock", "1.lock"]


def test_device_lease_is_exclusive(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from bilevel.bench.runner import _DeviceLease

    out = str(tmp_path)
    with _DeviceLease(out, ["cuda:0", "cuda:1"], 0) as a, _DeviceLease(out, ["cuda:0", "cuda:1"], 0) as b:
        assert (a.device, b.device) == ("cuda:0", "cuda:1")  # the second skips the busy slot
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(lambda: _DeviceLease(out, ["cuda:0", "cuda:1"], 1).__enter__())
            time.sleep(0.3)
            assert not waiting.done()  # every slot busy: it waits
            b.__exit__(None, None, None)
            third = waiting.result(timeout=10)
            assert third.device == "cuda:1"
            third.__exit__(None, None, None)
    with pytest.raises(ValueError, match=r"devices \(--devices\) must be a non-empty list"):
        run_sweep(parse(TINY), str(tmp_path / "o"), devices="cuda:0", progress=False)
