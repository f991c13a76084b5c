"""Curves from a results folder: median over seeds with a 20–80 % quantile band, one line per configuration.

Each run's history is a step function of x (time, iteration or HVPs); the seeds of one configuration
are put on a common grid (the last value logged at or before each grid point) and summarised there.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import Optional, Sequence

import numpy as np

from . import storage

X_COLUMNS = {"time": "time", "iteration": "iteration", "hvp": "hvp"}
X_LABELS = {"time": "solver time (s)", "iteration": "outer iteration", "hvp": "Hessian-vector products"}
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


def load_curves(out: str, y: str, x: str = "time") -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """{label: [(x values, y values) per seed]} for runs that logged ``y``."""
    if x not in X_COLUMNS:
        raise ValueError(f"x must be one of {', '.join(X_COLUMNS)}; got {x!r}.")
    curves: dict[str, list] = defaultdict(list)
    seen_columns: set[str] = set()
    for meta, cols in storage.iter_runs(out):
        seen_columns.update(cols)
        if y not in cols or X_COLUMNS[x] not in cols:
            continue
        xs = np.asarray(cols[X_COLUMNS[x]], dtype=float)
        ys = np.asarray(cols[y], dtype=float)
        curves[meta["label"]].append((xs, ys))
    if not curves:
        found = ", ".join(sorted(seen_columns)) or "none (no finished runs)"
        raise ValueError(f"no run in {out!r} logged {y!r}; columns found: {found}.")
    return dict(curves)


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


def plot(out: str, y: str = "hypergrad_norm", x: str = "time", path: Optional[str] = None,
         title: Optional[str] = None, log_y: Optional[bool] = None) -> str:
    """Draw the figure; returns the path written (default ``OUT/figures/<y>_vs_<x>.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = load_curves(out, y, x)
    path = path or os.path.join(out, "figures", f"{y}_vs_{x}.png")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".png", ".pdf", ".svg"):
        raise ValueError(f"the figure file must end in .png, .pdf or .svg; got {path!r}.")
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
    tmp = path + ".tmp" + ext
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def time_to_target(xs: np.ndarray, ys: np.ndarray, target: float, above: bool = False) -> float:
    """First x at which y reaches the target (y ≤ target, or y ≥ target with ``above``); NaN if never."""
    hit = ys >= target if above else ys <= target
    idx = np.flatnonzero(hit & np.isfinite(ys))
    return float(xs[idx[0]]) if idx.size else math.nan
