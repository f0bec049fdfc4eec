"""Seeded random probe vectors on the operator's device and dtype."""

from __future__ import annotations

from typing import Optional, Union

import torch

from landscape.errors import OptionError
from landscape.operators.base import LinearOperator

Seed = Union[None, int, torch.Generator]
DISTRIBUTIONS = ("rademacher", "gaussian")


def generator_for(op: LinearOperator, seed: Seed) -> torch.Generator:
    """A generator on the operator's device: ``seed`` may be an int, an existing generator, or None (seed 0)."""
    if isinstance(seed, torch.Generator):
        return seed
    gen = torch.Generator(device=op.device)
    gen.manual_seed(0 if seed is None else int(seed))
    return gen


def seed_value(seed: Seed) -> Optional[int]:
    """The integer seed to record in results (None when a caller-owned generator was used)."""
    if isinstance(seed, torch.Generator):
        return None
    return 0 if seed is None else int(seed)


def probes(op: LinearOperator, k: int, gen: torch.Generator, distribution: str = "rademacher") -> torch.Tensor:
    """A (k, n) block of Rademacher (±1) or standard Gaussian vectors."""
    if distribution not in DISTRIBUTIONS:
        raise OptionError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    n = op.shape[0]
    if distribution == "gaussian":
        return torch.randn(k, n, generator=gen, device=op.device, dtype=op.dtype)
    bits = torch.randint(0, 2, (k, n), generator=gen, device=op.device, dtype=torch.int8)
    return bits.to(op.dtype).mul_(2).sub_(1)
