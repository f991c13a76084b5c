"""Experiment configuration: a YAML file → validated, fully expanded run specifications.

    name: synthetic                       # experiment name (used in reports)
    problem:
      name: synthetic
      options: {n: 1000, condition: 1.0e5}
    solvers:
      - name: lancbio                     # a registered solver
        label: LancBiO                    # optional legend label
        options: {m: [10, 20, 50]}        # a list value means "sweep": one configuration per value
      - name: soba
        run: {max_iter: 30000}            # per-solver overrides of the run limits
    seeds: [1, 2, 3]                      # or an integer n: seeds 0 … n−1
    run: {max_iter: 10000, max_time: 60, eval_every: 50, true_hypergradient: true, threads: 1}

Mini-batches (``bilevel.sampling.MiniBatch``): a ``batches:`` section at the top level applies to every
solver, and a solver's own ``batches:`` is merged over it key by key (``sizes`` and ``share`` role by role)::

    batches: {size: 256, sizes: {upper: 128}, share: {cross: hvp}, mode: fixed_slices}
    solvers:
      - name: soba
        batches: {size: 128}              # SOBA on batches of 128, the rest as above
      - name: lancbio
        batches: full                     # this solver on the full data set (a deterministic reference)

``size`` is B for every role, ``sizes`` per role (inner, upper, hvp, cross, lower), ``share`` "this role
reuses that role's draw", ``mode`` permutation (default) or fixed_slices.  A list value sweeps, like a
solver option (``size: [64, 256]``, ``sizes: {upper: [64, 128]}``).  Without ``batches`` runs are full-batch
and their ids are those of a config without the section.

Overrides from the command line (``bilevel bench … --set problem.options.n=1000 --set seeds=[1,2]``)
replace values by dotted path before validation (``load(path, overrides)``).

Schedules are written as mappings with a ``schedule`` key (never swept element-wise):
``{schedule: dimension, m0: 1, growth: 1.1, period: 20, m_max: 80}``,
``{schedule: power_decay, scale: 1.0, power: 0.4, offset: 1, floor: 0.01}``,
``{schedule: piecewise, values: [0.1, 0.05], boundaries: [500]}``, ``{schedule: constant, value: 0.1}``.

Every unknown key is rejected with the nearest valid name suggested; solver options are checked by
building each solver, problem options against the problem factory's signature.  The seed of a run also
seeds the problem (a new synthetic instance per seed, as in the paper) unless the problem options fix one.

``run.threads`` (default 1) is the torch thread count of every run.  It is part of each run's identity:
floating-point reductions depend on the thread count, so a run's numbers must not depend on how many
workers the sweep happened to use (``--n-jobs``), and a resume can never mix runs done with other counts.

An :class:`Experiment` is the expanded run list together with its *spec*: the normalised document (solver
names as mappings, nested options flattened, seeds as a list, run defaults filled in; ``description``
left out) and a hash of it.  A results folder records the specs it holds (``experiment.json``), so a
different config is refused there instead of silently merged (see ``runner``).
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional

from .._validation import reject_unknown, suggest
from ..schedules import Constant, DimensionSchedule, Piecewise, PowerDecay

TOP_KEYS = ("name", "description", "problem", "solvers", "seeds", "run", "batches")
PROBLEM_KEYS = ("name", "options")
SOLVER_KEYS = ("name", "label", "options", "run", "batches")
#: a ``batches:`` value meaning "the full data set" (no mini-batches)
FULL = "full"
RUN_KEYS = ("max_iter", "max_time", "eval_every", "true_hypergradient", "tol", "threads")
SCHEDULES = {
    "dimension": DimensionSchedule,
    "power_decay": PowerDecay,
    "piecewise": Piecewise,
    "constant": Constant,
}


def _flatten(options: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{v_solver: {m: 20}}`` → ``{"v_solver.m": 20}``; schedule mappings (with a ``schedule`` key) stay."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and "schedule" not in value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def display_label(solver: str) -> str:
    """The legend name as the papers write it (the solver's ``label``; a config's ``label`` overrides)."""
    from ..solvers import SOLVERS

    return getattr(SOLVERS.get(solver), "label", "") or solver


class ConfigError(ValueError):
    """The experiment file is invalid; the message names the place and the fix."""


@dataclass(frozen=True)
class RunSpec:
    """One run: a problem instance, a solver configuration, a seed and the run limits."""

    experiment: str
    problem: str
    problem_options: dict
    solver: str
    solver_options: dict
    label: str
    seed: int
    limits: dict
    run_id: str = field(default="")
    experiment_hash: str = field(default="")
    #: the mini-batch sampler's plain form (``MiniBatch.to_dict()``), None for a full-batch run
    batches: Optional[dict] = field(default=None)

    def key(self) -> dict:
        """What identifies the run (its id is a hash of this; ``batches`` only when set, so full-batch
        runs keep the ids they had before samplers existed)."""
        key = {
            "problem": self.problem, "problem_options": self.problem_options, "solver": self.solver,
            "solver_options": self.solver_options, "seed": self.seed, "limits": self.limits,
        }
        if self.batches is not None:
            key["batches"] = self.batches
        return key

    def to_dict(self) -> dict:
        return asdict(self)


def decode(value: Any) -> Any:
    """YAML value → Python option value (schedule mappings become schedule objects)."""
    if isinstance(value, Mapping) and "schedule" in value:
        kind = value["schedule"]
        if kind not in SCHEDULES:
            raise ConfigError(f"unknown schedule {kind!r}.{suggest(str(kind), SCHEDULES)} Valid: {', '.join(SCHEDULES)}.")
        args = {k: v for k, v in value.items() if k != "schedule"}
        cls = SCHEDULES[kind]
        valid = list(inspect.signature(cls).parameters)
        try:
            reject_unknown(f"schedule {kind!r}", args, valid)
        except TypeError as err:
            raise ConfigError(str(err)) from None
        if kind == "piecewise":
            args = {"values": tuple(args.get("values", ())), "boundaries": tuple(args.get("boundaries", ()))}
        try:
            return cls(**args)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"schedule {dict(value)}: {err}") from None
    return value


def _sweep(options: Mapping[str, Any]) -> list[dict]:
    """Cartesian product over the list-valued options (in key order)."""
    keys = list(options)
    axes = [options[k] if isinstance(options[k], list) else [options[k]] for k in keys]
    for k, axis in zip(keys, axes):
        if not axis:
            raise ConfigError(f"option {k!r} sweeps over an empty list; give at least one value.")
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


def _swept_keys(options: Mapping[str, Any]) -> list[str]:
    return [k for k, v in options.items() if isinstance(v, list)]


def _short(value: Any) -> str:
    if isinstance(value, Mapping) and "schedule" in value:
        inner = ", ".join(f"{k}={v}" for k, v in value.items() if k != "schedule")
        return f"{value['schedule']}({inner})"
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_id(spec_key: Mapping[str, Any], solver: str, seed: int) -> str:
    digest = hashlib.sha256(json.dumps(spec_key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{solver}-{digest}-seed{seed}"


def _require_mapping(value: Any, where: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping; got {type(value).__name__} ({value!r}).")
    return value


@dataclass(frozen=True)
class Experiment(Sequence):
    """The runs of one experiment file (a sequence of :class:`RunSpec`) and the spec they came from.

    ``spec``: the normalised document (what identifies the experiment); ``hash``: its digest;
    ``description``: free text (not part of the spec); ``source``: the file, ``overrides``: the ``--set``s.
    """

    name: str
    spec: dict
    hash: str
    runs: tuple
    description: str = ""
    source: str = ""
    overrides: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.runs)

    def __getitem__(self, index):
        return self.runs[index]

    def __iter__(self):
        return iter(self.runs)

    def labels(self) -> dict[str, str]:
        """run id → legend label."""
        return {r.run_id: r.label for r in self.runs}


def spec_hash(spec: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def spec_diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Dotted paths at which two normalised specs differ (``solvers[1].options.m``, ``seeds``)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                out.append(where)
            else:
                out += spec_diff(a[key], b[key], where)
        return out
    if (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)
            and all(isinstance(v, Mapping) for v in a + b)):
        return [d for i, (u, v) in enumerate(zip(a, b)) for d in spec_diff(u, v, f"{path}[{i}]")]
    return [] if _canonical(a) == _canonical(b) else [path or "(document)"]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def parse(raw: Any, source: str = "<config>", overrides: Mapping[str, str] | None = None) -> Experiment:
    """Validate a loaded YAML document and expand it into run specifications (an :class:`Experiment`)."""
    from ..problems import PROBLEMS
    from ..solvers import SOLVERS

    raw = _require_mapping(raw, f"{source}: the document")
    _reject(raw, TOP_KEYS, f"{source}")
    for key in ("problem", "solvers"):
        if key not in raw:
            raise ConfigError(f"{source}: missing required key {key!r}.")
    experiment = str(raw.get("name") or source)

    problem = _require_mapping(raw["problem"], f"{source}: problem")
    _reject(problem, PROBLEM_KEYS, f"{source}: problem")
    pname = problem.get("name")
    if pname not in PROBLEMS:
        raise ConfigError(f"{source}: unknown problem {pname!r}.{suggest(str(pname), PROBLEMS)} "
                          f"Registered: {', '.join(sorted(PROBLEMS))}.")
    poptions = dict(_require_mapping(problem.get("options") or {}, f"{source}: problem.options"))
    params = inspect.signature(PROBLEMS[pname]).parameters
    _reject(poptions, list(params), f"{source}: problem.options")

    seeds = raw.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
        seeds = list(range(seeds))
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise ConfigError(f"{source}: seeds must be a non-empty list of non-negative integers, or a count; got {seeds!r}.")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{source}: seeds contain duplicates: {seeds}.")

    limits = dict(_require_mapping(raw.get("run") or {}, f"{source}: run"))
    _reject(limits, RUN_KEYS, f"{source}: run")
    limits.setdefault("max_iter", 1000)
    limits.setdefault("eval_every", 10)
    limits.setdefault("threads", 1)
    _check_limits(limits, source)

    top_batches = _batches_section(raw.get("batches"), f"{source}: batches")

    solvers = raw["solvers"]
    if not isinstance(solvers, list) or not solvers:
        raise ConfigError(f"{source}: solvers must be a non-empty list of {{name, options}} entries.")
    specs: list[RunSpec] = []
    normalised_solvers = []
    for i, entry in enumerate(solvers):
        where = f"{source}: solvers[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        entry = _require_mapping(entry, where)
        _reject(entry, SOLVER_KEYS, where)
        sname = entry.get("name")
        if sname not in SOLVERS:
            raise ConfigError(f"{where}: unknown solver {sname!r}.{suggest(str(sname), SOLVERS)} "
                              f"Registered: {', '.join(sorted(SOLVERS))}.")
        soptions = _flatten(_require_mapping(entry.get("options") or {}, f"{where}.options"))
        own_limits = dict(_require_mapping(entry.get("run") or {}, f"{where}.run"))
        _reject(own_limits, RUN_KEYS, f"{where}.run")
        run_limits = {**limits, **own_limits}
        _check_limits(run_limits, where)
        base_label = str(entry.get("label") or display_label(sname))
        entry_spec = {"name": sname, "label": base_label, "options": soptions, "run": own_limits}
        own_batches = _batches_section(entry.get("batches"), f"{where}.batches")
        if own_batches is not None:  # absent or null: the top-level section (and the spec without the key)
            entry_spec["batches"] = own_batches
        normalised_solvers.append(entry_spec)
        from_top = own_batches is None or not isinstance(top_batches, Mapping)
        batch_where = f"{source}: batches" if own_batches is None else f"{where}.batches" + (
            "" if from_top else " (merged over the top-level batches)")
        merged_batches, batch_grid = _batch_grid(top_batches, own_batches, batch_where)
        swept = _swept_keys(soptions)
        bswept = _swept_keys(merged_batches)
        for popts in _sweep(poptions):
            for sopts in _sweep(soptions):
                try:
                    SOLVERS[sname].create(**{k: decode(v) for k, v in sopts.items()})
                except (TypeError, ValueError) as err:
                    raise ConfigError(f"{where}: {err}") from None
                for flat, plain in batch_grid:
                    label = base_label
                    shown = [f"{k}={_short(sopts[k])}" for k in swept]
                    shown += [f"{_batch_label(k)}={_short(flat[k])}" for k in bswept]
                    if shown:
                        label += " (" + ", ".join(shown) + ")"
                    pswept = _swept_keys(poptions)
                    if pswept:
                        label += " [" + ", ".join(f"{k}={_short(popts[k])}" for k in pswept) + "]"
                    for seed in seeds:
                        spec = RunSpec(experiment, pname, popts, sname, sopts, label, seed, dict(run_limits),
                                       batches=plain)
                        specs.append(spec)
    ids = [run_id(s.key(), s.solver, s.seed) for s in specs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{source}: two solver entries describe the same runs; remove the duplicate.")
    normalised = {"name": experiment, "problem": {"name": pname, "options": poptions},
                  "solvers": normalised_solvers, "seeds": list(seeds), "run": limits}
    if raw.get("batches") is not None:  # absent: the spec (and its hash) of a config without the section
        normalised["batches"] = top_batches
    digest = spec_hash(normalised)
    runs = tuple(RunSpec(**{**s.to_dict(), "run_id": i, "experiment_hash": digest}) for s, i in zip(specs, ids))
    return Experiment(experiment, normalised, digest, runs, description=str(raw.get("description") or ""),
                      source=source, overrides=dict(overrides or {}))


def _yaml_loader():
    """PyYAML's safe loader, except that 1e5 and 1.0e-3 are floats: YAML 1.1 wants a dot and a signed
    exponent, so plain PyYAML reads ``condition: 1.0e5`` as the string '1.0e5'."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
        list("-+0123456789."),
    )
    return Loader


def _yaml_load(text_or_stream):
    import yaml

    return yaml.load(text_or_stream, Loader=_yaml_loader())  # a SafeLoader subclass


def load(path: str, overrides: Mapping[str, str] | None = None) -> Experiment:
    """Read and expand a YAML experiment file; ``overrides`` maps dotted paths to YAML values."""
    import yaml

    try:
        with open(path) as fh:
            raw = _yaml_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"no experiment file at {path!r}.") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    for dotted, text in (overrides or {}).items():
        raw = apply_override(raw, dotted, text, path)
    return parse(raw, source=path, overrides=overrides)


def apply_override(raw: Any, dotted: str, text: str, source: str = "<config>") -> Any:
    """Set ``raw[a][b]… = yaml(text)`` for ``dotted = "a.b…"``; list entries by index (``solvers.0.options``)."""
    import copy

    import yaml

    raw = copy.deepcopy(_require_mapping(raw, f"{source}: the document"))
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"--set {dotted}={text}: empty key in the dotted path.")
    try:
        value = _yaml_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {dotted}={text}: the value is not valid YAML: {err}") from None
    node = raw
    for depth, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"--set {dotted}: {'.'.join(keys[:depth])} has {len(node)} entries; got index {key!r}.")
            if isinstance(node[int(key)], str):  # a solver given by name alone
                node[int(key)] = {"name": node[int(key)]}
            node = node[int(key)]
        else:
            if key not in node or node[key] is None:
                node[key] = {}
            node = node[key]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {dotted}: {'.'.join(keys[:depth + 1])} is a value, not a mapping.")
    last = keys[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set {dotted}: index {last!r} out of range ({len(node)} entries).")
        node[int(last)] = value
    else:
        node[last] = value
    return raw


def _batches_section(value: Any, where: str) -> Any:
    """A ``batches:`` value, normalised: None (absent), ``"full"``, or a flat mapping (``sizes.upper``,
    ``share.cross``) whose keys are checked here and values when the grid is expanded."""
    from ..sampling import FIELDS, ROLES

    if value is None:
        return None
    if value == FULL:
        return FULL
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping like {{size: 256, sizes: {{upper: 128}}, share: {{cross: hvp}}, "
                          f"mode: permutation}}, or 'full'; got {type(value).__name__} ({value!r}).")
    _reject(value, FIELDS, where)
    flat: dict[str, Any] = {}
    for key, item in value.items():
        if key in ("sizes", "share") and item is not None:
            if not isinstance(item, Mapping):
                example = "{upper: 128}" if key == "sizes" else "{cross: hvp}"
                raise ConfigError(f"{where}.{key} must be a mapping of roles, e.g. {example}; got "
                                  f"{type(item).__name__} ({item!r}).")
            for role, v in item.items():
                if role not in ROLES:
                    raise ConfigError(f"{where}.{key}: unknown batch role {role!r}.{suggest(str(role), ROLES)} "
                                      f"Roles: {', '.join(ROLES)}.")
                flat[f"{key}.{role}"] = v
        elif item is not None:
            flat[key] = item
    return flat


def _batch_grid(top: Any, own: Any, where: str) -> tuple[dict, list]:
    """The solver's batches section merged over the top-level one (flat keys, so ``sizes`` and ``share``
    merge role by role; ``full`` on either side wins as written: the solver's over the top's), and its
    combinations as [(flat combination, ``MiniBatch.to_dict()``)]; ``({}, [({}, None)])`` for full batch."""
    from ..sampling import MiniBatch

    if own == FULL or (own is None and top in (None, FULL)):
        return {}, [({}, None)]
    merged = {**(top if isinstance(top, Mapping) else {}), **(own or {})}
    combos = []
    for flat in _sweep(merged):
        spec: dict[str, Any] = {}
        for key, v in flat.items():
            if "." in key:
                outer, role = key.split(".", 1)
                spec.setdefault(outer, {})[role] = v
            else:
                spec[key] = v
        try:
            plain = MiniBatch.from_dict(spec, where=where).to_dict()
        except (TypeError, ValueError) as err:
            raise ConfigError(str(err)) from None
        combos.append((flat, plain))
    return merged, combos


def _batch_label(key: str) -> str:
    """A swept batch key in a legend: ``size`` → ``B``, ``sizes.upper`` → ``B_upper``, else as written."""
    if key == "size":
        return "B"
    if key.startswith("sizes."):
        return "B_" + key.split(".", 1)[1]
    return key


def _reject(mapping: Mapping, valid, where: str) -> None:
    for key in mapping:
        if key not in valid:
            raise ConfigError(f"{where}: unknown key {key!r}.{suggest(str(key), valid)} Valid keys: {', '.join(valid)}.")


def _check_limits(limits: dict, source: str) -> None:
    def positive_int(name):
        v = limits.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"{source}: run.{name} must be a positive integer; got {v!r}.")

    positive_int("max_iter")
    positive_int("eval_every")
    positive_int("threads")
    for name in ("max_time", "tol"):
        v = limits.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
            raise ConfigError(f"{source}: run.{name} must be a positive number; got {v!r}.")
    th = limits.get("true_hypergradient")
    if th is not None and not isinstance(th, bool):
        raise ConfigError(f"{source}: run.true_hypergradient must be true or false; got {th!r}.")
