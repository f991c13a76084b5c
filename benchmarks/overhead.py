"""Loop overhead of LancBiO: outer-iteration wall time ÷ standalone time of that iteration's oracle calls.

For each problem, one run of ``bilevel.solve`` gives the solver time of K iterations (evaluation is
excluded by ``solve``).  A second ``solve`` with the same seed, through an oracle wrapper that records every
call and its inputs (``solve(..., oracles=RecordingOracles(Oracles(problem)))``), follows the identical
trajectory; its calls are then replayed on their own (fresh
linearisations, the same vectors, in the same order) and timed.  The ratio is what the library adds on top
of the oracles: the AID loop, the Lanczos recurrence, the tridiagonal solve, bookkeeping.  Target ≤ 1.10.

    python benchmarks/overhead.py            # synthetic n=2000 and a 5000×7850 softmax lower level
    python benchmarks/overhead.py --quick    # smaller sizes, for a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import bilevel
from bilevel.oracles import Oracles, OracleWrapper, PointWrapper


class RecordingOracles(OracleWrapper):
    """An oracle wrapper that logs (kind, inputs) of every call, the products at each point included."""

    def __init__(self, inner):
        super().__init__(inner)
        self.log: list[tuple] = []

    def grad_y_g(self, x, y, batch=None):
        self.log.append(("grad_y_g", x, y))
        return super().grad_y_g(x, y, batch)

    def grad_f(self, x, y, batch=None):
        self.log.append(("grad_f", x, y))
        return super().grad_f(x, y, batch)

    def at(self, x, y, batch=None):
        self.log.append(("at", x, y))
        return _RecordingPoint(super().at(x, y, batch), self.log)


class _RecordingPoint(PointWrapper):
    def __init__(self, inner, log):
        super().__init__(inner)
        self._log = log

    def hvp(self, u):
        self._log.append(("hvp", u))
        return super().hvp(u)

    def cross(self, u):
        self._log.append(("cross", u))
        return super().cross(u)

    def grad_y_g(self):
        self._log.append(("point_grad_y_g",))
        return super().grad_y_g()


def replay(problem, log) -> float:
    """Time the logged calls executed on their own (same inputs, same order)."""
    o = Oracles(problem)
    point = None
    sync = torch.cuda.synchronize if problem.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for entry in log:
        kind = entry[0]
        if kind == "grad_y_g":
            o.grad_y_g(entry[1], entry[2])
        elif kind == "grad_f":
            o.grad_f(entry[1], entry[2])
        elif kind == "at":
            point = o.at(entry[1], entry[2])
        elif kind == "hvp":
            point.hvp(entry[1])
        elif kind == "cross":
            point.cross(entry[1])
        elif kind == "point_grad_y_g":
            point.grad_y_g()
    sync()
    return time.perf_counter() - start


def softmax_problem(n_train=5000, n_val=5000, features=784, classes=10, seed=0, dtype=torch.float64):
    """Hyper-cleaning-shaped problem on random data, through the generic autodiff oracles:
    x ∈ R^N per-sample weight logits, y = P ∈ R^(C×(d+1)),  g = (1/N) Σ σ(x_i) CE(P x̃_i, ỹ_i) + 0.01‖P‖²,
    f = validation CE."""
    gen = torch.Generator().manual_seed(seed)
    ones = lambda n: torch.ones(n, 1, dtype=dtype)
    Xt = torch.cat([torch.randn(n_train, features, generator=gen, dtype=dtype), ones(n_train)], 1)
    Xv = torch.cat([torch.randn(n_val, features, generator=gen, dtype=dtype), ones(n_val)], 1)
    yt = torch.randint(classes, (n_train,), generator=gen)
    yv = torch.randint(classes, (n_val,), generator=gen)
    P0 = 0.2 ** 0.5 * torch.randn(classes, features + 1, generator=gen, dtype=dtype)
    ce = torch.nn.functional.cross_entropy

    def g(x, P, batch):
        losses = ce(Xt @ P.T, yt, reduction="none")
        return (torch.sigmoid(x) * losses).mean() + 0.01 * (P ** 2).sum()

    def f(x, P, batch):
        return ce(Xv @ P.T, yv)

    presets = {"*": {"lr_x": 500.0, "lr_y": 0.1, "inner_steps": 5}}
    return bilevel.BilevelProblem(f, g, torch.zeros(n_train, dtype=dtype), P0, name="softmax-5000x7850",
                                  presets=presets)


def measure(problem, solver, iters, repeats):
    ratios, per_iter = [], []
    for _ in range(repeats):
        res = bilevel.solve(problem, solver, max_iter=iters, eval_every=10 ** 9, true_hypergradient=False)
        rec = RecordingOracles(Oracles(problem))
        again = bilevel.solve(problem, solver, max_iter=iters, eval_every=10 ** 9, true_hypergradient=False,
                              oracles=rec)
        assert torch.equal(again.x, res.x)  # the recorded run followed the timed trajectory
        oracle_time = replay(problem, rec.log)
        ratios.append(res.time / oracle_time)
        per_iter.append(res.time / iters)
    return statistics.median(ratios), min(ratios), max(ratios), statistics.median(per_iter), res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.quick:
        cases = [("synthetic n=300", lambda: bilevel.problems.synthetic(n=300, seed=0), 100),
                 ("softmax 500x7850", lambda: softmax_problem(n_train=500, n_val=500), 30)]
    else:
        cases = [("synthetic n=2000", lambda: bilevel.problems.synthetic(n=2000, seed=0), 300),
                 ("softmax 5000x7850", lambda: softmax_problem(), 60)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, LancBiO with the problems' presets")
    print(f"{'problem':<20} {'iters':>6} {'ms/iter':>9} {'HVP/iter':>9} {'ratio (median)':>15} {'min':>6} {'max':>6}")
    for label, make, iters in cases:
        problem = make()
        med, lo, hi, per, res = measure(problem, bilevel.solvers.lancbio(), iters, args.repeats)
        print(f"{label:<20} {iters:>6} {per * 1e3:>9.2f} {res.counts.hvp / iters:>9.3f} {med:>15.3f} {lo:>6.3f} {hi:>6.3f}")


if __name__ == "__main__":
    main()
