"""Every script under examples/ runs with the small budget (BILEVEL_EXAMPLES_QUICK=1), and its gallery page and
committed figure exist.  Each example is a subprocess, as a user would run it; nothing is downloaded
(BILEVEL_OFFLINE=1).  The 20 Newsgroups example runs on the offline copy when it is present and must skip
cleanly (exit 0, one line) when it is not."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_DATA, shared_data_missing

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
GALLERY = ROOT / "docs" / "examples"


def _run(script: Path, out: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BILEVEL_EXAMPLES_QUICK": "1", "BILEVEL_EXAMPLES_OUT": str(out), "BILEVEL_OFFLINE": "1",
           "BILEVEL_DATA_DIR": str(data_dir), "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, str(script), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_examples_exist():
    names = {p.stem for p in EXAMPLES}
    expected = {"own_problem", "nn_module", "hyperclean_digits", "custom_v_solver", "yaml_sweep", "mini_batch",
                "newsgroups", "bilevel_rl", "data_parallel"}
    assert expected <= names, f"missing examples: {sorted(expected - names)}"


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_with_small_budget(script, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    if script.stem == "newsgroups" and not shared_data_missing("20newsgroups"):
        data = SHARED_DATA
    proc = _run(script, tmp_path / "out", data)
    assert proc.returncode == 0, f"{script.name} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    # the figures it wrote are the ones its gallery page shows, committed under docs/examples/figures/
    for figure in sorted((tmp_path / "out").glob("*.png")) if (tmp_path / "out").is_dir() else []:
        committed = GALLERY / "figures" / figure.name
        assert committed.is_file(), f"{script.name} writes {figure.name} but docs/examples/figures/ has no copy: run make docs-figures"
        assert f"figures/{figure.name}" in (GALLERY / f"{script.stem}.md").read_text(encoding="utf-8")


def test_newsgroups_example_skips_without_data(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _run(ROOT / "examples" / "newsgroups.py", tmp_path / "out", empty)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("skipped: no 20newsgroups/20news-bydate.tar.gz under"), proc.stdout
    assert proc.stdout.count("\n") == 1


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_has_gallery_page(script):
    page = GALLERY / f"{script.stem}.md"
    assert page.is_file(), f"examples/{script.name} has no gallery page docs/examples/{script.stem}.md"
    text = page.read_text(encoding="utf-8")
    assert f'--8<-- "examples/{script.name}"' in text, f"{page.name} does not include examples/{script.name}"
    doc = script.read_text(encoding="utf-8")
    assert doc.startswith('"""') and "BILEVEL_EXAMPLES_QUICK" in doc, f"{script.name}: say in the docstring how to run it"


def test_every_gallery_page_is_an_example():
    pages = {p.stem for p in GALLERY.glob("*.md")} - {"index"}
    assert pages == {p.stem for p in EXAMPLES}
