"""The mean loss over a data set as a function of one flat parameter vector, with its gradient: what every
flatness measure perturbs.

The model is never modified: the selected parameters go in through ``torch.func.functional_call`` (in eval mode,
with the attention kernels every derivative passes through), the other parameters and the buffers keep the model's
values. Every batch is weighted by its size, so the mean is exact for any batching.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn

from landscape.devices import compute_dtype
from landscape.errors import DataError, LossError, OptionError, option
from landscape.operators.batches import checked_batches, is_single_batch, move_batch
from landscape.operators.evaluation import no_grad_unless
from landscape.operators.functional import eval_mode, evaluate_loss
from landscape.operators.params import FlatLayout, ParamFilter, select_parameters


class DataLoss:
    """L(θ): the mean loss of ``model`` over ``data`` with its selected parameters (``params``) set to the flat θ.

    ``theta`` is the model's own θ (on ``device`` in ``dtype``); :meth:`value` and :meth:`value_and_gradient` take
    any θ of the same size and count the passes over the data they make (``num_losses``, ``num_gradients``).
    """

    def __init__(self, model: nn.Module, loss: Any, data: Any, *, params: ParamFilter = None,
                 dtype: Optional[torch.dtype] = None, device: Optional[torch.device | str] = None) -> None:
        self.model, self.loss, self.data = model, loss, data
        self.names = select_parameters(model, params)
        named = dict(model.named_parameters())
        first = named[self.names[0]]
        self.device = torch.device(device) if device is not None else first.device
        self.dtype = dtype if dtype is not None else compute_dtype(first.dtype)
        if not self.dtype.is_floating_point:
            raise OptionError(f"{option('dtype')} must be a floating-point type, got {self.dtype}")
        self.layout = FlatLayout(named[name].shape for name in self.names)
        self.theta = self.layout.flatten([named[name].detach().to(self.device, self.dtype) for name in self.names])
        self.fixed = {name: move_batch(t.detach(), self.device, self.dtype)
                      for name, t in [*model.named_parameters(), *model.named_buffers()] if name not in self.names}
        self._cached = [move_batch(b, self.device, self.dtype) for b, _ in checked_batches(data)] \
            if is_single_batch(data) else None
        self.num_losses = 0
        self.num_gradients = 0

    @property
    def dimension(self) -> int:
        return self.layout.numel

    def batches(self) -> Iterator[tuple[Any, int]]:
        """``(batch, size)`` of the data, moved to the device and dtype (a single batch is moved once)."""
        if self._cached is not None:
            yield from ((b, int(b[0].shape[0])) for b in self._cached)
            return
        for batch, size in checked_batches(self.data):
            yield move_batch(batch, self.device, self.dtype), size

    def _batch_loss(self, theta: torch.Tensor, batch: Any) -> torch.Tensor:
        state = {**self.fixed, **dict(zip(self.names, self.layout.split(theta)))}
        value = evaluate_loss(self.model, self.loss, state, batch)
        if not isinstance(value, torch.Tensor) or value.ndim != 0:
            raise LossError("the loss must return a scalar (the batch mean); reduce it with .mean()")
        return value

    def value(self, theta: torch.Tensor) -> float:
        """L(θ) over the data, summed in float64."""
        total, count = 0.0, 0
        with no_grad_unless(self.loss), eval_mode(self.model):
            for batch, size in self.batches():
                total += float(self._batch_loss(theta, batch).detach()) * size
                count += size
        self.num_losses += 1
        return _finite(total / count)

    def value_and_gradient(self, theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        """L(θ) and ∇L(θ) (a flat vector on the device) over the data, one pass."""
        total, count = 0.0, 0
        gradient = torch.zeros_like(theta)
        with torch.enable_grad(), eval_mode(self.model):
            for batch, size in self.batches():
                leaf = theta.detach().requires_grad_()
                value = self._batch_loss(leaf, batch)
                (grad,) = torch.autograd.grad(value, leaf, allow_unused=True)
                if grad is not None:
                    gradient.add_(grad, alpha=size)
                total += float(value.detach()) * size
                count += size
        self.num_gradients += 1
        return _finite(total / count), gradient.div_(count)


def _finite(value: float) -> float:
    if value != value or value in (float("inf"), float("-inf")):
        raise LossError(f"the loss is {value} at a perturbed point (NaN or inf in the data or model, or ρ too large)")
    return value


def standard_error(values: Sequence[float]) -> Optional[float]:
    """The standard error of the mean of ``values`` (None for a single value)."""
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None


def gaussian(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A standard Gaussian vector shaped, placed and typed like ``like``, drawn in float64 so that a seed gives the
    same draw in every precision."""
    draw = torch.randn(like.shape, generator=generator, device=like.device, dtype=torch.float64)
    return draw.to(like.dtype)


def chunks(data: Any, size: int) -> list[tuple[Any, Any]]:
    """The data cut into (inputs, targets) chunks of ``size`` samples, batch by batch (a batch's last chunk may be
    smaller): the m-sample pieces of m-sharpness."""
    if size < 1:
        raise OptionError(f"{option('chunk_size')} must be a positive integer, got {size}")
    pieces = []
    for batch, _ in checked_batches(data):
        parts = [torch.split(t, size) if isinstance(t, torch.Tensor) else None for t in batch]
        if any(p is None for p in parts):
            raise DataError(f"{option('chunk_size')} needs batches of tensors, got {[type(t).__name__ for t in batch]}")
        pieces.extend(zip(*parts))
    return [tuple(piece) for piece in pieces]
