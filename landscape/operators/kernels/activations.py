"""ReLU and GELU with a direct second backward. The backward of ``y = σ(x)`` is ``gx = gy·σ'(x)``; its derivative in
``gy`` is ``σ'(x)`` again and in ``x`` is ``gy·σ''(x)``: zero for ReLU (autograd still builds and adds a zero map),
and for GELU kept from when the graph was built (``gy`` and ``x`` are fixed there), as is ``σ'(x)``, so each product
costs multiplications instead of re-deriving ``σ'`` and ``σ''`` from ``x``."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch.autograd import Function
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

aten = torch.ops.aten


class ReLUGrad(Function):
    """(gy, y) ↦ gy·[y > 0], the backward of :class:`ReLU`; its own derivative in ``y`` is zero."""

    @staticmethod
    def forward(ctx: Any, gy: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(y)
        return aten.threshold_backward(gy, y, 0)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, a: torch.Tensor) -> tuple[Optional[torch.Tensor], None]:
        (y,) = ctx.saved_tensors
        return aten.threshold_backward(a, y, 0), None


class ReLU(Function):
    """``torch.relu`` whose backward is a :class:`ReLUGrad` node when a graph is being built."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return ReLUGrad.apply(gy, y) if torch.is_grad_enabled() else aten.threshold_backward(gy, y, 0)


def relu(input: torch.Tensor, inplace: bool = False) -> Any:
    """``F.relu`` / ``torch.relu`` through :class:`ReLU` (NotImplemented, to run as is, in place or without grad)."""
    if inplace or not input.requires_grad:
        return NotImplemented
    return ReLU.apply(input)


def gelu_second(x: torch.Tensor, approximate: str) -> torch.Tensor:
    """GELU's second derivative at ``x``: ``φ(x)(2 − x²)`` for the exact form, and that of
    ``½x(1 + tanh(u))``, ``u = √(2/π)(x + 0.044715x³)`` for ``approximate="tanh"``."""
    if approximate == "tanh":
        c, k = math.sqrt(2 / math.pi), 0.044715
        t = torch.tanh(c * (x + k * x.pow(3)))
        du = c * (1 + 3 * k * x * x)
        return (1 - t * t) * (du - x * t * du * du + 3 * c * k * x * x)
    return torch.exp(-0.5 * x * x).mul_(1 / math.sqrt(2 * math.pi)).mul_(2 - x * x)


class GELUGrad(Function):
    """(gy, x) ↦ gy·GELU'(x), the backward of :class:`GELU`; its own backward uses ``GELU'(x)`` and
    ``gy·GELU''(x)`` kept from the forward call."""

    @staticmethod
    def forward(ctx: Any, gy: torch.Tensor, x: torch.Tensor, slope: torch.Tensor, approximate: str) -> torch.Tensor:
        curvature = gy * gelu_second(x, approximate) if ctx.needs_input_grad[1] else None
        ctx.save_for_backward(slope, curvature)
        return gy * slope

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, a: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], None, None]:
        slope, curvature = ctx.saved_tensors
        dgy = a * slope if ctx.needs_input_grad[0] else None
        return dgy, a * curvature if curvature is not None else None, None, None


class GELU(Function):
    """``F.gelu`` whose backward is a :class:`GELUGrad` node when a graph is being built. It keeps ``GELU'(x)``,
    which every backward call multiplies by (once to build the graph, once per product)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, approximate: str) -> torch.Tensor:
        ctx.save_for_backward(x, aten.gelu_backward(torch.ones_like(x), x, approximate=approximate))
        ctx.approximate = approximate
        return F.gelu(x, approximate=approximate)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, slope = ctx.saved_tensors
        if torch.is_grad_enabled():
            return GELUGrad.apply(gy, x, slope, ctx.approximate), None
        return gy * slope, None


def gelu(input: torch.Tensor, approximate: str = "none") -> Any:
    """``F.gelu`` through :class:`GELU` (NotImplemented, to run as is, without grad)."""
    if not input.requires_grad:
        return NotImplemented
    return GELU.apply(input, approximate)
