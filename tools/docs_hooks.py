"""mkdocs hooks: the parts of the site generated from the code at build time, so that they cannot go stale.

- the nav sections "Solvers", "Results" and "Examples" list every page of ``docs/solvers/``, ``docs/results/``
  and ``docs/examples/``: pages named in ``mkdocs.yml`` keep their place, any other is appended (a new report
  page or solver page appears without editing ``mkdocs.yml``);
- markers in pages are replaced (``<!-- generated: NAME -->``): ``cli-reference`` (the argparse help of every
  ``bilevel`` command), ``solver-table`` (the registered solvers), ``results-list`` and ``examples-list`` (the
  pages of those folders), ``configs`` (the shipped experiment files with their header comments).

The functions below are also used by ``tests/test_docs.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
if str(ROOT / "src") not in sys.path:  # a fresh clone without `pip install -e .` still builds
    sys.path.insert(0, str(ROOT / "src"))

#: nav section title → folder under docs/ whose pages it lists (the folder's index.md first)
AUTO_SECTIONS = {"Solvers": "solvers", "Results": "results", "Examples": "examples"}
MARKER = re.compile(r"<!-- generated: ([a-z-]+) -->")
HELP_WIDTH = 100


def page_title(path: Path) -> str:
    """The page's first level-1 heading, else its file name."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem


def folder_pages(folder: str) -> list[str]:
    """Pages of ``docs/<folder>`` relative to docs/, index.md first, then by file name."""
    pages = sorted(p.name for p in (DOCS / folder).glob("*.md"))
    ordered = (["index.md"] if "index.md" in pages else []) + [p for p in pages if p != "index.md"]
    return [f"{folder}/{name}" for name in ordered]


def _nav_paths(entries) -> set[str]:
    found = set()
    for entry in entries:
        if isinstance(entry, str):
            found.add(entry)
        elif isinstance(entry, dict):
            for value in entry.values():
                found |= _nav_paths(value) if isinstance(value, list) else {value}
    return found


def on_config(config, **kwargs):
    for entry in config["nav"] or []:
        if not isinstance(entry, dict):
            continue
        for title, section in entry.items():
            if title in AUTO_SECTIONS and isinstance(section, list):
                listed = _nav_paths(section)
                for page in folder_pages(AUTO_SECTIONS[title]):
                    if page not in listed:
                        section.append(page if page.endswith("index.md") else {page_title(DOCS / page): page})
    return config


def cli_reference() -> str:
    """Markdown: the help text of ``bilevel`` and of each of its commands, from the argparse parser."""
    from bilevel.cli import build_parser

    with _columns(HELP_WIDTH):
        parser = build_parser()
        blocks = [("bilevel", parser.format_help())]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    blocks.append((f"bilevel {name}", sub.format_help()))
    out = []
    for title, text in blocks:
        out += [f"## `{title}`", "", "```text", text.rstrip(), "```", ""]
    return "\n".join(out)


@contextlib.contextmanager
def _columns(width: int):
    """argparse wraps to $COLUMNS: fix it so that the page does not depend on the terminal of the build."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def solver_modules() -> dict[str, str]:
    """Registered solver name → the module that defines it (one page per module under docs/solvers/)."""
    from bilevel.solvers import SOLVERS

    return {name: entry.__module__ for name, entry in sorted(SOLVERS.items())}


def solver_table() -> str:
    from bilevel.solvers import SOLVERS

    rows = ["| solver | name | what it is |", "|---|---|---|"]
    for name, entry in sorted(SOLVERS.items()):
        label = getattr(entry, "label", None) or name
        doc = (sys.modules[entry.__module__].__doc__ or "").strip()
        first = re.split(r"(?<=[.)])\s", " ".join(doc.split()), maxsplit=1)[0].replace("|", "\\|")
        rows.append(f"| [{label}]({name}.md) | `{name}` | {first} |")
    return "\n".join(rows)


def page_list(folder: str, relative_to: str) -> str:
    lines = []
    for page in folder_pages(folder):
        if page.endswith("index.md"):
            continue
        link = os.path.relpath(page, relative_to).replace(os.sep, "/")
        lines.append(f"- [{page_title(DOCS / page)}]({link})")
    return "\n".join(lines) if lines else "_(none yet)_"


def configs_list() -> str:
    """Each shipped experiment file with its header comment (what it reproduces, how to run it smaller)."""
    blocks = []
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        comment = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            comment.append(line[1:].removeprefix(" ").rstrip())
        blocks.append(f"### `configs/{path.name}`\n")
        if comment:
            blocks.append("```text\n" + "\n".join(comment) + "\n```\n")
    return "\n".join(blocks)


def render_marker(name: str, page_dir: str) -> str:
    if name == "cli-reference":
        return cli_reference()
    if name == "solver-table":
        return solver_table()
    if name == "results-list":
        return page_list("results", page_dir)
    if name == "examples-list":
        return page_list("examples", page_dir)
    if name == "configs":
        return configs_list()
    raise ValueError(f"docs: unknown generated block {name!r} — one of cli-reference, solver-table, "
                     "results-list, examples-list, configs")


def on_page_markdown(markdown, page, config, files, **kwargs):
    page_dir = os.path.dirname(page.file.src_uri)
    return MARKER.sub(lambda m: render_marker(m.group(1), page_dir or "."), markdown)
