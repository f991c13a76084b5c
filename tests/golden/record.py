"""Record the golden histories that pin the library's numerical behaviour across refactors.

Every registered solver x {quadratic, synthetic n=100, digits hyper-cleaning}, 50 iterations, evaluated
at every iteration, seed 3, float64, one torch thread.  Floats are stored with ``float.hex`` (exact), so
``tests/test_golden.py`` can demand bit-identical histories.  Re-record only for an intended change of
behaviour, and say so in the commit message:

    python tests/golden/record.py
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

import bilevel
from bilevel.kinds import solvers_for

HERE = Path(__file__).resolve().parent
ITERATIONS = 50
SEED = 3


def problems() -> dict:
    return {
        "quadratic": lambda: bilevel.problems.quadratic(dx=5, dy=20, condition=100.0, seed=0),
        "synthetic": lambda: bilevel.problems.synthetic(n=100, condition=100.0, seed=0),
        "hyperclean_digits": lambda: bilevel.problems.hyperclean(
            dataset="digits", corruption=0.8, seed=0, dtype=torch.float64),
    }


def encode(value):
    if isinstance(value, float):
        return {"hex": value.hex()} if math.isfinite(value) else {"float": repr(value)}
    return value


#: further configurations that exercise paths the defaults do not reach in 50 iterations
EXTRAS = {
    "lancbio[m=4]": ("lancbio", {"m": 4}),
    "lancbio[m=3,minres,freeze_x_first=1]": ("lancbio", {"m": 3, "subproblem": "minres", "freeze_x_first": 1}),
    "soba[sequential]": ("soba", {"order": "sequential"}),
    "ttsa[compat_hybrid]": ("ttsa", {"compat_hybrid": True}),
    "amigo_cg[randn]": ("amigo_cg", {"v_init": "randn"}),
    # residual mode from k = 0: the hyper-cleaning default until the published schedule replaced it
    "lancbio[hyperclean-residual]": ("lancbio", {"preset": "hyperclean-residual"}),
}


def configurations() -> dict:
    out = {name: (name, {}) for name in solvers_for("classic")}  # RL solvers have their own tests
    out.update(EXTRAS)
    return out


def run(problem_name: str, config: str) -> dict:
    torch.set_num_threads(1)
    problem = problems()[problem_name]()
    solver_name, options = configurations()[config]
    res = bilevel.solve(problem, bilevel.solvers.get_solver(solver_name, **options), max_iter=ITERATIONS,
                        eval_every=1, seed=SEED)
    rows = [{k: encode(v) for k, v in row.items() if k != "time"} for row in res.history]
    return {
        "status": res.status, "iterations": res.iterations,
        "x": [float(t).hex() for t in res.x.double().tolist()],
        "rows": rows,
    }


def main() -> int:
    import warnings

    warnings.simplefilter("ignore")  # the m-schedule cap warning is expected at 50 iterations
    for problem_name in problems():
        out = {name: run(problem_name, name) for name in configurations()}
        path = HERE / f"{problem_name}.json"
        path.write_text(json.dumps(out, indent=0, sort_keys=True) + "\n")
        print(f"wrote {path} ({len(out)} solvers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
