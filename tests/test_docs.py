"""The documentation: every page and figure is committed, every link and included file resolves to a committed
file, no committed text cites a path outside the repository, every solver and example has its page, and the
generated parts of the site (tools/docs_hooks.py) cover what they should.  With the docs extra installed, the
site builds with ``mkdocs build --strict`` (CI runs ``make docs`` for that)."""

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _load_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "tools" / "docs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _load_hooks()


def _tracked() -> set[str] | None:
    """Paths git tracks (with the index: staged files count), or None outside a git checkout."""
    if shutil.which("git") is None:
        return None
    proc = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return set(filter(None, proc.stdout.split("\0")))


TRACKED = _tracked()
needs_git = pytest.mark.skipif(TRACKED is None, reason="not a git checkout")

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_SRC = re.compile(r"""<(?:img|a)\s[^>]*(?:src|href)=["']([^"']+)["']""")
SNIPPET = re.compile(r"""^\s*--8<--\s+["']([^"']+)["']""", re.M)


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def local_links(path: Path) -> list[str]:
    """Link and image targets of a Markdown file that point at files (not URLs, not bare anchors); fenced code
    is skipped, except for snippet includes, which are returned relative to the repository root as 'ROOT:…'."""
    text = path.read_text(encoding="utf-8")
    targets = ["ROOT:" + t for t in SNIPPET.findall(text)]
    prose = FENCE.sub("", text)
    for target in LINK.findall(prose) + HTML_SRC.findall(prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def _resolve(path: Path, target: str) -> Path:
    if target.startswith("ROOT:"):
        return (ROOT / target[5:]).resolve()
    return (path.parent / target).resolve()


def test_link_parser_finds_links_and_skips_code():
    sample = ('See [a](a.md#x), ![fig](figures/f.png "t"), [web](https://x.org), [top](#y).\n'
              '```bash\n[not](inside.md)\n```\n<img src="img.svg">\n```python\n--8<-- "examples/e.py"\n```\n')
    tmp = DOCS / "_probe_never_committed.md"
    try:
        tmp.write_text(sample, encoding="utf-8")
        assert sorted(local_links(tmp)) == sorted(["ROOT:examples/e.py", "a.md", "figures/f.png", "img.svg"])
    finally:
        tmp.unlink()


def test_every_link_resolves_to_a_file():
    broken = []
    for path in markdown_files():
        for target in local_links(path):
            resolved = _resolve(path, target)
            if not resolved.exists():
                broken.append(f"{path.relative_to(ROOT)} → {target}")
    assert not broken, "links to missing files:\n" + "\n".join(broken)


@needs_git
def test_every_page_and_referenced_file_is_committed():
    """A page or figure that exists only in a working copy would build here and break in a fresh clone."""
    missing = [str(p.relative_to(ROOT)) for p in markdown_files() if str(p.relative_to(ROOT)) not in TRACKED]
    for path in markdown_files():
        for target in local_links(path):
            resolved = _resolve(path, target)
            if resolved.is_file() and ROOT in resolved.parents:
                rel = resolved.relative_to(ROOT).as_posix()
                if rel not in TRACKED:
                    missing.append(f"{rel} (referenced by {path.relative_to(ROOT)})")
    assert not missing, "not in git (git add them):\n" + "\n".join(missing)


@needs_git
def test_every_docs_figure_is_referenced():
    """Figures under docs/ that no page shows are dead weight in the repository."""
    shown = set()
    for path in markdown_files():
        shown |= {_resolve(path, t) for t in local_links(path)}
    figures = [ROOT / p for p in TRACKED if p.startswith("docs/") and p.endswith((".png", ".svg", ".jpg"))]
    unused = [str(f.relative_to(ROOT)) for f in figures if f.resolve() not in shown]
    assert not unused, "committed figures no page references:\n" + "\n".join(unused)


#: absolute paths of a particular machine: never in committed text
MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:work|home|Users|root|tmp|mnt|scratch|data)/")
#: the project's offline data copy beside the checkout: fine as a data-dir argument in the benchmarks' usage
#: lines, never cited by the library, its docs, the configs (shown on the site) or the examples (a fresh clone
#: has no such folder)
OUTSIDE_REPO = re.compile(r"\.\./shared|shared/data")
#: the project's reference notes live outside the repository: cite the papers instead
REFERENCE_NOTES = re.compile(r"\b(?:algorithms|design)\.md\b|\b(?:algorithms|reference) §")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg"}


def _committed_text(prefixes) -> list[Path]:
    if TRACKED is not None:
        names = [p for p in TRACKED if p.startswith(prefixes) or p in prefixes]
    else:
        names = [str(p.relative_to(ROOT)) for pre in prefixes for p in (ROOT / pre).rglob("*") if p.is_file()]
    return [ROOT / n for n in sorted(names) if Path(n).suffix in TEXT_SUFFIXES and (ROOT / n).is_file()]


def _offending(paths, pattern) -> list[str]:
    found = []
    for path in paths:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return found


def test_no_text_cites_a_path_outside_the_repository():
    library = _committed_text(("src/", "docs/", "examples/", "tools/", "README.md", "mkdocs.yml"))
    assert len(library) > 50
    found = _offending(library, MACHINE_PATH) + _offending(library, OUTSIDE_REPO)
    found += _offending(library, REFERENCE_NOTES)
    found += _offending(_committed_text(("configs/",)), OUTSIDE_REPO)  # their header comments are on the site
    found += _offending(_committed_text(("benchmarks/", "configs/")), MACHINE_PATH)
    found += _offending(_committed_text(("benchmarks/", "configs/")), REFERENCE_NOTES)
    assert not found, "paths outside the repository (use a placeholder such as /path/to/data):\n" + "\n".join(found)


def test_path_patterns():
    for bad in ("see ../shared/data/README.md", "--data-dir /work/shared/data", "out /tmp/report.md",
                "the copy (``shared/data``)", "/home/user/x", "see algorithms.md §4.3", "(reference §4.1)"):
        assert MACHINE_PATH.search(bad) or OUTSIDE_REPO.search(bad) or REFERENCE_NOTES.search(bad), bad
    for fine in ("--data-dir /path/to/data", "~/.cache/bilevel/datasets", "results/demo.csv", "docs/results/x.md",
                 "bilevel/datasets/_load.py", "https://host/data/file.gz"):
        assert not (MACHINE_PATH.search(fine) or OUTSIDE_REPO.search(fine) or REFERENCE_NOTES.search(fine)), fine


def _nav_pages(entries) -> list[str]:
    pages = []
    for entry in entries:
        if isinstance(entry, str):
            pages.append(entry)
        elif isinstance(entry, dict):
            for value in entry.values():
                pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def _config() -> dict:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # mkdocs' !ENV and friends
    return yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=Loader)


def test_every_solver_has_a_page_in_the_nav():
    config = hooks.on_config(_config())
    nav = set(_nav_pages(config["nav"]))
    for name, module in hooks.solver_modules().items():
        page = DOCS / "solvers" / f"{name}.md"
        assert page.is_file(), (f"solver {name!r} has no page: add docs/solvers/{name}.md with a '# <label>' heading "
                                f"and the line '::: {module}' (the nav picks it up)")
        assert f"::: {module}" in page.read_text(encoding="utf-8"), f"{page.name} does not render {module}"
        assert f"solvers/{name}.md" in nav, f"docs/solvers/{name}.md is not in mkdocs.yml's nav"


def test_every_problem_family_is_documented():
    from bilevel.problems import PROBLEMS

    text = (DOCS / "problems.md").read_text(encoding="utf-8")
    for name, factory in PROBLEMS.items():
        assert f"::: {factory.__module__}" in text, \
            f"problem {name!r} is not on docs/problems.md: add a section with '::: {factory.__module__}'"


def test_nav_lists_every_page_and_every_results_page():
    config = hooks.on_config(_config())
    nav = _nav_pages(config["nav"])
    assert len(nav) == len(set(nav))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert set(nav) == pages, f"in docs/ but not in the nav: {sorted(pages - set(nav))}; " \
                              f"in the nav but missing: {sorted(set(nav) - pages)}"
    for page in (DOCS / "results").glob("*.md"):
        assert f"results/{page.name}" in nav


def test_results_section_picks_up_a_new_page(monkeypatch, tmp_path):
    """A report page added to docs/results/ appears in the nav and on the results index without editing anything."""
    fake = tmp_path / "docs"
    (fake / "results").mkdir(parents=True)
    (fake / "results" / "index.md").write_text("# Results\n")
    (fake / "results" / "synthetic.md").write_text("# Synthetic problem\n")
    (fake / "results" / "hyperclean.md").write_text("no heading\n")
    monkeypatch.setattr(hooks, "DOCS", fake)
    config = hooks.on_config({"nav": [{"Home": "index.md"}, {"Results": ["results/index.md"]}, {"Examples": []}]})
    assert config["nav"][1]["Results"] == ["results/index.md", {"hyperclean": "results/hyperclean.md"},
                                           {"Synthetic problem": "results/synthetic.md"}]
    assert hooks.render_marker("results-list", "results") == ("- [hyperclean](hyperclean.md)\n"
                                                              "- [Synthetic problem](synthetic.md)")


def test_cli_reference_covers_every_command_and_option():
    from bilevel.cli import build_parser

    text = hooks.cli_reference()
    commands = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)][0].choices
    assert {"run", "bench", "plot", "report", "list", "show"} <= set(commands)
    for name, sub in commands.items():
        assert f"## `bilevel {name}`" in text
        for option in sub._actions:
            for flag in option.option_strings:
                assert flag in text, f"bilevel {name} {flag} missing from the CLI reference"
    assert "<!-- generated: cli-reference -->" in (DOCS / "cli.md").read_text(encoding="utf-8")


def test_unknown_marker_is_an_error():
    with pytest.raises(ValueError, match="unknown generated block 'nope'"):
        hooks.render_marker("nope", ".")


def test_configs_page_shows_every_config():
    text = hooks.render_marker("configs", ".")
    for path in (ROOT / "configs").glob("*.yaml"):
        assert f"### `configs/{path.name}`" in text


def test_solver_table_lists_every_solver():
    table = hooks.solver_table()
    for name in hooks.solver_modules():
        assert f"]({name}.md) | `{name}` |" in table


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
                    reason='the docs extra is not installed (pip install -e ".[docs]"); CI builds with make docs')
def test_site_builds_strictly_without_the_data(tmp_path):
    """The build needs no data set (BILEVEL_OFFLINE=1, an empty data root) and fails on any warning."""
    empty = tmp_path / "data"
    empty.mkdir()
    env = {**os.environ, "BILEVEL_OFFLINE": "1", "BILEVEL_DATA_DIR": str(empty), "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert (tmp_path / "site" / "solvers" / "lancbio" / "index.html").is_file()
    cli = (tmp_path / "site" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "--max-iter" in cli and "generated: cli-reference" not in cli


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(importlib.util.find_spec("griffe") is None, reason="the docs extra is not installed")
def test_math_stars_are_escaped_outside_code_only():
    escape = _load_tool("griffe_markdown").escape_math_stars
    assert escape("cos(J v, J v*) against v* = A⁻¹b") == r"cos(J v, J v\*) against v\* = A⁻¹b"
    assert escape("f(x, y*(x)), (y* − c), x* solves") == r"f(x, y\*(x)), (y\* − c), x\* solves"
    assert escape("taken at a *point*, **1 + 1/m HVPs** per y*") == r"taken at a *point*, **1 + 1/m HVPs** per y\*"
    assert escape("code ``v*`` and `y*` stay, y* not") == r"code ``v*`` and `y*` stay, y\* not"
    block = "Rule:\n\n    y* = argmin g\n\n    v* = A⁻¹b\nafter y*\n"
    assert escape(block) == "Rule:\n\n    y* = argmin g\n\n    v* = A⁻¹b\nafter y\\*\n"
    assert escape(escape("v* and y*(x)")) == escape("v* and y*(x)")  # idempotent: aliases may pass twice


def test_readme_links_every_results_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in sorted((DOCS / "results").glob("*.md")):
        if page.name != "index.md":
            assert f"(docs/results/{page.name})" in readme, \
                f"README's results list does not link docs/results/{page.name}: add it to 'Documentation, examples and results'"


@pytest.mark.skipif(importlib.util.find_spec("griffe") is None, reason="the docs extra is not installed")
def test_subscripts_and_laid_out_blocks_survive_markdown():
    escape = _load_tool("griffe_markdown").escape_math_stars
    assert escape("1 ∇_x f, J v and Jᵀ(x_{k+1} − x_k), `lr_x`") == r"1 ∇\_x f, J v and Jᵀ(x\_{k+1} − x\_k), `lr_x`"
    table = "Published settings:\n    ======  ===\n    Syn     1e-5\n"
    assert escape(table) == "Published settings:\n\n    ======  ===\n    Syn     1e-5\n"
    assert escape("merged key by key::\n\n    batches: {size: 256}\n") == "merged key by key:\n\n    batches: {size: 256}\n"
