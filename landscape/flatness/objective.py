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
from landscape.operators.evaluation import Evaluator
from landscape.operators.functional import eval_mode, evaluate_loss
from landscape.operators.params import ParamFilter, select_parameters


class DataLoss:
    """L(θ): the mean loss of ``model`` over ``data`` with its selected parameters (``params``) set to the flat θ.

    ``theta`` is the model's own θ (on ``device`` in ``dtype``); :meth:`values`, :meth:`value` and
    :meth:`value_and_gradient` take any θ of the same size and count what they compute (``num_losses``: losses at a
    point, ``num_gradients``: passes that computed a gradient). Losses alone go through the
    :class:`~landscape.operators.evaluation.Evaluator`, which evaluates several points in one pass over the data.
    """

    def __init__(self, model: nn.Module, loss: Any, data: Any, *, params: ParamFilter = None,
                 dtype: Optional[torch.dtype] = None, device: Optional[torch.device | str] = None) -> None:
        names = select_parameters(model, params)
        first = dict(model.named_parameters())[names[0]]
        device = torch.device(device) if device is not None else first.device
        dtype = dtype if dtype is not None else compute_dtype(first.dtype)
        if not dtype.is_floating_point:
            raise OptionError(f"{option('dtype')} must be a floating-point type, got {dtype}")
        self.evaluator = Evaluator(model, loss, data, dtype=dtype, device=device, names=names)
        self.model, self.loss, self.data, self.dtype, self.device = model, loss, data, dtype, device
        self.names, self.layout, self.fixed = names, self.evaluator.layout, self.evaluator.fixed
        named = dict(model.named_parameters())
        self.theta = self.layout.flatten([named[name].detach().to(device, dtype) for name in names])
        self._cached = [move_batch(b, device, dtype) for b, _ in checked_batches(data)] \
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

    def values(self, thetas: torch.Tensor) -> np.ndarray:
        """L at each row of ``thetas`` (k, n), in one pass over the data, summed in float64."""
        losses, _ = self.evaluator(thetas)
        self.num_losses += len(losses)
        for value in losses:
            _finite(float(value))
        return losses

    def value(self, theta: torch.Tensor) -> float:
        """L(θ) over the data."""
        return float(self.values(theta[None])[0])

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
