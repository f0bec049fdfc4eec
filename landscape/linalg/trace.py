"""Stochastic trace estimators: Hutchinson, Hutch++, and Hutchinson deflated by a block Krylov space."""

from __future__ import annotations

import math
import time
from typing import Optional

import torch

from landscape.errors import OptionError
from landscape.linalg.blocks import apply_in_blocks, orthonormal_rows, project_out
from landscape.linalg.operator import LinearOperator
from landscape.linalg.random import Seed, generator_for, probes, seed_value
from landscape.progress import progress_bar
from landscape.results import TraceResult

METHODS = ("krylov", "hutch++", "hutchinson")


def _result(exact: float, samples: torch.Tensor, method: str, op: LinearOperator, used: int, seed: Seed,
            start: float) -> TraceResult:
    s = samples.double().cpu().numpy()
    stderr = float(s.std(ddof=1) / math.sqrt(len(s))) if len(s) > 1 else (0.0 if len(s) == 0 else float("nan"))
    return TraceResult(
        estimate=exact + (float(s.mean()) if len(s) else 0.0),
        stderr=stderr,
        samples=s,
        exact_part=exact,
        method=method,
        num_matvecs=used,
        seed=seed_value(seed),
        seconds=time.perf_counter() - start,
        dimension=op.shape[0],
    )


def _check_budget(num_matvecs: int, least: int, method: str) -> None:
    if num_matvecs < least:
        raise OptionError(f"{method} needs at least {least} matvecs, got num_matvecs={num_matvecs}")


def hutchinson(
    op: LinearOperator,
    num_matvecs: int = 99,
    *,
    seed: Seed = 0,
    distribution: str = "rademacher",
    block_size: Optional[int] = None,
) -> TraceResult:
    """tr(A) ≈ mean of zᵀAz over ``num_matvecs`` random probes; exact for diagonal A with Rademacher probes."""
    _check_budget(num_matvecs, 1, "hutchinson")
    start = time.perf_counter()
    gen = generator_for(op, seed)
    Z = probes(op, num_matvecs, gen, distribution)
    samples = (Z * apply_in_blocks(op, Z, block_size)).sum(dim=1)
    return _result(0.0, samples, "hutchinson", op, num_matvecs, seed, start)


def hutchpp(
    op: LinearOperator,
    num_matvecs: int = 99,
    *,
    seed: Seed = 0,
    block_size: Optional[int] = None,
) -> TraceResult:
    """Hutch++ (Meyer et al. 2021): a third of the products sketch Q = orth(AS), a third compute tr(QᵀAQ)
    exactly, and a third run Hutchinson on (I − QQᵀ)A(I − QQᵀ)."""
    _check_budget(num_matvecs, 3, "hutch++")
    start = time.perf_counter()
    gen = generator_for(op, seed)
    third = num_matvecs // 3
    S = probes(op, third, gen)
    Q = orthonormal_rows(apply_in_blocks(op, S, block_size), None, gen)
    exact = float((Q * apply_in_blocks(op, Q, block_size)).sum())
    G = project_out(probes(op, num_matvecs - 2 * third, gen), Q)
    samples = (G * apply_in_blocks(op, G, block_size)).sum(dim=1)
    return _result(exact, samples, "hutch++", op, num_matvecs, seed, start)


def krylov_hutchinson(
    op: LinearOperator,
    num_matvecs: int = 99,
    *,
    seed: Seed = 0,
    krylov_fraction: float = 0.5,
    depth: int = 12,
    block_size: Optional[int] = None,
    progress: Optional[bool] = None,
) -> TraceResult:
    """Hutchinson deflated by a block Krylov space, every product spent on an exact or a sampled part.

    A block Lanczos run (``depth`` blocks, ``krylov_fraction`` of the budget) builds an orthonormal Q spanning
    K(A, S) and yields tr(QᵀAQ) exactly from the products it already made: each product buys one exactly
    traced direction, where Hutch++ spends two on each. Krylov spaces also align with the top eigenvectors far
    better than a one-shot sketch, so the remainder (I − QQᵀ)A(I − QQᵀ), estimated by Hutchinson with the rest
    of the budget, carries less of ‖A‖_F² when the spectrum decays even slowly.
    """
    n = op.shape[0]
    _check_budget(num_matvecs, 2, "krylov trace")
    if not 0.0 < krylov_fraction < 1.0:
        raise OptionError(f"krylov_fraction must lie strictly between 0 and 1, got {krylov_fraction}")
    if depth < 1:
        raise OptionError(f"depth must be at least 1, got {depth}")
    start = time.perf_counter()
    gen = generator_for(op, seed)
    dims = min(n, max(1, round(krylov_fraction * num_matvecs)))
    width = max(1, math.ceil(dims / depth))
    bar = progress_bar(num_matvecs, "trace (krylov)", progress)
    Q = torch.empty(0, n, dtype=op.dtype, device=op.device)
    exact = 0.0
    X = probes(op, width, gen)
    while Q.shape[0] < dims:
        block = orthonormal_rows(X[: dims - Q.shape[0]], Q, gen)
        X = apply_in_blocks(op, block, block_size)
        bar.update(block.shape[0])
        exact += float((block * X).sum())
        Q = torch.cat([Q, block])
    rest = num_matvecs - Q.shape[0]
    samples = torch.empty(0, dtype=op.dtype)
    if rest > 0 and Q.shape[0] < n:
        G = project_out(probes(op, rest, gen), Q)
        samples = (G * apply_in_blocks(op, G, block_size)).sum(dim=1)
        bar.update(rest)
    bar.close()
    return _result(exact, samples, "krylov", op, Q.shape[0] + len(samples), seed, start)


def trace(
    op: LinearOperator,
    num_matvecs: int = 99,
    *,
    method: str = "krylov",
    seed: Seed = 0,
    block_size: Optional[int] = None,
    progress: Optional[bool] = None,
) -> TraceResult:
    """Estimate tr(A) with ``num_matvecs`` products by ``method`` ("krylov", "hutch++" or "hutchinson").

    A budget of at least the dimension n buys the exact trace from n unit vectors instead (method "exact"): cheaper
    than any estimate at that budget, and what small per-layer blocks such as biases get.
    """
    if method not in METHODS:
        raise OptionError(f"trace method must be one of {METHODS}, got {method!r}")
    if num_matvecs >= op.shape[0]:
        return exact_trace(op, block_size=block_size)
    if method == "krylov":
        return krylov_hutchinson(op, num_matvecs, seed=seed, block_size=block_size, progress=progress)
    if method == "hutch++":
        return hutchpp(op, num_matvecs, seed=seed, block_size=block_size)
    return hutchinson(op, num_matvecs, seed=seed, block_size=block_size)


def exact_trace(op: LinearOperator, *, block_size: Optional[int] = None) -> TraceResult:
    """tr(A) = Σ_i e_iᵀ A e_i from n products with the unit vectors: exact, no randomness."""
    start = time.perf_counter()
    n = op.shape[0]
    total = 0.0
    for first in range(0, n, 256):
        count = min(256, n - first)
        basis = torch.zeros(count, n, dtype=op.dtype, device=op.device)
        basis[:, first:first + count].fill_diagonal_(1.0)
        rows = apply_in_blocks(op, basis, block_size)
        total += float(rows[:, first:first + count].diagonal().sum())
    return _result(total, torch.empty(0, dtype=op.dtype), "exact", op, n, None, start)
