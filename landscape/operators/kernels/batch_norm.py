"""Batch normalisation in eval mode as what it is there, a per-channel affine map ``x·s + t`` with
``s = w/√(running_var + ε)`` and ``t = b − running_mean·s``: autograd differentiates that form twice with a few
elementwise products, where ``native_batch_norm``'s double backward runs its training-mode formula."""

from __future__ import annotations

from typing import Any, Optional

import torch


def batch_norm(input: torch.Tensor, running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
               weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None, training: bool = False,
               momentum: Optional[float] = 0.1, eps: float = 1e-5) -> Any:
    """``F.batch_norm`` with running statistics in eval mode as an affine map (else NotImplemented: run as is)."""
    if training or running_mean is None or running_var is None or input.ndim < 2:
        return NotImplemented
    scale = torch.rsqrt(running_var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -running_mean * scale
    if bias is not None:
        shift = shift + bias
    shape = (1, -1) + (1,) * (input.ndim - 2)
    return torch.addcmul(shift.reshape(shape), input, scale.reshape(shape))
