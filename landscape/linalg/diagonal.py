"""Stochastic estimate of the diagonal of a symmetric operator."""

from __future__ import annotations

import math
import time
from typing import Optional

import torch

from landscape.errors import OptionError
from landscape.linalg.blocks import default_block_size
from landscape.linalg.operator import LinearOperator
from landscape.linalg.random import Seed, generator_for, probes, seed_value
from landscape.results import DiagonalResult


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
    mean = torch.zeros(n, dtype=op.dtype, device=op.device)
    spread = torch.zeros(n, dtype=op.dtype, device=op.device)  # sum of squared deviations from the mean
    size = default_block_size(n, num_matvecs, block_size)
    done = 0
    while done < num_matvecs:
        Z = probes(op, min(size, num_matvecs - done), gen)
        samples = Z * op.matmat(Z)
        count = samples.shape[0]
        block_mean = samples.mean(dim=0)
        delta = block_mean - mean
        # Chan et al.'s pairwise update: exact for a constant diagonal, stable in float32.
        spread += (samples - block_mean).square().sum(dim=0) + delta.square() * (done * count / (done + count))
        mean += delta * (count / (done + count))
        done += count
    if num_matvecs > 1:
        stderr = (spread / (num_matvecs - 1)).sqrt() / math.sqrt(num_matvecs)
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
