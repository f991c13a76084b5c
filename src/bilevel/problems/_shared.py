"""Small pieces shared by the data-backed problems (hyperclean, newsgroups)."""

from __future__ import annotations

import weakref
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

_CE = torch.nn.functional.cross_entropy


class LastBatch:
    """A one-entry memo of what a problem gathers for a batch (its rows of the data, labels, ...).

    Roles that share a draw, and the inner steps and products made on one draw, receive the *same* batch
    object, so its rows are gathered once.  The memo holds the batch it was built for, which keeps the
    identity test sound (a freed batch's id cannot be reused while it is held); batches that are not
    tensors (a user's list, possibly mutated in place) are never memoised."""

    __slots__ = ("_batch", "_value")

    def __init__(self) -> None:
        self._batch: Any = None
        self._value: Any = None

    def get(self, batch: Any, gather: Callable[[], Any]) -> Any:
        if self._batch is not batch or not isinstance(batch, Tensor):
            self._batch, self._value = batch, gather()
        return self._value


class LastTensor:
    """A one-entry memo of a value computed from a tensor (∇_y f or the softmax Π at y): served again while the
    argument is the same tensor object with the same version counter (an in-place write invalidates).  A weak
    reference keys it, so a freed tensor never matches and the memo keeps no iterate alive; the hit returns the
    stored value itself, bit-identical to recomputing."""

    __slots__ = ("_ref", "_version", "_value")

    def __init__(self) -> None:
        self._ref: Any = None
        self._version = -1
        self._value: Any = None

    def get(self, t: Tensor, compute: Callable[[], Any]) -> Any:
        if self._ref is None or self._ref() is not t or self._version != t._version:
            self._ref, self._version, self._value = weakref.ref(t), t._version, compute()
        return self._value


def classification_metrics(splits: Iterable[tuple[str, Tensor, Tensor]]) -> dict[str, float]:
    """``{split}_loss`` (mean cross-entropy) and ``{split}_accuracy`` for each (split, logits, labels)."""
    out = {}
    for split, z, labels in splits:
        out[f"{split}_loss"] = float(_CE(z, labels))
        out[f"{split}_accuracy"] = float((z.argmax(1) == labels).double().mean())
    return out
