"""Curvature operators over data split across processes, with ``torch.distributed``.

Every rank holds a part (a *shard*) of the data and an ordinary per-rank operator built on it.
:class:`DistributedOperator` wraps that operator: each product computes the rank's *sum* over its own samples (its
mean times its sample count), then one ``all_reduce`` (SUM) of the (k, n) block per ``matvec``/``matmat`` call adds
the ranks' sums, and dividing by the global sample count (all-reduced once, at construction) gives the mean over all
the data. The result is the single-process operator on the whole data set, up to the order of floating-point sums.

Every rank runs the same algorithm (Lanczos, a trace estimator, SLQ) with the same seed: its random probes are drawn
locally from the same seeded generator, and the products it sees are the same reduced tensors (an all-reduce hands
every rank the same bits), so the algorithm takes the same steps and returns the same numbers *bit for bit* on every
rank. Nothing else is communicated, and no rank needs to broadcast its results: rank 0 writes them.

The code is backend-neutral: tensors stay on the wrapped operator's device, so the gloo backend serves CPU tensors
and NCCL CUDA tensors (one GPU per rank, ``cuda:LOCAL_RANK``). Launch with ``torchrun``, e.g.
``torchrun --nproc-per-node 2 -m landscape analyze ...``; :func:`landscape.distributed.init_from_env` starts the
process group from the variables torchrun sets, and :func:`landscape.operators.factory.distributed_curvature_operator`
builds the wrapped operator of a rank's shard.

Notes: every rank must apply the operator the same number of times (collective calls must match), which the shared
seed guarantees. A rank whose product fails (a non-finite loss on its shard) still takes part in that product's
all-reduce, with NaNs, so every rank raises instead of the others waiting forever. The sampled ("true") Fisher draws
labels per rank from the shared seed, so it is a different (equally valid) draw than a single-process run's.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import torch

from landscape.errors import DataError, LossError, OptionError
from landscape.linalg.operator import LinearOperator
from landscape.operators.batches import batch_size, checked_batches, is_single_batch
from landscape.operators.model import ModelOperator


# -- the process group ---------------------------------------------------------------------------------------------

def is_initialized() -> bool:
    """True when ``torch.distributed`` is available and its default process group is initialised."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_and_size(group: Any = None) -> tuple[int, int]:
    """This process's rank and the world size in ``group`` (0 and 1 without an initialised process group)."""
    if not is_initialized():
        return 0, 1
    return torch.distributed.get_rank(group), torch.distributed.get_world_size(group)


# -- sharding the data ---------------------------------------------------------------------------------------------

def shard_bounds(num_samples: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(start, stop)`` of rank's contiguous block: the first ``N mod W`` ranks get ⌈N/W⌉ samples, the others
    ⌊N/W⌋."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise OptionError(f"rank must be in [0, world_size) with world_size >= 1, got rank {rank} of {world_size}")
    if num_samples < 0:
        raise OptionError(f"num_samples must be non-negative, got {num_samples}")
    base, extra = divmod(num_samples, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard(num_samples: int, rank: int, world_size: int) -> slice:
    """The samples rank owns, as a slice: contiguous blocks that cover ``range(num_samples)`` exactly once."""
    return slice(*shard_bounds(num_samples, rank, world_size))


def _take(batch: Any, index: slice) -> Any:
    """The rows ``index`` of every tensor in a batch (nested tuples, lists and dicts are followed)."""
    if isinstance(batch, torch.Tensor):
        return batch[index]
    if isinstance(batch, (tuple, list)):
        return type(batch)(_take(b, index) for b in batch)
    if isinstance(batch, dict):
        return {k: _take(v, index) for k, v in batch.items()}
    return batch


class _EveryNthBatch:
    """The batches ``rank, rank + W, rank + 2W, ...`` of an iterable (a DataLoader), re-iterable."""

    def __init__(self, data: Any, rank: int, world_size: int) -> None:
        self.data, self.rank, self.world_size = data, rank, world_size

    def __iter__(self) -> Iterator[Any]:
        for i, batch in enumerate(self.data):
            if i % self.world_size == self.rank:
                yield batch


def shard_data(data: Any, rank: Optional[int] = None, world_size: Optional[int] = None, *, group: Any = None) -> Any:
    """Rank's part of ``data``; rank and world size default to the process group's (the whole data without one).

    - an ``(X, y)`` pair: the pair of rank's rows, :func:`shard` of the sample count;
    - a list (or tuple) of batches: the same contiguous block of samples of the concatenated stream, as a list of
      (sliced) batches, so the split does not depend on the batching;
    - any other iterable (a DataLoader): every W-th batch from the rank-th on (lazily; shards may differ by a batch).

    Every rank must own at least one sample: fewer samples than ranks is an error (raised on every rank alike).
    """
    if rank is None or world_size is None:
        default_rank, default_size = rank_and_size(group)
        rank = default_rank if rank is None else rank
        world_size = default_size if world_size is None else world_size
    if world_size == 1 and rank == 0:
        return data
    if is_single_batch(data):
        n = batch_size(data)
        _require_enough(n, world_size)
        return type(data)(_take(tuple(data), shard(n, rank, world_size)))
    if isinstance(data, (tuple, list)):
        sizes = [batch_size(b) for b in data]
        _require_enough(sum(sizes), world_size)
        start, stop = shard_bounds(sum(sizes), rank, world_size)
        part, offset = [], 0
        for batch, size in zip(data, sizes):
            lo, hi = max(start, offset), min(stop, offset + size)
            if lo < hi:
                part.append(batch if (lo, hi) == (offset, offset + size) else _take(batch, slice(lo - offset,
                                                                                             hi - offset)))
            offset += size
        return part
    shard_bounds(0, rank, world_size)  # checks rank and world size
    return _EveryNthBatch(data, rank, world_size)


def _require_enough(num_samples: int, world_size: int) -> None:
    if num_samples < world_size:
        raise DataError(f"{num_samples} samples cannot be split over {world_size} processes (each needs one)")


def local_num_samples(data: Any) -> int:
    """The number of samples in ``data`` (one pass over an iterable)."""
    if is_single_batch(data):
        return batch_size(data)
    return sum(size for _, size in checked_batches(data))


# -- the operator --------------------------------------------------------------------------------------------------

class DistributedOperator(LinearOperator):
    """The mean over every rank's samples of a per-rank curvature operator, one all-reduce per product.

    ``op`` is a :class:`~landscape.operators.model.ModelOperator` (or any operator with ``data`` and a mean
    over it) built on this rank's shard. Each ``matvec``/``matmat`` computes ``op``'s product times the rank's
    sample count, all-reduces (SUM) the (k, n) block over ``group`` and divides by the global count, so the
    operator equals the single-process one on all the data. Shape, dtype and device are ``op``'s; ``num_matvecs``
    counts columns as for any operator. Must be constructed, and applied, on every rank of ``group`` alike.
    """

    def __init__(self, op: LinearOperator, *, group: Any = None, num_samples: Optional[int] = None) -> None:
        if not is_initialized():
            raise OptionError("DistributedOperator needs an initialised torch.distributed process group "
                              "(torch.distributed.init_process_group, or launch with torchrun)")
        super().__init__(op.shape[0], op.dtype, op.device)
        self.op = op
        self.group = group
        self.local_samples = int(num_samples) if num_samples is not None else local_num_samples(op.data)
        count = torch.tensor([self.local_samples], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.SUM, group=group)
        self.num_samples = int(count.item())
        self.rank, self.world_size = rank_and_size(group)

    def _reduce(self, compute: Any, shape: tuple[int, ...]) -> torch.Tensor:
        """All-reduce ``compute() * local_samples`` and divide by the global count; a failure on any rank raises on
        every rank (the failing rank contributes NaNs to the same collective, so no rank is left waiting)."""
        failure: Optional[BaseException] = None
        try:
            local = compute().mul_(self.local_samples)
        except Exception as err:  # noqa: BLE001 - re-raised after the collective
            failure = err
            local = torch.full(shape, float("nan"), dtype=self.dtype, device=self.device)
        torch.distributed.all_reduce(local, op=torch.distributed.ReduceOp.SUM, group=self.group)
        if failure is not None:
            raise failure
        if not bool(torch.isfinite(local).all()):
            raise LossError("the loss or its curvature is not finite on another rank's shard (NaN or inf in the "
                            "data or model?)")
        return local.div_(self.num_samples)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self._reduce(lambda: self.op.matmat(V), tuple(V.shape))

    def gradient(self) -> torch.Tensor:
        """The flat gradient of the mean loss over every rank's data (one all-reduce)."""
        return self._reduce(lambda: self.op.gradient(), (self.shape[0],))

    def release(self) -> None:
        """Drop what the per-rank operator caches."""
        release = getattr(self.op, "release", None)
        if release is not None:
            release()

    def check_deterministic(self, *, seed: int = 0, rtol: Optional[float] = None) -> float:
        """As :meth:`ModelOperator.check_deterministic`, on the reduced products (collective: call on every rank)."""
        return ModelOperator.check_deterministic(self, seed=seed, rtol=rtol)  # type: ignore[arg-type]


def distributed_gradient(op: LinearOperator, *, group: Any = None) -> torch.Tensor:
    """The gradient of the mean loss over every rank's data, for a per-rank operator ``op`` (or a wrapped one)."""
    if isinstance(op, DistributedOperator):
        return op.gradient()
    return DistributedOperator(op, group=group).gradient()
