"""Frozen result records: the numbers and how they were obtained, so any result can be stored and trusted."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch


@dataclass(frozen=True)
class EigenResult:
    """Eigenpairs of a symmetric operator.

    ``values`` and ``residuals`` (``‖Av − λv‖`` per pair, as estimated by the method) are float64 arrays;
    ``vectors`` is a (k, n) tensor on the operator's device and dtype, or None when not requested.
    ``residual_history`` holds, per product, the largest relative residual among the wanted pairs.
    """

    values: np.ndarray
    residuals: np.ndarray
    converged: np.ndarray
    vectors: Optional[torch.Tensor]
    method: str
    which: str
    num_matvecs: int
    tol: float
    seed: Optional[int]
    seconds: float
    restarts: int = 0
    residual_history: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def relative_residuals(self) -> np.ndarray:
        return self.residuals / np.maximum(np.abs(self.values), np.finfo(np.float64).tiny)


@dataclass(frozen=True)
class TraceResult:
    """A stochastic trace estimate with its standard error.

    ``exact_part`` is the part computed exactly on a deflation subspace (zero for plain Hutchinson); ``samples``
    are the per-probe quadratic forms of the stochastic remainder, whose mean plus ``exact_part`` is ``estimate``.
    """

    estimate: float
    stderr: float
    samples: np.ndarray
    exact_part: float
    method: str
    num_matvecs: int
    seed: Optional[int]
    seconds: float
    dimension: int

    @property
    def normalized(self) -> float:
        """The trace divided by the dimension (the flatness measure tr(H)/n of Ahn et al.)."""
        return self.estimate / self.dimension


@dataclass(frozen=True)
class DiagonalResult:
    """A stochastic estimate of the diagonal, with the per-entry standard error."""

    diagonal: torch.Tensor
    stderr: torch.Tensor
    method: str
    num_matvecs: int
    seed: Optional[int]
    seconds: float


@dataclass(frozen=True)
class DensityResult:
    """Spectral density by stochastic Lanczos quadrature.

    ``nodes`` and ``weights`` are (probes, steps) arrays (padded with NaN nodes and zero weights where a probe's
    Krylov space was exhausted early); ``density`` is their Gaussian-broadened mixture on ``grid``.
    """

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float
    num_probes: int
    num_steps: int
    reorthogonalize: bool
    num_matvecs: int
    seed: Optional[int]
    seconds: float
    dimension: int

    @property
    def trace_estimate(self) -> float:
        """n · mean over probes of Σ τ θ: the Hutchinson estimate hidden in the quadrature."""
        return float(self.dimension * np.nansum(self.weights * np.nan_to_num(self.nodes), axis=1).mean())
