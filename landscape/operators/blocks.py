"""The curvature of one parameter block whose parts may be slices of parameters: :class:`BlockOperator`.

A block of a packed projection (the query rows of ``nn.MultiheadAttention``'s ``in_proj_weight``) is a slice of a
parameter. Its curvature matrix is the principal submatrix of the model's curvature over the parameters the block
touches, at the block's coordinates: each product embeds the block's vector into those parameters with zeros
elsewhere, applies the model operator, and keeps the block's entries. That is exact, and costs what one product over
the whole parameters costs.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from landscape.linalg.operator import LinearOperator
from landscape.param_blocks import Block


class BlockOperator(LinearOperator):
    """``P H Pᵀ``: the operator ``op`` (over flat parameters of ``shapes``, concatenated in order) restricted to the
    coordinates ``index`` of its flat vectors (the block's entries, in the block's order)."""

    def __init__(self, op: LinearOperator, index: torch.Tensor) -> None:
        super().__init__(int(index.numel()), op.dtype, op.device)
        self.op = op
        self.index = index.to(device=op.device)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        full = torch.zeros(V.shape[0], self.op.shape[0], dtype=self.dtype, device=self.device)
        full.index_copy_(1, self.index, V)
        return self.op.matmat(full).index_select(1, self.index)

    def release(self) -> None:
        """Drop what the wrapped operator caches."""
        self.op.release()


def block_index(block: Block, shapes: Sequence[torch.Size]) -> torch.Tensor:
    """The positions of ``block``'s entries in the flat vector of its parameters (``shapes``: those parameters' in
    the order of ``block.parts``), each part's slice read in row-major order."""
    flat = torch.arange(sum(s.numel() for s in shapes))
    pieces, offset = [], 0
    for part, shape in zip(block.parts, shapes):
        whole = flat[offset:offset + shape.numel()].view(shape)
        chosen = whole if part.dim is None else whole.narrow(part.dim, part.start, part.stop - part.start)
        pieces.append(chosen.reshape(-1))
        offset += shape.numel()
    return torch.cat(pieces)


def restrict(op: LinearOperator, block: Optional[Block], model: nn.Module) -> LinearOperator:
    """``op`` (built over ``block.params`` of ``model``) restricted to ``block``'s slices; ``op`` itself when the
    block holds whole parameters (or there is no block)."""
    if block is None or not block.sliced:
        return op
    named = dict(model.named_parameters())
    return BlockOperator(op, block_index(block, [named[part.param].shape for part in block.parts]))
