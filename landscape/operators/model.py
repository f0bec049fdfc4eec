"""What every curvature operator of a model, a loss and data shares: :class:`ModelOperator`.

It selects the parameters, copies them (and every other parameter and buffer) to the operator's dtype and device,
streams the data batch by batch with exact size weighting, and fails clearly on NaN; the Hessian
(:mod:`landscape.operators.hessian`) and the Gauss-Newton and Fisher matrices (:mod:`landscape.operators.ggn`) build
on it.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from landscape.devices import compute_dtype
from landscape.errors import LossError, OptionError
from landscape.linalg.operator import LinearOperator
from landscape.operators.batches import checked_batches, is_single_batch, iterate_batches, move_batch
from landscape.operators.functional import evaluate_loss
from landscape.operators.params import FlatLayout, ParamFilter, select_parameters

LossFn = Callable[..., torch.Tensor]


class ModelOperator(LinearOperator):
    """A curvature operator of a model, a loss and data over the model's selected parameters θ (shared machinery).

    Selects the parameters (``params``, see :func:`~landscape.operators.params.select_parameters`), copies them and
    every other parameter and buffer to ``dtype``/``device`` (default: the model's, float32 for a model in bfloat16 or
    float16; the model itself is never modified), caches a single ``(X, y)`` batch on the device, streams any other
    data batch by batch, and averages the per-batch products weighted by batch size, so the operator is exact for any
    batching. Subclasses implement
    ``_product(batch, blocks)``: the product of one (already moved) batch with the per-parameter column blocks.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        data: Any,
        *,
        params: ParamFilter = None,
        dtype: Optional[torch.dtype] = None,
        device: Optional[torch.device | str] = None,
    ) -> None:
        self.names = select_parameters(model, params)
        named = dict(model.named_parameters())
        first = named[self.names[0]]
        device = torch.device(device) if device is not None else first.device
        dtype = dtype if dtype is not None else compute_dtype(first.dtype)
        if not dtype.is_floating_point:
            raise OptionError(f"dtype must be a floating-point type, got {dtype}")
        self.layout = FlatLayout(named[n].shape for n in self.names)
        super().__init__(self.layout.numel, dtype, device)
        self.model = model
        self.loss = loss
        self.data = data
        self._setup()
        self.params = tuple(named[n].detach().to(device=self.device, dtype=dtype) for n in self.names)
        self._fixed = {
            name: move_batch(t.detach(), self.device, dtype)
            for name, t in list(model.named_parameters()) + list(model.named_buffers())
            if name not in self.names
        }
        self._single = is_single_batch(data)
        self._cached_batch = move_batch(tuple(data), self.device, dtype) if self._single else None
        iterate_batches(data)  # fails now, not at the first product, on a data set that is visibly empty

    def _setup(self) -> None:
        """Subclass options, checked once the model, loss and data are set and before anything is copied."""

    # -- the loss as a function of the selected parameters -------------------------------------------------
    def _state(self, params: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """The model's full state (parameters and buffers) with the selected parameters replaced by ``params``."""
        state = dict(self._fixed)
        state.update(zip(self.names, params))
        return state

    def batch_loss(self, params: tuple[torch.Tensor, ...], batch: Any) -> torch.Tensor:
        """Mean loss of one (already moved) batch with the selected parameters replaced by ``params``."""
        return self._check_scalar(evaluate_loss(self.model, self.loss, self._state(params), batch))

    @staticmethod
    def _check_scalar(value: Any) -> torch.Tensor:
        if not isinstance(value, torch.Tensor) or value.ndim != 0:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise LossError(f"the loss must return a scalar (the batch mean), got {shape}; reduce it with .mean()")
        return value

    def _batches(self) -> Iterator[tuple[Any, int]]:
        if self._single:
            yield self._cached_batch, int(self._cached_batch[0].shape[0])
            return
        for batch, size in checked_batches(self.data):
            yield move_batch(batch, self.device, self.dtype), size

    @staticmethod
    def _require_finite(values: torch.Tensor) -> torch.Tensor:
        """``values`` (a batch's loss, or its products) unchanged, or a LossError if any entry is NaN or inf."""
        if not bool(torch.isfinite(values).all()):
            raise LossError("the loss or its curvature is not finite on a batch (NaN or inf in the data or model?)")
        return values

    # -- products -------------------------------------------------------------------------------------------
    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        blocks = self.layout.split(V)
        total = None
        count = 0
        for batch, size in self._batches():
            part = self._product(batch, blocks)
            total = part.mul_(size) if total is None else total.add_(part, alpha=size)
            count += size
        return total.div_(count)

    @abstractmethod
    def _product(self, batch: Any, blocks: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The (k, n) product of one batch's curvature with the columns given per parameter in ``blocks``."""

    def _write(self, out: torch.Tensor, cols: tuple[Optional[torch.Tensor], ...]) -> None:
        """Copy per-parameter product columns into the flat output (unused parameters stay zero)."""
        parts = self.layout.split(out)
        for part, col in zip(parts, cols):
            if col is not None:
                part.copy_(col)

    # -- conveniences ----------------------------------------------------------------------------------------
    def gradient(self) -> torch.Tensor:
        """The flat gradient of the mean loss over the data at the operator's parameters (one pass, no graph kept)."""
        total = torch.zeros(self.shape[0], dtype=self.dtype, device=self.device)
        count = 0
        for batch, size in self._batches():
            leaves = tuple(p.detach().requires_grad_() for p in self.params)
            with torch.enable_grad():
                value = self._require_finite(self.batch_loss(leaves, batch))
                grads = torch.autograd.grad(value, leaves, allow_unused=True)
            self._write_add(total, grads, size)
            count += size
        return total.div_(count)

    def _write_add(self, out: torch.Tensor, cols: tuple[Optional[torch.Tensor], ...], weight: float) -> None:
        for part, col in zip(self.layout.split(out), cols):
            if col is not None:
                part.add_(col.reshape(part.shape), alpha=weight)

    def release(self) -> None:
        """Drop whatever the operator caches for a single batch (it holds that batch's activations)."""

    def check_deterministic(self, *, seed: int = 0, rtol: Optional[float] = None) -> float:
        """Apply the operator twice to one random vector and return the relative difference (raises if large)."""
        gen = torch.Generator(device=self.device).manual_seed(seed)
        v = torch.randn(self.shape[0], generator=gen, device=self.device, dtype=self.dtype)
        a, b = self.matvec(v), self.matvec(v)
        diff = float((a - b).norm() / a.norm().clamp_min(torch.finfo(self.dtype).tiny))
        limit = rtol if rtol is not None else math.sqrt(torch.finfo(self.dtype).eps)
        if diff > limit:
            raise LossError(
                f"two products with the same vector differ by {diff:.2e} (relative): the model or loss is random "
                "(dropout in train mode, data augmentation, a shuffling loader without a fixed seed?)"
            )
        return diff
