"""landscape: loss-landscape analysis for PyTorch — Hessian spectra, traces and spectral densities, matrix-free."""

from landscape.curvature import hessian_density, hessian_eigen, hessian_trace
from landscape.errors import DataError, LandscapeError, LossError, OptionError, ParameterError
from landscape.linalg import (
    DensityResult,
    DiagonalResult,
    EigenResult,
    TraceResult,
    diagonal,
    hutchinson,
    hutchpp,
    krylov_hutchinson,
    lanczos,
    power_iteration,
    spectral_density,
    trace,
)
from landscape.operators import DenseOperator, HessianOperator, LinearOperator

__version__ = "0.1.0"

__all__ = [
    # one-call curvature
    "hessian_eigen",
    "hessian_trace",
    "hessian_density",
    # operators
    "LinearOperator",
    "DenseOperator",
    "HessianOperator",
    # algorithms
    "lanczos",
    "power_iteration",
    "spectral_density",
    "trace",
    "hutchinson",
    "hutchpp",
    "krylov_hutchinson",
    "diagonal",
    # results
    "EigenResult",
    "TraceResult",
    "DensityResult",
    "DiagonalResult",
    # errors
    "LandscapeError",
    "DataError",
    "LossError",
    "OptionError",
    "ParameterError",
]
