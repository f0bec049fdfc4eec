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


@dataclass(frozen=True)
class JacobianResult:
    """Per-sample input-output Jacobian norms over a data set (MacDonald, Valmadre, Lucey 2023).

    ``frobenius`` and ``spectral`` are (N,) float64 arrays of ``‖∂f(x_i)/∂x_i‖`` in data order, or None when that
    norm was not computed; ``f`` is the model's logits or softmax probabilities (``outputs``). ``method`` says how the
    Frobenius norm was obtained: ``"exact"`` (one VJP per output) or ``"probe"`` (``num_probes`` random VJPs with
    ``distribution`` probes, unbiased for the squared norm). The spectral norm comes from at most
    ``power_iterations`` power iterations on JᵀJ: a lower bound on each sample's largest singular value, tight once
    converged. The sample maximum of the spectral norm is a lower bound on the model's Lipschitz constant;
    ``lipschitz_upper`` (the product of the layers' spectral norms, for plain feed-forward nets) an upper bound.
    """

    frobenius: Optional[np.ndarray]
    spectral: Optional[np.ndarray]
    outputs: str
    method: str
    num_probes: int
    power_iterations: int
    lipschitz_upper: Optional[float]
    seed: Optional[int]
    seconds: float
    distribution: Optional[str] = None

    def _norms(self) -> Optional[np.ndarray]:
        return self.spectral if self.spectral is not None else self.frobenius

    @property
    def num_samples(self) -> int:
        norms = self._norms()
        return 0 if norms is None else len(norms)

    @property
    def frobenius_mean(self) -> Optional[float]:
        return None if self.frobenius is None else float(np.mean(self.frobenius))

    @property
    def frobenius_max(self) -> Optional[float]:
        return None if self.frobenius is None else float(np.max(self.frobenius))

    @property
    def spectral_mean(self) -> Optional[float]:
        return None if self.spectral is None else float(np.mean(self.spectral))

    @property
    def spectral_max(self) -> Optional[float]:
        """The largest per-sample spectral norm: the data-based lower estimate of the Lipschitz constant."""
        return None if self.spectral is None else float(np.max(self.spectral))

    @property
    def argmax(self) -> Optional[int]:
        """Index of the sample with the largest spectral norm (of the largest Frobenius norm without spectral)."""
        norms = self._norms()
        return None if norms is None or len(norms) == 0 else int(np.argmax(norms))

    def quantiles(self, q: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[str, dict[float, float]]:
        """``{"frobenius": {q: value}, "spectral": {q: value}}`` for the norms that were computed."""
        out: dict[str, dict[float, float]] = {}
        for name in ("frobenius", "spectral"):
            norms = getattr(self, name)
            if norms is not None and len(norms):
                out[name] = {float(p): float(v) for p, v in zip(q, np.quantile(norms, list(q)))}
        return out
