"""Data-parallel training over ``torch.distributed``: every rank keeps the same parameters and takes the same steps.

Each rank evaluates the loss on its own part of every (global) batch; after each backward pass
:meth:`DataParallel.reduce` replaces the rank's gradients and loss by the sample-weighted means over all ranks, in
one ``all_reduce`` of a flat buffer. The result is the gradient of the mean loss over the whole batch, whatever the
shard sizes, so a run on W processes takes the single-process steps (up to the order of floating-point sums), and
any optimizer that reads ``.grad`` after a closure (SGD, Adam, SAM, NSO, RS, SOFIM) runs unchanged: every rank draws
the same seeded perturbations and sees the same reduced gradients. Buffers (BatchNorm statistics) are broadcast from
rank 0 after every step, as ``DistributedDataParallel`` does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from landscape.errors import OptionError
from landscape.operators.distributed import rank_and_size, shard


class DataParallel:
    """This rank's share of each batch, and the gradient and loss all-reduce that makes every rank's step the same."""

    def __init__(self, model: nn.Module, *, group: Any = None) -> None:
        self.model = model
        self.group = group
        self.rank, self.world_size = rank_and_size(group)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.buffers = list(model.buffers())
        self.local_count = 0
        self.total_count = 0

    def local_part(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The contiguous block of ``batch``'s samples this rank evaluates (the first ``N mod W`` ranks get one
        more); remembers the counts that weight :meth:`reduce`."""
        total = len(batch[0])
        if total < self.world_size:
            raise OptionError(f"a batch of {total} samples cannot be split over {self.world_size} processes; "
                              f"use --batch-size of at least {self.world_size}")
        index = shard(total, self.rank, self.world_size)
        self.local_count, self.total_count = index.stop - index.start, total
        return tuple(t[index] for t in batch)

    def reduce(self, loss: torch.Tensor) -> torch.Tensor:
        """Make the gradients (``.grad``) and ``loss`` — this rank's means over its part — the means over the whole
        batch, in one all-reduce; returns the global loss (detached)."""
        weight = self.local_count / self.total_count
        grads = [p.grad for p in self.params]
        template = next((g for g in grads if g is not None), None)
        if template is None:
            raise OptionError("no parameter received a gradient; nothing to average across processes")
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).to(template.dtype)
                          for g, p in zip(grads, self.params)] + [loss.detach().reshape(1).to(template.dtype)])
        flat.mul_(weight)
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM, group=self.group)
        offset = 0
        for g, p in zip(grads, self.params):
            size = p.numel()
            if g is not None:
                g.copy_(flat[offset:offset + size].view_as(g))
            offset += size
        return flat[-1].to(loss.dtype)

    def sync_buffers(self) -> None:
        """Every rank takes rank 0's buffers (running statistics would otherwise drift apart)."""
        for buffer in self.buffers:
            torch.distributed.broadcast(buffer, src=0, group=self.group)

