"""The base of bilevel-RL solvers and their state.

An RL solver is a ``Solver`` (frozen options, ``bind``/``init``/``step``) with ``kinds = ("rl",)``: it runs on an
``RLProblem`` and calls ``RLOracles`` (counted model access) instead of the AID oracles.  Its state carries the
upper iterate x, the lower iterate (soft values V, warm-started across iterations), the solver's auxiliary
variable (``w``: an adjoint or a ∇_x V table; None when it has none) and ``estimate``: the hypergradient estimate
the last x-update used, so that the evaluation can set it against the exact ∇φ.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Optional

import torch
from torch import Tensor

from .._validation import check_int, check_positive
from ..solvers.base import Solver
from .inner import SoftValueIteration
from .oracles import RLOracles
from .problem import RLProblem


@dataclass(frozen=True)
class RLState:
    """k: iterations done; x: x_k (next upper iterate); V: lower iterate; w: auxiliary (or None);
    iterate: (x, V, w, estimate, π) of the last step, evaluated by ``solve``; events: notable events."""

    k: int
    x: Tensor
    V: Tensor
    w: Optional[Tensor]
    iterate: tuple
    events: Mapping[str, int] = field(default_factory=dict)
    generator: Optional[torch.Generator] = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    # the names the generic run loop reads
    @property
    def y(self) -> Tensor:
        return self.V

    @property
    def v(self) -> Optional[Tensor]:
        return self.w


class RLSolver(Solver):
    """Base class of bilevel-RL solvers (``kinds = ("rl",)``)."""

    kinds: ClassVar[tuple[str, ...]] = ("rl",)
    required: ClassVar[tuple[str, ...]] = ("lr_x",)
    #: True when the solver needs the problem's trajectory loss (sampled estimators)
    needs_trajectory_loss: ClassVar[bool] = False
    #: the options checked by ``validate``: positive reals (``clip`` may also be 0) and integers ≥ their bound
    positive_options: ClassVar[tuple[str, ...]] = ("lr_x",)
    int_options: ClassVar[Mapping[str, int]] = {"sweeps": 1}

    def validate(self, opts: Mapping[str, Any]) -> None:
        if opts.get("clip") is not None:
            check_positive(self.label, "clip", opts["clip"], allow_zero=True)
        for name in self.positive_options:
            if opts.get(name) is not None:
                check_positive(self.label, name, opts[name])
        for name, low in self.int_options.items():
            if opts.get(name) is not None:
                check_int(self.label, name, opts[name], low)

    def bind(self, problem: Any, stochastic: bool = False):
        bound = super().bind(problem, stochastic)
        if self.needs_trajectory_loss and getattr(problem, "trajectory", None) is None:
            raise ValueError(
                f"solver {self.name!r} samples trajectories and needs a trajectory loss, but problem "
                f"{problem.name!r} has its upper loss only as a function of the policy — use m_sobirl or "
                "sobirl on it, or build the problem with trajectory=TrajectoryLoss(...)."
            )
        return bound

    @property
    def inner(self) -> SoftValueIteration:
        """The lower-level inner solver: ``sweeps`` warm-started soft value-iteration sweeps per iteration."""
        return SoftValueIteration(self.sweeps)

    def init_state(self, problem: RLProblem, generator: torch.Generator, w: Optional[Tensor] = None) -> RLState:
        x = problem.x0
        V = problem.y0
        return RLState(k=0, x=x, V=V, w=w, iterate=(x, V, w, None, None), events={}, generator=generator)

    def init_derivative_state(self, problem: RLProblem, generator: torch.Generator) -> RLState:
        """The start of a solver that carries D = ∂V/∂x between iterations as w (SoBiRL, Stoc-SoBiRL): D₀ = 0, a
        dx-vector per state and MDP, the warm start of the policy-evaluation sweeps."""
        D0 = torch.zeros(problem.y0.shape + (problem.dx,), dtype=problem.dtype, device=problem.device)
        return self.init_state(problem, generator, w=D0)

    def best_response(self, o: RLOracles, x: Tensor, V0: Tensor, P: Optional[Tensor] = None
                      ) -> tuple[Tensor, Tensor, Tensor]:
        """(r(x), V, π): ``sweeps`` warm-started soft value-iteration sweeps from V0 and the soft policy of the
        result, on the kernel P (default: the problem's; SoBiRL passes a sampled one)."""
        r = o.reward(x)
        V = self.inner.run(o, r, V0, P)
        return r, V, o.policy(r, V, P)

    def step_batch(self, states: list, oracles: list) -> list:
        """One iteration of several runs of this solver on one problem (one state and one ``RLOracles`` per run,
        e.g. one per seed): the next state of each, exactly (bit for bit) what ``step`` makes of it alone.
        Here they step one after another; a solver whose iteration vectorises over runs (HPGD) overrides it."""
        return [self.step(s, o, None) for s, o in zip(states, oracles)]

    def best_response_batch(self, oracles: list, xs: list, Vs: list) -> tuple[Tensor, Tensor, Tensor]:
        """``best_response`` for several runs at once (r, V, π with a leading run dimension): the sweeps of all
        runs in one batched soft value iteration, counted per run; equal to each run's ``best_response``."""
        p = oracles[0].problem
        r = torch.stack([o.reward(x) for o, x in zip(oracles, xs)])
        V = oracles[0].soft_vi(r, torch.stack(Vs), self.sweeps, count=False)
        for o in oracles:
            o.counts.sweeps += self.sweeps * p.n_contexts
        return r, V, oracles[0].policy(r, V)

    def advance(self, state: RLState, x_k: Tensor, estimate: Tensor, V: Tensor, w: Optional[Tensor],
                pi: Optional[Tensor], **extra: Any) -> RLState:
        """The next state after the x-step x_{k+1} = x_k − λ·clip(estimate) (``lr_x``, ``clip``)."""
        x_new = x_k - self.lr_x * self.clipped(estimate)
        return dataclasses.replace(state, k=state.k + 1, x=x_new.detach(), V=V.detach(),
                                   w=None if w is None else w.detach(),
                                   iterate=(x_k, V.detach(), None if w is None else w.detach(), estimate.detach(),
                                            None if pi is None else pi.detach()),
                                   extra={**state.extra, **extra})

    def clipped(self, direction: Tensor) -> Tensor:
        """The x-step direction rescaled to norm ≤ ``clip`` (the option; 0 or absent: unchanged), as in the
        FourRooms protocol of Thoma et al. (SGD with the gradient clipped to norm 1)."""
        clip = getattr(self, "clip", 0.0) or 0.0
        if not clip:
            return direction
        return direction * torch.clamp(clip / torch.linalg.vector_norm(direction).clamp(min=1e-300), max=1.0)

    @staticmethod
    def check_oracles(oracles: Any) -> RLOracles:
        if not isinstance(oracles, RLOracles):
            raise TypeError(f"RL solvers call bilevel.rl.RLOracles; got {type(oracles).__name__} "
                            "(bilevel.solve builds them for an RLProblem).")
        return oracles
