"""Convolutions (``F.conv1d/2d/3d``) with a direct second backward.

For ``y = conv(x, W) + b`` and tangents (a, B, c) of the gradients (gx, gW, gb): ``∂/∂gy = conv(a, W) + conv(x, B)
+ c``, and ``(∂/∂x, ∂/∂W)`` are the input and weight gradients of a convolution of ``a`` by ``B`` at output
gradient ``gy``, one ``convolution_backward`` call. autograd's generic formula computes the weight term as a
convolution whose kernel is the whole batch's gradient map, several times slower on CPU.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import torch
from torch.autograd import Function
from torch.autograd.function import once_differentiable

aten = torch.ops.aten
Grads = tuple[Optional[torch.Tensor], ...]


class Setting(NamedTuple):
    """How a convolution slides: each size a list over its spatial dimensions."""

    stride: list[int]
    padding: list[int]
    dilation: list[int]
    groups: int

    def call(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        stride, padding, dilation, groups = self
        return aten.convolution(x, weight, bias, stride, padding, dilation, False, [0] * len(stride), groups)

    def vjp(self, gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mask: Sequence[bool]) -> Grads:
        """The gradients of ``<gy, conv(x, W) + b>`` with respect to (x, W, b), those not masked off."""
        stride, padding, dilation, groups = self
        return tuple(aten.convolution_backward(gy, x, weight, [weight.shape[0]] if mask[2] else None, stride,
                                               padding, dilation, False, [0] * len(stride), groups, list(mask)))


class ConvGrad(Function):
    """(gy, x, W) ↦ (gx, gW, gb), the backward of :class:`Conv`, with its own backward in closed form."""

    @staticmethod
    def forward(ctx: Any, gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, setting: Setting,
                mask: tuple) -> Grads:
        ctx.save_for_backward(gy, x, weight)
        ctx.setting = setting
        ctx.set_materialize_grads(False)
        return setting.vjp(gy, x, weight, mask)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, a: Optional[torch.Tensor], b: Optional[torch.Tensor], c: Optional[torch.Tensor]) -> Grads:
        gy, x, weight = ctx.saved_tensors
        setting: Setting = ctx.setting
        need_gy, need_x, need_w = ctx.needs_input_grad[:3]
        dgy = dx = dw = None
        if need_gy:
            dgy = _tangent(setting, gy, x, weight, a, b, c)
        mask = (need_x and b is not None, need_w and a is not None, False)
        if any(mask):
            dx, dw, _ = setting.vjp(gy, a if a is not None else x, b if b is not None else weight, mask)
        return dgy, dx, dw, None, None


def _tangent(setting: Setting, gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, a: Optional[torch.Tensor],
             b: Optional[torch.Tensor], c: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``conv(a, W) + conv(x, B) + c`` (terms whose tangent is None left out)."""
    if a is None and b is None:
        return None if c is None else c.reshape((1, -1) + (1,) * (gy.ndim - 2)).expand(gy.shape)
    out = setting.call(a, weight, c) if a is not None else setting.call(x, b, c)
    if a is not None and b is not None:
        out.add_(setting.call(x, b, None))
    return out


class Conv(Function):
    """A convolution whose backward is a :class:`ConvGrad` node when a graph is being built."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                setting: Setting) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.setting = setting
        ctx.has_bias = bias is not None
        return setting.call(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> Grads:
        x, weight = ctx.saved_tensors
        mask = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
        if torch.is_grad_enabled():
            return (*ConvGrad.apply(gy, x, weight, ctx.setting, mask), None)
        return (*ctx.setting.vjp(gy, x, weight, mask), None)


def _sizes(value: Any, dims: int) -> list[int]:
    return list(value) if isinstance(value, (tuple, list)) else [int(value)] * dims


def conv(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride: Any = 1,
         padding: Any = 0, dilation: Any = 1, groups: int = 1) -> Any:
    """``F.conv1d/2d/3d`` through :class:`Conv` for a batched input, numeric padding and something that needs a
    gradient (else NotImplemented: run as is)."""
    if isinstance(padding, str) or input.ndim != weight.ndim:
        return NotImplemented
    if not any(t is not None and t.requires_grad for t in (input, weight, bias)):
        return NotImplemented
    dims = weight.ndim - 2
    setting = Setting(_sizes(stride, dims), _sizes(padding, dims), _sizes(dilation, dims), int(groups))
    return Conv.apply(input, weight, bias, setting)
