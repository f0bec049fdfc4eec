"""Batch normalisation in eval mode as what it is there, a per-channel affine map ``y = x·s + t`` with
``s = w/√(running_var + ε)`` and ``t = b − running_mean·s`` (autograd differentiates those small per-channel
formulas), through a node with direct second derivatives: for tangents (a, σ, τ) of the gradients (gx, gs, gt),
``∂/∂gy = a·s + x·σ + τ``, ``∂/∂x = gy·σ`` and ``∂/∂s = Σ a·gy`` over all but the channels. ``native_batch_norm``'s
double backward runs its training-mode formula instead, several times the work."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch.autograd import Function
from torch.autograd.function import once_differentiable

Grads = tuple[Optional[torch.Tensor], ...]


def _channels(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-channel vector shaped to broadcast against ``like`` (N, C, ...)."""
    return t.reshape((1, -1) + (1,) * (like.ndim - 2))


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` (N, C, ...) over every dimension but the channels."""
    return t.sum([d for d in range(t.ndim) if d != 1])


def vjp(gy: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, mask: tuple[bool, bool, bool]) -> Grads:
    """The gradients of ``<gy, x·s + t>`` with respect to (x, s, t), those not masked off."""
    return (gy * _channels(scale, gy) if mask[0] else None, _per_channel(gy * x) if mask[1] else None,
            _per_channel(gy) if mask[2] else None)


class ChannelAffineGrad(Function):
    """(gy, x, s) ↦ (gx, gs, gt), the backward of :class:`ChannelAffine`, with its own backward in closed form."""

    @staticmethod
    def forward(ctx: Any, gy: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, mask: tuple) -> Grads:
        ctx.save_for_backward(gy, x, scale)
        ctx.set_materialize_grads(False)
        return vjp(gy, x, scale, mask)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, a: Optional[torch.Tensor], sigma: Optional[torch.Tensor],
                 tau: Optional[torch.Tensor]) -> Grads:
        gy, x, scale = ctx.saved_tensors
        need_gy, need_x, need_s = ctx.needs_input_grad[:3]
        dgy = dx = ds = None
        if need_gy:
            dgy = _tangent(gy, x, scale, a, sigma, tau)
        if need_x and sigma is not None:
            dx = gy * _channels(sigma, gy)
        if need_s and a is not None:
            ds = _per_channel(a * gy)
        return dgy, dx, ds, None


def _tangent(gy: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, a: Optional[torch.Tensor],
             sigma: Optional[torch.Tensor], tau: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``a·s + x·σ + τ`` (terms whose tangent is None left out)."""
    out = None
    for left, right in ((a, scale), (x, sigma)):
        if left is not None and right is not None:
            if out is None:
                out = left * _channels(right, gy) if tau is None else torch.addcmul(_channels(tau, gy), left,
                                                                                   _channels(right, gy))
            else:
                out.addcmul_(left, _channels(right, gy))
    if out is None and tau is not None:
        return _channels(tau, gy).expand(gy.shape)
    return out


class ChannelAffine(Function):
    """``x·s + t`` per channel, whose backward is a :class:`ChannelAffineGrad` node when a graph is being built."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, scale)
        return torch.addcmul(_channels(shift, x), x, _channels(scale, x))

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> Grads:
        x, scale = ctx.saved_tensors
        mask = tuple(ctx.needs_input_grad[:3])
        if torch.is_grad_enabled():
            return ChannelAffineGrad.apply(gy, x, scale, mask)
        return vjp(gy, x, scale, mask)


def batch_norm(input: torch.Tensor, running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
               weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None, training: bool = False,
               momentum: Optional[float] = 0.1, eps: float = 1e-5) -> Any:
    """``F.batch_norm`` with running statistics in eval mode through :class:`ChannelAffine` (else NotImplemented:
    run as is)."""
    if training or running_mean is None or running_var is None or input.ndim < 2:
        return NotImplemented
    if not any(t is not None and t.requires_grad for t in (input, weight, bias)):
        return NotImplemented
    scale = torch.rsqrt(running_var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -running_mean * scale
    if bias is not None:
        shift = shift + bias
    return ChannelAffine.apply(input, scale, shift)
