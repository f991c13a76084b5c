"""``bilevel report DIR``: a Markdown summary of a results folder, with its figures.

Per configuration: runs and their statuses, the median (over seeds) of the final value of each metric,
median iterations and HVPs, and the median solver time to reach the target (runs that never reach it
are counted, not averaged in).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import Optional, Sequence

import numpy as np

from ..history import atomic_write_text
from . import storage
from .plot import Y_LABELS, plot, time_to_target

DEFAULT_METRICS = ("hypergrad_norm", "residual", "test_accuracy")


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def summary_rows(out: str, metrics: Sequence[str], target_metric: str, target: float, above: bool,
                 fraction: Optional[float] = None):
    """One row per configuration.  With ``fraction``, each run's target is ``fraction`` × its own final
    value of ``target_metric`` (e.g. 99 % of the final accuracy) instead of ``target``."""
    groups: dict[str, list] = defaultdict(list)
    for meta, cols in storage.iter_runs(out):
        groups[meta["label"]].append((meta, cols))
    rows = []
    for label in sorted(groups):
        runs = groups[label]
        statuses = defaultdict(int)
        for meta, _ in runs:
            statuses[meta["status"]] += 1
        finals = {}
        for m in metrics:
            vals = [float(cols[m][-1]) for _, cols in runs if m in cols and cols[m]]
            finals[m] = float(np.median(vals)) if vals else math.nan
        reach = []
        for _, cols in runs:
            if target_metric in cols and "time" in cols and cols[target_metric]:
                ys = np.asarray(cols[target_metric], float)
                goal = fraction * ys[-1] if fraction is not None else target
                reach.append(time_to_target(np.asarray(cols["time"], float), ys, goal, above))
        hit = [t for t in reach if not math.isnan(t)]
        rows.append({
            "label": label,
            "runs": len(runs),
            "status": ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())),
            "finals": finals,
            "iterations": float(np.median([m.get("iterations", 0) for m, _ in runs])),
            "hvp": float(np.median([m.get("counts", {}).get("hvp", 0) for m, _ in runs])),
            "time": float(np.median([m.get("time", 0.0) or 0.0 for m, _ in runs])),
            "reach": (float(np.median(hit)) if hit else math.nan, len(hit), len(reach)),
        })
    return rows


def _section(out: str, folder: str, level: str, *, metrics, target_metric, target, above, fraction, plots,
             prefix: str) -> list[str]:
    runs = list(storage.iter_runs(out))
    if not runs:
        raise ValueError(f"no finished runs under {out!r}; run `bilevel bench CONFIG --out {out}` first.")
    present = set().union(*(cols.keys() for _, cols in runs))
    metrics = [m for m in (metrics or DEFAULT_METRICS) if m in present]
    first = runs[0][0]
    name, folder_name = first.get("experiment", "experiment"), os.path.basename(os.path.normpath(out))
    heading = name if folder_name == name else f"{name} (`{folder_name}`)"
    lines = [f"{level} {heading}", ""]
    popts = ", ".join(f"{k}={v}" for k, v in first.get("problem_options", {}).items()) or "defaults"
    seeds = sorted({m["seed"] for m, _ in runs})
    env = first.get("env", {})
    notes = sorted({str(m.get("problem_info", {}).get(k)) for m, _ in runs for k in ("split_note",)
                    if m.get("problem_info", {}).get(k)})
    lines += [
        f"- problem: `{first['problem']}` ({popts}); seeds {seeds}; results in `{out}`",
        f"- limits: {', '.join(f'{k}={v}' for k, v in first.get('limits', {}).items())} (per-solver overrides in the config)",
        f"- machine: {env.get('machine', '?')} ({env.get('processor', '?')}, {env.get('cpus', '?')} CPUs); "
        f"torch {env.get('torch', '?')}, bilevel {env.get('bilevel', '?')}, commit `{first.get('commit')}`",
        "- time is solver time (evaluation excluded); medians over seeds",
    ] + [f"- data: {n}" for n in notes] + [""]
    op = "≥" if above else "≤"
    goal = f"{fraction:g} × final {target_metric}" if fraction is not None else f"{target_metric} {op} {target:g}"
    header = ["configuration", "runs", "status"] + [f"final {Y_LABELS.get(m, m)}" for m in metrics] + \
             ["iterations", "HVPs", "solver time (s)", f"time to {goal} (s)"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for row in summary_rows(out, metrics, target_metric, target, above, fraction):
        med, hit, n = row["reach"]
        reach = f"{_fmt(med)} ({hit}/{n} reached)" if n else "—"
        cells = [row["label"], str(row["runs"]), row["status"]] + [_fmt(row["finals"][m]) for m in metrics] + \
                [_fmt(row["iterations"]), _fmt(row["hvp"]), _fmt(row["time"]), reach]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for x, y in plots:
        if y not in present:
            continue
        fig = os.path.join(folder, "figures", f"{prefix}{y}_vs_{x}.png")
        plot(out, y=y, x=x, path=fig, title=heading.replace("`", ""))
        lines += [f"![{Y_LABELS.get(y, y)} vs {x}]({os.path.relpath(fig, folder)})", ""]
    failed = [(m["label"], m["seed"], m.get("message", "")) for m, _ in runs if m.get("status") == "failed"]
    if failed:
        lines += [f"{level}# Failed runs", ""] + [f"- {label}, seed {seed}: {msg}" for label, seed, msg in failed] + [""]
    return lines


def report(out, *, metrics: Optional[Sequence[str]] = None, target_metric: str = "hypergrad_norm",
           target: float = 1e-2, above: bool = False, fraction: Optional[float] = None,
           path: Optional[str] = None,
           plots: Sequence[tuple[str, str]] = (("time", "hypergrad_norm"), ("time", "residual")),
           title: Optional[str] = None, notes: Optional[str] = None) -> str:
    """Write the Markdown report and its figures; returns the path.

    ``out``: one results folder (report at ``OUT/report.md`` by default) or several (one section each;
    ``path`` required).  ``fraction``: time to reach that fraction of each run's own final value of
    ``target_metric`` (e.g. 0.99 with ``above`` for "99 % of the final accuracy").
    ``notes``: Markdown inserted after the title (commands used, what was measured).
    """
    outs = [out] if isinstance(out, (str, os.PathLike)) else list(out)
    if not outs:
        raise ValueError("give at least one results folder.")
    if len(outs) > 1 and path is None:
        raise ValueError("with several results folders, give the report path (--out).")
    path = path or os.path.join(outs[0], "report.md")
    folder = os.path.dirname(os.path.abspath(path))
    single = len(outs) == 1
    lines: list[str] = []
    if not single or title:
        lines += [f"# {title or 'report'}", ""]
    if notes:
        lines += [notes.strip(), ""]
    for o in outs:
        prefix = "" if single else os.path.basename(os.path.normpath(o)) + "_"
        lines += _section(os.fspath(o), folder, "#" if single and not title else "##", metrics=metrics,
                          target_metric=target_metric, target=target, above=above, fraction=fraction,
                          plots=plots, prefix=prefix)
    atomic_write_text(path, "\n".join(lines))
    return path
