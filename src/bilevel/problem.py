"""``BilevelProblem``: the description of ``min_x f(x, y*(x))``, ``y*(x) = argmin_y g(x, y)``.

A problem describes; it never solves.  It holds the two objectives, the initial point, optional
closed forms (hand-written oracles, ``y*``, the true hypergradient), solver-neutral scales (``presets``:
step sizes that fit the problem's curvature) and the name of the ``experiment`` it reproduces, under which
solvers keep their published per-experiment settings.  A problem never names a solver.

Conventions: ``f(x, y, batch)`` and ``g(x, y, batch)`` return real scalars.  ``x`` and ``y`` are
tensors or flat dicts of tensors.  ``batch`` is whatever the problem's sampler hands out (``None`` means
the full data set).  Closed forms act on the *flat* vectors (see ``_tree.TreeSpec``).
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor

from ._tree import Tree, TreeSpec

FlatFn = Callable[[Tensor, Tensor, Any], Tensor]


class ProblemError(ValueError):
    """A problem definition is invalid; the message says what was received and how to fix it."""


@dataclass(frozen=True)
class ClosedForms:
    """Optional hand-written oracles and ground truth, all on flat vectors.

    Every entry is optional; a missing oracle falls back to autodiff of ``f``/``g``.

    - ``grad_x_f``, ``grad_y_f``, ``grad_y_g``, ``grad_x_g``: ``(x, y, batch) -> Tensor``.
    - ``linearize``: ``(x, y, batch) -> obj`` where ``obj`` may define ``hvp(u)`` (∇²_yy g·u),
      ``cross(u)`` (∇²_xy g·u, in R^dx), ``cross_t(w)`` (∇²_yx g·w, in R^dy) and ``grad_y_g()``; it can
      cache per-point quantities shared by those products.  Missing methods fall back to autodiff.
    - ``y_star``: ``(x, y_init) -> y*(x)``;  ``hypergradient``: ``x -> ∇φ(x)`` (exact).
    - ``preconditioner``: ``(x, y) -> (u -> M⁻¹u)`` with M ≈ ∇²_yy g, used only by the
      ground-truth solves (never by a solver under test).
    """

    grad_x_f: Optional[FlatFn] = None
    grad_y_f: Optional[FlatFn] = None
    grad_y_g: Optional[FlatFn] = None
    grad_x_g: Optional[FlatFn] = None
    linearize: Optional[Callable[[Tensor, Tensor, Any], Any]] = None
    y_star: Optional[Callable[[Tensor, Tensor], Tensor]] = None
    hypergradient: Optional[Callable[[Tensor], Tensor]] = None
    preconditioner: Optional[Callable[[Tensor, Tensor], Callable[[Tensor], Tensor]]] = None


def check_device(owner: str, device: Any) -> torch.device:
    """``device`` as a ``torch.device`` that this torch can compute on, else one ``ProblemError`` saying
    what is missing and what to use instead (checked before any data is built, so a CPU-only torch never
    fails deep inside a tensor copy)."""
    try:
        dev = torch.device(device)
    except (TypeError, RuntimeError):
        raise ProblemError(
            f"{owner}: unknown device {device!r} — use 'cpu', 'cuda' or 'cuda:N' (a torch device string)."
        ) from None
    if dev.type == "meta":
        raise ProblemError(
            f"{owner}: device 'meta' holds shapes but no values, so nothing can be computed on it — use 'cpu' "
            "or 'cuda'."
        )
    if dev.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise ProblemError(
                f"{owner}: device {str(dev)!r}: this torch ({torch.__version__}) has no CUDA support — use "
                "device 'cpu' (--device cpu) or install a CUDA build of torch."
            )
        if not torch.cuda.is_available():
            raise ProblemError(
                f"{owner}: device {str(dev)!r}: no CUDA device is visible (torch.cuda.is_available() is False) "
                "— use device 'cpu' (--device cpu), or check the driver and CUDA_VISIBLE_DEVICES."
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ProblemError(
                f"{owner}: device {str(dev)!r} does not exist: {count} CUDA device(s) are visible — use "
                f"'cuda:0'{f' … cuda:{count - 1}' if count > 1 else ''}."
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ProblemError(f"{owner}: device 'mps' is not available in this torch/machine — use 'cpu'.")
    return dev


_DEVICE_NAME = re.compile(r"\b(cpu|meta|mps|xpu(?::\d+)?|cuda(?::\d+)?)\b")


def _other_device(message: str, mine: torch.device) -> str | None:
    """The device named in a torch device-mismatch message that is not ``mine`` (None if there is none)."""
    if "device" not in message.lower():
        return None
    names = [n for n in _DEVICE_NAME.findall(message) if torch.device(n).type != mine.type]
    return names[0] if names else None


def _meta_error(what: str, fns: tuple, x0: Any, y0: Any) -> ProblemError:
    """x0/y0 on the meta device: name the device that f and g compute on (probed by calling them on the
    meta tensors, which computes nothing), and how to move the initial point there."""
    other = None
    for fn in fns:
        try:
            with torch.no_grad():
                fn(x0, y0, None)
        except Exception as err:  # only probed for a device name; the error itself is reported below
            other = _other_device(str(err), torch.device("meta"))
            if other:
                break
    where = f"f and g compute with tensors on {other!r}" if other else "a problem needs tensors with values"
    target = other or "cpu"
    return ProblemError(
        f"{what} is on the meta device (a shape without values) but {where} — create x0 and y0 on {target!r}, "
        f"e.g. torch.zeros(n, device={target!r}), or move them there with .to({target!r})."
    )


def _leaves(tree: Any) -> list:
    if isinstance(tree, Tensor):
        return [tree]
    if isinstance(tree, Mapping):
        return [v for v in tree.values() if isinstance(v, Tensor)]
    return []


def _with_batch(fn: Callable, name: str) -> Callable[[Any, Any, Any], Tensor]:
    """Accept ``fn(x, y)`` as well as ``fn(x, y, batch)``."""
    if not callable(fn):
        raise ProblemError(f"{name} must be callable as {name}(x, y, batch); got {type(fn).__name__}.")
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: assume the full form
        return fn
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind == p.VAR_POSITIONAL for p in params) or len(positional) >= 3:
        return fn
    if len(positional) == 2:
        return lambda x, y, batch: fn(x, y)
    raise ProblemError(
        f"{name} must take (x, y) or (x, y, batch); its signature is {inspect.signature(fn)}."
    )


class UpperStart:
    """dx, dtype, device and x0 of a problem that holds its flat initial upper variable as ``_x0``: the problem's
    dtype and device are those of x0 (shared by ``BilevelProblem`` and ``bilevel.rl.RLProblem``)."""

    _x0: Tensor

    @property
    def dx(self) -> int:
        return self._x0.numel()

    @property
    def dtype(self) -> torch.dtype:
        return self._x0.dtype

    @property
    def device(self) -> torch.device:
        return self._x0.device

    @property
    def x0(self) -> Tensor:
        """Flat initial upper variable (a fresh copy)."""
        return self._x0.clone()


class BilevelProblem(UpperStart):
    """``min_x f(x, y*(x))`` with ``y*(x) = argmin_y g(x, y)``, g strongly convex in y.

    Args:
        f, g: upper and lower objectives, ``(x, y[, batch]) -> scalar tensor``.
        x0, y0: initial points (tensor or dict of tensors); copied, never mutated.
        name: a label used in results and the CLI.
        closed_forms: optional ``ClosedForms`` (flat-vector oracles and ground truth).
        presets: solver-neutral scales, ``{"*": {"lr_x": ..., "lr_y": ..., "eta": ...}}``: a solver fills an
            option the user left as ``None`` from its own settings for ``experiment``, then from these.
        experiment: the key of the published settings this problem reproduces (e.g. ``"synthetic"``,
            ``"hyperclean/fashion_mnist"``; a ``/`` suffix falls back to the part before it), or None.
        metrics: optional ``(x_tree, y_tree) -> dict[str, float]`` of extra evaluation metrics
            (test accuracy, ...); called outside the timed region.
        n_samples: size of the lower-level data set (for sample counts), if the problem has data.
        n_samples_f: size of the upper-level data set (default: ``n_samples``).
        info: free-form metadata recorded in results.
        validate: evaluate f and g once at (x0, y0) and check their outputs (default True).

    Data and mini-batches: a problem whose levels are means over data sets declares their sizes
    (``n_samples``, ``n_samples_f``) and lets ``f``/``g`` evaluate the batch they receive.  With
    ``solve(..., batches=MiniBatch(B))`` a batch is a 1-D ``torch.long`` tensor of sample indices on the
    problem's device (``f`` gets indices into its own data, ``g`` into its own); ``None`` means all the data
    (full-batch runs, evaluation, ground truth).  Return the batch *mean*, so that a batch is an unbiased
    estimate of the full value.  For example, ridge regression with one learned weight decay per feature::

        X, t = torch.randn(1000, 20), torch.randn(1000)      # lower level: 1000 training samples
        Xv, tv = torch.randn(200, 20), torch.randn(200)      # upper level: 200 validation samples

        def rows(batch, *data):                              # the batch's rows (all rows for None)
            return data if batch is None else tuple(d.index_select(0, batch) for d in data)

        def g(x, y, batch):                                  # (1/|B|) Σ_{i∈B} ½(aᵢᵀy − tᵢ)² + ½ Σⱼ e^{xⱼ} yⱼ²
            A, b = rows(batch, X, t)
            return 0.5 * (A @ y - b).square().mean() + 0.5 * (x.exp() * y.square()).sum()

        def f(x, y, batch):                                  # validation loss on the batch
            A, b = rows(batch, Xv, tv)
            return 0.5 * (A @ y - b).square().mean()

        problem = BilevelProblem(f, g, torch.zeros(20), torch.zeros(20), n_samples=1000, n_samples_f=200)
        result = bilevel.solve(problem, bilevel.solvers.soba(lr_x=0.1, lr_y=0.1, eta=0.1), max_iter=300,
                               batches=bilevel.sampling.MiniBatch(64))

    Index with ``index_select`` (or ``data[batch]``) on the device: never convert the batch to a list or a
    number, which would copy it to the host every call.  Data held in a ``torch.utils.data.Dataset``
    instead: ``MiniBatch(64, data={"f": val_set, "g": train_set})`` hands ``f``/``g`` the collated samples.
    """

    #: the problem kind (``bilevel.kinds``): only solvers that declare it may run on this problem
    kind = "classic"

    def __init__(
        self,
        f: Callable,
        g: Callable,
        x0: Tree,
        y0: Tree,
        *,
        name: str = "custom",
        closed_forms: ClosedForms | None = None,
        presets: Mapping[str, Mapping[str, Any]] | None = None,
        metrics: Callable[[Tree, Tree], Mapping[str, float]] | None = None,
        n_samples: int | None = None,
        n_samples_f: int | None = None,
        experiment: str | None = None,
        info: Mapping[str, Any] | None = None,
        validate: bool = True,
    ) -> None:
        self.f = _with_batch(f, "f")
        self.g = _with_batch(g, "g")
        for what, tree in (("x0", x0), ("y0", y0)):
            if any(leaf.is_meta for leaf in _leaves(tree)):
                raise _meta_error(what, (self.f, self.g), x0, y0)
        self.x_spec = TreeSpec.of(x0, "x0")
        self.y_spec = TreeSpec.of(y0, "y0")
        if self.x_spec.dtype != self.y_spec.dtype or self.x_spec.device != self.y_spec.device:
            raise ProblemError(
                f"x0 and y0 must share dtype and device; x0 is {self.x_spec.dtype} on {self.x_spec.device}, "
                f"y0 is {self.y_spec.dtype} on {self.y_spec.device}. Cast one with .to(...)."
            )
        self._x0 = self.x_spec.flatten(x0)
        self._y0 = self.y_spec.flatten(y0)
        if closed_forms is not None and not isinstance(closed_forms, ClosedForms):
            raise ProblemError(
                f"closed_forms must be a bilevel.ClosedForms; got {type(closed_forms).__name__}."
            )
        self.closed_forms = closed_forms or ClosedForms()
        self.presets = _check_presets(presets)
        if metrics is not None and not callable(metrics):
            raise ProblemError(f"metrics must be callable (x, y) -> dict; got {type(metrics).__name__}.")
        self.metrics = metrics
        if n_samples is not None and (not isinstance(n_samples, int) or n_samples < 1):
            raise ProblemError(f"n_samples must be a positive int or None; got {n_samples!r}.")
        self.n_samples = n_samples
        if n_samples_f is not None and (not isinstance(n_samples_f, int) or n_samples_f < 1):
            raise ProblemError(f"n_samples_f must be a positive int or None; got {n_samples_f!r}.")
        self.n_samples_f = n_samples_f if n_samples_f is not None else n_samples
        if experiment is not None and (not isinstance(experiment, str) or not experiment):
            raise ProblemError(f"experiment must be a non-empty string or None; got {experiment!r}.")
        self.experiment = experiment
        self.name = str(name)
        self.info = dict(info or {})
        if validate:
            self._validate()

    # ---- shapes -----------------------------------------------------------------------------------
    @property
    def dy(self) -> int:
        return self._y0.numel()

    @property
    def y0(self) -> Tensor:
        """Flat initial lower variable (a fresh copy)."""
        return self._y0.clone()

    def unflatten_x(self, x: Tensor) -> Tree:
        return self.x_spec.unflatten(x)

    def unflatten_y(self, y: Tensor) -> Tree:
        return self.y_spec.unflatten(y)

    # ---- values (flat inputs) ---------------------------------------------------------------------
    def f_value(self, x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        return self.f(self.x_spec.unflatten(x), self.y_spec.unflatten(y), batch)

    def g_value(self, x: Tensor, y: Tensor, batch: Any = None) -> Tensor:
        return self.g(self.x_spec.unflatten(x), self.y_spec.unflatten(y), batch)

    def preset(self, option: str) -> Any:
        """The problem's solver-neutral scale for ``option`` (None if it has none)."""
        return self.presets.get("*", {}).get(option)

    def experiment_keys(self) -> tuple[str, ...]:
        """Keys under which solvers look up their published settings, most specific first."""
        if self.experiment is None:
            return ()
        parts = self.experiment.split("/")
        return tuple("/".join(parts[:i]) for i in range(len(parts), 0, -1))

    def __repr__(self) -> str:
        return (
            f"BilevelProblem(name={self.name!r}, dx={self.dx}, dy={self.dy}, dtype={self.dtype}, "
            f"device={self.device})"
        )

    def _validate(self) -> None:
        x, y = self._x0.clone(), self._y0.clone().requires_grad_(True)
        with torch.enable_grad():
            for label, fn in (("f", self.f_value), ("g", self.g_value)):
                try:
                    out = fn(x, y, None)
                except Exception as err:  # re-raised with context: the user's callable failed
                    other = _other_device(str(err), self.device) if isinstance(err, RuntimeError) else None
                    if other is not None:
                        raise ProblemError(
                            f"{label}(x0, y0) mixes devices: x0 and y0 are on {self.device} but {label} uses "
                            f"tensors on {other} — move x0 and y0 (or {label}'s data) to one device with "
                            f".to(...)."
                        ) from err
                    raise ProblemError(
                        f"calling {label}(x0, y0, batch=None) raised {type(err).__name__}: {err}"
                    ) from err
                if not isinstance(out, Tensor):
                    raise ProblemError(f"{label} must return a torch.Tensor; got {type(out).__name__}.")
                if out.numel() != 1 or out.dim() > 1:
                    raise ProblemError(
                        f"{label} must return a scalar; got a tensor of shape {tuple(out.shape)}. "
                        "Reduce it, e.g. with .mean() or .sum()."
                    )
                if out.is_complex() or not out.is_floating_point():
                    raise ProblemError(f"{label} must return a real floating scalar; got dtype {out.dtype}.")
                if not bool(torch.isfinite(out)):
                    raise ProblemError(f"{label}(x0, y0) is not finite ({out.item()}); check x0, y0.")
                if label == "g" and not out.requires_grad:
                    raise ProblemError(
                        "g does not depend on y (no gradient flows to y); the lower level must be a "
                        "function of y."
                    )


def _check_presets(presets: Mapping | None) -> dict:
    if presets is None:
        return {}
    if not isinstance(presets, Mapping) or not all(isinstance(v, Mapping) for v in presets.values()):
        raise ProblemError(
            'presets must map "*" to a dict of solver-neutral scales, e.g. {"*": {"lr_x": 1.0}}; '
            f"got {presets!r}."
        )
    named = sorted(str(k) for k in presets if k != "*")
    if named:
        raise ProblemError(
            f'presets hold only solver-neutral scales under "*"; got entries for {named}. Per-solver '
            "settings belong to the solver: pass them as solver options, or add them to the solver's "
            "settings table under this problem's experiment key."
        )
    return {str(k): dict(v) for k, v in presets.items()}
