"""Choosing which parameters an operator differentiates, and mapping flat vectors to and from them."""

from __future__ import annotations

import fnmatch
from typing import Callable, Iterable, Sequence, Union

import torch
from torch import nn

from landscape.errors import ParameterError

ParamFilter = Union[None, str, Sequence[str], Callable[[str, torch.Tensor], bool]]


def select_parameters(model: nn.Module, params: ParamFilter = None) -> list[str]:
    """Names of the selected parameters, in ``named_parameters()`` order.

    ``params`` is None (every parameter that requires grad), a glob pattern or list of patterns matched against
    parameter names (``"0.*"``, ``"*.weight"``), or a predicate ``(name, tensor) -> bool``. Naming a parameter that
    does not require grad is an error: its curvature would silently be zero.
    """
    named = list(model.named_parameters())
    if not named:
        raise ParameterError(f"{type(model).__name__} has no parameters")
    if params is None:
        chosen = [name for name, p in named if p.requires_grad]
        if not chosen:
            raise ParameterError("no parameter of the model requires grad; enable requires_grad or pass params=")
        return chosen
    if callable(params):
        chosen = [name for name, p in named if params(name, p)]
    else:
        patterns = [params] if isinstance(params, str) else list(params)
        chosen = [name for name, _ in named if any(fnmatch.fnmatchcase(name, pat) for pat in patterns)]
        unmatched = [pat for pat in patterns if not any(fnmatch.fnmatchcase(name, pat) for name, _ in named)]
        if unmatched:
            raise ParameterError(
                f"params pattern(s) {unmatched} match no parameter; names are: {[name for name, _ in named]}"
            )
    if not chosen:
        raise ParameterError("the parameter selection is empty")
    frozen = [name for name, p in named if name in chosen and not p.requires_grad]
    if frozen:
        raise ParameterError(f"selected parameters do not require grad: {frozen}; select others or unfreeze them")
    return chosen


class FlatLayout:
    """Splits a flat (…, n) tensor into per-parameter views and concatenates them back."""

    def __init__(self, shapes: Iterable[torch.Size]) -> None:
        self.shapes = [torch.Size(s) for s in shapes]
        self.sizes = [s.numel() for s in self.shapes]
        self.numel = sum(self.sizes)

    def split(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Views of ``flat`` (shape (n,) or (k, n)) with each parameter's shape (leading k kept)."""
        lead = flat.shape[:-1]
        return tuple(
            part.view(*lead, *shape) for part, shape in zip(flat.split(self.sizes, dim=-1), self.shapes)
        )

    def flatten(self, tensors: Sequence[torch.Tensor], batched: bool = False) -> torch.Tensor:
        """Concatenate per-parameter tensors (each with a leading k when ``batched``) into one flat tensor."""
        start = 1 if batched else 0
        return torch.cat([t.flatten(start) for t in tensors], dim=-1)
