"""``F.layer_norm`` (with weight and bias) with a direct second backward.

Per row of ``D`` normalised entries, ``x̂ = (x − μ)·r`` with ``r = 1/√(var + ε)``, ``y = x̂ ⊙ w + b``. Its
backward, with ``h = gy ⊙ w``, is ``gx = J(h)``, ``gw = Σ gy ⊙ x̂``, ``gb = Σ gy``, where
``J(v) = r·(v − mean(v) − x̂·mean(v ⊙ x̂))`` is the (symmetric) Jacobian of ``x̂`` in ``x``. Its derivative, applied to
tangents (a, B, c) of (gx, gw, gb), with ``A = J(a)``, ``m₁ = mean(h)``, ``m₂ = mean(h ⊙ x̂)``, ``α = mean(a ⊙ x̂)``:

* in ``gy``: ``c + B ⊙ x̂ + w ⊙ A``; in ``w``: ``Σ gy ⊙ A``;
* in ``x``: ``J(gy ⊙ B) − r·α·gx − r·m₂·A − r²·(mean(a ⊙ h) − mean(a)·m₁ − m₂·α)·x̂``

(the last three from ``gx``'s dependence on ``x̂`` and ``r``): a handful of passes over the rows, with ``x̂``, ``gx``,
``h`` and the row statistics kept from when the graph was built, where autograd's double backward of
``native_layer_norm_backward`` recomputes them.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from torch.autograd import Function
from torch.autograd.function import once_differentiable

aten = torch.ops.aten
Grads = tuple[Optional[torch.Tensor], ...]


def _row_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean over the last dimension, kept as a column."""
    return t.mean(-1, keepdim=True)


class LayerNormGrad(Function):
    """(gy, x, w) ↦ (gx, gw, gb), the backward of :class:`LayerNorm`, with its own backward in closed form."""

    @staticmethod
    def forward(ctx: Any, gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                rstd: torch.Tensor, mask: tuple[bool, bool, bool]) -> Grads:
        gx, gw, gb = vjp(gy, x, weight, mean, rstd, mask)
        xhat = (x - mean).mul_(rstd)
        h = gy * weight
        ctx.save_for_backward(gy, xhat, weight, rstd, gx if mask[0] else None, h, _row_mean(h),
                              _row_mean(h * xhat))
        ctx.set_materialize_grads(False)
        return gx, gw, gb

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, a: Optional[torch.Tensor], B: Optional[torch.Tensor], c: Optional[torch.Tensor]) -> Grads:
        gy, xhat, weight, r, gx, h, m1, m2 = ctx.saved_tensors
        need_gy, need_x, need_w = ctx.needs_input_grad[:3]
        A = alpha = mean_a = None
        if a is not None:  # A = J(a) = r·(a − mean(a) − α·x̂)
            mean_a, alpha = _row_mean(a), _row_mean(a * xhat)
            A = (a - mean_a).addcmul_(xhat, alpha, value=-1).mul_(r)
        dgy = dx = dw = None
        if need_gy:
            if B is not None:
                dgy = xhat * B
            if A is not None:
                dgy = A * weight if dgy is None else dgy.addcmul_(A, weight)
            if c is not None:
                dgy = c.expand_as(gy) if dgy is None else dgy.add_(c)
        if need_w and A is not None:
            dw = _rows(gy * A).sum(0)
        if need_x and (A is not None or B is not None):
            xcoef = 0
            if B is not None:  # J(u) for u = gy ⊙ B
                u = gy * B
                xcoef = _row_mean(u * xhat).mul_(-r)
                dx = u.sub_(_row_mean(u)).mul_(r)
            if A is not None:
                beta = _row_mean(a * h).sub_(mean_a * m1).sub_(m2 * alpha)
                xcoef = beta.mul_(-(r * r)).add_(xcoef)
                dx = gx * (-(r * alpha)) if dx is None else dx.addcmul_(gx, -(r * alpha))
                dx.addcmul_(A, -(r * m2))
            dx.addcmul_(xhat, xcoef)
        return dgy, dx, dw, None, None, None


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a matrix of its last dimension: (…, D) → (rows, D)."""
    return t.reshape(-1, t.shape[-1])


def vjp(gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
        mask: tuple[bool, bool, bool]) -> Grads:
    """The gradients of ``<gy, layer_norm(x, w, b)>`` with respect to (x, w, b), those not masked off."""
    gx, gw, _ = aten.native_layer_norm_backward(gy, x, [x.shape[-1]], mean, rstd, weight, None,
                                                [mask[0], mask[1], False])
    return gx, gw, _rows(gy).sum(0) if mask[2] else None


class LayerNorm(Function):
    """``F.layer_norm`` over the last dimension, with weight and bias, whose backward is a :class:`LayerNormGrad`
    node when a graph is being built."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        y, mean, rstd = aten.native_layer_norm(x, [x.shape[-1]], weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        return y

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> Grads:
        x, weight, mean, rstd = ctx.saved_tensors
        mask = tuple(ctx.needs_input_grad[:3])
        if torch.is_grad_enabled():
            return (*LayerNormGrad.apply(gy, x, weight, mean, rstd, mask), None)
        return (*vjp(gy, x, weight, mean, rstd, mask), None)


def layer_norm(input: torch.Tensor, normalized_shape: Union[int, Sequence[int]], weight: Optional[torch.Tensor] = None,
               bias: Optional[torch.Tensor] = None, eps: float = 1e-5) -> Any:
    """``F.layer_norm`` through :class:`LayerNorm` over the last dimension, with a weight and a bias, for something
    that needs a gradient (else NotImplemented: run as is)."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if weight is None or bias is None or len(shape) != 1 or input.ndim == 0 or input.shape[-1] != shape[0]:
        return NotImplemented
    if weight.shape != shape or bias.shape != shape or not any(t.requires_grad for t in (input, weight, bias)):
        return NotImplemented
    return LayerNorm.apply(input, weight, bias, eps)
