"""Thick-restart Lanczos with full reorthogonalization: extreme eigenpairs of a symmetric operator."""

from __future__ import annotations

import math
import time
from typing import Optional

import numpy as np
import torch

from landscape.errors import OptionError
from landscape.linalg.operator import LinearOperator
from landscape.linalg.random import Seed, generator_for, seed_value
from landscape.progress import progress_bar
from landscape.results import EigenResult

WHICH = ("largest", "smallest", "both")


def wanted_indices(evals: np.ndarray, k: int, which: str) -> np.ndarray:
    """Indices into ascending ``evals`` of the k wanted values, in the order they are reported."""
    order = np.argsort(evals)
    k = min(k, len(evals))
    if which == "largest":
        return order[::-1][:k]
    if which == "smallest":
        return order[:k]
    top = order[::-1][: (k + 1) // 2]
    bottom = order[: k // 2]
    bottom = bottom[~np.isin(bottom, top)]
    return np.concatenate([top, bottom[::-1]])


def small_eigh(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigendecomposition of the small projected matrix through torch's LAPACK, not numpy's: numpy's BLAS threads
    spin after each call and starved torch's threads (measured: HVPs 3-4x slower inside Lanczos on 2 cores)."""
    evals, S = torch.linalg.eigh(torch.from_numpy(T))
    return evals.numpy(), S.numpy()


def orthogonalize(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Coefficients of ``w`` on the orthonormal rows of ``basis``; ``w`` is updated in place (Gram–Schmidt twice)."""
    coef = basis @ w
    w.sub_(coef @ basis)
    again = basis @ w
    w.sub_(again @ basis)
    return coef + again


def lanczos(
    op: LinearOperator,
    k: int = 1,
    *,
    which: str = "largest",
    tol: float = 1e-6,
    max_basis: Optional[int] = None,
    max_matvecs: Optional[int] = None,
    v0: Optional[torch.Tensor] = None,
    seed: Seed = 0,
    return_vectors: bool = True,
    progress: Optional[bool] = None,
) -> EigenResult:
    """The k largest (or smallest, or both ends: ⌈k/2⌉ top and ⌊k/2⌋ bottom) eigenpairs of ``op``.

    Stops when every wanted Ritz pair has ``‖Av − θv‖ ≤ tol·|θ|`` (the residual comes from the recurrence, no extra
    products), or after ``max_matvecs`` products. The basis holds at most ``max_basis`` vectors; when it is full the
    wanted Ritz vectors are kept and the iteration restarts from them (thick restart), so memory is O(n·max_basis).
    ``v0`` warm-starts from a given vector, e.g. the previous top eigenvector during training.

    A single start vector reaches one direction per eigenspace, so a repeated eigenvalue can be reported once and
    converged (as with ARPACK). On an exactly invariant subspace the iteration never stops early but continues
    from a fresh random direction; ``tol=0`` runs until the space is exhausted and finds every multiplicity.
    """
    n = op.shape[0]
    if which not in WHICH:
        raise OptionError(f"which must be one of {WHICH}, got {which!r}")
    if not 1 <= k <= n:
        raise OptionError(f"k must be between 1 and the dimension {n}, got {k}")
    if tol < 0:
        raise OptionError(f"tol must be non-negative, got {tol}")
    m = min(n, max_basis if max_basis is not None else max(40, 3 * k))
    if m < min(n, k + 2):
        raise OptionError(f"max_basis must be at least k + 2 = {k + 2} (or the dimension), got {max_basis}")
    budget = max_matvecs if max_matvecs is not None else max(20 * m, 200)
    start = time.perf_counter()
    gen = generator_for(op, seed)
    eps = torch.finfo(op.dtype).eps

    basis = torch.empty(m + 1, n, dtype=op.dtype, device=op.device)
    T = np.zeros((m + 1, m + 1))
    if v0 is None:
        v = torch.randn(n, generator=gen, device=op.device, dtype=op.dtype)
    else:
        v = op._check(v0.reshape(-1), 1).clone()
    basis[0] = v / v.norm()

    j, used, restarts, history = 0, 0, 0, []
    bar = progress_bar(budget, f"lanczos top-{k}" if which == "largest" else f"lanczos {which}-{k}", progress)
    while True:
        w = op.matvec(basis[j])
        used += 1
        bar.update(1)
        coef = orthogonalize(w, basis[: j + 1]).double().cpu().numpy()
        T[: j + 1, j] = coef
        T[j, : j + 1] = coef
        beta = float(w.norm())
        evals, S = small_eigh(T[: j + 1, : j + 1])
        idx = wanted_indices(evals, k, which)
        scale = max(float(np.abs(evals).max()), np.finfo(np.float64).tiny)
        res = np.abs(beta * S[j, idx])
        rel = res / np.maximum(np.abs(evals[idx]), math.sqrt(eps) * scale)
        history.append(float(rel.max()))
        bar.set_postfix(residual=f"{history[-1]:.1e}")
        exhausted = j + 1 == n
        # On an invariant subspace every Ritz residual is zero, yet eigenvalues of higher multiplicity (or outside
        # the start vector's reach) may be missing: never stop there, continue from a fresh direction instead.
        invariant = beta <= eps * scale * 10
        if (len(idx) == k and np.all(rel <= tol) and not invariant) or used >= budget or exhausted:
            break
        if invariant:
            w = torch.randn(n, generator=gen, device=op.device, dtype=op.dtype)
            orthogonalize(w, basis[: j + 1])
            beta_next = 0.0
            w = w / w.norm()
        else:
            beta_next = beta
            w = w / beta
        if j + 1 < m:
            basis[j + 1] = w
            j += 1
            continue
        # Thick restart: keep the wanted Ritz vectors plus some extra, then the residual direction.
        keep = min(m - 1, k + max(1, (m - k) // 2))
        kidx = wanted_indices(evals, keep, which)
        Y = torch.as_tensor(S[:, kidx].T.copy(), dtype=op.dtype, device=op.device)
        basis[:keep] = Y @ basis[: j + 1]
        basis[keep] = w
        coupling = beta_next * S[j, kidx]
        T[:] = 0.0
        T[np.arange(keep), np.arange(keep)] = evals[kidx]
        T[keep, :keep] = coupling
        T[:keep, keep] = coupling
        j = keep
        restarts += 1
    bar.close()

    vectors = None
    if return_vectors:
        Y = torch.as_tensor(S[:, idx].T.copy(), dtype=op.dtype, device=op.device)
        vectors = Y @ basis[: j + 1]
    return EigenResult(
        values=evals[idx].copy(),
        residuals=res,
        converged=rel <= tol,
        vectors=vectors,
        method="lanczos",
        which=which,
        num_matvecs=used,
        tol=tol,
        seed=seed_value(seed) if v0 is None else None,
        seconds=time.perf_counter() - start,
        restarts=restarts,
        residual_history=np.asarray(history),
    )
