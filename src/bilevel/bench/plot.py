"""Curves from a results folder: median over seeds with a 20–80 % quantile band, one line per configuration.

Each run's history is a step function of x (time, iteration, HVPs, samples seen, or epochs over either
level's data: samples seen / data size); the seeds of one configuration
are put on a common grid (the last value logged at or before each grid point) and summarised there.
A figure shows one experiment: a folder holding several (``bench --add-experiment``) needs
``experiment=`` (``--experiment``).  Unreadable runs are skipped and named in a warning; a metric no
run logged is an error listing the metrics that were logged.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from . import storage

X_COLUMNS = {"time": "time", "iteration": "iteration", "hvp": "hvp", "samples": "samples", "epochs_g": "epochs_g",
             "epochs_f": "epochs_f"}
X_LABELS = {"time": "solver time (s)", "iteration": "outer iteration", "hvp": "Hessian-vector products",
            "samples": "samples seen (both levels)", "epochs_g": "passes over the lower level's data (epochs)",
            "epochs_f": "passes over the upper level's data (epochs)"}
Y_LABELS = {
    "hypergrad_norm": "‖∇φ(x)‖ (true hypergradient)",
    "hypergrad_est_norm": "‖D‖ (estimated hypergradient)",
    "hypergrad_rel_error": "‖D − ∇φ‖ / ‖∇φ‖",
    "residual": "‖A v − b‖",
    "grad_y_g_norm": "‖∇_y g(x, y)‖",
    "f": "f(x, y)",
    "phi": "φ(x) = f(x, y*(x))",
    "test_accuracy": "test accuracy",
    "test_loss": "test loss",
    "val_loss": "validation loss",
}


DEFAULT_Y = {"hyperclean": "test_accuracy", "newsgroups": "test_loss"}  # per problem; hypergrad_norm otherwise


def default_y(problem: Optional[str]) -> str:
    """The metric plotted when none is named: test accuracy for hyper-cleaning and test loss for 20 Newsgroups
    (they have no true hypergradient), the true hypergradient norm otherwise."""
    return DEFAULT_Y.get(problem or "", "hypergrad_norm")


def unknown_metric(name: str, present: Iterable[str], out: str, what: str = "metric") -> str:
    """'no run in OUT logged 'x'. Did you mean …? Metrics available: …' (the error for an unknown column)."""
    from .._validation import suggest

    present = sorted(present)
    listed = ", ".join(present) if present else "none (no finished runs)"
    return f"no run in {out!r} logged {what} {name!r}.{suggest(name, present)} Metrics available: {listed}."


def check_x(x: str) -> str:
    if x not in X_COLUMNS:
        from .._validation import suggest

        raise ValueError(f"unknown x axis {x!r}.{suggest(x, X_COLUMNS)} Choose one of {', '.join(X_COLUMNS)}.")
    return x


def select_experiment(out: str, experiment: Optional[str] = None) -> dict:
    """The one experiment of ``out`` a figure shows: the folder's only one, or the one named."""
    records = storage.experiments_in(out, [experiment] if experiment else None)
    if len(records) > 1:
        ids = ", ".join(r["id"] for r in records)
        raise ValueError(f"{out!r} holds {len(records)} experiments ({ids}); a figure shows one: choose it with "
                         "--experiment NAME.")
    return records[0]


def load_curves(out: str, y: str, x: str = "time", experiment: Optional[str] = None,
                warn: Optional[Callable[[str], None]] = None) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """{label: [(x values, y values) per seed]} for the runs of one experiment that logged ``y``.

    Unreadable runs are skipped and reported through ``warn`` (default: ``warnings.warn``)."""
    check_x(x)
    record = select_experiment(out, experiment)
    runs, broken = storage.experiment_runs(out, record)
    if broken:
        (warn or _warn)(storage.broken_line(out, broken))
    return _curves(runs, y, x, out)


def _curves(runs, y: str, x: str, out: str) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    curves: dict[str, list] = defaultdict(list)
    seen_columns: set[str] = set()
    for meta, cols in runs:
        seen_columns.update(cols)
        if y not in cols or X_COLUMNS[x] not in cols:
            continue
        xs = np.asarray(cols[X_COLUMNS[x]], dtype=float)
        ys = np.asarray(cols[y], dtype=float)
        curves[meta["label"]].append((xs, ys))
    if not curves:
        if not runs:
            raise ValueError(f"no finished runs in {out!r}; run `bilevel bench CONFIG --out {out}` first.")
        if y in seen_columns and X_COLUMNS[x] not in seen_columns:
            raise ValueError(f"no run in {out!r} logged the x axis {x!r} (runs written before the library "
                             f"counted it, or a problem without data for the epochs); choose another --x: "
                             f"{', '.join(k for k, c in X_COLUMNS.items() if c in seen_columns)}.")
        raise ValueError(unknown_metric(y, seen_columns, out))
    return dict(curves)


def _warn(text: str) -> None:
    import warnings

    warnings.warn(text, stacklevel=3)


def summarise(runs: Sequence[tuple[np.ndarray, np.ndarray]], points: int = 200, log_x: bool = False):
    """Common grid, median and 20/80 % quantiles over the runs (NaN where no run has a value yet)."""
    lo = min(float(np.nanmin(xs)) for xs, _ in runs)
    hi = max(float(np.nanmax(xs)) for xs, _ in runs)
    if log_x and lo > 0:
        grid = np.geomspace(lo, hi, points)
    else:
        grid = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
    table = np.full((len(runs), grid.size), np.nan)
    for i, (xs, ys) in enumerate(runs):
        order = np.argsort(xs, kind="stable")
        xs, ys = xs[order], ys[order]
        idx = np.searchsorted(xs, grid, side="right") - 1
        valid = (idx >= 0) & (grid <= xs[-1] * (1 + 1e-12) + 1e-15)
        table[i, valid] = ys[idx[valid]]
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(table, axis=0)
            q20 = np.nanquantile(table, 0.2, axis=0)
            q80 = np.nanquantile(table, 0.8, axis=0)
    # a median over fewer seeds than the configuration has would jump where the fastest runs end
    incomplete = np.isnan(table).any(axis=0)
    med[incomplete] = q20[incomplete] = q80[incomplete] = np.nan
    return grid, med, q20, q80


def plot(out: str, y: Optional[str] = None, x: str = "time", path: Optional[str] = None,
         title: Optional[str] = None, log_y: Optional[bool] = None, experiment: Optional[str] = None,
         warn: Optional[Callable[[str], None]] = None, runs=None) -> str:
    """Draw the figure of one experiment; returns the path written (default ``OUT/figures/<y>_vs_<x>.png``,
    ``OUT/figures/<experiment>_<y>_vs_<x>.png`` when the folder holds several experiments).

    ``y`` defaults per problem (:func:`default_y`); ``experiment`` is required when the folder holds
    several; ``runs``: already loaded (meta, columns) pairs (the report passes them)."""
    if path is not None:
        ext = os.path.splitext(path)[1].lower()
        if ext not in (".png", ".pdf", ".svg"):
            raise ValueError(f"the figure file must end in .png, .pdf or .svg; got {path!r}.")
    check_x(x)
    prefix = ""
    if runs is None:
        record = select_experiment(out, experiment)
        runs, broken = storage.experiment_runs(out, record)
        if broken:
            (warn or _warn)(storage.broken_line(out, broken))
        if len(storage.experiments_in(out)) > 1:
            prefix = f"{record['id']}_"
        title = title or (record["id"] if prefix else None)
    if y is None:
        y = default_y(runs[0][0].get("problem") if runs else None)
    curves = _curves(runs, y, x, out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = path or os.path.join(out, "figures", f"{_safe(prefix)}{y}_vs_{x}.png")
    ext = os.path.splitext(path)[1].lower()
    all_y = np.concatenate([ys for runs in curves.values() for _, ys in runs])
    positive = all_y[np.isfinite(all_y)]
    if log_y is None:
        log_y = bool(positive.size and positive.min() > 0 and positive.max() / positive.min() > 100)
    fig, ax = plt.subplots(figsize=(7.2, 4.6), dpi=110)
    labels = sorted(curves)
    # beyond ten lines the default colour cycle repeats: the dark tab20 shades first (solid), then the
    # light ones (dashed), so that neighbouring labels never share a hue
    tab20 = plt.get_cmap("tab20").colors
    colours = tab20[0::2] + tab20[1::2] if len(labels) > 10 else plt.get_cmap("tab10").colors
    for i, label in enumerate(labels):
        grid, med, q20, q80 = summarise(curves[label])
        (line,) = ax.plot(grid, med, label=f"{label}" + (f" ({len(curves[label])} seeds)" if len(curves[label]) > 1 else ""),
                          linewidth=1.6, color=colours[i % len(colours)], linestyle="-" if i < 10 else "--")
        if len(curves[label]) > 1:
            ax.fill_between(grid, q20, q80, color=line.get_color(), alpha=0.2, linewidth=0)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel(Y_LABELS.get(y, y))
    ax.grid(True, which="major", alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7 if len(labels) > 8 else 8, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), ".tmp-" + os.path.basename(path))
    try:
        fig.savefig(tmp, format=ext[1:])
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _safe(name: str) -> str:
    """An experiment id as a file-name part (``name@hash`` keeps its letters, digits, '-', '_', '@')."""
    return "".join(c if c.isalnum() or c in "-_@." else "_" for c in name)


def time_to_target(xs: np.ndarray, ys: np.ndarray, target: float, above: bool = False) -> float:
    """First x at which y reaches the target (y ≤ target, or y ≥ target with ``above``); NaN if never."""
    hit = ys >= target if above else ys <= target
    idx = np.flatnonzero(hit & np.isfinite(ys))
    return float(xs[idx[0]]) if idx.size else math.nan
