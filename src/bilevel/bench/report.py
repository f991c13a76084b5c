"""``bilevel report DIR``: a Markdown summary of a results folder, with its figures.

One section per experiment (a folder holds one, or several added with ``bench --add-experiment``; pick
some with ``experiments=``).  Per configuration: runs and their statuses, the median (over seeds) of the
final value of each metric, median iterations and HVPs, and the median solver time to reach the target
(runs that never reach it are counted, not averaged in).

The target defaults per problem (:data:`DEFAULT_TARGET`): hyper-cleaning logs no true hypergradient, so
its target is test accuracy ≥ 0.8 there; 20 Newsgroups (no true hypergradient either) test loss ≤ 1.0, about
stocBiO's published 0.97 at 60 s (Ji, Yang & Liang, ICML 2021); elsewhere ‖∇φ‖ ≤ 1e-2.  Default metrics and figures are those of
the defaults the runs logged; a metric or figure the user names must have been logged by some run (else
an error listing what was).  Unreadable runs are skipped and listed in the section.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import Optional, Sequence

import numpy as np

from ..history import atomic_write_text
from . import storage
from .plot import X_COLUMNS, Y_LABELS, _safe, check_x, plot, time_to_target, unknown_metric

DEFAULT_METRICS = ("hypergrad_norm", "residual", "test_accuracy")
#: problem → (target metric, target value, reached from below i.e. y ≥ target); others: DEFAULT_TARGET[None]
DEFAULT_TARGET = {"hyperclean": ("test_accuracy", 0.8, True), "newsgroups": ("test_loss", 1.0, False),
                  None: ("hypergrad_norm", 1e-2, False)}
#: metric → (target value, above) when only --target-metric is given
METRIC_TARGETS = {"hypergrad_norm": (1e-2, False), "hypergrad_est_norm": (1e-2, False), "residual": (1e-6, False),
                  "test_accuracy": (0.8, True), "val_accuracy": (0.8, True)}
ACCURACY_LIKE = ("accuracy", "f1", "auc", "precision", "recall")


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def resolve_target(problem: Optional[str], target_metric: Optional[str], target: Optional[float],
                   above: Optional[bool]) -> tuple[str, float, bool]:
    """(metric, value, above) from what the user gave, filling the rest from the problem's default."""
    if target_metric is None:
        metric, value, up = DEFAULT_TARGET.get(problem, DEFAULT_TARGET[None])
        return metric, value if target is None else target, up if above is None else above
    known = METRIC_TARGETS.get(target_metric)
    if target is None and known is None:
        raise ValueError(f"no default target for {target_metric!r}; give one with --target VALUE "
                         "(and --above if it is reached from below, as accuracies are).")
    up = above if above is not None else (known[1] if known else any(w in target_metric for w in ACCURACY_LIKE))
    return target_metric, target if target is not None else known[0], up


def summary_rows(runs, metrics: Sequence[str], target_metric: str, target: float, above: bool,
                 fraction: Optional[float] = None):
    """One row per configuration of ``runs`` ((meta, columns) pairs, or a results folder).  With
    ``fraction``, each run's target is ``fraction`` × its own final value of ``target_metric`` (e.g. 99 %
    of the final accuracy) instead of ``target``."""
    if isinstance(runs, (str, os.PathLike)):
        runs = list(storage.iter_runs(os.fspath(runs)))
    groups: dict[str, list] = defaultdict(list)
    for meta, cols in runs:
        groups[meta["label"]].append((meta, cols))
    rows = []
    for label in sorted(groups):
        members = groups[label]
        statuses = defaultdict(int)
        for meta, _ in members:
            statuses[meta["status"]] += 1
        finals = {}
        for m in metrics:
            vals = [float(cols[m][-1]) for _, cols in members if m in cols and cols[m]]
            finals[m] = float(np.median(vals)) if vals else math.nan
        reach = []
        for _, cols in members:
            if target_metric in cols and "time" in cols and cols[target_metric]:
                ys = np.asarray(cols[target_metric], float)
                goal = fraction * ys[-1] if fraction is not None else target
                reach.append(time_to_target(np.asarray(cols["time"], float), ys, goal, above))
        hit = [t for t in reach if not math.isnan(t)]
        rows.append({
            "label": label,
            "runs": len(members),
            "status": ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())),
            "finals": finals,
            "iterations": float(np.median([m.get("iterations", 0) for m, _ in members])),
            "hvp": float(np.median([m.get("counts", {}).get("hvp", 0) for m, _ in members])),
            "samples": float(np.median([m.get("counts", {}).get("samples", 0) for m, _ in members])),
            "epochs_g": _median_last(members, "epochs_g"),
            "time": float(np.median([m.get("time", 0.0) or 0.0 for m, _ in members])),
            "reach": (float(np.median(hit)) if hit else math.nan, len(hit), len(reach)),
        })
    return rows


def _median_last(members, column: str) -> float:
    vals = [float(cols[column][-1]) for _, cols in members if cols.get(column)]
    return float(np.median(vals)) if vals else math.nan


def describe_batches(batches: Optional[dict]) -> str:
    """A run's sampler in a few words: ``full``, ``B=256 (upper 128; cross shares hvp; fixed_slices)``."""
    if not batches:
        return "full"
    text = f"B={batches['size']}" if batches.get("size") is not None else "B per role"
    extra = [f"{role} {n}" for role, n in (batches.get("sizes") or {}).items()]
    extra += [f"{role} shares {other}" for role, other in (batches.get("share") or {}).items()]
    if batches.get("mode", "permutation") != "permutation":
        extra.append(str(batches["mode"]))
    return text + (f" ({'; '.join(extra)})" if extra else "")


def _plain(value) -> str:
    """An option value as written in the config (old folders stored reprs such as "'digits'")."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return str(value)


def _section(out: str, record: dict, runs, broken, folder: str, level: str, *, metrics, target_metric, target,
             above, fraction, plots, prefix: str, several: bool) -> list[str]:
    first = runs[0][0]
    problem = first.get("problem")
    metric, goal_value, up = resolve_target(problem, target_metric, target, above)
    present = set().union(*(cols.keys() for _, cols in runs))
    chosen_metrics = [m for m in (metrics or DEFAULT_METRICS) if m in present]
    if plots is None:
        plots = [("time", metric), ("time", "residual")]
    name, folder_name = record.get("name") or record["id"], os.path.basename(os.path.normpath(out))
    heading = record["id"] if several else name
    heading = heading if folder_name == heading else f"{heading} (`{folder_name}`)"
    lines = [f"{level} {heading}", ""]
    popts = ", ".join(f"{k}={_plain(v)}" for k, v in first.get("problem_options", {}).items()) or "defaults"
    seeds = sorted({m["seed"] for m, _ in runs})
    env = first.get("env", {})
    notes = sorted({str(m.get("problem_info", {}).get(k)) for m, _ in runs for k in ("split_note",)
                    if m.get("problem_info", {}).get(k)})
    expected = len(record["runs"]) if record.get("runs") is not None else None
    done = f"{len(runs)} of {expected} runs finished" if expected and expected != len(runs) else f"{len(runs)} runs"
    lines += [
        f"- problem: `{problem}` ({popts}); seeds {seeds}; {done}; results in `{out}`",
        f"- limits: {', '.join(f'{k}={v}' for k, v in first.get('limits', {}).items())} (per-solver overrides in the config)",
        f"- machine: {env.get('machine', '?')} ({env.get('processor', '?')}, {env.get('cpus', '?')} CPUs); "
        f"torch {env.get('torch', '?')}, bilevel {env.get('bilevel', '?')}, commit `{first.get('commit')}`",
        "- time is solver time (evaluation excluded); medians over seeds",
    ]
    if record.get("hash"):
        lines.append(f"- experiment `{record['id']}`, spec hash `{record['hash']}`"
                     + (f": {record['description']}" if record.get("description") else ""))
    batched = any(m.get("batches") for m, _ in runs)
    if batched:
        per_label: dict = {}
        for m, _ in runs:
            per_label.setdefault(m["label"], m.get("batches"))
        lines.append("- batches: " + "; ".join(f"{label} {describe_batches(b)}" for label, b in sorted(per_label.items()))
                     + " (samples seen: both levels; epochs: passes over the lower level's data)")
    lines += [f"- data: {n}" for n in notes] + [""]
    op = "≥" if up else "≤"
    goal = f"{fraction:g} × final {metric}" if fraction is not None else f"{metric} {op} {goal_value:g}"
    header = ["configuration", "runs", "status"] + [f"final {Y_LABELS.get(m, m)}" for m in chosen_metrics] + \
             ["iterations", "HVPs"] + (["samples seen", "epochs"] if batched else []) + \
             ["solver time (s)", f"time to {goal} (s)"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for row in summary_rows(runs, chosen_metrics, metric, goal_value, up, fraction):
        med, hit, n = row["reach"]
        reach = f"{_fmt(med)} ({hit}/{n} reached)" if n else "—"
        cells = [row["label"], str(row["runs"]), row["status"]] + [_fmt(row["finals"][m]) for m in chosen_metrics] + \
                [_fmt(row["iterations"]), _fmt(row["hvp"])] + \
                ([str(round(row["samples"])), _fmt(row["epochs_g"])] if batched else []) + [_fmt(row["time"]), reach]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for x, y in plots:
        if y not in present:
            continue
        fig = os.path.join(folder, "figures", f"{_safe(prefix)}{y}_vs_{x}.png")
        plot(out, y=y, x=x, path=fig, title=heading.replace("`", ""), runs=runs)
        lines += [f"![{Y_LABELS.get(y, y)} vs {x}]({os.path.relpath(fig, folder)})", ""]
    failed = [(m["label"], m["seed"], m.get("message", "")) for m, _ in runs if m.get("status") == "failed"]
    if failed:
        lines += [f"{level}# Failed runs", ""] + [f"- {label}, seed {seed}: {msg}" for label, seed, msg in failed] + [""]
    warned = defaultdict(list)
    for m, _ in runs:
        for text in m.get("warnings") or ():
            warned[text].append(m["label"])
    if warned:
        lines += [f"{level}# Warnings", ""]
        lines += [f"- {text} ({len(labels)} run(s): {', '.join(sorted(set(labels))[:3])}"
                  f"{', …' if len(set(labels)) > 3 else ''})" for text, labels in sorted(warned.items())] + [""]
    if broken:
        lines += [f"{level}# Unreadable runs (skipped)", ""] + [f"- `{rid}`: {why}" for rid, why in broken]
        lines += ["", "Re-running the bench command redoes them.", ""]
    return lines


def _parse_plots(plots) -> Optional[list[tuple[str, str]]]:
    if plots is None:
        return None
    pairs = []
    for item in plots:
        if isinstance(item, str):
            if ":" not in item:
                raise ValueError(f"--plots takes X:METRIC pairs (X one of {', '.join(X_COLUMNS)}), e.g. "
                                 f"time:hypergrad_norm; got {item!r}.")
            item = tuple(item.split(":", 1))
        x, y = item
        check_x(x)
        pairs.append((x, y))
    return pairs


def report(out, *, metrics: Optional[Sequence[str]] = None, target_metric: Optional[str] = None,
           target: Optional[float] = None, above: Optional[bool] = None, fraction: Optional[float] = None,
           path: Optional[str] = None, plots: Optional[Sequence] = None, title: Optional[str] = None,
           notes: Optional[str] = None, experiments: Optional[Sequence[str]] = None, warn=None) -> str:
    """Write the Markdown report and its figures; returns the path.

    ``out``: one results folder (report at ``OUT/report.md`` by default) or several (one section per
    experiment of each; ``path`` required).  ``target_metric``/``target``/``above``: the time-to-target
    column, by default per problem (:data:`DEFAULT_TARGET`).  ``fraction``: time to reach that fraction of
    each run's own final value of the target metric (e.g. 0.99 with ``above`` for "99 % of the final
    accuracy").  ``plots``: (x, metric) pairs or "x:metric" strings (default: time against the target
    metric and the residual, where logged).  ``experiments``: only these (id, name or hash prefix).
    ``notes``: Markdown inserted after the title (commands used, what was measured).  Names the user gives
    (metrics, plot metrics, target metric) must have been logged by some run: ``ValueError`` otherwise.
    """
    outs = [out] if isinstance(out, (str, os.PathLike)) else list(out)
    if not outs:
        raise ValueError("give at least one results folder.")
    if len(outs) > 1 and path is None:
        raise ValueError("with several results folders, give the report path (--out).")
    plots = _parse_plots(plots)
    sections = []  # (out, record, runs, broken)
    for o in map(os.fspath, outs):
        for record in storage.experiments_in(o, experiments):
            runs, broken = storage.experiment_runs(o, record)
            if broken and warn is not None:
                warn(storage.broken_line(o, broken))
            if runs:
                sections.append((o, record, runs, broken))
            elif broken:
                sections.append((o, record, [], broken))
    if not any(runs for _, _, runs, _ in sections):
        shown = ", ".join(repr(o) for o in map(os.fspath, outs))
        raise ValueError(f"no finished runs under {shown}; run `bilevel bench CONFIG --out {os.fspath(outs[0])}` first.")
    present = set().union(*(cols.keys() for _, _, runs, _ in sections for _, cols in runs))
    wanted = [("metric", m) for m in metrics or ()] + [("metric", y) for _, y in plots or ()]
    if target_metric is not None:
        wanted.append(("target metric", target_metric))
    for what, name in wanted:
        if name not in present:
            raise ValueError(unknown_metric(name, present, ", ".join(map(os.fspath, outs)), what))
    path = path or os.path.join(os.fspath(outs[0]), "report.md")
    folder = os.path.dirname(os.path.abspath(path))
    single = len(sections) == 1
    lines: list[str] = []
    if not single or title:
        lines += [f"# {title or 'report'}", ""]
    if notes:
        lines += [notes.strip(), ""]
    per_folder = defaultdict(int)
    for o, _, _, _ in sections:
        per_folder[o] += 1
    for o, record, runs, broken in sections:
        level = "#" if single and not title else "##"
        if not runs:
            lines += [f"{level} {record['id']} (`{os.path.basename(os.path.normpath(o))}`)", "",
                      "No readable runs.", ""]
            lines += [f"- `{rid}`: {why}" for rid, why in broken] + [""]
            continue
        several = per_folder[o] > 1
        prefix = ("" if len(outs) == 1 else os.path.basename(os.path.normpath(o)) + "_") + \
                 (f"{record['id']}_" if several else "")
        lines += _section(o, record, runs, broken, folder, level, metrics=metrics, target_metric=target_metric,
                          target=target, above=above, fraction=fraction, plots=plots, prefix=prefix,
                          several=several)
    atomic_write_text(path, "\n".join(lines))
    return path
