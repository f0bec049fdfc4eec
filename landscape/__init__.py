"""landscape: loss-landscape analysis for PyTorch — Hessian spectra, traces and spectral densities, matrix-free."""

from landscape._version import __version__
from landscape.analysis import AnalysisSettings, analyze
from landscape.checkpoints import build_model, find_checkpoints, load_checkpoint, save_checkpoint
from landscape.curvature import hessian_density, hessian_eigen, hessian_trace
from landscape.data import load_data
from landscape.errors import (
    CheckpointError,
    DataError,
    LandscapeError,
    LossError,
    OptionError,
    ParameterError,
    StoreError,
)
from landscape.losses import resolve_loss
from landscape.linalg import (
    DenseOperator,
    LinearOperator,
    diagonal,
    hutchinson,
    hutchpp,
    krylov_hutchinson,
    lanczos,
    power_iteration,
    spectral_density,
    trace,
)
from landscape.flatness import fisher_rao_norm, relative_flatness, sharpness
from landscape.jacobian import jacobian_norms, lipschitz_upper_bound
from landscape.operators import (
    FisherOperator,
    GGNOperator,
    HessianOperator,
    ModelLoss,
)
from landscape.results import (
    DensityResult,
    DiagonalResult,
    EigenResult,
    JacobianResult,
    SharpnessResult,
    SurfaceResult,
    TraceResult,
)
from landscape.store import read_results, read_run
from landscape.surface import evaluate_surface, random_direction

__all__ = [
    # the main job: checkpoints, data and a loss in, results in HDF5 out
    "analyze",
    "AnalysisSettings",
    "load_checkpoint",
    "save_checkpoint",
    "find_checkpoints",
    "build_model",
    "load_data",
    "resolve_loss",
    "ModelLoss",
    "read_results",
    "read_run",
    # loss surfaces
    "random_direction",
    "evaluate_surface",
    "SurfaceResult",
    # one-call curvature
    "hessian_eigen",
    "hessian_trace",
    "hessian_density",
    # operators
    "LinearOperator",
    "DenseOperator",
    "HessianOperator",
    "GGNOperator",
    "FisherOperator",
    # sharpness and flatness measures of a minimum
    "sharpness",
    "fisher_rao_norm",
    "relative_flatness",
    # Jacobian norms and Lipschitz estimates
    "jacobian_norms",
    "lipschitz_upper_bound",
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
    "JacobianResult",
    "SharpnessResult",
    # errors
    "LandscapeError",
    "CheckpointError",
    "DataError",
    "LossError",
    "OptionError",
    "ParameterError",
    "StoreError",
]
