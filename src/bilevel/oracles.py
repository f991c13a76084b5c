"""First- and second-order oracles of a bilevel problem: the only module that calls autograd.

Everything here acts on flat vectors ``x ∈ R^dx``, ``y ∈ R^dy``.  A problem's closed forms
(``ClosedForms``) replace any oracle; the rest is autodiff of ``f`` and ``g``.

Second-order products are taken at a *point*: ``Oracles.at(x, y, batch)`` returns a ``Linearization``
that builds the graph of ``∇_y g(x, y)`` once and answers every HVP ``A·u = ∇²_yy g·u`` and cross
product ``J·u = ∇²_xy g·u`` at that point by one backward pass through it.  Drop the object when
(x, y) changes; the graph goes with it.

Counting is a wrapper: ``CountingOracles(Oracles(problem), counts)`` records every call by type and the
samples it touched (solvers never count by hand); ``linearize`` counts autodiff graph builds (each costs
about one gradient; 0 on a problem whose closed forms supply the products).  ``OracleWrapper`` is the base
of user wrappers (``solve(..., oracles=...)``).  Evaluation code uses a bare, uncounted ``Oracles``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Optional

import torch
from torch import Tensor

from .problem import BilevelProblem, ProblemError


@dataclass
class Counts:
    """Oracle calls by type, and the data samples they touched per level (``samples_f`` by ∇f calls,
    ``samples_g`` by every call on g; a full-data call touches the problem's whole data set of that level).
    ``samples`` is their sum."""

    grad_x_f: int = 0
    grad_y_f: int = 0
    grad_y_g: int = 0
    grad_x_g: int = 0
    hvp: int = 0
    cross: int = 0
    cross_t: int = 0
    linearize: int = 0
    samples_f: int = 0
    samples_g: int = 0

    @property
    def samples(self) -> int:
        return self.samples_f + self.samples_g

    def as_dict(self) -> dict[str, int]:
        out = asdict(self)
        out["samples"] = self.samples
        return out

    def copy(self) -> "Counts":
        return Counts(**asdict(self))

    def __sub__(self, other: "Counts") -> "Counts":
        return Counts(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})


def _grads(out: Tensor, wrt: tuple, **kw) -> tuple:
    """Gradients of ``out`` w.r.t. each of ``wrt``; zeros where ``out`` does not depend on it (e.g. an
    upper objective without x, as in hyper-cleaning)."""
    if not out.requires_grad:
        return tuple(torch.zeros_like(t) for t in wrt)
    grads = torch.autograd.grad(out, wrt, allow_unused=True, **kw)
    return tuple(torch.zeros_like(t) if g is None else g for t, g in zip(wrt, grads))


def _scalar(out: Any, name: str) -> Tensor:
    """``out`` if it is a one-element tensor (checked on metadata only: no device sync), else a one-line
    ``ProblemError``: f and g are checked at (x0, y0) when the problem is built, but may change shape later."""
    if not isinstance(out, Tensor) or out.numel() != 1:
        got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
        raise ProblemError(
            f"{name} must return a scalar at every point; at this (x, y) it returned {got}. Reduce it, e.g. "
            "with .mean() or .sum()."
        )
    return out


def _leaf(t: Tensor) -> Tensor:
    """A fresh autograd leaf with the values of ``t``."""
    return t.detach().requires_grad_(True)


def _grad(out: Tensor, wrt: Tensor, **kw) -> Tensor:
    return _grads(out, (wrt,), **kw)[0]


class Oracles:
    """Gradients and products of ``problem``: computes, never counts (``CountingOracles`` counts)."""

    def __init__(self, problem: BilevelProblem, counts: Optional[Counts] = None) -> None:
        if counts is not None:
            raise TypeError(
                "Oracles only computes; count with CountingOracles(Oracles(problem), counts) instead of "
                "Oracles(problem, counts)."
            )
        self.problem = problem
        self._cf = problem.closed_forms

    # ---- first-order oracles ---------------------------------------------------------------------
    def grad_x_f(self, x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        """∇_x f(x, y)."""
        if self._cf.grad_x_f is not None:
            return self._cf.grad_x_f(x, y, batch)
        with torch.enable_grad():
            xr = _leaf(x)
            return _grad(_scalar(self.problem.f_value(xr, y.detach(), batch), "f"), xr)

    def grad_y_f(self, x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        """∇_y f(x, y)  (the right-hand side b of the v-system)."""
        if self._cf.grad_y_f is not None:
            return self._cf.grad_y_f(x, y, batch)
        with torch.enable_grad():
            yr = _leaf(y)
            return _grad(_scalar(self.problem.f_value(x.detach(), yr, batch), "f"), yr)

    def grad_f(self, x: Tensor, y: Tensor, batch: Any = None) -> tuple[Tensor, Tensor]:
        """(∇_x f, ∇_y f) at one point: one backward pass with autodiff (one call of each)."""
        if self._cf.grad_x_f is not None or self._cf.grad_y_f is not None:
            return self.grad_x_f(x, y, batch), self.grad_y_f(x, y, batch)
        with torch.enable_grad():
            xr, yr = _leaf(x), _leaf(y)
            return _grads(_scalar(self.problem.f_value(xr, yr, batch), "f"), (xr, yr))

    def grad_y_g(self, x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        """∇_y g(x, y)  (one inner step's direction)."""
        if self._cf.grad_y_g is not None:
            return self._cf.grad_y_g(x, y, batch)
        with torch.enable_grad():
            yr = _leaf(y)
            return _grad(_scalar(self.problem.g_value(x.detach(), yr, batch), "g"), yr)

    def grad_x_g(self, x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        """∇_x g(x, y)."""
        if self._cf.grad_x_g is not None:
            return self._cf.grad_x_g(x, y, batch)
        with torch.enable_grad():
            xr = _leaf(x)
            return _grad(_scalar(self.problem.g_value(xr, y.detach(), batch), "g"), xr)

    def grad_g(self, x: Tensor, y: Tensor, batch: Any = None) -> tuple[Tensor, Tensor]:
        """(∇_x g, ∇_y g) at one point (one call of each)."""
        if self._cf.grad_x_g is not None or self._cf.grad_y_g is not None:
            return self.grad_x_g(x, y, batch), self.grad_y_g(x, y, batch)
        with torch.enable_grad():
            xr, yr = _leaf(x), _leaf(y)
            return _grads(_scalar(self.problem.g_value(xr, yr, batch), "g"), (xr, yr))

    # ---- second order ----------------------------------------------------------------------------
    def at(self, x: Tensor, y: Tensor, batch: Any = None) -> "Linearization":
        """Second-order oracles at (x, y): see ``Linearization``."""
        return Linearization(self, x, y, batch)


def _no_graph(t: Tensor) -> Tensor:
    return t.detach() if t.requires_grad or t.grad_fn is not None else t


class Linearization:
    """HVPs and cross products of g at one point (x, y), sharing one ∇_y g graph.

    ``hvp(u) = ∇²_yy g·u`` (R^dy → R^dy), ``cross(u) = ∇²_xy g·u`` (R^dy → R^dx),
    ``cross_t(w) = ∇²_yx g·w`` (R^dx → R^dy), ``grad_y_g()`` the gradient at the point.
    The autodiff graph is built lazily on the first product; ``graph_builds`` says how many were built
    (each costs about one gradient; 0 when the problem's closed forms answer).
    """

    def __init__(self, oracles: Oracles, x: Tensor, y: Tensor, batch: Any) -> None:
        self.problem = oracles.problem
        # detach only what carries a graph: the same tensor objects let closed forms recognise a point they
        # have seen (hyper-cleaning's Π at an unchanged y)
        self.x, self.y, self.batch = _no_graph(x), _no_graph(y), batch
        self.graph_builds = 0
        self._cf = self.problem.closed_forms
        self._closed = self._cf.linearize(self.x, self.y, batch) if self._cf.linearize is not None else None
        self._xr = self._yr = self._gy = self._gx = None

    def _graph_y(self) -> Tensor:
        if self._gy is None:
            self.graph_builds += 1
            with torch.enable_grad():
                self._xr, self._yr = _leaf(self.x), _leaf(self.y)
                out = _scalar(self.problem.g_value(self._xr, self._yr, self.batch), "g")
                (self._gy,) = torch.autograd.grad(out, self._yr, create_graph=True)
        return self._gy

    def _graph_x(self) -> Tensor:
        if self._gx is None:
            self.graph_builds += 1
            with torch.enable_grad():
                xr, yr = _leaf(self.x), _leaf(self.y)
                out = _scalar(self.problem.g_value(xr, yr, self.batch), "g")
                (self._gx,) = torch.autograd.grad(out, xr, create_graph=True, allow_unused=True)
                if self._gx is None or not self._gx.requires_grad:  # g linear or constant in x
                    self._gx = torch.zeros_like(self.x)
                self._gx_yr = yr
        return self._gx

    def _closed_method(self, name: str):
        return getattr(self._closed, name, None) if self._closed is not None else None

    def grad_y_g(self) -> Tensor:
        """∇_y g at the point (free when the graph is already built)."""
        if self._cf.grad_y_g is not None:
            return self._cf.grad_y_g(self.x, self.y, self.batch)
        closed = self._closed_method("grad_y_g")
        if closed is not None:
            return closed()
        return self._graph_y().detach()

    def hvp(self, u: Tensor) -> Tensor:
        """A·u = ∇²_yy g(x, y)·u."""
        closed = self._closed_method("hvp")
        if closed is not None:
            return closed(u)
        with torch.enable_grad():
            return _grad(self._graph_y(), self._yr, grad_outputs=u, retain_graph=True)

    def cross(self, u: Tensor) -> Tensor:
        """J·u = ∇²_xy g(x, y)·u, in R^dx."""
        closed = self._closed_method("cross")
        if closed is not None:
            return closed(u)
        with torch.enable_grad():
            return _grad(self._graph_y(), self._xr, grad_outputs=u, retain_graph=True)

    def cross_t(self, w: Tensor) -> Tensor:
        """Jᵀ·w = ∇²_yx g(x, y)·w, in R^dy."""
        closed = self._closed_method("cross_t")
        if closed is not None:
            return closed(w)
        gx = self._graph_x()
        if not gx.requires_grad:
            return torch.zeros_like(self.y)
        with torch.enable_grad():
            return _grad(gx, self._gx_yr, grad_outputs=w, retain_graph=True)


def point_on(oracles: Any, point: Any, batch: Any) -> Any:
    """The second-order oracles at ``point``'s (x, y) on ``batch``: ``point`` itself when it was built on
    that batch (its graph is reused), else a new point."""
    if batch is getattr(point, "batch", None):
        return point
    return oracles.at(point.x, point.y, batch)


# ---- wrappers ------------------------------------------------------------------------------------------
class OracleWrapper:
    """Base class of oracle wrappers: forwards every call to ``inner`` (an ``Oracles`` or another wrapper).

    Override the methods to intercept (log, cache, all-reduce across processes, ...) and pass an instance
    to ``solve(..., oracles=MyWrapper(Oracles(problem)))``; ``solve`` counts on top of it.
    ``at`` returns the inner point unless overridden (wrap it with ``PointWrapper`` to intercept products).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    @property
    def problem(self) -> BilevelProblem:
        return self.inner.problem

    def grad_x_f(self, x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        return self.inner.grad_x_f(x, y, batch)

    def grad_y_f(self, x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        return self.inner.grad_y_f(x, y, batch)

    def grad_f(self, x: Tensor, y: Tensor, batch: Any = None) -> tuple[Tensor, Tensor]:
        return self.inner.grad_f(x, y, batch)

    def grad_y_g(self, x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        return self.inner.grad_y_g(x, y, batch)

    def grad_x_g(self, x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        return self.inner.grad_x_g(x, y, batch)

    def grad_g(self, x: Tensor, y: Tensor, batch: Any = None) -> tuple[Tensor, Tensor]:
        return self.inner.grad_g(x, y, batch)

    def at(self, x: Tensor, y: Tensor, batch: Any = None) -> Any:
        return self.inner.at(x, y, batch)


class PointWrapper:
    """Base class of wrappers of a point's second-order oracles (what ``Oracles.at`` returns)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.x, self.y, self.batch = inner.x, inner.y, inner.batch

    @property
    def graph_builds(self) -> int:
        return getattr(self.inner, "graph_builds", 0)

    def grad_y_g(self) -> Tensor:
        return self.inner.grad_y_g()

    def hvp(self, u: Tensor) -> Tensor:
        return self.inner.hvp(u)

    def cross(self, u: Tensor) -> Tensor:
        return self.inner.cross(u)

    def cross_t(self, w: Tensor) -> Tensor:
        return self.inner.cross_t(w)


def _batch_size(problem: BilevelProblem, batch: Any, level: str) -> int:
    if batch is None:
        return (problem.n_samples_f if level == "f" else problem.n_samples) or 0
    if isinstance(batch, Mapping):  # collated samples of a Dataset: the leading size of the first field
        batch = next(iter(batch.values()), None)
    elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        batch = batch[0]
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    try:
        return len(batch)
    except TypeError:
        return 0


class CountingOracles(OracleWrapper):
    """Counts every call into ``counts`` (by type, and the samples each touched per level); solvers never
    count by hand.  ``linearize`` counts the autodiff graphs the points built."""

    def __init__(self, inner: Any, counts: Counts) -> None:
        super().__init__(inner)
        self.counts = counts

    def tick(self, kind: str, batch: Any, n: int = 1) -> None:
        c = self.counts
        setattr(c, kind, getattr(c, kind) + n)
        level = "f" if kind in ("grad_x_f", "grad_y_f") else "g"
        size = n * _batch_size(self.problem, batch, level)
        if level == "f":
            c.samples_f += size
        else:
            c.samples_g += size

    def grad_x_f(self, x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        self.tick("grad_x_f", batch)
        return self.inner.grad_x_f(x, y, batch)

    def grad_y_f(self, x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        self.tick("grad_y_f", batch)
        return self.inner.grad_y_f(x, y, batch)

    def grad_f(self, x: Tensor, y: Tensor, batch: Any = None) -> tuple[Tensor, Tensor]:
        self.tick("grad_x_f", batch)
        self.tick("grad_y_f", batch)
        return self.inner.grad_f(x, y, batch)

    def grad_y_g(self, x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        self.tick("grad_y_g", batch)
        return self.inner.grad_y_g(x, y, batch)

    def grad_x_g(self, x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        self.tick("grad_x_g", batch)
        return self.inner.grad_x_g(x, y, batch)

    def grad_g(self, x: Tensor, y: Tensor, batch: Any = None) -> tuple[Tensor, Tensor]:
        self.tick("grad_x_g", batch)
        self.tick("grad_y_g", batch)
        return self.inner.grad_g(x, y, batch)

    def at(self, x: Tensor, y: Tensor, batch: Any = None) -> "CountingPoint":
        return CountingPoint(self.inner.at(x, y, batch), self)


class CountingPoint(PointWrapper):
    """Counts the products made at one point and the graphs built for them."""

    def __init__(self, inner: Any, owner: CountingOracles) -> None:
        super().__init__(inner)
        self._owner = owner
        self._builds = self.graph_builds

    def _call(self, kind: str, fn, *args):
        self._owner.tick(kind, self.batch)
        out = fn(*args)
        builds = self.graph_builds
        if builds != self._builds:
            self._owner.tick("linearize", self.batch, builds - self._builds)
            self._builds = builds
        return out

    def grad_y_g(self) -> Tensor:
        return self._call("grad_y_g", self.inner.grad_y_g)

    def hvp(self, u: Tensor) -> Tensor:
        return self._call("hvp", self.inner.hvp, u)

    def cross(self, u: Tensor) -> Tensor:
        return self._call("cross", self.inner.cross, u)

    def cross_t(self, w: Tensor) -> Tensor:
        return self._call("cross_t", self.inner.cross_t, w)


# ---- finding the source of a non-finite value ----------------------------------------------------------
#: what each oracle computes, for messages
ORACLE_TEXT = {
    "grad_x_f": "∇_x f", "grad_y_f": "∇_y f", "grad_f": "∇f = (∇_x f, ∇_y f)", "grad_y_g": "∇_y g (inner steps)",
    "grad_x_g": "∇_x g", "grad_g": "∇g = (∇_x g, ∇_y g)", "point.grad_y_g": "∇_y g",
    "hvp": "the Hessian-vector product ∇²_yy g·u", "cross": "the cross product ∇²_xy g·v",
    "cross_t": "the cross product ∇²_yx g·w",
}


def _all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if isinstance(t, Tensor))


@dataclass
class NonFinite:
    """The first oracle call that returned a non-finite value: its name, its rank among the calls of that
    name (1-based), whether its inputs were finite, and the point (x, y) it was evaluated at."""

    oracle: str
    call: int
    inputs_finite: bool
    x: Tensor
    y: Tensor


class NonFiniteProbe(OracleWrapper):
    """Records the first call whose result is not finite (``first``).  Every result is read back to the
    host, so this wrapper is for replaying one step after a divergence, never for a run."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.first: Optional[NonFinite] = None
        self._calls: dict[str, int] = {}

    def check(self, name: str, x: Tensor, y: Tensor, inputs: tuple, out: Any) -> Any:
        n = self._calls[name] = self._calls.get(name, 0) + 1
        if self.first is None and not _all_finite(out if isinstance(out, tuple) else (out,)):
            self.first = NonFinite(name, n, _all_finite((x, y, *inputs)), x.detach(), y.detach())
        return out

    def grad_x_f(self, x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        return self.check("grad_x_f", x, y, (), self.inner.grad_x_f(x, y, batch))

    def grad_y_f(self, x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        return self.check("grad_y_f", x, y, (), self.inner.grad_y_f(x, y, batch))

    def grad_f(self, x: Tensor, y: Tensor, batch: Any = None) -> tuple[Tensor, Tensor]:
        return self.check("grad_f", x, y, (), self.inner.grad_f(x, y, batch))

    def grad_y_g(self, x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        return self.check("grad_y_g", x, y, (), self.inner.grad_y_g(x, y, batch))

    def grad_x_g(self, x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        return self.check("grad_x_g", x, y, (), self.inner.grad_x_g(x, y, batch))

    def grad_g(self, x: Tensor, y: Tensor, batch: Any = None) -> tuple[Tensor, Tensor]:
        return self.check("grad_g", x, y, (), self.inner.grad_g(x, y, batch))

    def at(self, x: Tensor, y: Tensor, batch: Any = None) -> "_ProbePoint":
        return _ProbePoint(self.inner.at(x, y, batch), self)


class _ProbePoint(PointWrapper):
    def __init__(self, inner: Any, probe: NonFiniteProbe) -> None:
        super().__init__(inner)
        self._probe = probe

    def grad_y_g(self) -> Tensor:
        return self._probe.check("point.grad_y_g", self.x, self.y, (), self.inner.grad_y_g())

    def hvp(self, u: Tensor) -> Tensor:
        return self._probe.check("hvp", self.x, self.y, (u,), self.inner.hvp(u))

    def cross(self, u: Tensor) -> Tensor:
        return self._probe.check("cross", self.x, self.y, (u,), self.inner.cross(u))

    def cross_t(self, w: Tensor) -> Tensor:
        return self._probe.check("cross_t", self.x, self.y, (w,), self.inner.cross_t(w))
