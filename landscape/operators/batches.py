"""Normalising the many ways users hand over data into a stream of (inputs, targets) batches."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch

from landscape.errors import DataError

Batch = tuple[Any, Any]


def is_single_batch(data: Any) -> bool:
    """True for a bare ``(inputs, targets)`` pair of tensors, as opposed to an iterable of such pairs."""
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(data[0], torch.Tensor)
        and isinstance(data[1], torch.Tensor)
    )


def iterate_batches(data: Any) -> Iterable[Batch]:
    """The batches of ``data``: a single ``(X, y)`` pair, a list of pairs, or any iterable such as a DataLoader."""
    if is_single_batch(data):
        return (tuple(data),)
    try:
        if len(data) == 0:
            raise DataError("the data set is empty: it yields no batch")
    except TypeError:
        pass
    return data


def batch_size(batch: Batch) -> int:
    """The number of samples in a batch, read off the first dimension of its inputs."""
    inputs = batch[0]
    if isinstance(inputs, (tuple, list)):
        inputs = inputs[0]
    if not isinstance(inputs, torch.Tensor) or inputs.ndim == 0:
        raise DataError(f"a batch must be (inputs, targets) with a batch dimension; got inputs of type {type(inputs)}")
    return int(inputs.shape[0])


def move_batch(batch: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move a batch to ``device``; floating tensors take ``dtype`` too, integer labels keep theirs."""
    if isinstance(batch, torch.Tensor):
        if batch.is_floating_point():
            return batch.to(device=device, dtype=dtype)
        return batch.to(device=device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_batch(b, device, dtype) for b in batch)
    if isinstance(batch, dict):
        return {k: move_batch(v, device, dtype) for k, v in batch.items()}
    return batch


def checked_batches(data: Any) -> Iterator[tuple[Batch, int]]:
    """Yield ``(batch, size)`` and fail clearly if the data turns out empty."""
    seen = False
    for batch in iterate_batches(data):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise DataError(f"each batch must be an (inputs, targets) pair, got {type(batch).__name__}")
        size = batch_size(batch)
        if size == 0:
            continue
        seen = True
        yield batch, size
    if not seen:
        raise DataError("the data set is empty: it yields no sample")
