"""Flat views of the upper and lower variables.

Users give ``x`` and ``y`` as a tensor or a flat ``dict`` of tensors (for example the parameters of an
``nn.Module``).  Every solver works on one flat vector per variable, so that v-solvers, schedules and
step rules never see the structure; ``TreeSpec`` converts between the two.  Unflattening returns views
of the flat vector, so autograd flows from the user's callables back to the flat leaf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Union

import torch
from torch import Tensor

Tree = Union[Tensor, Mapping[str, Tensor]]


@dataclass(frozen=True)
class TreeSpec:
    """Structure of a variable: ``names`` is None for a plain tensor, else the dict keys in order."""

    names: tuple[str, ...] | None
    shapes: tuple[torch.Size, ...]
    dtype: torch.dtype
    device: torch.device

    @property
    def numel(self) -> int:
        return sum(int(torch.Size(s).numel()) for s in self.shapes)

    @staticmethod
    def of(tree: Tree, what: str) -> "TreeSpec":
        """Describe ``tree``; ``what`` names the variable in error messages (e.g. ``"x0"``)."""
        if isinstance(tree, Tensor):
            leaves, names = [tree], None
        elif isinstance(tree, Mapping):
            if len(tree) == 0:
                raise ValueError(f"{what} is an empty dict; give at least one tensor.")
            names = tuple(tree.keys())
            bad = [k for k in names if not isinstance(k, str)]
            if bad:
                raise ValueError(f"{what} must be a dict with string keys; got key {bad[0]!r}.")
            leaves = list(tree.values())
            for k, leaf in zip(names, leaves):
                if not isinstance(leaf, Tensor):
                    raise TypeError(
                        f"{what}[{k!r}] must be a torch.Tensor; got {type(leaf).__name__}. "
                        "Convert it with torch.as_tensor(...)."
                    )
        else:
            raise TypeError(
                f"{what} must be a torch.Tensor or a dict of tensors; got {type(tree).__name__}. "
                "For an nn.Module pass dict(module.named_parameters())."
            )
        dtype, device = leaves[0].dtype, leaves[0].device
        for i, leaf in enumerate(leaves):
            label = what if names is None else f"{what}[{names[i]!r}]"
            if not leaf.is_floating_point():
                raise TypeError(
                    f"{label} must be a floating-point tensor; got dtype {leaf.dtype}. "
                    "Use .double() or .float()."
                )
            if leaf.dtype != dtype or leaf.device != device:
                raise ValueError(
                    f"all tensors of {what} must share one dtype and device; {label} is "
                    f"{leaf.dtype} on {leaf.device} but the first is {dtype} on {device}."
                )
            if leaf.numel() == 0:
                raise ValueError(f"{label} is empty (shape {tuple(leaf.shape)}).")
            if not bool(torch.isfinite(leaf).all()):
                raise ValueError(f"{label} contains NaN or Inf values.")
        return TreeSpec(names, tuple(leaf.shape for leaf in leaves), dtype, device)

    def flatten(self, tree: Tree) -> Tensor:
        """Concatenate the leaves into one 1-D tensor (a copy, detached)."""
        if self.names is None:
            return tree.detach().reshape(-1).clone()
        return torch.cat([tree[k].detach().reshape(-1) for k in self.names])

    def unflatten(self, flat: Tensor) -> Tree:
        """Views of ``flat`` shaped like the original variable (differentiable)."""
        if self.names is None:
            return flat.view(self.shapes[0])
        sizes = [int(torch.Size(s).numel()) for s in self.shapes]
        parts = torch.split(flat, sizes)
        return {k: p.view(s) for k, p, s in zip(self.names, parts, self.shapes)}
