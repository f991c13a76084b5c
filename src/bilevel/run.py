"""``solve(problem, solver, ...) -> Result``: the front door.

The loop times only the solver's steps (on a GPU the device is synchronised once per evaluation chunk,
before the clock is read) and evaluates metrics between steps with uncounted oracles, so time and oracle
counts never include evaluation.  A non-finite iterate ends the run with status ``diverged`` and keeps the
last finite iterate and the history so far; the failing step is then replayed once with oracles that check
every result, to name the oracle that produced the first non-finite value (never in the hot path).

Host reads.  Between evaluations the loop reads nothing from the device: each step's checks (finiteness of
(x, y, v), the inner-growth flag) are queued there and read in one read per evaluation chunk (see ``solve``).

Curvature.  AID solvers report the v-solver's curvature evidence per step (``state.curvature``: a Ritz
value, pᵀAp, SubBiO's 2×2 system, a Rayleigh quotient ≤ 0, or below ``mu_lb``) and whether the v of the
evaluated iterate is trusted (``state.trusted``).  ``solve`` decides: ``converged`` only on a trusted
estimate, and ``not_strongly_convex`` when the evidence persists (see ``solve``'s ``curvature_patience``).
An evaluation whose relative residual ‖A v − b‖ / ‖b‖ stands more than ``RESIDUAL_RISE`` (1e3) times above the
lowest logged so far (and above √eps) is untrusted too (the v estimate lost the accuracy it had), and the final
message says from where.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import time
import warnings
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from . import checkpoint
from ._validation import check_int, check_run_budget
from .callbacks import as_callbacks
from .history import History
from .kinds import check_kind, problem_kind
from .metrics import Evaluator
from .oracles import CountingOracles, Counts, Oracles
from .problem import BilevelProblem
from .result import Result
from .sampling import BatchSource, FullBatch
from .solvers.base import Solver, SolverState
from .truth import GroundTruthError


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_flags(state: Any, x: Tensor, y: Tensor, v: Optional[Tensor]) -> Tensor:
    """[Σ(x, y, v), inner growth flag] of one step as a float64 device vector, read with the rest of its chunk
    (no host read here): a sum is non-finite iff some entry is (or the values are astronomically large)."""
    total = sum(t.sum() for t in (x, y, v) if t is not None).to(torch.float64)
    grew = getattr(state, "inner_growth", None)
    if grew is None:
        return total.reshape(1)
    return torch.stack([total, torch.as_tensor(grew, device=total.device).to(torch.float64)])


class _Chunk:
    """The iterations stepped since the loop last read the device (see ``solve``: "Host reads").  Holds what
    rewinds the run to the last finite iterate when the read finds a non-finite one: the state and the mutable
    pieces (generator, outer optimizer, curvature watch) at the chunk's start, and per iteration its batches,
    its flags (device), and the counts and solver time after it (host) — no later iterate of the chunk."""

    __slots__ = ("start", "state", "generator", "outer", "watch", "batches", "flags", "counts", "elapsed")

    def __init__(self) -> None:
        self.start = -1
        self.flags: list[Tensor] = []

    def open(self, k: int, state: Any, generator: torch.Generator, watch: "_CurvatureWatch") -> None:
        outer = getattr(state, "outer", None)
        gens = [generator] + [g for g in (getattr(state, "generator", None),) if g is not None and g is not generator]
        self.start, self.state, self.generator = k, state, [(g, g.get_state()) for g in gens]
        self.outer = (outer, copy.deepcopy(outer.state_dict())) if outer is not None else None
        self.watch = copy.copy(vars(watch))
        self.watch["untrusted_below_tol"] = list(watch.untrusted_below_tol)
        self.batches, self.flags, self.counts, self.elapsed = [], [], [], []

    def add(self, batches: Any, flags: Tensor, counts: Counts, elapsed: float) -> None:
        self.batches.append(batches)
        self.flags.append(flags)
        self.counts.append(counts.copy())
        self.elapsed.append(elapsed)

    def __len__(self) -> int:
        return len(self.flags)


#: dtypes whose rounding (about 3 and 2 significant digits) ruins second-order quantities
_LOW_PRECISION = {torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _describe(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)


def solve(
    problem: BilevelProblem,
    solver: Solver,
    *,
    max_iter: int = 1000,
    max_time: Optional[float] = None,
    eval_every: int = 10,
    seed: int = 0,
    tol: Optional[float] = None,
    true_hypergradient: Optional[bool] = None,
    callback: Optional[Callable[[dict], Any]] = None,
    progress: bool = False,
    oracles: Any = None,
    batches: Optional[BatchSource] = None,
    curvature_patience: Optional[int] = 5,
    callbacks: Optional[list] = None,
    resume_from: Any = None,
) -> Result:
    """Run ``solver`` on ``problem``.

    Supported dtypes: float32 and float64 (the problem's).  float16 and bfloat16 run but warn once per call:
    with 3 or 2 significant digits the HVPs and v-system solves are too inexact (measured on the quadratic,
    synthetic and digits hyper-cleaning problems with y and v solved exactly: relative hypergradient error
    about 1e-2 in bfloat16, 1e-3 in float16, 1e-7 in float32), so metrics and statuses are unreliable.

    Args:
        max_iter: outer iterations K.   max_time: stop after this much solver time (seconds; on a GPU
            checked against the host's clock between evaluations, see "Host reads").
        eval_every: evaluate every this many iterations (and after the last one).
        seed: seeds the solver's own draws (random v_0, TTSA's truncation, ...).
        tol: stop with ``converged`` once the hypergradient norm at an evaluation is ≤ tol (the true
            one when available, else the estimate ‖D_k‖).
        true_hypergradient: compute ‖∇φ(x_k)‖ at evaluations (solves y* and v* to tight tolerance).
            Default: on for problems that declare ground truth (``info["ground_truth"]``) or carry a
            closed-form hypergradient or y*.
        callback: called with each evaluation row; return True to stop (status ``stopped``).
        callbacks: objects with the hooks ``on_start(info)``, ``on_iteration(k, run)``, ``on_evaluation(row)``
            (True stops), ``on_end(result)`` (``bilevel.callbacks``: ``TensorBoard``, ``WandB``,
            ``EarlyStopping``, ``Checkpoint``), or functions of the row; called outside the timer.
        resume_from: a checkpoint file, or a folder of them (its latest), written by the ``Checkpoint``
            callback: the run continues from there to ``max_iter`` (the total) with the history, counts and
            iterates bit-identical to an uninterrupted run (same device and threads).  The problem, the
            solver and its options, the seed and the batch source must be the run's that wrote it (checked;
            a mismatch or an unreadable file is a ``CheckpointError``).  Its history rows come first in
            ``Result.history``.
        progress: show a tqdm progress bar.
        oracles: the oracles the solver calls, e.g. a user's ``OracleWrapper`` around
            ``Oracles(problem)`` (default: ``Oracles(problem)``); ``solve`` counts on top of it.  With
            ``bilevel.distributed.DataParallelOracles`` (anywhere in the chain of wrappers) the run is data
            parallel: call ``solve`` on every rank; each iteration ends in one agreement of the ranks (an
            all-reduce of W + 1 numbers: rank 0's stop decision — divergence, ``tol``, ``max_time``, curvature,
            callbacks — and one error flag per rank, so no rank stops alone and an error on one rank raises on
            all); rank 0 alone shows the progress bar and runs the callbacks; every rank returns rank 0's
            ``Result`` (history, time, status, iterates).
        batches: the batch source (default ``FullBatch()``: every oracle call sees the full data set).  Any
            other source (``MiniBatch``) makes the run stochastic: the solver is bound with
            ``stochastic=True`` (its ``"stochastic/<experiment>"`` settings first) and ``Result.options``
            records ``"stochastic": True``.
        curvature_patience: end the run with status ``not_strongly_convex`` once the solver reports
            curvature evidence (``state.curvature``: ∇²_yy g not positive definite, or below the v-solver's
            ``mu_lb``) in this many consecutive iterations (default 5; None: record it, never stop).
            Evidence that does not persist is transient: a dynamic Lanczos basis mixing the Hessians of
            several iterates, or an iterate crossing a region of negative curvature of a non-convex g
            (the hyper-cleaning MLP), is handled by the v-solver's fallback (Lanczos: minimal-residual
            solve, restart next iteration), after which the next solves are clean; on a lower level that is
            not strongly convex where the iterates are, every solve meets it.  Either way ``converged`` is
            only reported on an estimate whose solve saw no evidence, and the message says how often the
            fallback was used.

    Host reads (issue 15).  The loop itself reads the device once per evaluation chunk, not once per
    iteration: each step's checks — Σ(x, y, v) (finite iff every entry is) and the inner-growth flag — stay on
    the device as a float64 vector and are read together at the chunk's end: an evaluation (every
    ``eval_every`` iterations and the last), or any stop (``tol``, callbacks, curvature evidence,
    ``max_time``, Ctrl-C, an exception in a step).  A per-iteration callback (``on_iteration``: it gets a
    checked state) and a data-parallel run (the ranks' agreement) make every iteration a chunk end.  The
    decisions are those of a read after every step: when the read finds a non-finite iterate at iteration
    k of the chunk, the run is rewound — the chunk's first state is kept, with the generator, the ``outer``
    optimizer and the curvature watch as they were — and its iterations before k are replayed exactly
    (throw-away counts; on the CPU bit for bit), so the run ends ``diverged`` at k with the last finite
    iterate, the counts and solver time through step k, and the same message.  Memory: until its read, a
    chunk holds its first state (x, y, v and the v-solver's state: a Lanczos basis buffer that a restart
    within the chunk would otherwise free) and each iteration's batches, no other iterate.  Curvature evidence and ``max_time`` need no device read (the v-solver reports evidence as
    host values; the clock is the host's): on the CPU they stop at the same iteration as before; on a GPU the
    clock between two chunk ends counts the host's time, so ``max_time`` may be noticed a few iterations
    after the device got there (the reported time is synchronised).  The v-solvers' own reads remain: one
    per step where a host value decides whether a product is spent or feeds the float64 tridiagonal / 2×2
    solve (Lanczos 1 per step + 1 per restart; SubBiO 3; CG 1 + Q; gd/Neumann 1), each justified where
    it is made; ``tests/test_host_syncs.py`` pins the counts.

    Statuses: ``converged`` (tol met on a trusted estimate, whose relative residual is not 1e3× above its lowest),
    ``max_iter``, ``max_time``, ``stopped``
    (callback or Ctrl-C), ``diverged`` (a non-finite iterate or evaluation; the message names the oracle
    that produced the first non-finite value), ``not_strongly_convex`` (see ``curvature_patience``).

    The path of one run: ``bound = solver.bind(problem, stochastic=...)`` (options resolved and checked once), the batch
    stream is started with the solver's ``batch_roles``, then each iteration
    ``state = bound.step(state, counting_oracles, stream(k))``.
    """
    if not isinstance(problem, BilevelProblem) and problem_kind(problem) != "rl":
        raise TypeError(f"problem must be a bilevel.BilevelProblem; got {type(problem).__name__}.")
    if not isinstance(solver, Solver):
        hint = " Did you forget the parentheses, e.g. bilevel.solvers.lancbio()?" if callable(solver) else ""
        raise TypeError(f"solver must be a bilevel solver instance; got {type(solver).__name__}.{hint}")
    check_kind(solver, problem)  # an RL solver on a classic problem, or an AID solver on an RL problem
    check_run_budget("solve", max_iter, eval_every, max_time, tol)
    check_int("solve", "seed", seed, 0)
    if curvature_patience is not None:
        check_int("solve", "curvature_patience", curvature_patience, 1)
    if callback is not None and not callable(callback):
        raise TypeError(f"solve: callback must be callable(row) -> bool; got {type(callback).__name__}.")
    if problem_kind(problem) == "rl":
        if batches is not None and not isinstance(batches, FullBatch):
            raise ValueError("solve: an RL problem draws its own samples (transitions, trajectories); "
                             f"got batches={type(batches).__name__} — leave batches unset.")
        from .rl.run import solve_rl

        return solve_rl(problem, solver, max_iter=max_iter, max_time=max_time, eval_every=eval_every, seed=seed,
                        tol=tol, true_hypergradient=true_hypergradient, callback=callback, progress=progress,
                        oracles=oracles, callbacks=callbacks, resume_from=resume_from)
    hooks = as_callbacks(callbacks, callback)
    per_iteration = [cb for cb in hooks if callable(getattr(cb, "on_iteration", None))]
    if resume_from is not None and not isinstance(resume_from, (str, os.PathLike)):
        raise TypeError(f"solve: resume_from must be a checkpoint file or folder path; got {type(resume_from).__name__}.")
    if oracles is None:
        oracles = Oracles(problem)
    else:
        missing = [m for m in ("grad_x_f", "grad_y_f", "grad_f", "grad_y_g", "grad_x_g", "grad_g", "at")
                   if not callable(getattr(oracles, m, None))]
        if missing:
            raise TypeError(
                f"solve: oracles must provide {', '.join(missing)}; got {type(oracles).__name__}. Wrap "
                "bilevel.Oracles(problem) in a bilevel.OracleWrapper subclass."
            )
        if getattr(oracles, "problem", problem) is not problem:
            raise ValueError("solve: the oracles were built for another problem; build them with this problem.")
    if batches is None:
        batches = FullBatch()
    elif not isinstance(batches, BatchSource):
        raise TypeError(
            f"solve: batches must be a batch source with start(roles, generator), e.g. bilevel.FullBatch(); "
            f"got {type(batches).__name__}."
        )
    if true_hypergradient is None:
        cf = problem.closed_forms
        true_hypergradient = bool(
            problem.info.get("ground_truth") or cf.hypergradient is not None or cf.y_star is not None
        )

    if problem.dtype in _LOW_PRECISION:
        name = _LOW_PRECISION[problem.dtype]
        warnings.warn(
            f"bilevel.solve: problem {problem.name!r} is in {name}; supported dtypes are float32 and float64. "
            f"In {name} the HVPs and the v-system solves keep 2-3 significant digits: even with y and v solved "
            "exactly the hypergradient estimate keeps a relative error of about 1e-2 in bfloat16 and 1e-3 in "
            "float16 (1e-7 in float32), so metrics and statuses are unreliable. Build the problem in float32 or "
            "float64.",
            UserWarning, stacklevel=2,
        )
    device = problem.device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    counts = Counts()
    n_f, n_g = problem.n_samples_f, problem.n_samples

    def counted() -> dict:
        # oracle calls and samples seen; epochs = samples seen / data-set size, per level (passes over the data)
        row = counts.as_dict()
        if n_f:
            row["epochs_f"] = counts.samples_f / n_f
        if n_g:
            row["epochs_g"] = counts.samples_g / n_g
        return row

    user_oracles = oracles
    oracles = CountingOracles(oracles, counts)
    coord = _coordinator(user_oracles)
    if coord is not None and coord.rank != 0:  # rank 0 alone shows progress and runs callbacks (files, stops)
        hooks, per_iteration, progress = [], [], False
    stochastic = not isinstance(batches, FullBatch)
    bound = solver.bind(problem, stochastic=stochastic)
    # the batch stream draws from a generator of its own, so sampling never shifts the solver's draws
    batch_generator = torch.Generator(device=device)
    batch_generator.manual_seed(seed)
    stream = batches.start(getattr(bound, "batch_roles", {}), batch_generator, problem)
    evaluate = Evaluator(problem, true_hypergradient)
    history = History()
    state: SolverState = bound.init(problem, oracles, generator)
    for text in bound.budget_warnings(max_iter):
        warnings.warn(text, stacklevel=2)

    elapsed = 0.0
    status, message, done = "max_iter", "", 0
    watch = _CurvatureWatch(curvature_patience, floor=math.sqrt(torch.finfo(problem.dtype).eps))
    header = _header(problem, bound, stochastic, seed, batches)
    if resume_from is not None:
        restored = _restore(resume_from, header, problem, bound, oracles, generator, stream, counts, history, watch,
                            evaluate, hooks)
        state, generator, elapsed, done = restored
    last_good = state
    interrupted = False
    first = done  # iterations done before this call (a resumed run's)

    def save_checkpoint(path: Any) -> str:
        """Write the run as it is now (after ``done`` iterations) to ``path``, atomically."""
        return _save(path, header, state, generator, stream, batches, counts, elapsed, history, watch, evaluate,
                     hooks, done)

    handle = _RunHandle(save_checkpoint)
    info = {"problem": problem.name, "solver": bound.name, "options": _plain(bound.resolved_options()),
            "seed": seed, "max_iter": max_iter, "eval_every": eval_every, "start": first,
            "stochastic": stochastic, "dtype": str(problem.dtype).replace("torch.", "")}
    for cb in hooks:
        if callable(getattr(cb, "on_start", None)):
            cb.on_start(dict(info))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_iter, initial=min(first, max_iter), desc=f"{solver.name} on {problem.name}", unit="it",
                   dynamic_ncols=True)

    chunk = _Chunk()

    def read() -> bool:
        """The chunk's one host read: every iterate since the last read finite?  (Their inner-growth flags are
        counted here.)  If not, the run is rewound to the last finite iterate — the chunk's start replayed up
        to it, exactly, with throw-away counts — and ends ``diverged`` there, as a read after every step would
        have; True then."""
        nonlocal state, last_good, done, status, message, elapsed
        if not len(chunk):
            return False
        if device.type == "cuda":  # the chunk's device work is the solver's time
            t0 = time.perf_counter()
            _sync(device)
            elapsed += time.perf_counter() - t0
        values = torch.cat(chunk.flags).tolist()
        rows, at = [], 0
        for flags in chunk.flags:  # numel is metadata: no read
            rows.append(values[at:at + flags.numel()])
            at += flags.numel()
        chunk.flags = []
        bad = next((i for i, row in enumerate(rows) if not math.isfinite(row[0])), None)
        if bad is None:
            for i, row in enumerate(rows):
                if len(row) > 1 and row[1]:
                    watch.inner_growth += 1
                    watch.last_growth = chunk.start + i
            return False
        for gen, saved in chunk.generator:
            gen.set_state(saved)
        if chunk.outer is not None:
            chunk.outer[0].load_state_dict(chunk.outer[1])
        for name, value in chunk.watch.items():
            setattr(watch, name, value)
        replay, good = CountingOracles(user_oracles, Counts()), chunk.state
        for i in range(bad):
            good = bound.step(good, replay, chunk.batches[i])
            watch.record(chunk.start + i, good, len(rows[i]) > 1 and bool(rows[i][1]))
        after = chunk.counts[bad]  # the counts and solver time include the step that failed, as they always did
        for f in dataclasses.fields(counts):
            setattr(counts, f.name, getattr(after, f.name))
        elapsed = chunk.elapsed[bad]
        k_bad = chunk.start + bad
        state, last_good, done, status = good, good, k_bad, "diverged"
        message = _diverged_message(k_bad, bound, problem, good, chunk.batches[bad], user_oracles)
        return True

    def iteration(k: int) -> bool:
        """One outer iteration: step, checks, evaluation, callbacks; True when the run stops here."""
        nonlocal state, last_good, done, status, message, elapsed, interrupted
        if not len(chunk):
            _sync(device)  # an evaluation's device work is not the solver's time
            chunk.open(k, state, generator, watch)
        last = k == max_iter - 1
        evaluated = k % eval_every == 0 or last
        # a decision on the host is due after this step: an evaluation, per-iteration callbacks (they get a
        # checked state), the ranks' agreement; otherwise the checks wait on the device
        due = evaluated or bool(per_iteration) or coord is not None
        start = time.perf_counter()
        batches_k = stream(k)
        try:
            new_state = bound.step(state, oracles, batches_k)
            if due:
                _sync(device)
        except KeyboardInterrupt:
            # Ctrl-C: keep everything done so far (the interrupted step is dropped) and return normally
            elapsed += time.perf_counter() - start
            if read():  # an iterate of the chunk was already non-finite: the run had diverged
                return True
            interrupted, status = True, "stopped"
            message = (f"interrupted (KeyboardInterrupt) during iteration {k}; the {done} completed "
                       "iterations and their history are kept.")
            if done and (not len(history) or history.last().get("iteration") != done - 1):
                x_k, y_k, v_k = last_good.iterate
                history.append({"iteration": done - 1, "time": elapsed, **counted(),
                                **evaluate(x_k, y_k, v_k)})
            return True
        except Exception:
            if read():  # a step from a non-finite iterate failed: report the divergence, as before
                return True
            raise
        elapsed += time.perf_counter() - start
        x_k, y_k, v_k = new_state.iterate
        chunk.add(batches_k, _step_flags(new_state, new_state.x, y_k, v_k), counts, elapsed)
        watch.record(k, new_state, False)  # its inner-growth flag is counted at the read
        state, last_good, done = new_state, new_state, k + 1
        if due and read():
            return True
        if bar is not None:
            bar.update(1)
        if evaluated:
            try:
                row = {"iteration": k, "time": elapsed, **counted(), **evaluate(x_k, y_k, v_k),
                       **_auto_record(bound, new_state)}
            except GroundTruthError as err:
                if err.kind == "convergence":
                    raise
                status = "not_strongly_convex" if err.kind == "curvature" else "diverged"
                message = (f"the ground-truth solve for the evaluation at iteration {k} failed: {err} "
                           "(true_hypergradient=False skips it).")
                return True
            history.append(row)
            if bar is not None:
                bar.set_postfix(_postfix(row), refresh=False)
            if not all(math.isfinite(val) for val in row.values() if isinstance(val, float)):
                status = "diverged"
                message = _evaluation_message(k, row, problem, x_k, y_k, bound)
                return True
            metric = row.get("hypergrad_norm", row.get("hypergrad_est_norm"))
            lost = "residual" in row and watch.residual(k, row["residual"] / evaluate.rhs_norm
                                                        if evaluate.rhs_norm else math.nan)
            if tol is not None and metric is not None and metric <= tol:
                if getattr(new_state, "trusted", True) and not lost:
                    status = "converged"
                    message = f"hypergradient norm {metric:.3e} <= tol {tol:g} at iteration {k}."
                    return True
                watch.untrusted_below_tol.append(k)
            asked = [cb for cb in hooks if callable(getattr(cb, "on_evaluation", None)) and cb.on_evaluation(dict(row))]
            if asked:
                status = "stopped"
                message = getattr(asked[0], "stop_message", "") or f"the callback asked to stop at iteration {k}."
                return True
        if per_iteration:
            handle.iterations = done
            for cb in per_iteration:
                cb.on_iteration(k, handle)
        if watch.persistent:
            if read():
                return True
            status, message = "not_strongly_convex", watch.stop_message(bound)
            if not evaluated:
                history.append({"iteration": k, "time": elapsed, **counted(), **evaluate(x_k, y_k, v_k)})
            return True
        if max_time is not None and elapsed >= max_time:
            if read():
                return True
            status = "max_time"
            message = f"solver time {elapsed:.3f} s reached max_time={max_time:g} at iteration {k}."
            if not (k % eval_every == 0 or last):
                history.append({"iteration": k, "time": elapsed, **counted(), **evaluate(x_k, y_k, v_k)})
            return True
        return False

    for k in range(first, max_iter):
        if coord is None:
            if iteration(k):
                break
            continue
        # data-parallel: every rank ends each iteration in one agreement (rank 0 decides; any error stops all)
        try:
            stop = iteration(k)
        except Exception as err:
            coord.agree(False, err)  # raises on every rank
            raise
        if coord.agree(stop):
            break
    if bar is not None:
        bar.close()
    if status == "max_iter":
        last_row = history.last()
        if "hypergrad_norm" in last_row:
            shown = f"; last true hypergradient norm {last_row['hypergrad_norm']:.3e}"
        elif "hypergrad_est_norm" in last_row:
            shown = f"; last estimated hypergradient norm ‖D‖ {last_row['hypergrad_est_norm']:.3e}"
        else:
            shown = ""
        message = f"ran max_iter={max_iter} iterations{shown}. Raise max_iter (or set tol) to go further."
    events = dict(last_good.events)
    if status != "not_strongly_convex":
        message = " ".join(t for t in (message, watch.note(bound, done, status, events)) if t)
    if watch.inner_growth:
        events["inner_growth"] = watch.inner_growth
    x_out, y_out, v_out = last_good.x, last_good.y, last_good.v
    auto = _auto_options(bound, last_good)
    if coord is not None:  # every rank returns rank 0's result (its clock, decisions and history)
        shared = coord.share({"status": status, "message": message, "done": done, "elapsed": elapsed,
                              "events": events, "interrupted": interrupted, "auto": auto,
                              "rows": history.to_dicts(), "columns": history.columns})
        status, message, done, elapsed = shared["status"], shared["message"], shared["done"], shared["elapsed"]
        events, interrupted, auto = shared["events"], shared["interrupted"], shared["auto"]
        history._rows, history._columns = shared["rows"], shared["columns"]
        x_out, y_out, v_out = coord.broadcast(x_out), coord.broadcast(y_out), coord.broadcast(v_out)

    result = Result(
        x=x_out, y=y_out,
        v=v_out, status=status, message=message, iterations=done, counts=counts, time=elapsed,
        history=history, solver=bound.name, problem=problem.name,
        options={**_plain(bound.resolved_options()), **auto, "stochastic": stochastic},
        events=events, seed=seed,
        x_tree=problem.unflatten_x(x_out), y_tree=problem.unflatten_y(y_out),
        interrupted=interrupted, dtype=str(problem.dtype).replace("torch.", ""),
    )
    for cb in hooks:
        if callable(getattr(cb, "on_end", None)):
            cb.on_end(result)
    return result


def _coordinator(oracles: Any) -> Any:
    """The data-parallel coordinator when the oracles shard across ranks (``bilevel.distributed``), else None
    (imported only then: a one-process run never touches torch.distributed)."""
    if oracles is None or not any(type(o).__module__.endswith("distributed") for o in _chain(oracles)):
        return None
    from .distributed import coordinator_of

    return coordinator_of(oracles)


def _chain(oracles: Any) -> list:
    out = []
    while oracles is not None and len(out) < 32:
        out.append(oracles)
        oracles = getattr(oracles, "inner", None)
    return out


class _RunHandle:
    """What ``on_iteration(k, run)`` receives: ``run.iterations`` (done so far) and ``run.save_checkpoint(path)``."""

    __slots__ = ("iterations", "save_checkpoint")

    def __init__(self, save: Callable[[Any], str]) -> None:
        self.iterations = 0
        self.save_checkpoint = save


def _without_addresses(text: str) -> str:
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


def _header(problem: BilevelProblem, bound: Any, stochastic: bool, seed: int, batches: Any) -> dict:
    """What identifies a run for ``resume_from``: solver, options, problem, seed, sampler."""
    opts = {k: _without_addresses(str(v)) if isinstance(v, str) else v
            for k, v in _plain(bound.resolved_options()).items()}
    return {"solver": bound.name, "options": opts, "stochastic": stochastic, "problem": problem.name,
            "dx": problem.dx, "dy": problem.dy, "dtype": str(problem.dtype).replace("torch.", ""), "seed": seed,
            "batches": _without_addresses(repr(batches))}


def _save(path: Any, header: dict, state: Any, generator: torch.Generator, stream: Any, batches: Any,
          counts: Counts, elapsed: float, history: History, watch: "_CurvatureWatch", evaluate: Evaluator,
          hooks: list, done: int) -> str:
    if isinstance(batches, FullBatch):
        stream_state = None
    elif callable(getattr(stream, "state_dict", None)):
        stream_state = stream.state_dict()
    else:
        raise checkpoint.CheckpointError(
            f"checkpoint: the batch source {type(batches).__name__} makes a stream without state_dict(), so a resumed "
            "run could not draw the same batches; use FullBatch or MiniBatch, or give the stream state_dict() and "
            "load_state_dict().")
    problem = evaluate.problem
    payload = {
        "format": checkpoint.FORMAT, "version": checkpoint.VERSION, "header": header, "iterations": done,
        "x0": problem.x0, "y0": problem.y0,
        "run": checkpoint.encode({"state": state, "generator": generator}),
        "stream": stream_state,
        "counts": {f.name: getattr(counts, f.name) for f in dataclasses.fields(counts)},
        "elapsed": elapsed,
        "history": {"rows": history.to_dicts(), "columns": history.columns},
        "watch": checkpoint.encode(vars(watch)),
        "evaluator": {"y_star": evaluate._y_star, "v_star": evaluate._v_star},
        "callbacks": [[type(cb).__name__, cb.state_dict()] if callable(getattr(cb, "state_dict", None)) else None
                      for cb in hooks],
    }
    return checkpoint.save(payload, path)


def _check_header(payload: dict, header: dict, problem: Any, where: str) -> None:
    """Raise ``CheckpointError`` unless the checkpoint ``payload`` was written by a run like this one (``header``:
    solver, options, problem, sizes, dtype, seed, sampler; and the problem's x0, y0)."""
    saved = payload["header"]
    for key in ("problem", "dx", "dy", "dtype", "x0", "solver", "seed", "stochastic", "batches", "options"):
        if key == "x0":
            if not (torch.equal(payload["x0"], problem.x0) and torch.equal(payload["y0"], problem.y0)):
                raise checkpoint.CheckpointError(
                    f"resume_from: {where!r} was written for another instance of {problem.name!r} (its x0 or y0 "
                    "differ); build the problem with the options and seed of the run that wrote it.")
            continue
        if saved[key] != header[key]:
            if key == "options":
                diff = sorted(k for k in set(saved[key]) | set(header[key])
                              if saved[key].get(k) != header[key].get(k))
                shown = "; ".join(f"{k}: {saved[key].get(k)!r} there, {header[key].get(k)!r} here" for k in diff[:4])
                raise checkpoint.CheckpointError(
                    f"resume_from: {where!r} was written with other solver options ({shown}); resume with the "
                    "options of the run that wrote it.")
            raise checkpoint.CheckpointError(
                f"resume_from: {where!r} was written for {key} {saved[key]!r}, this run has {header[key]!r}; resume "
                "with the problem, solver, seed and batches of the run that wrote it.")


def _restore(path: Any, header: dict, problem: BilevelProblem, bound: Any, oracles: Any, generator: torch.Generator,
             stream: Any, counts: Counts, history: History, watch: "_CurvatureWatch", evaluate: Evaluator,
             hooks: list) -> tuple:
    """Load the checkpoint at ``path`` into this run's objects; returns (state, generator, elapsed, done)."""
    payload = checkpoint.load(path, problem.device)
    where = payload["path"]
    try:
        _check_header(payload, header, problem, where)
        fresh = bound.init(problem, oracles, torch.Generator(device=problem.device))
        run = checkpoint.decode(payload["run"], outer=getattr(fresh, "outer", None))
        state, generator = run["state"], run["generator"]
        if payload["stream"] is not None:
            stream.load_state_dict(payload["stream"])
        for name, value in payload["counts"].items():
            setattr(counts, name, value)
        history._rows = [dict(r) for r in payload["history"]["rows"]]
        history._columns = list(payload["history"]["columns"])
        for name, value in checkpoint.decode(payload["watch"]).items():
            setattr(watch, name, value)
        evaluate._y_star, evaluate._v_star = payload["evaluator"]["y_star"], payload["evaluator"]["v_star"]
        saved_hooks = payload["callbacks"]
        for cb, entry in zip(hooks, saved_hooks + [None] * (len(hooks) - len(saved_hooks))):
            if entry is not None and callable(getattr(cb, "load_state_dict", None)) and entry[0] == type(cb).__name__:
                cb.load_state_dict(entry[1])
        return state, generator, float(payload["elapsed"]), int(payload["iterations"])
    except checkpoint.CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as err:
        raise checkpoint.CheckpointError(
            f"resume_from: {where!r} is damaged or inconsistent ({type(err).__name__}: {' '.join(str(err).split())[:160]}); "
            "resume from another checkpoint.") from None


def _auto_record(bound: Any, state: Any) -> dict:
    """The automatic step sizes and curvature estimates now (``bilevel.auto_steps``): history columns."""
    auto, rules = getattr(state, "auto", None), getattr(bound, "auto_steps", None)
    return rules.record(auto) if auto is not None and rules is not None else {}


def _auto_options(bound: Any, state: Any) -> dict:
    """For ``Result.options``: the last automatic values (numbers replace "auto") and ``"auto"``, the names
    that were automatic, comma-separated (JSON and Parquet keep one type per column), then the options that
    took a default chosen for automatic steps (LancBiO's ``m``)."""
    rules = getattr(bound, "auto_steps", None)
    if rules is None:
        return {}
    return {**_auto_record(bound, state), "auto": ",".join(getattr(rules, "listed", rules.names))}


def _postfix(row: dict) -> dict:
    keys = ("hypergrad_norm", "hypergrad_est_norm", "residual")
    return {k: f"{row[k]:.2e}" for k in keys if k in row}


def _step_hint(bound: Any) -> str:
    opts = bound.resolved_options()
    names = ("lr_x", "lr_y", "eta", "inner.lr", "v_solver.eta")
    rules = getattr(bound, "auto_steps", None)
    auto = set(rules.names) if rules is not None else set()
    steps = ", ".join(f"{k}={_describe(opts[k])}" for k in names if opts.get(k) is not None and k not in auto)
    if auto:
        given = f"the step sizes given are likely too large ({steps}), or " if steps else ""
        return (f"{given}the automatic ones ({', '.join(sorted(auto))}: bilevel.auto_steps) did not suit this "
                "problem; pass smaller values explicitly.")
    return f"the step sizes are likely too large ({steps}); try smaller ones." if steps else "try smaller step sizes."


#: the logged relative residual ‖A v − b‖ / ‖b‖ standing this many times above its lowest value so far (and above
#: √eps of the dtype, the level below which a residual is rounding) marks the estimate untrusted
RESIDUAL_RISE = 1e3


class _CurvatureWatch:
    """The curvature evidence of a run: iterations with v-solver evidence (and the current streak of
    consecutive ones), iterations whose inner gradient norm grew at every step, evaluations that met
    tol on an untrusted estimate, and a relative residual ‖A v − b‖ / ‖b‖ that rose far above its lowest value."""

    def __init__(self, patience: Optional[int], floor: float = 0.0) -> None:
        self.patience = patience
        self.floor = floor
        self.streak = 0
        self.longest = 0
        self.iterations = 0
        self.last: Optional[tuple[int, Any]] = None
        self.inner_growth = 0
        self.last_growth: Optional[int] = None
        self.untrusted_below_tol: list[int] = []
        self.best_residual: Optional[tuple[int, float]] = None
        self.residual_rise: Optional[tuple[tuple[int, float], tuple[int, float]]] = None  # (lowest, first rise)
        self.last_rise: Optional[tuple[int, float]] = None

    def residual(self, k: int, value: float) -> bool:
        """Track the logged relative residual ‖A v − b‖ / ‖b‖; True (and remembered for the final message) when
        it stands more than ``RESIDUAL_RISE`` times above the larger of its lowest value so far and ``floor``
        (√eps of the dtype): the v estimate, and the hypergradient built on it, have lost the accuracy they had
        (e.g. a Krylov basis that lost orthogonality in float32).  Relative, so that a right-hand side that grows
        along the run does not count; above √eps, so that rounding-level residuals of exact solves never do."""
        if not math.isfinite(value):
            return False
        if self.best_residual is None or value < self.best_residual[1]:
            self.best_residual = (k, value)
        if value > RESIDUAL_RISE * max(self.best_residual[1], self.floor):
            if self.residual_rise is None:
                self.residual_rise = (self.best_residual, (k, value))
            self.last_rise = (k, value)
            return True
        return False

    def record(self, k: int, state: Any, grew: bool) -> None:
        evidence = getattr(state, "curvature", None)
        if evidence is None:
            if getattr(state, "probed", True):  # a solve without products tells nothing either way
                self.streak = 0
        else:
            self.streak += 1
            self.longest = max(self.longest, self.streak)
            self.iterations += 1
            self.last = (k, evidence)
        if grew:
            self.inner_growth += 1
            self.last_growth = k

    @property
    def persistent(self) -> bool:
        return self.patience is not None and self.streak >= self.patience

    def _growth_text(self) -> str:
        if not self.inner_growth:
            return ""
        return (f" ‖∇_y g‖ grew at every inner step in {self.inner_growth} iteration(s) (last at "
                f"{self.last_growth}): lr_y is too large for g's curvature or g(x, ·) is not convex.")

    def stop_message(self, bound: Any) -> str:
        k, evidence = self.last
        first = k - self.streak + 1
        below = evidence.bound > 0
        seen = (f"the lower level is not {'mu_lb-' if below else ''}strongly convex in y where the iterates are: "
                f"the v-solver saw curvature evidence in {self.streak} consecutive iterations ({first}–{k}; "
                f"curvature_patience={self.patience}); last: {evidence.describe()}.")
        damping = ("pass damping=δ to the solver (it then solves (∇²_yy g + δI) v = ∇_y f: a biased "
                   "hypergradient), " if "damping" in bound.option_names() else "")
        what = (" Implicit hypergradients need ∇²_yy g positive definite at the iterates. Regularise g (add "
                f"½μ‖y‖² to it), {damping}or check the model (is g convex in y?); solve(curvature_patience=None) "
                "records the evidence without stopping.")
        if below:
            what = f" The bound mu_lb={evidence.bound:g} given to the v-solver is too large: lower it, or regularise g."
        return seen + what + self._growth_text()

    def note(self, bound: Any, done: int, status: str, events: Any) -> str:
        """How often curvature evidence (and the fallback) was met, for the final message of any status."""
        parts = []
        if self.iterations:
            k, evidence = self.last
            fallback = _fallback_text(bound, events, self.iterations)
            limit = f"at most {self.longest} in a row" + (
                f", curvature_patience={self.patience}" if self.patience is not None else "")
            parts.append(
                f"The v-solver saw curvature evidence (∇²_yy g not positive definite{' or below mu_lb' if evidence.bound else ''}) "
                f"in {self.iterations} of {done} iterations ({limit}; last at iteration {k}: {evidence.describe()})"
                f"{fallback}.")
        if self.untrusted_below_tol:
            ks = self.untrusted_below_tol
            parts.append(f"The hypergradient norm met tol at iteration(s) {', '.join(map(str, ks[:5]))}"
                         f"{', …' if len(ks) > 5 else ''}, but on an estimate whose v-solve saw curvature evidence, "
                         "so that did not count as converged.")
        if self.residual_rise is not None:
            (kb, best), (k, value) = self.residual_rise
            kl, last = self.last_rise
            since = f", {last:.1e} at iteration {kl}" if kl != k else ""
            parts.append(f"‖A v − b‖ / ‖b‖ rose from {best:.1e} (iteration {kb}) to {value:.1e} at iteration {k}"
                         f"{since}: the v estimate and the hypergradient built on it lost their accuracy, so do not "
                         f"trust the iterates from iteration {k} on (a smaller subspace dimension m or float64 for the "
                         "Krylov solvers, smaller steps otherwise).")
        text = " ".join(parts) + self._growth_text()
        return text.strip()


def _fallback_text(bound: Any, events: Any, n: int) -> str:
    describe = getattr(getattr(bound, "v_solver", None), "curvature_fallback", None)
    return f"; {describe(events, n)}" if callable(describe) else ""


def _values_at(problem: BilevelProblem, x: Tensor, y: Tensor) -> dict[str, float]:
    out = {}
    with torch.no_grad():
        for name, fn in (("f", problem.f_value), ("g", problem.g_value)):
            try:
                out[name] = float(fn(x, y))
            except Exception:  # a problem that fails outside its domain: no value to report
                out[name] = math.nan
    return out


def _largest(t: Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


def _growth(problem: BilevelProblem, x: Tensor, y: Tensor) -> float:
    """How many times larger (largest entry) than at the start, or than 1, the iterate is."""
    return max(_largest(x) / max(1.0, _largest(problem.x0)), _largest(y) / max(1.0, _largest(problem.y0)))


#: an iterate this many times larger than the initial point means the run was diverging
_RUNAWAY = 1e6


def _blame(problem: BilevelProblem, oracle: str, call: int, x: Tensor, y: Tensor, bound: Any) -> str:
    """The sentence that blames an oracle evaluated at a finite point (x, y)."""
    from .oracles import ORACLE_TEXT

    level = "f" if oracle.endswith("_f") else "g"
    scale = _growth(problem, x, y)
    point = f"max|x| = {_largest(x):.3g}, max|y| = {_largest(y):.3g}"
    text = (f"the first non-finite value came from {ORACLE_TEXT.get(oracle, oracle)}, call {call} of that kind "
            f"in the step, at a finite point ({point}); ")
    if scale > _RUNAWAY:
        return text + (f"the iterates had grown {scale:.1e}× beyond their start, so the run was diverging before "
                       f"the overflow: {_step_hint(bound)}")
    values = _values_at(problem, x, y)
    if not math.isfinite(values[level]):
        text += (f"{level}(x, y) itself is {values[level]} there, so the problem's {level} returns non-finite "
                 f"values at this point (a log or sqrt outside its domain, a division by zero, an overflow?): "
                 f"check {level}, or keep the iterates in its domain.")
    else:
        text += (f"{level}(x, y) = {values[level]:.6g} is finite there but its derivative is not: {level} is not "
                 "differentiable at this point (e.g. sqrt or abs at 0) or overflows in the backward pass.")
    return text


def _diverged_message(k: int, bound: Any, problem: BilevelProblem, last_good: Any, batches: Any,
                      user_oracles: Any) -> str:
    """Replays step k from the last finite state with every oracle result checked, to say which oracle
    produced the first non-finite value (after the divergence, never during the run)."""
    from .oracles import NonFiniteProbe

    head = (f"non-finite values appeared at iteration {k}; the last finite iterate (after {k} iterations) is "
            "returned.")
    probe = NonFiniteProbe(user_oracles)
    try:
        replayed = bound.step(last_good, probe, batches)
    except Exception:  # the replay is a diagnosis only: any failure leaves the generic message
        replayed = None
    first = probe.first
    if first is not None and first.inputs_finite:
        return f"{head} Replaying it: {_blame(problem, first.oracle, first.call, first.x, first.y, bound)}"
    if first is not None or replayed is not None:
        return (f"{head} Replaying it: every oracle returned finite values from finite inputs; the update itself "
                f"overflowed. {_step_hint(bound)}")
    return f"{head} {_step_hint(bound)}"


#: evaluation columns computed from the solver's own oracles at the iterate (the rest come from ground truth)
_ORACLE_COLUMNS = ("f", "grad_y_g_norm", "residual", "hypergrad_est_norm")


def _evaluation_message(k: int, row: dict, problem: BilevelProblem, x: Tensor, y: Tensor, bound: Any) -> str:
    bad = [key for key, val in row.items() if isinstance(val, float) and not math.isfinite(val)]
    head = f"the evaluation at iteration {k} is not finite ({', '.join(bad)}) at a finite iterate"
    scale = _growth(problem, x, y)
    if scale > _RUNAWAY:
        return (f"{head} that had grown {scale:.1e}× beyond its start: the run was diverging; {_step_hint(bound)}")
    values = _values_at(problem, x, y)
    for level in ("f", "g"):
        if not math.isfinite(values[level]):
            return (f"{head}: {level}(x_k, y_k) = {values[level]} there, so the problem's {level} returns non-finite "
                    f"values at this point (a log or sqrt outside its domain, a division by zero, an overflow?): "
                    f"check {level}, or keep the iterates in its domain.")
    if any(c in ("hypergrad_norm", "hypergrad_rel_error", "phi") for c in bad) and not any(c in _ORACLE_COLUMNS for c in bad):
        return f"{head}: the ground-truth solve for y*(x_k) and v* failed (is g strongly convex in y?)."
    return f"{head}. {_step_hint(bound)}"


def _plain(opts: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)) for k, v in opts.items()}
