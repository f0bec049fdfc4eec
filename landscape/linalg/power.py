"""Power iteration with deflation, PyHessian's method, kept as a baseline for comparisons."""

from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch

from landscape.errors import OptionError
from landscape.linalg.operator import LinearOperator
from landscape.linalg.random import Seed, generator_for, seed_value
from landscape.progress import progress_bar
from landscape.results import EigenResult


def power_iteration(
    op: LinearOperator,
    k: int = 1,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: Seed = 0,
    return_vectors: bool = True,
    progress: Optional[bool] = None,
) -> EigenResult:
    """The k eigenpairs of largest magnitude, one at a time, each deflated against those already found.

    Each pair stops when its Rayleigh quotient changes by less than ``tol`` relative, or after ``max_iter``
    products (PyHessian's defaults: 100 and 1e-3). Converges slowly when the top two eigenvalues are close.
    """
    n = op.shape[0]
    if not 1 <= k <= n:
        raise OptionError(f"k must be between 1 and the dimension {n}, got {k}")
    if max_iter < 1:
        raise OptionError(f"max_iter must be at least 1, got {max_iter}")
    start = time.perf_counter()
    gen = generator_for(op, seed)
    found = torch.empty(0, n, dtype=op.dtype, device=op.device)
    values, residuals, converged, used = [], [], [], 0
    bar = progress_bar(k * max_iter, f"power iteration top-{k}", progress)
    for _ in range(k):
        v = torch.randn(n, generator=gen, device=op.device, dtype=op.dtype)
        value, done = None, False
        for _ in range(max_iter):
            v = v - (found @ v) @ found
            v = v / v.norm()
            Hv = op.matvec(v)
            used += 1
            bar.update(1)
            new = float(v @ Hv)
            residual = float((Hv - new * v).norm())
            if value is not None and abs(new - value) / (abs(value) + 1e-6) < tol:
                value, done = new, True
                break
            value = new
            v = Hv
        v = v - (found @ v) @ found
        v = v / v.norm()
        found = torch.cat([found, v.unsqueeze(0)])
        values.append(value)
        residuals.append(residual)
        converged.append(done)
    bar.close()
    return EigenResult(
        values=np.asarray(values),
        residuals=np.asarray(residuals),
        converged=np.asarray(converged),
        vectors=found if return_vectors else None,
        method="power",
        which="magnitude",
        num_matvecs=used,
        tol=tol,
        seed=seed_value(seed),
        seconds=time.perf_counter() - start,
    )
