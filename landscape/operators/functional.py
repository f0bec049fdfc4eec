"""Evaluating a model, or a loss, at parameters other than its own, without modifying the model.

Two kinds of loss are accepted everywhere an operator takes one:

- an *output loss* ``loss(outputs, targets) -> scalar`` (``F.cross_entropy``, ``F.mse_loss``, ...), applied to
  ``model(batch[0])`` and ``batch[1]``;
- a :class:`ModelLoss` wrapping ``fn(model, batch) -> scalar`` for losses that need the model itself (a
  physics-informed residual that differentiates the network in its inputs, a language-model loss that shifts tokens).

Every evaluation here runs attention with kernels that every derivative passes through
(:mod:`landscape.operators.attention`), so models with ``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``
or ``nn.TransformerEncoderLayer`` work on every product path with no action from the user; a training step
(:func:`training_loss`) keeps torch's fused kernels, whose first derivatives are all it needs.

TorchScript modules refuse ``torch.func.functional_call``; their parameters are swapped in and restored instead,
which supports reverse-mode autograd (the double-backward product) but not the ``torch.func`` transforms.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
from torch import nn
from torch.func import functional_call

from landscape.operators.attention import differentiable_attention
from landscape.operators.mse import elementwise_mse


class ModelLoss:
    """A loss computed from the model and a whole batch: ``fn(model, batch) -> scalar`` (the batch mean)."""

    def __init__(self, fn: Callable[[nn.Module, Any], torch.Tensor], name: Optional[str] = None) -> None:
        if not callable(fn):
            raise TypeError(f"ModelLoss needs a callable fn(model, batch), got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self.fn(model, batch)

    def __repr__(self) -> str:
        return f"ModelLoss({self.name})"


def is_scripted(model: nn.Module) -> bool:
    """True for TorchScript modules (``torch.jit.script`` / ``torch.jit.load``)."""
    return isinstance(model, torch.jit.ScriptModule)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluate ``model`` in eval mode (fixed BatchNorm statistics, no dropout) and restore its modes after.

    A ``torch.export`` program refuses ``eval()``: its mode was fixed when it was exported, and is used as is.
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
    except NotImplementedError:
        pass
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def _swapped(model: nn.Module, state: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily set ``model``'s named parameters and buffers to ``state`` (for TorchScript modules)."""
    modules = dict(model.named_modules())
    saved = []
    try:
        for name, value in state.items():
            owner, _, attr = name.rpartition(".")
            module = modules[owner]
            saved.append((module, attr, getattr(module, attr)))
            setattr(module, attr, value)
        yield
    finally:
        for module, attr, original in reversed(saved):
            setattr(module, attr, original)


class _Bound(nn.Module):
    """``fn(model, batch)`` as a module, so that ``functional_call`` can substitute the model's parameters."""

    def __init__(self, model: nn.Module, fn: ModelLoss) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.fn(self.model, batch)


def call_with(model: nn.Module, state: Mapping[str, torch.Tensor], inputs: Any) -> Any:
    """``model(inputs)`` with its parameters and buffers replaced by ``state``, in eval mode, with attention kernels
    that every derivative passes through (:func:`~landscape.operators.attention.differentiable_attention`)."""
    with eval_mode(model), differentiable_attention():
        if is_scripted(model):
            with _swapped(model, state):
                return model(inputs)
        return functional_call(model, dict(state), (inputs,))


def evaluate_loss(model: nn.Module, loss: Callable, state: Mapping[str, torch.Tensor], batch: Any) -> Any:
    """The loss of one batch with the model's parameters and buffers replaced by ``state``, in eval mode (attention
    as in :func:`call_with`; ``F.mse_loss`` in the form whose forward-over-reverse derivatives work, see
    :mod:`landscape.operators.mse`)."""
    if not isinstance(loss, ModelLoss):
        outputs = call_with(model, state, batch[0])
        with elementwise_mse():
            return loss(outputs, batch[1])
    with eval_mode(model), differentiable_attention(), elementwise_mse():
        if is_scripted(model):
            with _swapped(model, state):
                return loss(model, batch)
        return loss_at(model, loss, state, batch)


def loss_at(model: nn.Module, loss: Callable, state: Mapping[str, torch.Tensor], batch: Any) -> Any:
    """The loss of one batch with the model's parameters and buffers replaced by ``state`` (any subset of them),
    through ``torch.func.functional_call`` and in the model's current mode, with attention kernels that
    ``torch.func`` transforms pass through: ``loss(model(X), y)``, or ``loss(model, batch)`` for a
    :class:`ModelLoss`."""
    with differentiable_attention():
        if isinstance(loss, ModelLoss):
            return functional_call(_Bound(model, loss), {f"model.{k}": v for k, v in state.items()}, (batch,))
        return loss(functional_call(model, dict(state), (batch[0],)), batch[1])


def training_loss(model: nn.Module, loss: Callable, batch: Any) -> Any:
    """The loss of one batch at the model's own parameters, in its current mode (a training step):
    ``loss(model(X), y)``, or ``loss(model, batch)`` for a :class:`ModelLoss`."""
    return loss(model, batch) if isinstance(loss, ModelLoss) else loss(model(batch[0]), batch[1])
