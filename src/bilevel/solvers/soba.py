"""SOBA: single-loop simultaneous updates of x, y and v (Dagréou, Ablin, Vaiter & Moreau, "A framework for
bilevel optimization that enables stochastic and global variance reduction algorithms", NeurIPS 2022)."""

from __future__ import annotations

from typing import Any

from ..linear_solvers.gd import GD
from ..schedules import PowerDecay
from .aid import AID, aid, algorithm

SETTINGS = {
    "synthetic": {"inner_steps": 1},
    "hyperclean": {"inner_steps": 1},
    # 20 Newsgroups: the problem's scales η = 0.5, θ = λ = 100 (Ji, Yang & Liang 2021); single loop, T = 1
    "newsgroups": {"inner_steps": 1},
    # §3.3 / §4.3 "Stoc": η = θ = 0.1, λ = 100, K = 20000.  Its batch size B = 128 is not a solver option:
    # give it to the sampler (MiniBatch(128); the configs' batch_size for SOBA)
    "stochastic/hyperclean": {"inner_steps": 1, "lr_x": 100.0, "lr_y": 0.1, "eta": 0.1},
}

#: SOBA's draws: the y-step, the HVP and the cross product on one training batch (one sample i of the paper)
BATCH_ROLES = {"inner": "train", "hvp": "train", "cross": "train"}


@algorithm("soba", "SOBA", checks={
    # mini-batches (tests/test_stochastic_solvers.py): quadratic(dx=5, dy=20, κ=10) and
    # synthetic(n=100, κ=100), both n_samples=200, n_samples_f=100, MiniBatch(32), seed 0; reduction:
    # ‖∇φ(x_0)‖ / the mean of the last 5 of 21 evaluations (the noise floor); [measured: quadratic seeds 0–2,
    #  synthetic seeds 0–1]
    # the paper's decaying steps λ_k ∝ k^(−3/5), ρ_k ∝ k^(−2/5) (quadratic); synthetic: λ_k = k^(−0.4) with
    # θ = η = 1/κ constant, slower by its single y-step, hence K = 1000
    "stochastic/quadratic": {"max_iter": 500, "reduction": 1000, "batch_size": 32, "options": {
        "lr_x": PowerDecay(0.5, 0.6), "lr_y": PowerDecay(0.1, 0.4)}},  # [2001, 2442]
    # [502, 503]
    "stochastic/synthetic": {"max_iter": 1000, "reduction": 200, "batch_size": 32,
        "options": {"lr_x": PowerDecay(1.0, 0.4)}},
    # single loop: one y-step and one v-step per iteration, hence the longer budgets
    "quadratic": {"max_iter": 600, "reduction": 1e3},
    "synthetic": {"max_iter": 600, "reduction": 1e3},
})
def soba(**options: Any) -> AID:
    """SOBA — stochastic bilevel algorithm, one step on every variable per iteration (Dagréou et al.,
    NeurIPS 2022).

    ``aid(v_solver=gd(steps=1, warm_start=True), order="simultaneous")``.  Iteration k, every direction at
    (x_k, y_k, v_k):

        D_y = ∇_y g(x_k, y_k);  D_v = A_k v_k − b_k;  D_x = ∇_x f(x_k, y_k) − ∇²_xy g(x_k, y_k) v_k
        y_{k+1} = y_k − θ_k D_y      (lr_y = θ)
        v_{k+1} = v_k − η D_v        (eta = η; one GD step, warm-started)
        x_{k+1} = x_k − λ_k D_x      (lr_x = λ)

    (Library sign convention v ≈ +A⁻¹b; the paper's v is the negative.)  ``order="sequential"`` is the
    reference's synthetic compatibility form (y, then v, then x at the updated y and v_{k+1}).

    Oracle cost per iteration: 1 ∇_y g (at the linearisation point), 1 ∇_y f, 1 ∇_x f, **1 HVP**,
    1 cross product.  The first iteration makes no HVP (v_0 = 0: v_1 = η b_0); its cross product with
    v_0 = 0 is still made by the shared simultaneous AID loop.  Total over K iterations: K − 1 HVPs
    (K with ``v_init="randn"``), K cross products, K ∇_y g.

    Mini-batches, as in the paper (one lower sample i and one upper sample j per iteration): D_y, the HVP
    of D_v and the cross product of D_x share one training batch (``batch_roles``: ``inner``, ``hvp`` and
    ``cross`` are one draw group); b = ∇_y f and ∇_x f share one ``upper`` draw (validation data).  Draws
    per iteration: 1 training, 1 upper (T > 1 adds T − 1 training draws for the extra y-steps).  Samples
    per iteration: 3·B on g (∇_y g, 1 HVP, 1 cross; 2·B in the first, which makes no HVP), 2·B_upper on f.

    Step sizes: the published theory uses ρ_k ∝ k^(−2/5) for y and v and γ_k ∝ k^(−3/5) for x; pass
    schedules as lr_y and lr_x (e.g. ``PowerDecay(θ0, 0.4)``, ``PowerDecay(λ0, 0.6)``).  eta is a constant
    (the GD v-solver's step), as in the experiments.  inner_steps (T) defaults to 1; T > 1 adds T − 1
    plain y-steps after the simultaneous one.  Without settings or scales the step sizes are automatic
    (θ = η = 1/L̂, L̂ raised by the GD iterates' Rayleigh quotients; AdaGrad-norm λ; ``bilevel.auto_steps``).

    Published settings (η, θ, λ are the problems' scales; Stoc: ``SETTINGS["stochastic/hyperclean"]``, and
    B = 128 is given to the sampler):

        ======  ==================  =====================  ================================================
                η / θ / λ           K                      B
        Syn     1e-5 / 1e-5 / 1     30000                  —
        HC      0.05 / 0.1 / 500    6000 (log every 50)    full
        Stoc    0.1 / 0.1 / 100     20000                  128 (one training batch for HVP, cross and
                                                           y-step; one validation batch for b)
        NG      0.5 / 100 / 100     50 (Ji et al. 2021)    full
        ======  ==================  =====================  ================================================
    """
    return aid(name="soba", label="SOBA", v_solver=GD(steps=1, warm_start=True), default_order="simultaneous",
               defaults={"inner_steps": 1}, settings=SETTINGS, min_inner_steps=1, batch_roles=BATCH_ROLES,
               **options)
