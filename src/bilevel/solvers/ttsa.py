"""TTSA: single-loop two-timescale AID with a randomised Neumann estimate (Hong, Wai, Wang & Yang, "A
Two-Timescale Stochastic Algorithm Framework for Bilevel Optimization", SIAM J. Optim. 2023)."""

from __future__ import annotations

from typing import Any

from ..linear_solvers.neumann import randomized_neumann
from ..schedules import PowerDecay
from .aid import AID, aid, algorithm

SETTINGS = {
    "synthetic": {"inner_steps": 1, "v_steps": 10, "lr_x": PowerDecay(1.0, 0.4, offset=1, floor=0.01)},
    "hyperclean": {"inner_steps": 1, "v_steps": 10},
    # 20 Newsgroups: Q = 10 and the problem's scales η = 0.5, λ = θ = 100 (Ji, Yang & Liang 2021); single loop, T = 1
    "newsgroups": {"inner_steps": 1, "v_steps": 10},
    # §3.4 / §4.3 "Stoc": Q = 9, T = 1, λ = 100, θ = 0.1, η = 0.1, B = 256 (the batch size is the sampler's)
    "stochastic/hyperclean": {"inner_steps": 1, "v_steps": 9, "lr_x": 100.0, "lr_y": 0.1, "eta": 0.1},
}


@algorithm("ttsa", "TTSA", checks={
    # mini-batches (tests/test_stochastic_solvers.py): quadratic(dx=5, dy=20, κ=10) and
    # synthetic(n=100, κ=100), both n_samples=200, n_samples_f=100, MiniBatch(32), seed 0; reduction:
    # ‖∇φ(x_0)‖ / the mean of the last 5 of 21 evaluations (the noise floor); [measured: quadratic seeds 0–2,
    #  synthetic seeds 0–1]
    # the paper's decaying steps λ_k ∝ k^(−3/5), θ_k ∝ k^(−2/5) (quadratic); synthetic: the reference's
    # λ_k = k^(−0.4) with θ = 1/κ constant, slower by its single y-step, hence K = 1000
    "stochastic/quadratic": {"max_iter": 500, "reduction": 8, "batch_size": 32, "options": {
        "lr_x": PowerDecay(0.5, 0.6), "lr_y": PowerDecay(0.1, 0.4)}},  # [18.6, 25.5]
    # [524, 527]
    "stochastic/synthetic": {"max_iter": 1000, "reduction": 200, "batch_size": 32,
        "options": {"lr_x": PowerDecay(1.0, 0.4)}},
    # floor: E[v] is the Q = 5 term Neumann sum, whose truncation bias at κ = 100 with η = 1/L (plus the
    # estimator's variance) stalls ‖∇φ‖ near 0.35 from 1.6 (measured reduction 4.5)
    "quadratic": {"max_iter": 400, "reduction": 3.0},
    # the reference's synthetic setting (λ_k = max(0.01, k^(−0.4)), T = 1, Q = 10): slow by its decaying step
    "synthetic": {"max_iter": 2000, "reduction": 1e3, "options": {
        "lr_x": PowerDecay(1.0, 0.4, offset=1, floor=0.01), "inner_steps": 1, "v_steps": 10}},
})
def ttsa(*, compat_hybrid: bool = False, **options: Any) -> AID:
    """TTSA — two-timescale stochastic approximation, single loop (Hong et al., SIAM J. Optim. 2023).

    ``aid(v_solver=neumann(randomized=True))`` with T = 1.  Iteration k (sequential):

        y_k = y_{k−1} − θ_k ∇_y g(x_k, y_{k−1})                              (lr_y = θ, inner_steps = T)
        b_k = ∇_y f(x_k, y_k);  A_k = ∇²_yy g(x_k, y_k)
        p ~ U{0, …, Q−1};  v_k = Q·η·(I − ηA_k)^p b_k                         (v_steps = Q, eta = η)
        x_{k+1} = x_k − λ_k (∇_x f(x_k, y_k) − ∇²_xy g(x_k, y_k) v_k)         (lr_x = λ)

    E[v_k] = η Σ_{i<Q} (I − ηA_k)^i b_k, the truncated Neumann series; v is not warm-started.  p is drawn
    with the run's seeded generator (``solve(seed=...)``), so a seed reproduces the run; the last draw is
    ``state.v_state.last_p``.

    Oracle cost per iteration: T ∇_y g, 1 ∇_y f, 1 ∇_x f, **p HVPs ((Q − 1)/2 in expectation)**, 1 cross
    product; ``random_cost`` (counts are compared with their expectation).

    Step sizes: the published ones are λ_k ∝ k^(−3/5) and θ_k ∝ k^(−2/5): pass schedules as lr_x and lr_y
    (e.g. ``PowerDecay(λ0, 0.6)``); η is a constant.  inner_steps defaults to 1.  Without settings or scales
    the step sizes are automatic (θ = η = 1/L̂, AdaGrad-norm λ; ``bilevel.auto_steps``).

    ``compat_hybrid=True`` (compatibility only, off by default): the reference's synthetic estimator,
    c = η with no Q factor followed by Q GD steps on v (p + Q HVPs, (Q − 1)/2 + Q expected); it is biased
    and is not the published method.

    Mini-batches, as in the paper (the hypergradient estimator of Ghadimi & Wang with independent samples):
    the y-step draws ``inner`` 0; b and ∇_x f one ``upper`` draw (validation data); the i-th of the p
    factors (I − ηA^(i)) its own ``hvp`` batch (``hessian_batch="product"``), so
    E[v_k] = η Σ_{i<Q} (I − ηĀ_k)^i b_k; J v one ``cross`` draw.  Draws per iteration: T inner, 1 upper,
    p hvp ((Q − 1)/2 expected; none when p = 0), 1 cross.  Samples per iteration: (T + p + 1)·B on g,
    2·B_upper on f.

    Published settings (Q, T and the synthetic λ_k from ``SETTINGS``; η, θ the problems' scales; Stoc:
    ``"stochastic/hyperclean"``):

        ======  =========  ==============================  =====  ====
                Q / η      λ                               θ      B
        Syn     10 / 1e-5  max(0.01, k^(−0.4)), k ≥ 1      1e-5   —
        HC      10 / 0.05  500 constant                    0.1    full
        Stoc    9 / 0.1    100 constant                    0.1    256
        NG      10 / 0.5   100 constant                    100    full
        ======  =========  ==============================  =====  ====
    """
    v_solver = randomized_neumann(compat_hybrid, owner="TTSA")
    return aid(name="ttsa", label="TTSA", v_solver=v_solver,
               defaults={"inner_steps": 1, "v_steps": 10, "hessian_batch": "product"}, settings=SETTINGS,
               min_inner_steps=1, **options)
