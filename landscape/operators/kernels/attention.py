"""``F.scaled_dot_product_attention`` (no mask but the causal one, no dropout) with a direct second backward.

Per head, with scale ``s``: ``P = s·QKᵀ`` (causal entries masked), ``S = softmax(P)`` by rows, ``O = SV``. Its
backward for ``G = ∂O``, with ``D = GVᵀ − rowsum(S ⊙ GVᵀ)``, is ``dV = SᵀG``, ``dQ = s(S⊙D)K``, ``dK = s(S⊙D)ᵀQ``. Its
derivative, applied to tangents (a, b, c) of (dQ, dK, dV): with ``E = s(aKᵀ + Qbᵀ)``, ``Ē = E − rowsum(S ⊙ E)``,
``H = S ⊙ Ē``, ``S̄ = Ē ⊙ D + Gcᵀ`` and ``P̄ = S ⊙ (S̄ − rowsum(S ⊙ S̄))`` (the softmax's backward of ``S̄``):

* in ``G``: ``HV + Sc``; in ``V``: ``HᵀG``;
* in ``Q``: ``s((S⊙D)b + P̄K)``; in ``K``: ``s((S⊙D)ᵀa + P̄ᵀQ)``

(a constant per row of ``S̄`` drops out of ``P̄``, which is how ``−rowsum(S⊙GVᵀ)·E`` disappeared). Ten matrix products
and a few passes over the attention matrix, with ``S`` and ``s(S⊙D)`` kept from when the graph was built, where
autograd's double backward of the math kernel runs its matrix products, the softmax's double backward and the scaling
and masking steps again.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch.autograd import Function
from torch.autograd.function import once_differentiable

aten = torch.ops.aten
Grads = tuple[Optional[torch.Tensor], ...]


def _t(m: torch.Tensor) -> torch.Tensor:
    """The transpose of the last two dimensions."""
    return m.transpose(-2, -1)


def _softmax_backward_(S: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``S ⊙ (grad − rowsum(S ⊙ grad))``, in the memory of ``grad``."""
    grad.mul_(S)
    return grad.addcmul_(S, grad.sum(-1, keepdim=True), value=-1)


def vjp(G: torch.Tensor, Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, S: torch.Tensor, scale: float,
        mask: tuple[bool, bool, bool]) -> tuple[Grads, torch.Tensor]:
    """The gradients of ``<G, attention(Q, K, V)>`` in (Q, K, V), those not masked off, and ``s(S ⊙ D)``."""
    dP = _softmax_backward_(S, G @ _t(V)).mul_(scale)
    return (dP @ K if mask[0] else None, _t(dP) @ Q if mask[1] else None, _t(S) @ G if mask[2] else None), dP


def _values(*tensors: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], ...]:
    """Contiguous copies of the heads (views of the projections, which each matrix product would copy again)."""
    return tuple(t.contiguous() if t is not None else None for t in tensors)


class AttentionGrad(Function):
    """(G, Q, K, V) ↦ (dQ, dK, dV), the backward of :class:`Attention`, with its own backward in closed form."""

    @staticmethod
    def forward(ctx: Any, G: torch.Tensor, Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, S: torch.Tensor,
                values: tuple[torch.Tensor, ...], scale: float, mask: tuple[bool, bool, bool]) -> Grads:
        values = (*_values(G), *values)  # (Q, K, V): the node is built on them, its products use these copies
        grads, dP = vjp(*values, S, scale, mask)
        ctx.save_for_backward(*values, S, dP)
        ctx.scale = scale
        ctx.set_materialize_grads(False)
        return grads

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, a: Optional[torch.Tensor], b: Optional[torch.Tensor], c: Optional[torch.Tensor]) -> Grads:
        G, Q, K, V, S, dP = ctx.saved_tensors  # dP = s·(S ⊙ D)
        s = ctx.scale
        # an absent tangent is zero: the node is rarely reached without all three
        a, b, c = (t if t is not None else torch.zeros_like(like) for t, like in zip(_values(a, b, c), (Q, K, V)))
        need_g, need_q, need_k, need_v = ctx.needs_input_grad[:4]
        E = (a @ _t(K)).add_(Q @ _t(b))  # E/s
        E.sub_((S * E).sum(-1, keepdim=True))  # Ē/s
        H = (S * E).mul_(s)
        M = E.mul_(dP).addcmul_(S, G @ _t(c))  # S ⊙ S̄
        Pbar = M.addcmul_(S, M.sum(-1, keepdim=True), value=-1).mul_(s)  # s·P̄
        dG = (H @ V).add_(S @ c) if need_g else None
        dQ = (dP @ b).add_(Pbar @ K) if need_q else None
        dK = (_t(dP) @ a).add_(_t(Pbar) @ Q) if need_k else None
        dV = _t(H) @ G if need_v else None
        return dG, dQ, dK, dV, None, None, None, None


class Attention(Function):
    """Attention of (…, L, E) queries on (…, S, E) keys and (…, S, Ev) values, causal or not, whose backward is an
    :class:`AttentionGrad` node when a graph is being built."""

    @staticmethod
    def forward(ctx: Any, Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, causal: bool,
                scale: float) -> torch.Tensor:
        out, S = aten._scaled_dot_product_attention_math(Q, K, V, None, 0.0, causal, scale=scale)
        # the inputs, which the backward's node is built on, and contiguous copies for its own products
        ctx.save_for_backward(Q, K, V, S, *_values(Q, K, V))
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx: Any, G: torch.Tensor) -> Grads:
        Q, K, V, S, *values = ctx.saved_tensors
        mask = tuple(ctx.needs_input_grad[:3])
        if torch.is_grad_enabled():
            return (*AttentionGrad.apply(G, Q, K, V, S, tuple(values), ctx.scale, mask), None, None)
        return (*vjp(*_values(G), *values, S, ctx.scale, mask)[0], None, None)


def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False) -> Any:
    """``F.scaled_dot_product_attention`` through :class:`Attention` without an explicit mask, dropout or grouped
    heads, for queries, keys and values of one batch shape that need a gradient (else NotImplemented: run as is)."""
    plain = attn_mask is None and not dropout_p and not enable_gqa
    shapes = query.ndim >= 2 and query.shape[:-2] == key.shape[:-2] == value.shape[:-2] \
        and key.shape[-2] == value.shape[-2] and query.shape[-1] == key.shape[-1]
    if not (plain and shapes and any(t.requires_grad for t in (query, key, value))):
        return NotImplemented
    return Attention.apply(query, key, value, is_causal, 1 / math.sqrt(query.shape[-1]) if scale is None else scale)
