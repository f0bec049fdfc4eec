"""``F.linear`` with a direct second backward: for ``y = x Wᵀ + b`` and tangents (a, B, c) of the gradients
(gx, gW, gb), ``∂/∂gy = a Wᵀ + x Bᵀ + c`` (two accumulated matrix products), ``∂/∂x = gy B``, ``∂/∂W = gyᵀ a``."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch.autograd import Function
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

Grads = tuple[Optional[torch.Tensor], ...]


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a matrix of its last dimension: (…, n) → (m, n)."""
    return t.reshape(-1, t.shape[-1])


def vjp(gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mask: tuple[bool, bool, bool]) -> Grads:
    """The gradients of ``<gy, x Wᵀ + b>`` with respect to (x, W, b), those not masked off."""
    return (gy @ weight if mask[0] else None, _rows(gy).t() @ _rows(x) if mask[1] else None,
            _rows(gy).sum(0) if mask[2] else None)


class LinearGrad(Function):
    """(gy, x, W) ↦ (gx, gW, gb), the backward of :class:`Linear`, with its own backward in closed form."""

    @staticmethod
    def forward(ctx: Any, gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mask: tuple) -> Grads:
        ctx.save_for_backward(gy, x, weight)
        ctx.set_materialize_grads(False)
        return vjp(gy, x, weight, mask)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, a: Optional[torch.Tensor], b: Optional[torch.Tensor], c: Optional[torch.Tensor]) -> Grads:
        gy, x, weight = ctx.saved_tensors
        need_gy, need_x, need_w = ctx.needs_input_grad[:3]
        dgy = dx = dw = None
        if need_gy:
            dgy = _tangent(gy, x, weight, a, b, c)
        if need_x and b is not None:
            dx = gy @ b
        if need_w and a is not None:
            dw = _rows(gy).t() @ _rows(a)
        return dgy, dx, dw, None


def _tangent(gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, a: Optional[torch.Tensor],
             b: Optional[torch.Tensor], c: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``a Wᵀ + x Bᵀ + c`` (terms whose tangent is None left out), shaped as ``gy``."""
    out = None
    for left, right in ((a, weight), (x, b)):
        if left is not None and right is not None:
            if out is None:
                out = torch.addmm(c, _rows(left), right.t()) if c is not None else _rows(left) @ right.t()
            else:
                out.addmm_(_rows(left), right.t())
    if out is None:
        return None if c is None else c.expand(gy.shape)
    return out.reshape(gy.shape)


class Linear(Function):
    """``F.linear`` whose backward is a :class:`LinearGrad` node when a graph is being built."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> Grads:
        x, weight = ctx.saved_tensors
        mask = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
        if torch.is_grad_enabled():
            return LinearGrad.apply(gy, x, weight, mask)
        return vjp(gy, x, weight, mask)


def linear(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> Any:
    """``F.linear`` through :class:`Linear` for a matrix weight and something that needs a gradient (else
    NotImplemented: run as is)."""
    if weight.ndim != 2 or not any(t is not None and t.requires_grad for t in (input, weight, bias)):
        return NotImplemented
    return Linear.apply(input, weight, bias)
