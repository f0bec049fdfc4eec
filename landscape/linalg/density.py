"""Spectral density by stochastic Lanczos quadrature, all probes advancing in lockstep as one block."""

from __future__ import annotations

import math
import time
from typing import Optional

import numpy as np
import torch

from landscape.errors import OptionError
from landscape.linalg.operator import LinearOperator
from landscape.linalg.random import Seed, generator_for, probes, seed_value
from landscape.progress import progress_bar
from landscape.results import DensityResult


def lanczos_tridiagonal(
    op: LinearOperator,
    start: torch.Tensor,
    num_steps: int,
    *,
    reorthogonalize: bool = True,
    progress: Optional[bool] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run ``num_steps`` Lanczos steps from each row of the (P, n) ``start`` block in lockstep.

    Returns ``alpha`` (P, m), ``beta`` (P, m − 1) and ``sizes`` (P,): the tridiagonal of each probe, cut where its
    Krylov space was exhausted (β ≈ 0). Reorthogonalization against each probe's own basis keeps the quadrature
    exact in floating point at O(m·P·n) memory; without it memory is O(P·n) and duplicate Ritz values may appear.
    """
    P, n = start.shape
    m = num_steps
    alpha = np.zeros((P, m))
    beta = np.zeros((P, max(m - 1, 0)))
    sizes = np.full(P, m)
    active = torch.ones(P, dtype=torch.bool, device=op.device)
    V = start / start.norm(dim=1, keepdim=True)
    V_prev = torch.zeros_like(V)
    b_prev = torch.zeros(P, dtype=op.dtype, device=op.device)
    basis = torch.empty(P, m, n, dtype=op.dtype, device=op.device) if reorthogonalize else None
    threshold = math.sqrt(torch.finfo(op.dtype).eps)
    scale = 0.0
    bar = progress_bar(m * P, f"lanczos quadrature ({P} probes)", progress)
    for j in range(m):
        if basis is not None:
            basis[:, j] = V
        W = torch.zeros_like(V)
        rows = active.nonzero().squeeze(1)
        W[rows] = op.matmat(V[rows])
        bar.update(len(rows))
        a = (W * V).sum(dim=1)
        W.sub_(a[:, None] * V).sub_(b_prev[:, None] * V_prev)
        if basis is not None:
            # One full pass after the three-term recurrence (which already removed the two largest components)
            # keeps the basis orthogonal to working precision; each probe against its own (P, j + 1, n) basis.
            previous = basis[:, : j + 1]
            coef = torch.bmm(previous, W.unsqueeze(2))
            W.sub_(torch.bmm(coef.transpose(1, 2), previous).squeeze(1))
        b = W.norm(dim=1)
        alpha[:, j] = a.double().cpu().numpy()
        if j == m - 1:
            break
        b_np = b.double().cpu().numpy()
        scale = max(scale, float(np.abs(alpha[:, j]).max()), float(b_np.max()))
        ended = active.cpu().numpy() & (b_np <= threshold * scale)
        sizes[ended] = j + 1
        active &= torch.as_tensor(~ended, device=op.device)
        beta[:, j] = np.where(active.cpu().numpy(), b_np, 0.0)
        safe = torch.where(active, b, torch.ones_like(b))
        V_prev, V = V, torch.where(active[:, None], W / safe[:, None], torch.zeros_like(W))
        b_prev = torch.where(active, b, torch.zeros_like(b))
        if not bool(active.any()):
            break
    bar.close()
    return alpha, beta, sizes


def gaussian_mixture(
    nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float, cutoff: float = 10.0
) -> np.ndarray:
    """(1/P) Σ_p Σ_k w_pk N(t; θ_pk, σ²) on an evenly spaced ``grid``.

    Each Gaussian is evaluated only within ``cutoff``·σ of its node (beyond it the kernel is below 2e-22 of its
    peak), so the cost is O(nodes · window) rather than O(nodes · grid).
    """
    finite = np.isfinite(nodes) & (weights > 0)
    theta, tau = nodes[finite], weights[finite]
    step = grid[1] - grid[0]
    half = min(int(np.ceil(cutoff * sigma / step)), len(grid))
    offsets = np.arange(-half, half + 1)
    centre = np.rint((theta - grid[0]) / step).astype(np.int64)
    index = centre[:, None] + offsets[None, :]
    inside = (index >= 0) & (index < len(grid))
    index = np.clip(index, 0, len(grid) - 1)
    values = tau[:, None] * np.exp(-0.5 * ((grid[index] - theta[:, None]) / sigma) ** 2) * inside
    density = np.bincount(index.ravel(), weights=values.ravel(), minlength=len(grid))
    return density / (nodes.shape[0] * sigma * math.sqrt(2 * math.pi))


def spectral_density(
    op: LinearOperator,
    *,
    num_probes: int = 10,
    num_steps: int = 80,
    seed: Seed = 0,
    distribution: str = "rademacher",
    reorthogonalize: bool = True,
    grid_points: int = 10_000,
    sigma: Optional[float] = None,
    progress: Optional[bool] = None,
) -> DensityResult:
    """Estimate the eigenvalue density of ``op`` from ``num_probes`` random probes × ``num_steps`` Lanczos steps.

    Each probe's tridiagonal T = Y diag(θ) Yᵀ gives nodes θ and weights τ = Y₁ₖ²; the density is their Gaussian
    broadening with variance ``sigma²`` (default 1e-5·max(1, λmax − λmin)) on a grid over the nodes' range.
    """
    n = op.shape[0]
    if num_probes < 1 or num_steps < 1:
        raise OptionError(f"num_probes and num_steps must be positive, got {num_probes} and {num_steps}")
    if grid_points < 2:
        raise OptionError(f"grid_points must be at least 2, got {grid_points}")
    start_time = time.perf_counter()
    gen = generator_for(op, seed)
    steps = min(num_steps, n)
    before = op.num_matvecs
    start = probes(op, num_probes, gen, distribution)
    alpha, beta, sizes = lanczos_tridiagonal(op, start, steps, reorthogonalize=reorthogonalize, progress=progress)
    nodes = np.full((num_probes, steps), np.nan)
    weights = np.zeros((num_probes, steps))
    for p in range(num_probes):
        s = sizes[p]
        T = np.diag(alpha[p, :s]) + np.diag(beta[p, : s - 1], 1) + np.diag(beta[p, : s - 1], -1)
        theta, Y = np.linalg.eigh(T)
        nodes[p, :s] = theta
        weights[p, :s] = Y[0] ** 2
    lo, hi = float(np.nanmin(nodes)), float(np.nanmax(nodes))
    width = hi - lo
    if sigma is None:
        sigma = math.sqrt(1e-5 * max(1.0, width))
    margin = 0.02 * width + 5 * sigma
    grid = np.linspace(lo - margin, hi + margin, grid_points)
    density = gaussian_mixture(nodes, weights, grid, sigma)
    return DensityResult(
        grid=grid,
        density=density,
        nodes=nodes,
        weights=weights,
        sigma=float(sigma),
        num_probes=num_probes,
        num_steps=steps,
        reorthogonalize=reorthogonalize,
        num_matvecs=op.num_matvecs - before,
        seed=seed_value(seed),
        seconds=time.perf_counter() - start_time,
        dimension=n,
    )
