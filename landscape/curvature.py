"""One-call curvature for the common case: a model, a loss and data in, a result out."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from landscape.linalg import lanczos, spectral_density, trace
from landscape.operators.hessian import HessianOperator
from landscape.operators.model import LossFn
from landscape.operators.params import ParamFilter
from landscape.results import DensityResult, EigenResult, TraceResult


def hessian_eigen(
    model: nn.Module,
    loss: LossFn,
    data: Any,
    k: int = 5,
    *,
    which: str = "largest",
    params: ParamFilter = None,
    dtype: Optional[torch.dtype] = None,
    device: Optional[torch.device | str] = None,
    tol: float = 1e-6,
    seed: int = 0,
    progress: Optional[bool] = None,
) -> EigenResult:
    """Top (or bottom) k Hessian eigenpairs of the mean loss by thick-restart Lanczos."""
    op = HessianOperator(model, loss, data, params=params, dtype=dtype, device=device)
    return lanczos(op, k, which=which, tol=tol, seed=seed, progress=progress)


def hessian_trace(
    model: nn.Module,
    loss: LossFn,
    data: Any,
    num_matvecs: int = 99,
    *,
    method: str = "krylov",
    params: ParamFilter = None,
    dtype: Optional[torch.dtype] = None,
    device: Optional[torch.device | str] = None,
    seed: int = 0,
) -> TraceResult:
    """The Hessian trace with its standard error, from ``num_matvecs`` products."""
    op = HessianOperator(model, loss, data, params=params, dtype=dtype, device=device)
    return trace(op, num_matvecs, method=method, seed=seed)


def hessian_density(
    model: nn.Module,
    loss: LossFn,
    data: Any,
    *,
    num_probes: int = 10,
    num_steps: int = 80,
    params: ParamFilter = None,
    dtype: Optional[torch.dtype] = None,
    device: Optional[torch.device | str] = None,
    seed: int = 0,
    progress: Optional[bool] = None,
) -> DensityResult:
    """The Hessian's spectral density by stochastic Lanczos quadrature."""
    op = HessianOperator(model, loss, data, params=params, dtype=dtype, device=device)
    return spectral_density(op, num_probes=num_probes, num_steps=num_steps, seed=seed, progress=progress)
