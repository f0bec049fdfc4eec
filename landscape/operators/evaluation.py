"""Mean loss and accuracy of a model over a data set, at its own parameters or at many parameter vectors at once.

The one home of this evaluation: the analysis and the training tracker call :func:`fit` (one point: the model's own
parameters), loss surfaces call an :class:`Evaluator` on rows of grid points. The model is never modified (its
parameters go in through ``torch.func.functional_call``, in eval mode); every batch is weighted by its size and the
sums are kept in float64, so one point gives the same numbers either way.
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import vmap

from landscape.errors import LossError
from landscape.operators.batches import checked_batches, move_batch
from landscape.operators.functional import ModelLoss, call_with, eval_mode, evaluate_loss
from landscape.operators.next_token import next_token, next_token_correct
from landscape.operators.params import FlatLayout, select_parameters


def no_grad_unless(loss: Any) -> contextlib.AbstractContextManager:
    """No autograd for plain losses; a model loss may differentiate the model itself (a physics residual)."""
    return contextlib.nullcontext() if isinstance(loss, ModelLoss) else torch.no_grad()


def correct_predictions(outputs: torch.Tensor, targets: torch.Tensor, loss: Any = None) -> Optional[torch.Tensor]:
    """The number of correct predictions (a 0-d tensor), or None when the outputs are not class scores for integer
    labels; under the next-token ``loss``, the sum of each sequence's accuracy over its predicted tokens."""
    if loss is next_token:
        return next_token_correct(outputs, targets)
    if outputs.ndim != 2 or targets.ndim != 1 or targets.is_floating_point():
        return None
    return (outputs.argmax(1) == targets).sum()


class Evaluator:
    """Mean loss and accuracy over the data at k points of parameter space at once, the model left untouched.

    ``names`` are the parameters that vary from point to point (default: the trainable ones, in
    ``named_parameters()`` order); the other parameters and the buffers keep the model's values. Everything is
    evaluated in ``dtype`` on ``device``; ``vectorize`` runs a batch's k points in one ``vmap``ped call.
    """

    def __init__(self, model: nn.Module, loss: Any, data: Any, *, dtype: torch.dtype, device: torch.device,
                 names: Optional[Sequence[str]] = None, vectorize: bool = False) -> None:
        self.model, self.loss, self.data = model, loss, data
        self.dtype, self.device, self.vectorize = dtype, device, vectorize
        self.names = select_parameters(model) if names is None else list(names)
        named = dict(model.named_parameters())
        self.layout = FlatLayout(named[name].shape for name in self.names)
        self.fixed = {name: move_batch(t.detach(), device, dtype)
                      for name, t in [*model.named_parameters(), *model.named_buffers()] if name not in self.names}

    def __call__(self, thetas: torch.Tensor) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Loss and accuracy at each row of the flat parameter vectors ``thetas`` (k, n), see :meth:`at`."""
        return self.at(self.layout.split(thetas))

    def at(self, parts: Sequence[torch.Tensor]) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Loss (k,) and accuracy (k,) over all the data at the k points whose parameters ``names`` are ``parts``
        (one (k, *shape) tensor per name); accuracy None when the outputs are not class scores for integer labels."""
        k = parts[0].shape[0]
        total = torch.zeros(k, dtype=torch.float64)
        correct = torch.zeros(k, dtype=torch.float64)
        classified, count = True, 0
        with no_grad_unless(self.loss), eval_mode(self.model):
            for batch, size in checked_batches(self.data):
                batch = move_batch(batch, self.device, self.dtype)
                losses, right = self._batch(parts, batch)
                total += losses.detach().to("cpu", torch.float64) * size
                classified = classified and right is not None
                if right is not None:
                    correct += right.to("cpu", torch.float64)
                count += size
        return (total / count).numpy(), ((correct / count).numpy() if classified else None)

    def _state(self, parts: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**self.fixed, **dict(zip(self.names, parts))}

    def _batch(self, parts: Sequence[torch.Tensor], batch: Any) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Per-point batch-mean losses (k,) and correct counts (k,) or None, at the k points in ``parts``."""
        k = parts[0].shape[0]
        if isinstance(self.loss, ModelLoss):
            values = [evaluate_loss(self.model, self.loss, self._state([p[j] for p in parts]), batch) for j in range(k)]
            return torch.stack([v.detach() for v in values]), None
        if self.vectorize:
            outputs = vmap(lambda *ps: call_with(self.model, self._state(ps), batch[0]))(*parts)
        else:
            outputs = [call_with(self.model, self._state([p[j] for p in parts]), batch[0]) for j in range(k)]
        losses = torch.stack([self.loss(out, batch[1]) for out in outputs])
        if losses.ndim != 1:
            raise LossError(f"the loss must return a scalar (the batch mean), got shape {tuple(losses.shape[1:])}")
        right = [correct_predictions(out, batch[1], self.loss) for out in outputs]
        return losses, (None if right[0] is None else torch.stack(right))


def fit(model: nn.Module, loss: Any, data: Any, *, dtype: torch.dtype,
        device: Optional[str] = None) -> tuple[float, Optional[float]]:
    """Mean loss over the data at the model's own parameters, and accuracy when outputs are class scores and targets
    integer labels (else None)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    named = list(model.named_parameters())
    evaluator = Evaluator(model, loss, data, dtype=dtype, device=device, names=[name for name, _ in named])
    losses, accuracy = evaluator.at([move_batch(p.detach(), device, dtype)[None] for _, p in named])
    return float(losses[0]), (None if accuracy is None else float(accuracy[0]))
