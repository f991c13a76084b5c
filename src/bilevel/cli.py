"""Command line: ``bilevel run | bench | plot | report | list | show``.

    bilevel run synthetic --solver lancbio --max-iter 500            # progress bar, summary, CSV history
    bilevel run synthetic --solver subbio -P n=300 -P condition=1e3 -O lr_x=0.5
    bilevel list solvers            bilevel show lancbio
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import os
import sys
import warnings
from typing import Any, Sequence

from ._validation import suggest


def _parse_assignments(items: Sequence[str], flag: str) -> dict[str, Any]:
    out = {}
    for item in items or ():
        if "=" not in item:
            raise SystemExit(f"bilevel: {flag} expects KEY=VALUE; got {item!r}.")
        key, raw = item.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw  # a bare word, e.g. subproblem=minres
        out[key.strip().replace("-", "_")] = value
    return out


def _catalogue() -> dict[str, dict[str, Any]]:
    from .inner import INNER_SOLVERS
    from .linear_solvers import LINEAR_SOLVERS
    from .problems import PROBLEMS
    from .solvers import SOLVERS

    return {"solvers": dict(SOLVERS), "problems": dict(PROBLEMS), "linear-solvers": dict(LINEAR_SOLVERS),
            "inner-solvers": dict(INNER_SOLVERS)}


def _first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.splitlines()[0] if doc else ""


def cmd_list(args: argparse.Namespace) -> int:
    cat = _catalogue()
    kinds = [args.what] if args.what else list(cat)
    for kind in kinds:
        print(f"{kind}:")
        for name, obj in sorted(cat[kind].items()):
            print(f"  {name:<16} {_first_line(obj)}")
    return 0


def _shown(value: Any, defaults: Any, keys: Sequence[str]) -> str:
    if value is not None:
        return repr(value)
    fallback = next((defaults[k] for k in keys if k in defaults), None)
    return "from settings/problem scales" + (f", else {fallback!r}" if fallback is not None else "")


def _algorithm_rows(entry: Any) -> list[tuple[str, str]]:
    """Options of a factory-built algorithm, its parts' options by dotted name (short form in brackets)."""
    from .solvers.aid import short_name

    solver = entry.create()
    rows = []
    for name, value in solver.options().items():
        if hasattr(value, "options"):
            rows.append((name, type(value).__name__))
            for option, v in value.options().items():
                dotted = f"{name}.{option}"
                short = short_name(name, option)
                label = dotted + (f" [{short}]" if short and short != dotted else "")
                rows.append((label, _shown(v, solver.defaults, [dotted] + ([short] if short else []))))
        else:
            rows.append((name, _shown(value, solver.defaults, [name])))
    return rows


def _option_rows(obj: Any) -> list[tuple[str, str]]:
    rows = []
    if hasattr(obj, "factory") and hasattr(obj, "create"):
        return _algorithm_rows(obj)
    if dataclasses.is_dataclass(obj):
        defaults = getattr(obj, "defaults", {})
        for f in dataclasses.fields(obj):
            if f.default is not dataclasses.MISSING:
                value = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                value = f.default_factory()  # type: ignore[misc]
            else:
                rows.append((f.name, "(required)"))
                continue
            rows.append((f.name, _shown(value, defaults, [f.name])))
    else:
        for p in inspect.signature(obj).parameters.values():
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            rows.append((p.name, "(required)" if p.default is p.empty else repr(p.default)))
    return rows


def cmd_show(args: argparse.Namespace) -> int:
    cat = _catalogue()
    for kind, table in cat.items():
        if args.name in table:
            obj = table[args.name]
            print(f"{args.name} ({kind[:-1]}: {getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')})")
            print("\noptions (name: default):")
            for name, shown in _option_rows(obj):
                print(f"  {name:<28} {shown}")
            print()
            print(inspect.getdoc(obj) or "(no docstring)")
            return 0
    names = [n for table in cat.values() for n in table]
    print(f"bilevel: nothing named {args.name!r}.{suggest(args.name, names)} Try `bilevel list`.", file=sys.stderr)
    return 2


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    from .history import atomic_write_text
    from .problems import get_problem
    from .run import solve
    from .solvers import get_solver

    saved = warnings.showwarning
    popts = _parse_assignments(args.problem_opt, "-P/--problem-opt")
    sopts = _parse_assignments(args.solver_opt, "-O/--solver-opt")
    for flag in ("dataset", "corruption", "data_dir"):  # shorthands for the data problems' options
        if getattr(args, flag) is not None:
            popts[flag] = getattr(args, flag)
    if args.dtype:
        popts["dtype"] = getattr(torch, args.dtype)
    if args.device:
        popts["device"] = args.device
    def show(message, *_args, **_kwargs):  # one readable line instead of Python's file:line form
        print(f"bilevel: warning: {message}", file=sys.stderr)

    try:
        warnings.showwarning = show
        problem = get_problem(args.problem, **popts)
        solver = get_solver(args.solver, **sopts)
        result = solve(
            problem, solver, max_iter=args.max_iter, max_time=args.max_time, eval_every=args.eval_every,
            seed=args.seed, tol=args.tol, progress=not args.no_progress,
        )
    except (ValueError, TypeError, KeyError) as err:
        print(f"bilevel: {err}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = saved
    print(result.summary())
    out = args.out or os.path.join("results", f"{problem.name}_{solver.name}_seed{args.seed}.csv")
    result.history.to_csv(out)
    meta = {
        "problem": problem.name, "problem_options": {k: repr(v) for k, v in popts.items()},
        "problem_info": {k: v for k, v in problem.info.items() if isinstance(v, (int, float, str, bool))},
        "solver": solver.name, "options": result.options, "seed": args.seed, "status": result.status,
        "message": result.message, "iterations": result.iterations, "time": result.time,
        "counts": result.counts.as_dict(), "events": result.events, "torch": torch.__version__,
    }
    atomic_write_text(os.path.splitext(out)[0] + ".json", json.dumps(meta, indent=2) + "\n")
    print(f"history written to {out} (metadata: {os.path.splitext(out)[0]}.json)")
    return 0 if result.status != "diverged" else 1


def cmd_bench(args: argparse.Namespace) -> int:
    """Exit 0 when every run of the experiment is done, 1 when some run failed, 2 for bad input (config,
    --set, backend, a results folder holding another experiment), 130 on Ctrl-C (finished runs kept)."""
    import shlex

    from .bench import BackendError, ConfigError, SweepInterrupted, load, run_sweep

    try:
        overrides = {}
        for item in args.set or ():
            if "=" not in item:
                raise ConfigError(f"--set expects PATH=VALUE, e.g. problem.options.n=1000; got {item!r}.")
            key, value = item.split("=", 1)
            overrides[key.strip()] = value
        experiment = load(args.config, overrides)
        summary = run_sweep(experiment, args.out, backend=args.backend, n_jobs=args.n_jobs, scheduler=args.scheduler,
                            progress=not args.no_progress, retry_failed=args.retry_failed,
                            add_experiment=args.add_experiment)
    except SweepInterrupted as stop:
        again = ["bilevel", "bench", args.config, "--out", args.out]
        for item in args.set or ():
            again += ["--set", item]
        if args.backend != "loky":
            again += ["--backend", args.backend]
        if args.scheduler:
            again += ["--scheduler", args.scheduler]
        if args.n_jobs:
            again += ["--n-jobs", str(args.n_jobs)]
        print(f"bilevel: interrupted: {stop.finished} of {stop.total} runs are finished and kept ({stop.ran} "
              f"finished in this session); resume with the same command: {shlex.join(again)}", file=sys.stderr)
        return 130
    except (ValueError, BackendError) as err:  # ConfigError, SpecMismatch, StoreError are ValueErrors
        print(f"bilevel: {err}", file=sys.stderr)
        return 2
    print(f"{summary}; results in {args.out}")
    if summary.failed:
        print(f"bilevel: {summary.failed_line()}", file=sys.stderr)
        return 1
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Exit 0 with the figure written, 2 for a missing folder, an unknown metric or experiment."""
    from .bench.plot import plot
    from .bench.storage import print_warning

    try:
        path = plot(args.dir, y=args.y, x=args.x, path=args.out, title=args.title, experiment=args.experiment,
                    warn=print_warning)
    except (ValueError, FileNotFoundError) as err:
        print(f"bilevel: {err}", file=sys.stderr)
        return 2
    print(f"figure written to {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Exit 0 with the report written, 2 for a missing folder, an unknown metric, plot or experiment."""
    from .bench.report import report
    from .bench.storage import print_warning

    try:
        notes = None
        if args.notes:
            try:
                with open(args.notes) as fh:
                    notes = fh.read()
            except OSError as err:
                raise ValueError(f"--notes: cannot read {args.notes!r} ({err.strerror or err}).") from None
        path = report(args.dir if len(args.dir) > 1 else args.dir[0], target_metric=args.target_metric,
                      target=args.target, above=args.above, fraction=args.target_fraction,
                      path=args.out, metrics=args.metrics, title=args.title, plots=args.plots, notes=notes,
                      experiments=args.experiment, warn=print_warning)
    except (ValueError, FileNotFoundError) as err:
        print(f"bilevel: {err}", file=sys.stderr)
        return 2
    print(f"report written to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bilevel", description="Bilevel optimisation with Krylov hypergradients.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one solver on one problem")
    run.add_argument("problem", help="problem name (see `bilevel list problems`)")
    run.add_argument("--solver", default="lancbio", help="solver name (default: lancbio)")
    run.add_argument("--max-iter", type=int, default=1000)
    run.add_argument("--max-time", type=float, default=None, help="seconds of solver time")
    run.add_argument("--eval-every", type=int, default=10)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--tol", type=float, default=None, help="stop when the hypergradient norm is below this")
    run.add_argument("-P", "--problem-opt", action="append", metavar="KEY=VALUE", help="problem option, repeatable")
    run.add_argument("-O", "--solver-opt", action="append", metavar="KEY=VALUE", help="solver option, repeatable")
    run.add_argument("--dataset", default=None, help="hyperclean: mnist, fashion_mnist, kmnist or digits")
    run.add_argument("--corruption", type=float, default=None, help="hyperclean: fraction of corrupted labels")
    run.add_argument("--data-dir", default=None, help="hyperclean: folder with the dataset files "
                     "(default: $BILEVEL_DATA_DIR, else the download cache)")
    run.add_argument("--dtype", choices=("float64", "float32"), default=None)
    run.add_argument("--device", default=None, help="e.g. cpu or cuda")
    run.add_argument("--out", default=None, help="CSV path for the history (default results/<problem>_<solver>_seed<seed>.csv)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    bench = sub.add_parser(
        "bench", help="run a YAML experiment grid (parallel, resumable)",
        description="Run every (solver configuration × seed) of an experiment file into a results folder. "
                    "Re-running the same command resumes: finished runs are kept, damaged ones redone. Exit "
                    "status: 0 all runs done, 1 some run failed, 2 bad input, 130 interrupted.")
    bench.add_argument("config", help="experiment YAML (see configs/ and the README's Experiments section)")
    bench.add_argument("--out", required=True,
                       help="results folder (required); it records the experiment, so re-running the same "
                            "config resumes and another config is refused (see --add-experiment)")
    bench.add_argument("--add-experiment", action="store_true",
                       help="add a config that differs from the one --out holds as a distinct experiment "
                            "(plot and report keep experiments apart); default: refuse it")
    bench.add_argument("--backend", default="loky",
                       help="loky (local processes), dask, ray or sequential (default: loky)")
    bench.add_argument("--scheduler", default=None,
                       help="Dask scheduler address (tcp://host:port) or Ray address (default: a local "
                            "Dask cluster / Ray instance)")
    bench.add_argument("--n-jobs", type=int, default=None,
                       help="runs in parallel (default: the CPU count); results do not depend on it: each "
                            "run uses run.threads torch threads (default 1), set in the config")
    bench.add_argument("--retry-failed", action="store_true",
                       help="re-run the runs recorded as failed (default: keep them)")
    bench.add_argument("--set", action="append", metavar="PATH=VALUE",
                       help="override a config value by dotted path, e.g. problem.options.n=1000 or "
                            "seeds=[1,2] (repeatable; default: none)")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    bench.set_defaults(func=cmd_bench)

    plt = sub.add_parser("plot", help="plot a metric from a results folder (median and 20-80%% band over seeds)")
    plt.add_argument("dir", help="results folder written by `bilevel bench`")
    plt.add_argument("--x", choices=("time", "iteration", "hvp"), default="time",
                     help="x axis: solver time, outer iteration or Hessian-vector products (default: time)")
    plt.add_argument("--y", default=None,
                     help="metric column, e.g. hypergrad_norm, residual, test_accuracy (default: per problem: "
                          "test_accuracy for hyperclean, hypergrad_norm otherwise)")
    plt.add_argument("--experiment", default=None,
                     help="which experiment of DIR to plot, by name or hash prefix (required when DIR holds "
                          "several; default: its only one)")
    plt.add_argument("--out", default=None,
                     help="figure file, .png, .pdf or .svg (default: DIR/figures/<y>_vs_<x>.png)")
    plt.add_argument("--title", default=None, help="figure title (default: none)")
    plt.set_defaults(func=cmd_plot)

    rep = sub.add_parser("report", help="write a Markdown summary of one or more results folders")
    rep.add_argument("dir", nargs="+", help="results folder(s); one section per experiment (several folders "
                                            "need --out)")
    rep.add_argument("--out", default=None, help="Markdown path (default: DIR/report.md)")
    rep.add_argument("--experiment", action="append", default=None,
                     help="only this experiment, by name or hash prefix (repeatable; default: all)")
    rep.add_argument("--target-metric", default=None,
                     help="metric of the time-to-target column (default: per problem: test_accuracy ≥ 0.8 "
                          "for hyperclean, hypergrad_norm ≤ 1e-2 otherwise)")
    rep.add_argument("--target", type=float, default=None,
                     help="target value (default: 0.8 for accuracies, 1e-2 for hypergrad_norm)")
    side = rep.add_mutually_exclusive_group()
    side.add_argument("--above", dest="above", action="store_const", const=True, default=None,
                      help="the target is reached from below: metric ≥ target (default for accuracies)")
    side.add_argument("--below", dest="above", action="store_const", const=False,
                      help="the target is reached from above: metric ≤ target (default for norms and losses)")
    rep.add_argument("--target-fraction", type=float, default=None,
                     help="time to reach this fraction of each run's own final value instead of --target "
                          "(e.g. 0.99 with --above; default: off)")
    rep.add_argument("--metrics", nargs="*", default=None,
                     help="final metrics to tabulate (default: those of hypergrad_norm, residual, "
                          "test_accuracy that the runs logged)")
    rep.add_argument("--plots", nargs="*", default=None, metavar="X:METRIC",
                     help="figures as X:METRIC pairs, X one of time, iteration, hvp (default: time against "
                          "the target metric and the residual, where logged)")
    rep.add_argument("--title", default=None, help="report title (default: the experiment name)")
    rep.add_argument("--notes", default=None, help="Markdown file inserted after the header (default: none)")
    rep.set_defaults(func=cmd_report)

    lst = sub.add_parser("list", help="list solvers, problems and linear solvers")
    lst.add_argument("what", nargs="?", choices=("solvers", "problems", "linear-solvers", "inner-solvers"))
    lst.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="options, defaults and documentation of a solver, problem or linear solver")
    show.add_argument("name")
    show.set_defaults(func=cmd_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
