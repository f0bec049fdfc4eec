"""Where a job runs: alone in one process, or as one rank of a ``torch.distributed`` process group.

A :class:`Runtime` is what the jobs (:func:`landscape.analysis.analyze`, :class:`landscape.tracking.CurvatureTracker`,
:class:`landscape.train.Trainer`) receive: this process's rank and the world size, and every step that depends on them
(this rank's shard of the data, the curvature operator over every rank's shard, the reductions of per-rank means,
the broadcast of a value from rank 0, whether this rank writes files and prints, data-parallel training). :data:`LOCAL`
is the single-process runtime, and the default: its shard is the whole data, its reductions and broadcast return
their input, and it writes; so a job runs the same code in one process and on W.

Across processes (see :mod:`landscape.operators.distributed` for the curvature products), every rank is called with
the same arguments and the whole data set, works on its shard, and gets the same numbers; rank 0 writes them.

Data-parallel training: each rank evaluates the loss on its own part of every (global) batch
(:meth:`Runtime.split_batch`); after each backward pass the returned reduction replaces the rank's gradients and loss by
the sample-weighted means over all ranks, in one ``all_reduce`` of a flat buffer. The result is the gradient of the
mean loss over the whole batch, whatever the shard sizes, so a run on W processes takes the single-process steps (up
to the order of floating-point sums), and any optimizer that reads ``.grad`` after a closure (SGD, Adam, SAM, NSO, RS,
SOFIM) runs unchanged: every rank draws the same seeded perturbations and sees the same reduced gradients. Buffers
(BatchNorm statistics) are broadcast from rank 0 after every step (:meth:`Runtime.sync_buffers`), as
``DistributedDataParallel`` does.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1), :func:`run_launched` starts the process group from the variables
torchrun sets (:func:`init_from_env`) and hands the command its :class:`Runtime`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from landscape.devices import check_device
from landscape.errors import OptionError, option
from landscape.operators.distributed import DistributedOperator, local_num_samples, rank_and_size, shard, shard_data
from landscape.operators.factory import curvature_operator, distributed_curvature_operator
from landscape.operators.model import ModelOperator

Reduction = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Runtime:
    """This process's place: rank ``rank`` of ``world_size`` processes in the process group ``group`` (None: the
    default group). One process (``world_size`` 1) needs no process group; its methods return their input."""

    rank: int = 0
    world_size: int = 1
    group: Any = None

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise OptionError(f"rank must be in [0, world_size) with world_size >= 1, got rank {self.rank} of "
                              f"{self.world_size}")

    @classmethod
    def from_group(cls, group: Any = None) -> "Runtime":
        """This process's place in ``group`` (the default process group when None; :data:`LOCAL` without one)."""
        rank, world_size = rank_and_size(group)
        return cls(rank, world_size, group)

    @property
    def distributed(self) -> bool:
        """True when several processes share the work."""
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        """True on the rank that writes files, reports and shows progress (rank 0; the only one in one process)."""
        return self.rank == 0

    def as_attrs(self) -> dict[str, Any]:
        """Provenance for the results: the world size across processes, nothing in one process."""
        return {"world_size": self.world_size} if self.distributed else {}

    # -- data and operators ----------------------------------------------------------------------------------------
    def shard(self, data: Any) -> Any:
        """This rank's part of ``data`` (see :func:`~landscape.operators.distributed.shard_data`); all of it alone."""
        return shard_data(data, self.rank, self.world_size)

    def curvature_operator(self, kind: str, model: nn.Module, loss: Any, data: Any, *,
                           params: Optional[Sequence[str]] = None, dtype: Optional[torch.dtype] = None,
                           device: Optional[str] = None, seed: int = 0,
                           compile: bool = False) -> Union[ModelOperator, DistributedOperator]:
        """The ``kind`` curvature matrix of the mean loss over all of ``data`` (see
        :func:`~landscape.operators.factory.curvature_operator`): across processes, built on this rank's shard and
        all-reduced (a :class:`~landscape.operators.distributed.DistributedOperator`; collective)."""
        options = dict(params=params, dtype=dtype, device=device, seed=seed, compile=compile)
        if not self.distributed:
            return curvature_operator(kind, model, loss, data, **options)
        return distributed_curvature_operator(kind, model, loss, data, group=self.group, **options)  # type: ignore

    # -- reductions (collective: every rank calls them alike) -------------------------------------------------------
    def weighted_mean(self, values: Sequence[float], count: int, *, device: Any = "cpu") -> list[float]:
        """The means over every rank's samples of per-rank means ``values`` over ``count`` samples each (weighted by
        the counts; one all-reduce in float64 on ``device``); ``values`` themselves in one process."""
        if not self.distributed:
            return list(values)
        sums = torch.tensor([value * count for value in values] + [float(count)], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(sums, op=torch.distributed.ReduceOp.SUM, group=self.group)
        *totals, total_count = sums.tolist()
        return [total / total_count for total in totals]

    def mean_fit(self, loss_value: float, accuracy: Optional[float], data: Any, *,
                 device: Any = "cpu") -> tuple[float, Optional[float]]:
        """The mean loss and accuracy over every rank's shard from this rank's ones over its shard ``data``
        (weighted by the shards' sample counts); unchanged in one process."""
        if not self.distributed:
            return loss_value, accuracy
        acc = float("nan") if accuracy is None else accuracy
        mean_loss, mean_acc = self.weighted_mean([loss_value, acc], local_num_samples(data), device=device)
        return mean_loss, (None if accuracy is None else mean_acc)

    def max(self, value: float, *, device: Any = "cpu") -> float:
        """The largest of every rank's ``value`` (one all-reduce in float64 on ``device``); ``value`` in one
        process."""
        if not self.distributed:
            return value
        largest = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(largest, op=torch.distributed.ReduceOp.MAX, group=self.group)
        return float(largest.item())

    def broadcast(self, value: Any, *, src: int = 0) -> Any:
        """``value`` as rank ``src`` holds it, on every rank (any picklable object); ``value`` in one process."""
        if not self.distributed:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=src, group=self.group)
        return box[0]

    # -- data-parallel training ------------------------------------------------------------------------------------
    def split_batch(self, batch: tuple[torch.Tensor, ...],
                    model: nn.Module) -> tuple[tuple[torch.Tensor, ...], Optional[Reduction]]:
        """This rank's contiguous block of ``batch``'s samples (the first ``N mod W`` ranks get one more), and the
        reduction to run after each backward pass on it: it makes the gradients (``.grad``) of ``model``'s trainable
        parameters and the loss (this rank's means over its part) the means over the whole batch, in one
        all-reduce, and returns the global loss (detached). In one process: ``batch`` itself and no reduction."""
        if not self.distributed:
            return batch, None
        total = len(batch[0])
        if total < self.world_size:
            raise OptionError(f"a batch of {total} samples cannot be split over {self.world_size} processes; "
                              f"use {option('batch_size')} of at least {self.world_size}")
        index = shard(total, self.rank, self.world_size)
        params = [p for p in model.parameters() if p.requires_grad]
        weight = (index.stop - index.start) / total
        return tuple(t[index] for t in batch), functools.partial(_mean_gradients, params, weight, self.group)

    def sync_buffers(self, model: nn.Module) -> None:
        """Every rank takes rank 0's buffers of ``model`` (running statistics would otherwise drift apart)."""
        if not self.distributed:
            return
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0, group=self.group)


#: The single-process runtime: the default of every job.
LOCAL = Runtime()


def _mean_gradients(params: Sequence[torch.Tensor], weight: float, group: Any, loss: torch.Tensor) -> torch.Tensor:
    """All-reduce ``weight`` times the gradients of ``params`` and ``loss`` (``weight``: this rank's share of the
    batch) into the whole batch's means, in place; returns the global loss (detached)."""
    grads = [p.grad for p in params]
    template = next((g for g in grads if g is not None), None)
    if template is None:
        raise OptionError("no parameter received a gradient; nothing to average across processes")
    flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).to(template.dtype)
                      for g, p in zip(grads, params)] + [loss.detach().reshape(1).to(template.dtype)])
    flat.mul_(weight)
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM, group=group)
    offset = 0
    for g, p in zip(grads, params):
        size = p.numel()
        if g is not None:
            g.copy_(flat[offset:offset + size].view_as(g))
        offset += size
    return flat[-1].to(loss.dtype)


# -- torchrun ----------------------------------------------------------------------------------------------------------

def launched_by_torchrun() -> bool:
    """True when the environment (``WORLD_SIZE`` > 1, as torchrun sets it) asks for several processes."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def init_from_env(device: Optional[str] = None) -> Optional[str]:
    """Initialise the default process group from torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR, ...).

    The backend is NCCL for a CUDA ``device`` and gloo otherwise. A CUDA device without an index becomes
    ``cuda:LOCAL_RANK`` (one GPU per rank); returns the device each rank should use.
    """
    if not torch.distributed.is_available():
        raise OptionError("several processes were launched (WORLD_SIZE > 1) but torch.distributed is not available")
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        dev = torch.device(device)
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        check_device(str(dev))  # one GPU per rank: cuda:LOCAL_RANK must exist too
        torch.cuda.set_device(dev)
        device = str(dev)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return device


def run_launched(work: Callable[[Optional[str], Runtime], int], device: Optional[str]) -> int:
    """``work(device, runtime)``: in this process with :data:`LOCAL`, or, launched by torchrun (``WORLD_SIZE`` > 1),
    inside one process group for the whole command (the device becomes each rank's own, see :func:`init_from_env`)."""
    if not launched_by_torchrun():
        return work(device, LOCAL)
    rank_device = init_from_env(device)
    try:
        return work(rank_device, Runtime.from_group())
    finally:
        torch.distributed.destroy_process_group()
