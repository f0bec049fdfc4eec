"""A minimal symmetric linear-operator protocol that every algorithm in ``landscape.linalg`` accepts."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from landscape.errors import OptionError


class LinearOperator(ABC):
    """A square operator on flat vectors of length ``n``, applied to one vector or a (k, n) block.

    Subclasses implement :meth:`_matmat`; :meth:`matvec` and :meth:`matmat` check shapes and count products,
    so every algorithm reports how many operator applications (one per column) it used.
    """

    def __init__(self, n: int, dtype: torch.dtype, device: torch.device) -> None:
        self.shape = (n, n)
        self.dtype = dtype
        self.device = torch.device(device)
        self.num_matvecs = 0

    @abstractmethod
    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        """Apply the operator to each row of the (k, n) block ``V``."""

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self._matmat(v.unsqueeze(0)).squeeze(0)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Return ``A @ v`` for a flat vector ``v`` of length n."""
        v = self._check(v, 1)
        self.num_matvecs += 1
        return self._matvec(v)

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """Return ``(A @ V.T).T`` for a (k, n) block of k vectors, one batched evaluation."""
        V = self._check(V, 2)
        self.num_matvecs += V.shape[0]
        if V.shape[0] == 0:
            return V.clone()
        return self._matmat(V)

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        return self.matvec(x) if x.ndim == 1 else self.matmat(x.T).T

    def _check(self, x: torch.Tensor, ndim: int) -> torch.Tensor:
        n = self.shape[0]
        if not isinstance(x, torch.Tensor) or x.ndim != ndim or x.shape[-1] != n:
            what = "a vector of shape (n,)" if ndim == 1 else "a block of shape (k, n)"
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise OptionError(f"expected {what} with n={n}, got {got}")
        return x.to(device=self.device, dtype=self.dtype)

    def to_scipy(self):
        """Wrap as a ``scipy.sparse.linalg.LinearOperator`` (numpy in and out, in the operator's precision)."""
        from scipy.sparse.linalg import LinearOperator as ScipyOperator

        np_dtype = torch.empty((), dtype=self.dtype).numpy().dtype

        def apply(x: np.ndarray) -> np.ndarray:
            x = np.asarray(x)
            block = torch.as_tensor(np.ascontiguousarray(x.reshape(self.shape[0], -1).T), dtype=self.dtype)
            out = self.matmat(block.to(self.device)).T.cpu().numpy()
            return out.reshape(x.shape)

        return ScipyOperator(self.shape, matvec=apply, matmat=apply, rmatvec=apply, rmatmat=apply, dtype=np_dtype)


class DenseOperator(LinearOperator):
    """An explicit symmetric matrix as an operator: for tests, small problems and as a reference."""

    def __init__(self, matrix: torch.Tensor) -> None:
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise OptionError(f"DenseOperator needs a square matrix, got shape {tuple(matrix.shape)}")
        super().__init__(matrix.shape[0], matrix.dtype, matrix.device)
        self.matrix = matrix

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return V @ self.matrix.T
