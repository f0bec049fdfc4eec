"""Operator-agnostic algorithms: each takes a symmetric LinearOperator and returns a frozen result."""

from landscape.linalg.density import spectral_density
from landscape.linalg.diagonal import diagonal
from landscape.linalg.lanczos import lanczos
from landscape.linalg.power import power_iteration
from landscape.linalg.results import DensityResult, DiagonalResult, EigenResult, JacobianResult, TraceResult
from landscape.linalg.trace import hutchinson, hutchpp, krylov_hutchinson, trace

__all__ = [
    "lanczos",
    "power_iteration",
    "spectral_density",
    "trace",
    "hutchinson",
    "hutchpp",
    "krylov_hutchinson",
    "diagonal",
    "EigenResult",
    "TraceResult",
    "DensityResult",
    "DiagonalResult",
    "JacobianResult",
]
