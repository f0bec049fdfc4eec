"""Stochastic estimate of the diagonal of a symmetric operator."""

from __future__ import annotations

import math
import time
from typing import Optional

import torch

from landscape.errors import OptionError
from landscape.linalg.blocks import default_block_size
from landscape.linalg.random import Seed, generator_for, probes, seed_value
from landscape.linalg.results import DiagonalResult
from landscape.operators.base import LinearOperator


def diagonal(
    op: LinearOperator,
    num_matvecs: int = 100,
    *,
    seed: Seed = 0,
    block_size: Optional[int] = None,
) -> DiagonalResult:
    """diag(A) ≈ mean of z ⊙ Az over Rademacher probes z; exact for a diagonal A. Memory stays O(n·block)."""
    if num_matvecs < 1:
        raise OptionError(f"diagonal needs at least 1 matvec, got num_matvecs={num_matvecs}")
    start = time.perf_counter()
    gen = generator_for(op, seed)
    n = op.shape[0]
    total = torch.zeros(n, dtype=op.dtype, device=op.device)
    squares = torch.zeros(n, dtype=op.dtype, device=op.device)
    size = default_block_size(n, num_matvecs, block_size)
    done = 0
    while done < num_matvecs:
        Z = probes(op, min(size, num_matvecs - done), gen)
        samples = Z * op.matmat(Z)
        total += samples.sum(dim=0)
        squares += samples.square().sum(dim=0)
        done += Z.shape[0]
    mean = total / num_matvecs
    if num_matvecs > 1:
        var = (squares - num_matvecs * mean.square()).clamp_min(0) / (num_matvecs - 1)
        stderr = var.sqrt() / math.sqrt(num_matvecs)
    else:
        stderr = torch.full_like(mean, float("nan"))
    return DiagonalResult(
        diagonal=mean,
        stderr=stderr,
        method="hutchinson",
        num_matvecs=num_matvecs,
        seed=seed_value(seed),
        seconds=time.perf_counter() - start,
    )
