"""Block helpers shared by the estimators: bounded-memory block products and orthonormal bases."""

from __future__ import annotations

from typing import Optional

import torch

from landscape.linalg.operator import LinearOperator

BLOCK_ELEMENTS = 2**26  # default cap on the entries of one block passed to matmat (256 MiB in float32)


def default_block_size(n: int, k: int, block_size: Optional[int]) -> int:
    """Columns per ``matmat`` call: as given, else as many as fit the memory cap (at least one)."""
    if block_size is not None:
        return max(1, int(block_size))
    return max(1, min(k, BLOCK_ELEMENTS // max(n, 1)))


def apply_in_blocks(op: LinearOperator, V: torch.Tensor, block_size: Optional[int] = None) -> torch.Tensor:
    """``op.matmat(V)`` computed a bounded number of rows at a time."""
    size = default_block_size(op.shape[0], V.shape[0], block_size)
    if size >= V.shape[0]:
        return op.matmat(V)
    return torch.cat([op.matmat(V[i : i + size]) for i in range(0, V.shape[0], size)])


def project_out(X: torch.Tensor, Q: Optional[torch.Tensor]) -> torch.Tensor:
    """Remove from the rows of ``X`` their components on the orthonormal rows of ``Q`` (twice, for stability)."""
    if Q is None or Q.shape[0] == 0:
        return X
    for _ in range(2):
        X = X - (X @ Q.T) @ Q
    return X


def orthonormal_rows(X: torch.Tensor, Q: Optional[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
    """An orthonormal basis (rows) of span(X) orthogonal to the rows of ``Q``.

    Directions that vanish after projection (X nearly inside span(Q), or rank-deficient) are replaced by random
    ones, so the result always has as many rows as ``X`` when the dimension allows.
    """
    n = X.shape[1]
    taken = 0 if Q is None else Q.shape[0]
    rows = min(X.shape[0], n - taken)
    X = project_out(X[:rows], Q)
    tiny = torch.finfo(X.dtype).eps ** 0.5
    for _ in range(3):
        basis, R = torch.linalg.qr(X.T)
        weak = R.diagonal().abs() <= tiny * max(float(R.diagonal().abs().max()), 1.0)
        if not bool(weak.any()):
            break
        X = basis.T.clone()
        X[weak] = torch.randn(int(weak.sum()), n, generator=gen, device=X.device, dtype=X.dtype)
        X = project_out(X, Q)
    return project_out(basis.T, Q).contiguous() if Q is not None else basis.T.contiguous()
