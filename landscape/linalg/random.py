"""Seeded random probe vectors on the operator's device and dtype."""

from __future__ import annotations

from typing import Optional, Union

import torch

from landscape.errors import OptionError
from landscape.linalg.operator import LinearOperator

Seed = Union[None, int, torch.Generator]
DISTRIBUTIONS = ("rademacher", "gaussian")


def generator_for(where: Union[LinearOperator, torch.device, str], seed: Seed) -> torch.Generator:
    """A generator on the device of ``where`` (an operator, or a device itself): ``seed`` may be an int, an existing
    generator (used as it is), or None (seed 0)."""
    if isinstance(seed, torch.Generator):
        return seed
    device = where.device if isinstance(where, LinearOperator) else torch.device(where)
    return torch.Generator(device=device).manual_seed(0 if seed is None else int(seed))


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
