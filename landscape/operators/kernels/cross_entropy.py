"""``F.cross_entropy`` over class indices (mean over the targets not ignored) with a direct second backward.

With ``p = softmax(z)`` per row and ``n`` counted rows, the gradient is ``g·(p − onehot)/n`` and its derivative,
applied to a tangent ``u``, ``g·(p⊙u − p·Σ_j p_j u_j)/n`` per row: three passes over the logits, with ``p`` kept from
when the graph was built, where autograd's double backward of ``log_softmax`` recomputes exponentials each time.
The next-token loss (:func:`next_token`) is the same node over all positions of its (B, T, V) logits, the last of
each sequence ignored.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch.autograd import Function
from torch.autograd.function import once_differentiable

#: F.cross_entropy's default ``ignore_index``, which the next-token loss keeps (tokens equal to it are not predicted)
_IGNORED = -100


def _gradient(p: torch.Tensor, safe: torch.Tensor, valid: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``scale·(p − onehot)`` on the counted rows (``p`` is already zero on the others)."""
    out = p * scale
    return out.scatter_add_(1, safe[:, None], (valid * -scale).to(out.dtype)[:, None])


class CrossEntropyGrad(Function):
    """(g, z) ↦ g·(p − onehot)/n, the backward of :class:`CrossEntropy`, with its own backward in closed form."""

    @staticmethod
    def forward(ctx: Any, g: torch.Tensor, logits: torch.Tensor, p: torch.Tensor, safe: torch.Tensor,
                valid: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(g, p, safe, valid, count)
        return _gradient(p, safe, valid, g / count)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, u: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        g, p, safe, valid, count = ctx.saved_tensors
        pu = p * u
        dg = dz = None
        if ctx.needs_input_grad[0]:  # a loss scaled by something that depends on the parameters
            picked = u.gather(1, safe[:, None]).squeeze(1) * valid
            dg = (pu.sum() - picked.sum()) / count
        if ctx.needs_input_grad[1]:
            dz = pu.addcmul_(p, pu.sum(1, keepdim=True), value=-1).mul_(g / count)
        return dg, dz, None, None, None, None


class CrossEntropy(Function):
    """The mean cross-entropy of logits (N, C) against class indices (N,), rows equal to ``ignore_index`` left out,
    whose backward is a :class:`CrossEntropyGrad` node when a graph is being built."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
        logp = torch.log_softmax(logits, 1)
        valid = target != ignore_index
        safe = torch.where(valid, target, 0)
        count = valid.sum()
        loss = -(logp.gather(1, safe[:, None]).squeeze(1) * valid).sum() / count
        p = logp.exp_().mul_(valid[:, None])
        ctx.save_for_backward(logits, p, safe, valid, count)
        return loss

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Optional[torch.Tensor], None, None]:
        logits, p, safe, valid, count = ctx.saved_tensors
        if torch.is_grad_enabled():
            return CrossEntropyGrad.apply(g, logits, p, safe, valid, count), None, None
        return _gradient(p, safe, valid, g / count), None, None


def cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
                  size_average: Any = None, ignore_index: int = -100, reduce: Any = None, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Any:
    """``F.cross_entropy`` through :class:`CrossEntropy` for (N, C) logits that need a gradient, (N,) class indices,
    the mean and no weights or smoothing (else NotImplemented: run as is)."""
    plain = weight is None and size_average is None and reduce is None and reduction == "mean" and not label_smoothing
    shapes = input.ndim == 2 and target.ndim == 1 and target.dtype == torch.long
    if not (plain and shapes and input.requires_grad):
        return NotImplemented
    return CrossEntropy.apply(input, target, ignore_index)


def next_token(logits: torch.Tensor, tokens: torch.Tensor) -> Any:
    """:func:`landscape.operators.next_token.next_token` through :class:`CrossEntropy` over all B·T positions, the
    last of each sequence ignored, for (B, T, V) logits that need a gradient and (B, T) int64 tokens (else
    NotImplemented: run as is). The same loss, without the loss's copy of the logits it slices (and the copies of
    its gradients back and forth that each product would make)."""
    if logits.ndim != 3 or tokens.shape != logits.shape[:2] or tokens.dtype != torch.long or not logits.requires_grad:
        return NotImplemented
    ignored = tokens.new_full((tokens.shape[0], 1), _IGNORED)
    targets = torch.cat([tokens[:, 1:], ignored], 1).reshape(-1)
    return CrossEntropy.apply(logits.reshape(-1, logits.shape[-1]), targets, _IGNORED)
