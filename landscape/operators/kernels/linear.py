"""``F.linear`` with a direct second backward: for ``y = x Wᵀ + b`` and tangents (a, B, c) of the gradients
(gx, gW, gb), ``∂/∂gy = a Wᵀ + x Bᵀ + c`` (two accumulated matrix products), ``∂/∂x = gy B``, ``∂/∂W = gyᵀ a``.

The last two go to the same tensors as the gradients that the layer's own node (:class:`Linear`) computes in the same
backward pass, ``z W`` and ``zᵀ x`` for the cotangent ``z`` of ``y``: the backward node leaves them to it
(:class:`Deferred`), which adds them into its own products, where autograd would allocate four results and sum them
in pairs.
"""

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


Terms = tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]


class Deferred:
    """The terms ``gy B`` (of the input's gradient) and ``gyᵀ a`` (of the weight's) that the :class:`LinearGrad`
    nodes of a :class:`Linear` node leave to its backward, in one backward pass.

    The Linear node always runs after its LinearGrad nodes in a pass that runs both: a LinearGrad node takes the
    layer's output as an input (it passes it no gradient) only to have autograd order them so; and it runs whenever
    the terms are needed, as they go where its own gradients go. The terms are marked with the pass (autograd's graph
    task), so that terms left by a pass that did not need the Linear node are never taken by another."""

    __slots__ = ("task", "terms")

    def __init__(self) -> None:
        self.task: Optional[int] = None
        self.terms: list[Terms] = []

    def put(self, gy: torch.Tensor, a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> None:
        task = torch._C._current_graph_task_id()
        if task != self.task:
            self.task, self.terms = task, []
        self.terms.append((gy, a, b))

    def take(self) -> list[Terms]:
        terms = self.terms if self.task == torch._C._current_graph_task_id() else []
        self.task, self.terms = None, []
        return terms


class LinearGrad(Function):
    """(gy, x, W) ↦ (gx, gW, gb), the backward of :class:`Linear`, with its own backward in closed form: the
    derivative in ``gy`` here, those in ``x`` and ``W`` added by the Linear node (:class:`Deferred`)."""

    @staticmethod
    def forward(ctx: Any, gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, mask: tuple,
                deferred: Deferred) -> Grads:
        # y, the layer's output, is an input only for the edge that runs this node before the Linear node (Deferred)
        ctx.save_for_backward(gy, x, weight)
        ctx.deferred = deferred
        ctx.set_materialize_grads(False)
        return vjp(gy, x, weight, mask)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, a: Optional[torch.Tensor], b: Optional[torch.Tensor], c: Optional[torch.Tensor]) -> Grads:
        gy, x, weight = ctx.saved_tensors
        need_gy, need_x, need_w = ctx.needs_input_grad[:3]
        dgy = _tangent(gy, x, weight, a, b, c) if need_gy else None
        ctx.deferred.put(gy, a if need_w else None, b if need_x else None)
        return dgy, None, None, None, None, None


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
        y = F.linear(x, weight, bias)
        ctx.save_for_backward(x, weight, y)
        ctx.has_bias = bias is not None
        ctx.deferred = Deferred()
        ctx.set_materialize_grads(False)
        return y

    @staticmethod
    def backward(ctx: Any, gy: Optional[torch.Tensor]) -> Grads:
        x, weight, y = ctx.saved_tensors
        mask = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
        if gy is None:  # no gradient for the output in this pass: only what LinearGrad nodes left, if anything
            gx = gw = gb = None
        elif torch.is_grad_enabled():
            gx, gw, gb = LinearGrad.apply(gy, x, weight, y, mask, ctx.deferred)
        else:
            gx, gw, gb = vjp(gy, x, weight, mask)
        for g, a, b in ctx.deferred.take():  # what this pass's LinearGrad nodes left: g B and gᵀ a
            if mask[0] and b is not None:
                gx = _add_product(gx, g, b, x.shape)
            if mask[1] and a is not None:
                gw = _add_product(gw, _rows(g).t(), a, weight.shape)
        return gx, gw, gb


def _batched(t: torch.Tensor) -> bool:
    """Whether ``t`` is batched by a vmap (as the tangents of a batched backward are)."""
    return torch._C._functorch.is_legacy_batchedtensor(t) or torch._C._functorch.is_batchedtensor(t)


def _add_product(out: Optional[torch.Tensor], left: torch.Tensor, right: torch.Tensor,
                 shape: torch.Size) -> torch.Tensor:
    """``out + left @ right`` (``left`` taken as rows) shaped ``shape``: into ``out``, the fresh result of a
    backward, where it can be (not when that builds a graph, nor into an unbatched ``out`` from batched factors)."""
    left, right = _rows(left), _rows(right)
    if out is None:
        return (left @ right).view(shape)
    if torch.is_grad_enabled() or (not _batched(out) and (_batched(left) or _batched(right))):
        return torch.addmm(_rows(out), left, right).view(shape)
    return _rows(out).addmm_(left, right).view(shape)


def linear(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> Any:
    """``F.linear`` through :class:`Linear` for a matrix weight and something that needs a gradient (else
    NotImplemented: run as is)."""
    if weight.ndim != 2 or not any(t is not None and t.requires_grad for t in (input, weight, bias)):
        return NotImplemented
    return Linear.apply(input, weight, bias)
