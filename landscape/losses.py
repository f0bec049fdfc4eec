"""Losses by name: cross-entropy, MSE, Cohen et al.'s squared loss, the language models' next-token loss, or a
user's ``package.module:function``.

Built-in names resolve to the very functions ``F.cross_entropy``, ``F.mse_loss`` and
:func:`~landscape.operators.next_token.next_token`, which the operators' fast paths recognise by identity. A
``package.module:function`` spec names a *model loss* ``function(model, batch) -> scalar`` that returns the batch
mean; it is wrapped in :class:`~landscape.operators.functional.ModelLoss`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from landscape.errors import DataError, OptionError
from landscape.operators.functional import ModelLoss
from landscape.operators.next_token import next_token
from landscape.specs import import_callable


def squared_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cohen et al.'s squared loss ``(1/N) Σ_i ½‖outputs_i − t_i‖²``, with ``t_i`` the one-hot of integer labels
    (over ``outputs.shape[1]`` classes) or float targets shaped like ``outputs``. Its Hessian in the outputs is I/N.
    """
    if not targets.is_floating_point():
        targets = F.one_hot(targets, outputs.shape[1]).to(outputs.dtype)
    return 0.5 * (outputs - targets).pow(2).sum() / outputs.shape[0]


squared_loss.layerwise_kind = "squared"  # type: ignore[attr-defined]  # the layerwise Hessian path's fast kind


BUILTIN_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "cross-entropy": F.cross_entropy,
    "ce": F.cross_entropy,
    "cross_entropy": F.cross_entropy,
    "mse": F.mse_loss,
    "squared": squared_loss,
    "next-token": next_token,
    "next_token": next_token,
}
DEFAULT_LOSSES = {"classification": "cross-entropy", "regression": "mse", "language-model": "next-token"}
_CANONICAL_NAMES = ((F.cross_entropy, "cross-entropy"), (F.mse_loss, "mse"), (squared_loss, "squared"),
                    (next_token, "next-token"))


def resolve_loss(spec: str | None, task: str = "classification") -> Callable:
    """The loss named by ``spec``: a built-in name, ``package.module:function`` (a model loss
    ``function(model, batch)`` returning the batch-mean scalar), or ``None`` for the default of ``task``
    (cross-entropy for classification, MSE for regression, next-token for a language model's token data).
    """
    if spec is None:
        return BUILTIN_LOSSES[_default_name(task)]
    if spec in BUILTIN_LOSSES:
        return BUILTIN_LOSSES[spec]
    if ":" in spec:
        return ModelLoss(import_callable(spec, OptionError, "loss"), name=spec)
    raise OptionError(
        f"unknown loss {spec!r}: expected one of {', '.join(BUILTIN_LOSSES)}, or 'package.module:function' "
        "naming function(model, batch) that returns the batch-mean loss"
    )


def _default_name(task: str) -> str:
    if task not in DEFAULT_LOSSES:
        raise OptionError(f"no default loss for data of task {task!r}; name the loss ({', '.join(BUILTIN_LOSSES)} "
                          "or 'package.module:function')")
    return DEFAULT_LOSSES[task]


def loss_name(loss: Callable) -> str:
    """A name for the provenance record: the built-in name, the ModelLoss name, or the function's qualified name."""
    for function, name in _CANONICAL_NAMES:
        if loss is function:
            return name
    if isinstance(loss, ModelLoss):
        return loss.name
    return getattr(loss, "__qualname__", type(loss).__name__)


def check_targets(loss: Callable, outputs: torch.Tensor, targets: torch.Tensor) -> None:
    """Check a batch's targets against the model's outputs for a built-in loss; other losses are not checked.

    Run on the first batch before an analysis: out-of-range labels, integer labels under MSE and mismatched shapes
    otherwise fail deep inside autograd, or (MSE broadcasting) not at all.
    """
    name = loss_name(loss)
    if name == "next-token":
        check_tokens(outputs, targets)
        return
    if name == "cross-entropy" and outputs.ndim != 2:
        hint = "; for a language model's (batch, positions, vocabulary) logits use the next-token loss" \
            if outputs.ndim == 3 else ""
        raise DataError(f"cross-entropy needs model outputs of shape (batch, classes); got {tuple(outputs.shape)}"
                        f"{hint}")
    if name == "mse" and not targets.is_floating_point():
        raise DataError("the mse loss needs float targets shaped like the outputs but the data has integer labels; "
                        "use the 'squared' loss (one-hot targets) or 'cross-entropy'")
    if name not in ("cross-entropy", "mse", "squared"):
        return
    if targets.is_floating_point():
        _check_same_shape(name, outputs, targets)
    else:
        _check_labels(outputs, targets)


def _check_same_shape(name: str, outputs: torch.Tensor, targets: torch.Tensor) -> None:
    if outputs.shape != targets.shape:
        raise DataError(f"the {name} loss needs float targets shaped like the model outputs; got targets of shape "
                        f"{tuple(targets.shape)} for outputs of shape {tuple(outputs.shape)}")


def _check_labels(outputs: torch.Tensor, targets: torch.Tensor) -> None:
    """Integer labels: one per sample, each a valid index into the outputs' class dimension."""
    if outputs.ndim != 2 or targets.shape != outputs.shape[:1]:
        raise DataError(f"integer labels must be one per sample, shape ({outputs.shape[0]},), for outputs of shape "
                        f"(batch, classes); got labels of shape {tuple(targets.shape)} for outputs of shape "
                        f"{tuple(outputs.shape)}")
    classes = outputs.shape[1]
    for label in (int(targets.min()), int(targets.max())):
        if not 0 <= label < classes:
            raise DataError(f"labels out of range: found label {label} but the model has {classes} outputs; "
                            f"labels must lie in [0, {classes})")


def check_tokens(logits: torch.Tensor, tokens: torch.Tensor) -> None:
    """The next-token loss's pairing: logits (B, T, V) for integer tokens (B, T), T >= 2, every token in [0, V)."""
    if tokens.is_floating_point() or tokens.is_complex():
        raise DataError(f"the next-token loss needs integer tokens as targets; got {tokens.dtype} targets")
    if logits.ndim != 3 or tokens.shape != logits.shape[:2]:
        raise DataError(f"the next-token loss needs logits of shape (batch, positions, vocabulary) for tokens of "
                        f"shape (batch, positions); got logits of shape {tuple(logits.shape)} for tokens of shape "
                        f"{tuple(tokens.shape)}")
    if tokens.shape[1] < 2:
        raise DataError(f"the next-token loss needs sequences of at least 2 tokens; got {tokens.shape[1]}")
    vocabulary = logits.shape[2]
    for token in (int(tokens.min()), int(tokens.max())):
        if not 0 <= token < vocabulary:
            raise DataError(f"tokens out of range: found token {token} but the model's vocabulary has {vocabulary} "
                            f"entries; tokens must lie in [0, {vocabulary})")
