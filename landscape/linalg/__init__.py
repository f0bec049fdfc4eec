"""Operator-agnostic algorithms: each takes a symmetric LinearOperator and returns a frozen result.

The protocol itself (:class:`LinearOperator`, and :class:`DenseOperator` for explicit matrices) lives in
:mod:`landscape.linalg.operator`; the result records in :mod:`landscape.results` (re-exported here as public names).
"""

from landscape.linalg.density import spectral_density
from landscape.linalg.diagonal import diagonal
from landscape.linalg.lanczos import lanczos
from landscape.linalg.operator import DenseOperator, LinearOperator
from landscape.linalg.power import power_iteration
from landscape.linalg.trace import hutchinson, hutchpp, krylov_hutchinson, trace
from landscape.results import DensityResult, DiagonalResult, EigenResult, JacobianResult, TraceResult

__all__ = [
    "LinearOperator",
    "DenseOperator",
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
