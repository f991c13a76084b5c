"""Interrupting `bilevel bench` (the real console entry point, in a subprocess, with loky workers).

SIGINT to the process group (what Ctrl-C in a terminal sends) mid-sweep: exit 130, one line saying how many
runs finished and the command that resumes, no traceback, no joblib/loky entries of that process left in
/dev/shm, no partial files in the results folder.  SIGKILL of the group mid-sweep.  After either, the same
command (here with another worker count, which must not matter) completes the sweep: every finished run
kept untouched (meta.json mtime and content), none redone, all complete.
"""

import glob
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

CONFIG = """
    name: interrupt
    problem: {name: synthetic, options: {n: 150, condition: 100.0}}
    solvers:
      - name: lancbio
        options: {m: [2, 3, 4]}
    seeds: [0, 1]
    run: {max_iter: 200, eval_every: 2}
"""
TOTAL = 6

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and process groups")

def _default_sigint() -> None:
    """In the child, before exec: Ctrl-C's default action.  A suite started in the background by a
    non-interactive shell (``make test &``) inherits SIGINT *ignored*, which exec keeps, and Python then
    installs no KeyboardInterrupt handler: the child would not see the interrupt under test."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)



def _env():
    env = dict(os.environ)
    src = os.path.join(os.path.dirname(__file__), "..", "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.abspath(src), env.get("PYTHONPATH")) if p)
    return env


def _finished(out):
    return {os.path.basename(os.path.dirname(p)): (os.stat(p).st_mtime_ns, open(p).read())
            for p in glob.glob(os.path.join(out, "runs", "*", "meta.json"))}


def _shm_of(pid):
    """/dev/shm entries joblib and loky made for process ``pid`` (memmapping folders, semaphores)."""
    try:
        names = os.listdir("/dev/shm")
    except FileNotFoundError:
        return set()
    return {n for n in names if (n.startswith("joblib_memmapping_folder_") and f"_{pid}_" in n)
            or (n.startswith("sem.loky-") and f"-{pid}-" in n)}


def _start(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(textwrap.dedent(CONFIG))
    out = str(tmp_path / "out")
    cmd = _command(cfg, out, 2)
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(), preexec_fn=_default_sigint)
    deadline = time.time() + 60
    while time.time() < deadline and len(_finished(out)) < 2 and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None and len(_finished(out)) < TOTAL, "the sweep should still be running"
    return cfg, out, proc


def _command(cfg, out, jobs):
    return [sys.executable, "-m", "bilevel.cli", "bench", str(cfg), "--out", out, "--n-jobs", str(jobs), "--no-progress"]


def _resume_and_check(cfg, out, before):
    # another --n-jobs than the interrupted sweep: the runs' numbers do not depend on it
    done = subprocess.run(_command(cfg, out, 1), capture_output=True, text=True, timeout=120, env=_env())
    assert done.returncode == 0, done.stderr
    assert f"{TOTAL} runs: {len(before)} already done, {TOTAL - len(before)} run now" in done.stdout
    assert "redoing" not in done.stderr
    after = _finished(out)
    assert len(after) == TOTAL
    for run_id, stamp in before.items():
        assert after[run_id] == stamp, f"{run_id} was redone or touched"
    for folder in glob.glob(os.path.join(out, "runs", "*")):
        assert sorted(os.listdir(folder)) == ["history.parquet", "meta.json"]
        assert '"status": "max_iter"' in open(os.path.join(folder, "meta.json")).read()
    assert sorted(os.listdir(out)) == ["experiment.json", "runs"]


def test_sigint_mid_sweep_stops_cleanly_and_resumes(tmp_path):
    cfg, out, proc = _start(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole foreground group
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    match = re.fullmatch(r"bilevel: interrupted: (\d) of 6 runs are finished and kept \(\d finished in this "
                         r"session\); resume with the same command: bilevel bench \S+exp\.yaml --out \S+ "
                         r"--n-jobs 2\n", stderr)
    assert match, stderr
    before = _finished(out)
    assert int(match.group(1)) == len(before) and 2 <= len(before) < TOTAL
    assert not glob.glob(os.path.join(out, "**", ".tmp-*"), recursive=True)
    for folder in glob.glob(os.path.join(out, "runs", "*")):  # no half-written run is left behind
        assert sorted(os.listdir(folder)) == ["history.parquet", "meta.json"]
    deadline = time.time() + 10  # loky's resource tracker unlinks what is left as the process ends
    while _shm_of(proc.pid) and time.time() < deadline:
        time.sleep(0.05)
    assert not _shm_of(proc.pid)
    _resume_and_check(cfg, out, before)


def test_sigkill_mid_sweep_then_resume(tmp_path):
    cfg, out, proc = _start(tmp_path)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    before = _finished(out)
    assert 2 <= len(before) < TOTAL
    # kill -9 leaves loky's semaphores and joblib's folder in /dev/shm (nothing can clean up after it);
    # remove the ones this test made
    for name in _shm_of(proc.pid):
        path = os.path.join("/dev/shm", name)
        if os.path.isdir(path):
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    _resume_and_check(cfg, out, before)
