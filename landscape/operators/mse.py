"""The mean squared error, written so that forward-mode derivatives of its gradient work.

On torch 2.13 the forward-over-reverse Hessian product of ``F.mse_loss`` (or ``nn.MSELoss``, which calls it) fails
with "ZeroTensors are immutable" (the derivative formula of ``mse_loss_backward`` writes into the zero tangent of
the targets), and the same product under ``torch.compile`` crashes the interpreter (a segmentation fault). The
elementwise form ``(input - target)²`` reduced by ``mean``/``sum`` has the same value and derivatives and neither
problem. :func:`elementwise_mse` makes every call to ``F.mse_loss`` in the code it wraps use that form, wherever the
call comes from (the loss itself, ``nn.MSELoss``, a user's model loss); every evaluation of a loss by an operator
goes through it (:func:`landscape.operators.functional.evaluate_loss`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch.nn import _reduction
from torch.overrides import TorchFunctionMode


def mse_elementwise(input: torch.Tensor, target: torch.Tensor, size_average: Optional[bool] = None,
                    reduce: Optional[bool] = None, reduction: str = "mean",
                    weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.mse_loss`` (same arguments, broadcasting and result) from elementwise operations."""
    if weight is not None:  # torch's weighted form is elementwise already
        return F.mse_loss(input, target, size_average, reduce, reduction, weight)
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    _reduction.get_enum(reduction)  # refuses an unknown reduction as F.mse_loss does
    squares = (input - target).pow(2)
    if reduction == "mean":
        return squares.mean()
    return squares.sum() if reduction == "sum" else squares


class _ElementwiseMSE(TorchFunctionMode):
    """Redirects ``F.mse_loss`` to :func:`mse_elementwise`; every other function runs unchanged."""

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        return (mse_elementwise if func is F.mse_loss else func)(*args, **(kwargs or {}))


@contextlib.contextmanager
def elementwise_mse() -> Iterator[None]:
    """Evaluate the wrapped code with ``F.mse_loss`` computed elementwise (see the module's docstring).

    Every torch call in the wrapped code passes through Python, so it wraps the loss, not the model, where it can.
    Under ``torch.compile`` it is a no-op: the compiled Hessian product enters it outside the compiled call, where
    it costs nothing after tracing.
    """
    if torch.compiler.is_compiling():
        yield
        return
    with _ElementwiseMSE():
        yield
