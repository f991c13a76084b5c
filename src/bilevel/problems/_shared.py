"""Small pieces shared by the data-backed problems (hyperclean, newsgroups)."""

from __future__ import annotations

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


def classification_metrics(splits: Iterable[tuple[str, Tensor, Tensor]]) -> dict[str, float]:
    """``{split}_loss`` (mean cross-entropy) and ``{split}_accuracy`` for each (split, logits, labels)."""
    out = {}
    for split, z, labels in splits:
        out[f"{split}_loss"] = float(_CE(z, labels))
        out[f"{split}_accuracy"] = float((z.argmax(1) == labels).double().mean())
    return out
