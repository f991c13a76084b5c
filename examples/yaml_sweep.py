"""An experiment file swept over solvers, options and seeds, then plotted and reported — the benchmark harness.

The script writes a small experiment file (the synthetic problem of the LancBiO paper at n = 100, κ = 100;
LancBiO with m ∈ {5, 20}, AmIGO-CG and SOBA; three seeds) and runs the three commands of the harness on it:

    bilevel bench CONFIG.yaml --out DIR     every (solver configuration × seed), resumable, in parallel
    bilevel plot DIR --y hypergrad_norm     median and 20–80 % band over seeds
    bilevel report DIR                      a Markdown summary: final values, time to a target

exactly as on the command line (``bilevel.cli.main`` is the ``bilevel`` console script; it returns the exit
code).  The shipped configs under ``configs/`` are the full
experiments of the papers; ``--set`` overrides any value (e.g. ``--set seeds=[1,2]``).

Run: ``python examples/yaml_sweep.py``; ``BILEVEL_EXAMPLES_QUICK=1`` for the small budget of the tests,
``BILEVEL_EXAMPLES_OUT=DIR`` for the output folder (default: examples/output).
"""

import os
import shutil
from pathlib import Path

from bilevel.cli import main as bilevel_main

QUICK = os.environ.get("BILEVEL_EXAMPLES_QUICK", "") not in ("", "0")
OUT = Path(os.environ.get("BILEVEL_EXAMPLES_OUT", Path(__file__).resolve().parent / "output"))

CONFIG = f"""\
name: synthetic-small
description: LancBiO (two subspace dimensions), AmIGO-CG and SOBA on a small synthetic problem
problem:
  name: synthetic
  options: {{n: 100, condition: 100}}
solvers:
  - name: lancbio
    options: {{m: [5, 20], inner_steps: 10}}      # a list value sweeps: one configuration per m
  - name: amigo_cg
    options: {{inner_steps: 10}}
  - name: soba
    run: {{max_iter: {60 if QUICK else 1200}}}     # single loop: more, cheaper iterations
seeds: {[1] if QUICK else [1, 2, 3]}
run: {{max_iter: {20 if QUICK else 400}, eval_every: 10, true_hypergradient: true}}
"""

OUT.mkdir(parents=True, exist_ok=True)
config = OUT / "yaml_sweep.yaml"
config.write_text(CONFIG)
results = OUT / "yaml_sweep_results"
shutil.rmtree(results, ignore_errors=True)  # a fresh sweep every time (re-running into it would resume)


def bilevel_cli(*args: str) -> None:
    print("$ bilevel " + " ".join(args), flush=True)
    code = bilevel_main(list(args))
    if code != 0:
        raise SystemExit(code)


bilevel_cli("bench", str(config), "--out", str(results), "--backend", "sequential", "--no-progress")
bilevel_cli("plot", str(results), "--x", "time", "--y", "hypergrad_norm", "--out", str(OUT / "yaml_sweep.png"),
            "--title", "Synthetic, n = 100, κ = 100: true hypergradient norm")
bilevel_cli("report", str(results))  # DIR/report.md, beside the figures it links
print((results / "report.md").read_text())
