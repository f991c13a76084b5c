"""Command line: ``bilevel run | bench | plot | report | list | show``.

    bilevel run synthetic --solver lancbio --max-iter 500            # progress bar, summary, CSV history
    bilevel run synthetic --solver subbio -P n=300 -P condition=1e3 -O lr_x=0.5
    bilevel run hyperclean --dataset mnist -P n_train=20000 --corruption 0.5 --batch-size 256   # mini-batches
    bilevel list solvers            bilevel show lancbio            bilevel --version

Errors: every error that reaches the command line is one line on stderr, ``bilevel: <what> — <fix>``, with
exit code 2 for usage and input errors (a bad option, an unknown name, missing or corrupted data, an
unusable device) and 1 for a run that failed (an exception raised during the solve, or a run that ended
``diverged`` or ``not_strongly_convex``); ``--traceback`` (or ``BILEVEL_DEBUG=1``) also prints the Python stack.  Ctrl-C exits with
code 130; ``bilevel run`` then writes the history so far (status ``stopped``, ``interrupted: true``).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import inspect
import json
import math
import os
import shutil
import signal
import sys
import textwrap
import traceback
import warnings
from typing import Any, Iterator, Sequence

from . import __version__
from ._validation import suggest

#: problems with dy·N below this (N: training samples; dy² without a data set) run on one thread by default:
#: one oracle call is then a few milliseconds of work, too little to amortise thread synchronisation, and on
#: a machine shared with other work extra threads make such runs several times slower.
SMALL_PROBLEM = 10**7


class CLIError(Exception):
    """A usage or input error: reported in one line, exit code 2."""


class RunFailed(Exception):
    """An exception raised during a run: reported in one line, exit code 1."""


def _assignment(text: str) -> tuple[str, Any]:
    """argparse type of -P/-O: ``KEY=VALUE`` with VALUE a Python literal (1e3, True, [1, 2]) or a bare word."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE; got {text!r} (e.g. lr_x=0.5)")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    if not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE; got {text!r}, which has no KEY")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = raw  # a bare word, e.g. subproblem=minres
    return key, value


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}; got {value}")
        return value

    return parse


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number; got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive finite number; got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors ("bilevel: <what> — see `bilevel run --help`"), exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"bilevel: {message} — see `{self.prog} --help`\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if not action.option_strings or "default" in text or unset:
            return text
        return f"{text} (default: %(default)s)"


def _torch_version() -> str:
    import torch

    return torch.__version__


def _catalogue() -> dict[str, dict[str, Any]]:
    from .inner import INNER_SOLVERS
    from .linear_solvers import LINEAR_SOLVERS
    from .problems import PROBLEMS
    from .solvers import SOLVERS

    return {"solvers": dict(SOLVERS), "problems": dict(PROBLEMS), "linear-solvers": dict(LINEAR_SOLVERS),
            "inner-solvers": dict(INNER_SOLVERS)}


def _description(obj: Any) -> str:
    """The docstring's first paragraph (its summary sentence), on one line, without reST markup."""
    doc = inspect.getdoc(obj) or ""
    text = " ".join(doc.split("\n\n", 1)[0].split()).replace("``", "")
    return text[:-1] + "." if text.endswith(":") else text


def cmd_list(args: argparse.Namespace) -> int:
    cat = _catalogue()
    kinds = [args.what] if args.what else list(cat)
    width = max(60, min(shutil.get_terminal_size((100, 24)).columns, 120))
    for kind in kinds:
        print(f"{kind}:")
        for name, obj in sorted(cat[kind].items()):
            head = f"  {name:<16} "
            print(textwrap.fill(_description(obj) or "(no description)", width=width, initial_indent=head,
                                subsequent_indent=" " * len(head), break_on_hyphens=False))
    return 0


_RESOLVED = "from the experiment's settings or the problem's scales"


def _shown(value: Any, defaults: Any, keys: Sequence[str], required: bool = False, auto: str = "") -> str:
    """How ``show`` describes an option: its value, or where an unset one comes from.  A problem built from
    callables has no experiment settings and no scales, so an option without a library default is then the
    user's to pass, or automatic (``auto``: the rule, for the AID loop's step sizes)."""
    if value is not None:
        return repr(value)
    fallback = next((defaults[k] for k in keys if k in defaults and defaults[k] is not None), None)
    if fallback is not None:
        return f"{_RESOLVED}, else {fallback!r}"
    if auto:
        return f"{_RESOLVED}, else auto ({auto})"
    if required:
        return f"{_RESOLVED}; required: pass it for your own problem"
    return f"{_RESOLVED}, else None (see below)"


def _algorithm_rows(entry: Any) -> list[tuple[str, str]]:
    """Options of a factory-built algorithm, its parts' options by dotted name (short form in brackets)."""
    from .auto_steps import RULES
    from .solvers.aid import _AUTO_PARTS, AID, short_name

    solver = entry.create()
    automatic = isinstance(solver, AID)
    required = set(getattr(solver, "required", ()))
    auto_defaults = dict(getattr(solver, "auto_defaults", {}))
    top_defaults = dict(solver.defaults)
    if getattr(solver, "default_order", None) is not None:
        top_defaults.setdefault("order", solver.default_order)
    rows = []
    for name, value in solver.options().items():
        if hasattr(value, "options"):
            rows.append((name, type(value).__name__))
            presettable = set(getattr(value, "presettable", ()))
            part_defaults = dict(getattr(value, "defaults", {}))
            for option, v in value.options().items():
                dotted = f"{name}.{option}"
                short = short_name(name, option)
                label = dotted + (f" [{short}]" if short and short != dotted else "")
                keys = [dotted] + ([short] if short else [])
                defaults = {**{k: part_defaults.get(option) for k in keys}, **solver.defaults}
                auto = RULES[short] if automatic and (name, option) in _AUTO_PARTS and option in presettable else ""
                text = _shown(v, defaults, keys, option in presettable, auto)
                by_auto = next((auto_defaults[k] for k in keys if k in auto_defaults), None)
                if v is None and by_auto is not None:  # LancBiO's m under an automatic λ (its AUTO_DEFAULTS)
                    text += f"; with lr_x auto: auto ({by_auto!r}, short epochs while the x-steps are long)"
                rows.append((label, text))
        elif name in _OUTER_ROWS and value is None:
            rows.append((name, _OUTER_ROWS[name]))
        else:
            auto = RULES[name] if automatic and name == "lr_x" else ""
            rows.append((name, _shown(value, top_defaults, [name], name in required, auto)))
    return rows


#: how ``show`` describes the unset options of an outer torch.optim optimizer (bilevel.outer)
_OUTER_ROWS = {
    "outer": "None: the plain step x − λ·D with lr_x; or a torch.optim optimizer: -O outer=adam (names: adam, "
             "adamw, sgd, rmsprop, adagrad, ...; or a dotted path torch.optim.NAdam); lr_x is then not used",
    "outer_options": "None: the optimizer's keyword arguments, e.g. -O outer.lr=1e-2",
    "outer_scheduler": "None: no scheduler; e.g. -O outer_scheduler=steplr (stepped once per iteration)",
    "outer_scheduler_options": "None: the scheduler's keyword arguments, e.g. -O outer_scheduler.step_size=100",
}


def _option_rows(obj: Any) -> list[tuple[str, str]]:
    rows = []
    if hasattr(obj, "factory") and hasattr(obj, "create"):
        return _algorithm_rows(obj)
    if dataclasses.is_dataclass(obj):
        from .auto_steps import RULES

        defaults = getattr(obj, "defaults", {})
        required = set(getattr(obj, "presettable", ())) | set(getattr(obj, "required", ()))
        automatic = set(getattr(obj, "auto_options", ()))
        for f in dataclasses.fields(obj):
            if f.default is not dataclasses.MISSING:
                value = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                value = f.default_factory()  # type: ignore[misc]
            else:
                rows.append((f.name, "(required)"))
                continue
            if f.name in _OUTER_ROWS and value is None:
                rows.append((f.name, _OUTER_ROWS[f.name]))
                continue
            auto = RULES[f.name] if f.name in automatic else ""
            rows.append((f.name, _shown(value, defaults, [f.name], f.name in required, auto)))
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
            rows = _option_rows(obj)
            for name, shown in rows:
                print(f"  {name:<28} {shown}")
            if any(_RESOLVED in shown for _, shown in rows):
                print(textwrap.fill(
                    "An option resolved \"from the experiment's settings or the problem's scales\" takes the "
                    "solver's published value for a built-in problem's experiment, else the problem's presets; "
                    "a BilevelProblem you build from callables has neither, so pass the options marked "
                    "required (e.g. -O lr_x=... or solver(lr_x=...)); those marked auto are then set from the "
                    "curvature of g and the hypergradients seen (bilevel.auto_steps; -O lr_y=auto asks for it "
                    "anywhere).", width=100, initial_indent="  ",
                    subsequent_indent="  "))
            print()
            print(inspect.getdoc(obj) or "(no docstring)")
            return 0
    names = [n for table in cat.values() for n in table]
    raise CLIError(f"nothing named {args.name!r}.{suggest(args.name, names)} — see `bilevel list` for every name.")


def _jsonable(value: Any) -> Any:
    """A JSON value for metadata: dtypes as their names ("float64"), devices as strings, containers
    recursively, numbers and strings as they are, anything else as its repr."""
    import torch

    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return repr(value)


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_threads(problem: Any, batch: int | None = None) -> int:
    """One thread when dy·N < ``SMALL_PROBLEM`` (N: the lower level's training samples, or the largest
    lower-level batch size ``batch`` of a mini-batch run when smaller; dy² for problems without a data
    set), else every core this process may use (``os.sched_getaffinity``)."""
    n = problem.n_samples or problem.dy
    if batch is not None:
        n = min(n, batch)
    work = problem.dy * n
    return 1 if work < SMALL_PROBLEM else _usable_cores()


def _batch_assignment(text: str) -> tuple[str, int]:
    """argparse type of --batch: ``ROLE=B`` with ROLE a batch role and B an integer >= 1."""
    from .sampling import ROLES

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected ROLE=B; got {text!r} (e.g. upper=128; roles: {', '.join(ROLES)})")
    role, raw = (part.strip() for part in text.split("=", 1))
    if role not in ROLES:
        raise argparse.ArgumentTypeError(f"unknown batch role {role!r}.{suggest(role, ROLES)} Roles: {', '.join(ROLES)}")
    return role, _count(1)(raw)


def _batches(args: argparse.Namespace) -> Any:
    """The MiniBatch that --batch-size / --batch / --batch-mode ask for, None for full-batch runs."""
    from .sampling import ROLES, MiniBatch

    sizes = dict(args.batch or ())
    if args.batch_size is None and not sizes:
        if args.batch_mode is not None:
            raise CLIError(f"--batch-mode {args.batch_mode} needs mini-batches — add --batch-size B (every role), "
                           "e.g. --batch-size 256")
        return None
    missing = [r for r in ROLES if r not in sizes]
    if args.batch_size is None and missing:
        raise CLIError(f"--batch sets the size of one role, and {', '.join(missing)} have none — add --batch-size B "
                       "for the others (e.g. --batch-size 256 --batch upper=128), or --batch for every role")
    try:
        return MiniBatch(args.batch_size, sizes=sizes, mode=args.batch_mode or "permutation")
    except (TypeError, ValueError) as err:  # pragma: no cover - the parser checked every value
        raise CLIError(_one_line(err)) from None


def _one_line(err: BaseException) -> str:
    """An exception as "<what> — <fix>" on one line."""
    what, fix = getattr(err, "what", None), getattr(err, "fix", None)
    if what and fix:
        return f"{what} — {fix}"
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(str(text).split()) or type(err).__name__


def _input_error(err: Exception, doing: str) -> CLIError:
    """An error raised while ``doing`` (before the run): input errors keep their own clear message."""
    from .datasets import DatasetError

    if isinstance(err, (ValueError, TypeError, LookupError, DatasetError)):
        return CLIError(_one_line(err))
    return CLIError(f"{doing} failed: {type(err).__name__}: {_one_line(err)} — check the options; rerun with "
                    "--traceback for the stack")


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    saved = warnings.showwarning

    def show(message, *_args, **_kwargs):  # one readable line instead of Python's file:line form
        print(f"bilevel: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = saved


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Ignore Ctrl-C while the output files are written (each write is atomic; this keeps the CSV and JSON a pair)."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: nothing to defer
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _check_out(out: str) -> None:
    """Fail before the run, not after it, when the history cannot be written where asked."""
    if os.path.splitext(out)[1].lower() == ".json":
        raise CLIError(f"--out names the CSV history, got {out!r} — give a .csv path; the metadata is written "
                       "beside it with the extension .json")
    folder = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise CLIError(f"cannot create the folder of --out {out!r} ({err.strerror or err}) — choose a writable "
                       "path") from err
    if not os.access(folder, os.W_OK):
        raise CLIError(f"cannot write into {folder} (--out {out!r}) — choose a writable path")
    if os.path.isdir(out):
        raise CLIError(f"--out {out!r} is a folder — give a file path, e.g. {os.path.join(out, 'run.csv')}")


def _write(out: str, history: Any, meta: dict) -> str:
    from .history import atomic_write_text

    meta_path = os.path.splitext(out)[0] + ".json"
    with _no_interrupts():
        history.to_csv(out)
        atomic_write_text(meta_path, json.dumps(_jsonable(meta), indent=2) + "\n")
    return meta_path


def _close_progress_bars() -> None:
    """Close a progress bar left open by an exception, so that it does not redraw after the last message."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        with contextlib.suppress(Exception):
            bar.close()


def _failure_hint(err: Exception) -> str:
    text = str(err)
    if "device" in text.lower():
        return "tensors on different devices met during the run; keep the problem's data and x0, y0 on one device"
    return "rerun with --traceback for the stack"


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    from .history import History
    from .oracles import Counts
    from .problems import PROBLEMS, get_problem
    from .run import solve
    from .solvers import get_solver

    if args.nproc is not None and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _under_torchrun(args)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    popts = dict(args.problem_opt or ())
    sopts = dict(args.solver_opt or ())
    for flag in ("dataset", "corruption", "data_dir"):  # shorthands for the data problems' options
        if getattr(args, flag) is not None:
            popts[flag] = getattr(args, flag)
    if args.dtype:
        popts["dtype"] = getattr(torch, args.dtype)
    if args.device:
        popts["device"] = args.device
    if world > 1:  # launched by torchrun: one process per rank, each on its own device
        from .distributed import init

        device = str(popts.get("device", "cpu"))
        if device == "cuda":
            popts["device"] = f"cuda:{int(os.environ.get('LOCAL_RANK', '0') or 0)}"
        try:
            init(backend="nccl" if device.startswith("cuda") else "gloo")
        except (RuntimeError, ValueError) as err:
            raise CLIError(f"cannot join the torchrun process group ({_one_line(err)}) — launch with torchrun "
                           "--nproc-per-node N -m bilevel run ..., or bilevel run ... --nproc N") from err
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    with _one_line_warnings():
        try:
            factory = PROBLEMS.lookup(args.problem)
            try:
                seeded = "seed" in inspect.signature(factory).parameters
            except (TypeError, ValueError):
                seeded = False
            if seeded and "seed" not in popts:  # --seed seeds the instance too, unless -P seed=... is given
                popts["seed"] = args.seed
            solver = get_solver(args.solver, **sopts)  # option errors before a possibly slow problem build
            batches = _batches(args)
            problem = get_problem(args.problem, **popts)
            bound = solver.bind(problem, stochastic=batches is not None)  # as solve() binds it
            if batches is not None:  # the sampler's own checks (data sizes, shared draws) before the run
                batches.start(getattr(bound, "batch_roles", {}), torch.Generator(), problem)
        except KeyboardInterrupt:
            print("bilevel: interrupted while building the problem — nothing was written", file=sys.stderr)
            return 130
        except CLIError:
            raise
        except Exception as err:
            raise _input_error(err, f"building the problem {args.problem!r}") from err
        largest = None
        if batches is not None:
            largest = max(batches.size(r) for r in ("inner", "hvp", "cross", "lower"))
        threads = args.threads or default_threads(problem, largest)
        if world > 1 and not args.threads:  # the ranks on one machine share its cores
            local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)) or world)
            threads = max(1, threads // local)
        torch.set_num_threads(threads)
        out = args.out or os.path.join("results", f"{problem.name}_{solver.name}_seed{args.seed}.csv")
        _check_out(out)
        meta: dict[str, Any] = {
            "problem": problem.name, "problem_options": popts, "problem_seed": popts.get("seed"),
            "problem_info": {k: v for k, v in problem.info.items() if isinstance(v, (int, float, str, bool))},
            "solver": solver.name, "options": bound.resolved_options(), "seed": args.seed, "threads": threads,
            "batches": batches.to_dict() if batches is not None else None,
            "limits": {"max_iter": args.max_iter, "max_time": args.max_time, "eval_every": args.eval_every,
                       "tol": args.tol},
            "torch": torch.__version__, "bilevel": __version__,
        }
        rows: list[dict] = []  # the evaluation rows so far, kept should the run end in an exception
        callbacks = []
        if args.checkpoint is not None:
            from .callbacks import Checkpoint

            callbacks.append(Checkpoint(args.checkpoint, every=args.checkpoint_every))
        if args.checkpoint is not None:
            meta["checkpoint"] = {"dir": args.checkpoint, "every": args.checkpoint_every}
        if args.resume is not None:
            meta["resumed_from"] = args.resume
        oracles = None
        if world > 1:
            from .distributed import DataParallelOracles
            from .oracles import Oracles

            oracles = DataParallelOracles(Oracles(problem))
            meta["distributed"] = {"world_size": world, "backend": torch.distributed.get_backend(),
                                   "evaluation": "replicated on every rank; rank 0 writes"}
        try:
            result = solve(
                problem, bound, max_iter=args.max_iter, max_time=args.max_time, eval_every=args.eval_every,
                seed=args.seed, tol=args.tol, progress=not args.no_progress, callback=rows.append,
                batches=batches, callbacks=callbacks, resume_from=args.resume, oracles=oracles,
            )
        except (KeyboardInterrupt, Exception) as err:
            _close_progress_bars()
            if rank != 0:  # rank 0 writes the files and reports; the others stop with the same error
                raise
            from .checkpoint import CheckpointError

            if isinstance(err, CheckpointError) and not rows:  # a usage error: nothing ran, nothing is written
                raise CLIError(_one_line(err)) from err
            history = History()
            for row in rows:
                history.append(row)
            last = rows[-1] if rows else {}
            done = last.get("iteration", -1) + 1
            where = (f"after the evaluation of iteration {done - 1}" if rows else "before the first evaluation")
            if isinstance(err, KeyboardInterrupt):
                status, message = "stopped", f"interrupted (Ctrl-C) {where}"
            else:
                status, message = "failed", f"{type(err).__name__} {where}: {_one_line(err)}"
            meta.update(status=status, interrupted=isinstance(err, KeyboardInterrupt), message=message,
                        iterations=done, time=last.get("time", 0.0),
                        counts={k: last[k] for k in Counts().as_dict() if k in last})
            meta_path = _write(out, history, meta)
            saved = f"the history so far ({len(rows)} evaluations) is in {out} (metadata {meta_path})"
            if isinstance(err, KeyboardInterrupt):
                print(f"bilevel: interrupted {where} — {saved}", file=sys.stderr)
                return 130
            raise RunFailed(f"the run failed {where}: {type(err).__name__}: {_one_line(err)} — "
                            f"{_failure_hint(err)}; {saved}") from err
    if world > 1:
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, oracles.local_counts.as_dict())
        meta["distributed"]["local_counts"] = gathered  # per rank: its calls and the samples of its shards
        torch.distributed.destroy_process_group()
        if rank != 0:
            return 0 if result.success or result.interrupted else 1
    meta.update(status=result.status, interrupted=result.interrupted, message=result.message,
                iterations=result.iterations, time=result.time, counts=result.counts.as_dict(),
                events=result.events, options=result.options)
    meta_path = _write(out, result.history, meta)
    if result.interrupted:
        print(f"bilevel: interrupted after {result.iterations} iterations — the history so far is in {out} "
              f"(metadata {meta_path}, status stopped)", file=sys.stderr)
        return 130
    print(result.summary())
    print(f"history written to {out} (metadata: {meta_path})")
    if not result.success:  # a failed run says so on stderr too, in one line, like every error
        print(f"bilevel: the run ended {result.status} after {result.iterations} iterations — "
              f"{' '.join(result.message.split())}", file=sys.stderr)
        return 1
    return 0


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
                            add_experiment=args.add_experiment,
                            devices=[d.strip() for d in args.devices.split(",")] if args.devices else None)
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
        if args.devices:
            again += ["--devices", args.devices]
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


def _under_torchrun(args: argparse.Namespace) -> int:
    """``bilevel run ... --nproc N``: run this very command under ``torchrun --standalone --nproc-per-node N``
    (one machine; for several use torchrun yourself, see the README) and return its exit code."""
    import subprocess

    argv = list(args.argv)
    cleaned, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--nproc":
            skip = True
            continue
        if item.startswith("--nproc="):
            continue
        cleaned.append(item)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           "-m", "bilevel", *cleaned]
    return subprocess.call(cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bilevel", description="Bilevel optimisation with Krylov hypergradients.",
                     epilog="Errors are one line; --traceback (or BILEVEL_DEBUG=1) adds the Python stack. Exit "
                     "codes: 0 done, 1 the run failed, diverged or found g not strongly convex, 2 a usage or input error, 130 interrupted.")
    parser.add_argument("--version", action="version",
                        version=f"bilevel {__version__} (torch {_torch_version()}, Python {sys.version.split()[0]})")
    parser.add_argument("--traceback", action="store_true", help="on an error, also print the Python stack")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", help="run one solver on one problem", formatter_class=_HelpFormatter,
        description="Run one solver on one problem: progress bar, summary, CSV history and JSON metadata.",
        epilog="Ctrl-C stops the run: the history so far and the metadata (status stopped, interrupted: true) "
               "are written, exit code 130. Exit codes: 0 done, 1 failed, diverged or not strongly convex, 2 usage or input error.")
    run.add_argument("problem", help="problem name (see `bilevel list problems`)")
    run.add_argument("--solver", default="lancbio", help="solver name (see `bilevel list solvers`)")
    run.add_argument("--max-iter", type=_count(0), default=1000, metavar="K", help="outer iterations")
    run.add_argument("--max-time", type=_positive, default=None, metavar="SECONDS",
                     help="stop after this much solver time, evaluation excluded (default: no limit)")
    run.add_argument("--eval-every", type=_count(1), default=10, metavar="N",
                     help="evaluate the metrics every N iterations and after the last one")
    run.add_argument("--seed", type=_count(0), default=0,
                     help="seeds everything random in the run: the problem instance (its seed option, unless "
                          "-P seed=... is given: corruption, split, initial point), the solver's draws, batches")
    run.add_argument("--tol", type=_positive, default=None,
                     help="stop (status converged) once the hypergradient norm, true when known else the "
                          "estimate, is <= TOL (default: off)")
    run.add_argument("-P", "--problem-opt", action="append", type=_assignment, metavar="KEY=VALUE",
                     help="problem option, repeatable; VALUE is a Python literal or a bare word "
                          "(default: the problem's own; see `bilevel show PROBLEM`)")
    run.add_argument("-O", "--solver-opt", action="append", type=_assignment, metavar="KEY=VALUE",
                     help="solver option, repeatable; part options by dotted name, e.g. v_solver.m=20 "
                          "(default: the solver's own; see `bilevel show SOLVER`)")
    run.add_argument("--dataset", default=None,
                     help="hyperclean: mnist, fashion_mnist, kmnist or digits (default: the problem's, digits)")
    run.add_argument("--corruption", type=float, default=None,
                     help="hyperclean: fraction of corrupted training labels, in [0, 1) (default: the "
                          "problem's, 0.8)")
    run.add_argument("--data-dir", default=None,
                     help="hyperclean: data root holding mnist/, fashion_mnist/, kmnist/ (default: "
                          "$BILEVEL_DATA_DIR, else ~/.cache/bilevel/datasets; missing files are downloaded "
                          "and verified unless BILEVEL_OFFLINE=1)")
    run.add_argument("--batch-size", type=_count(1), default=None, metavar="B",
                     help="mini-batches of B samples for every batch role (MiniBatch(B): the lower level's "
                          "inner steps, HVPs, cross products, and the upper level's gradients on validation "
                          "batches); the problem must declare its data, e.g. hyperclean (default: none, every "
                          "oracle call sees the full data set)")
    run.add_argument("--batch", action="append", type=_batch_assignment, metavar="ROLE=B",
                     help="batch size of one role, repeatable, over --batch-size: ROLE one of inner, upper, "
                          "hvp, cross, lower, e.g. --batch upper=128 (default: --batch-size for every role)")
    run.add_argument("--batch-mode", choices=("permutation", "fixed_slices"), default=None,
                     help="how batches are drawn: permutation (seeded, without replacement within an epoch, "
                          "reshuffled each epoch) or fixed_slices (the reference's contiguous slices i·B … "
                          "(i+1)·B − 1, final partial batch included) (default: permutation)")
    run.add_argument("--dtype", choices=("float64", "float32"), default=None,
                     help="floating-point type of the problem's tensors (default: the problem's, float64)")
    run.add_argument("--device", default=None,
                     help="torch device: cpu, cuda or cuda:N (default: the problem's, cpu)")
    run.add_argument("--threads", type=_count(1), default=None, metavar="N",
                     help=f"torch threads for the run (default: 1 when dy·N < {SMALL_PROBLEM:.0e}, N the "
                          "lower level's training samples (the batch size, if smaller), dy² without data; else "
                          "every core this process may use); recorded in the metadata")
    run.add_argument("--out", default=None,
                     help="CSV path for the history; the metadata goes beside it as .json (default: "
                          "results/<problem>_<solver>_seed<seed>.csv)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--checkpoint", default=None, metavar="DIR",
                     help="save the run every --checkpoint-every iterations to DIR/checkpoint-<iterations>.pt "
                          "(atomically; resume with --resume DIR) (default: no checkpoints)")
    run.add_argument("--checkpoint-every", type=_count(1), default=100, metavar="N",
                     help="iterations between checkpoints (default: 100)")
    run.add_argument("--resume", default=None, metavar="PATH",
                     help="continue from a checkpoint file, or the latest in a folder, written by --checkpoint "
                          "with the same problem, solver options, --seed and batches; --max-iter is the total "
                          "(default: start afresh)")
    run.add_argument("--nproc", type=_count(1), default=None, metavar="N",
                     help="data-parallel over N processes on this machine: re-runs this command under torchrun "
                          "--standalone --nproc-per-node N (gloo on CPU, NCCL with --device cuda); every oracle "
                          "call is sharded across the ranks and all-reduced (bilevel.distributed); rank 0 writes "
                          "the files (default: one process)")
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
    bench.add_argument("--devices", default=None, metavar="DEV[,DEV…]",
                       help="torch devices for the runs, e.g. cuda:0,cuda:1: each run holds one alone while it "
                            "runs (the problem is built there); --n-jobs defaults to their number (default: "
                            "none, the problem's own device)")
    bench.add_argument("--retry-failed", action="store_true",
                       help="re-run the runs recorded as failed (default: keep them)")
    bench.add_argument("--set", action="append", metavar="PATH=VALUE",
                       help="override a config value by dotted path, e.g. problem.options.n=1000 or "
                            "seeds=[1,2] (repeatable; default: none)")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    bench.set_defaults(func=cmd_bench)

    plt = sub.add_parser("plot", help="plot a metric from a results folder (median and 20-80%% band over seeds)")
    plt.add_argument("dir", help="results folder written by `bilevel bench`")
    plt.add_argument("--x", choices=("time", "iteration", "hvp", "samples", "epochs_g", "epochs_f"), default="time",
                     help="x axis: solver time, outer iteration, Hessian-vector products, samples seen (both "
                          "levels), or epochs: passes over the lower (epochs_g) or upper (epochs_f) level's data "
                          "(default: time)")
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
                     help="figures as X:METRIC pairs, X one of time, iteration, hvp, samples, epochs_g, "
                          "epochs_f (default: time against "
                          "the target metric and the residual, where logged)")
    rep.add_argument("--title", default=None, help="report title (default: the experiment name)")
    rep.add_argument("--notes", default=None, help="Markdown file inserted after the header (default: none)")
    rep.set_defaults(func=cmd_report)

    lst = sub.add_parser("list", help="list solvers, problems, linear solvers and inner solvers",
                         description="List the registered names with the first sentence of each description.")
    lst.add_argument("what", nargs="?", choices=("solvers", "problems", "linear-solvers", "inner-solvers"),
                     help="one kind only (default: all)")
    lst.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="options, defaults and documentation of a solver, problem or linear solver")
    show.add_argument("name", help="a name from `bilevel list`")
    show.set_defaults(func=cmd_show)
    for command in sub.choices.values():  # also accepted after the command; SUPPRESS keeps the global value
        command.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                             help="on an error, also print the Python stack (or set BILEVEL_DEBUG=1)")
    return parser


def _exit_code(err: BaseException) -> int:
    from .datasets import DatasetError

    if isinstance(err, RunFailed):
        return 1
    if isinstance(err, (CLIError, ValueError, TypeError, LookupError, OSError, DatasetError)):
        return 2
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """The ``bilevel`` console script; returns the exit code (errors are reported, never raised)."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(getattr(args, "traceback", False)) or os.environ.get("BILEVEL_DEBUG", "").strip() not in ("", "0")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("bilevel: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `bilevel list | head`: the reader left, nothing more to say
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as err:
        if debug:
            traceback.print_exception(type(err), err, err.__traceback__)
        print(f"bilevel: {_one_line(err)}", file=sys.stderr)
        return _exit_code(err)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
