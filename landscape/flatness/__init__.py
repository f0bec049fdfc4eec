"""Flatness measures of a minimum that flatness research compares beyond the Hessian's spectrum.

:func:`sharpness` gives the loss increase L(θ+δ) − L(θ) under perturbations of size ρ: the worst case (the sharpness
SAM minimizes; Keskar et al. 2017, Foret et al. 2021), the Gaussian average (Jiang et al. 2020), each also adaptive
(Kwon et al. 2021; Andriushchenko et al. 2023), whose perturbations scale with |θ| so that rescaling a ReLU network's
layers, which changes λmax and the trace at will without changing the function (Dinh et al. 2017), leaves them
unchanged. :func:`fisher_rao_norm` and :func:`relative_flatness` are two more measures that survive rescaling
(Liang et al. 2019; Petzka et al. 2021). Every measure returns a :class:`~landscape.results.SharpnessResult`.
"""

from __future__ import annotations

import math
import time
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from landscape.devices import dtype_name
from landscape.errors import OptionError, option
from landscape.flatness.average import average_case
from landscape.flatness.norms import fisher_rao_norm, relative_flatness
from landscape.flatness.objective import DataLoss, chunks, standard_error
from landscape.flatness.worst import worst_case
from landscape.linalg.random import Seed, generator_for, seed_value
from landscape.operators.params import ParamFilter
from landscape.progress import progress_bar
from landscape.results import SharpnessResult

__all__ = ["sharpness", "fisher_rao_norm", "relative_flatness", "KINDS"]

#: The kinds of :func:`sharpness`.
KINDS = ("worst", "average")


def _check(rho: float, kind: str, steps: int, restarts: int, samples: int, chunk_size: Optional[int]) -> None:
    if kind not in KINDS:
        raise OptionError(f"{option('kind')} must be one of {', '.join(KINDS)}, got {kind!r}")
    if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho > 0):
        raise OptionError(f"{option('rho')} must be a positive number, got {rho!r}")
    for name, value in (("steps", steps), ("restarts", restarts), ("samples", samples)):
        if not isinstance(value, int) or value < 1:
            raise OptionError(f"{option(name)} must be a positive integer, got {value!r}")
    if chunk_size is not None and kind != "worst":
        raise OptionError(f"{option('chunk_size')} (m-sharpness) applies to worst-case sharpness only: the average "
                          "over chunks of the average case equals the average case of the whole data")


def sharpness(
    model: nn.Module,
    loss: Any,
    data: Any,
    *,
    rho: float,
    kind: str = "worst",
    adaptive: bool = False,
    steps: int = 10,
    restarts: int = 3,
    samples: int = 32,
    chunk_size: Optional[int] = None,
    params: ParamFilter = None,
    dtype: Optional[torch.dtype] = None,
    device: Optional[torch.device | str] = None,
    seed: Seed = 0,
    return_delta: bool = False,
    progress: Optional[bool] = None,
) -> SharpnessResult:
    """The loss increase L(θ+δ) − L(θ) of the mean loss over ``data`` under perturbations of size ``rho``.

    ``kind="worst"``: the largest increase over ‖δ‖₂ ≤ ρ (``adaptive``: δ = |θ| ⊙ u, ‖u‖₂ ≤ ρ), found by projected
    gradient ascent, ``steps`` gradients from each of ``restarts`` starts (see :mod:`landscape.flatness.worst`); with
    ``chunk_size`` m, each m-sample chunk of the data gets its own ascent and the value is the chunks' mean
    (m-sharpness, with its standard error over chunks). ``kind="average"``: the mean increase over ``samples``
    antithetic draws of δ ~ N(0, ρ²I) (``adaptive``: N(0, ρ² diag(θ²))), with its standard error.

    The parameters ``params`` (default: every trainable one) are perturbed, in ``dtype`` on ``device`` (default:
    the model's; float32 for a half-precision model); the model is not modified. ``return_delta`` keeps the worst
    δ found (on the whole data). Every random choice comes from ``seed``.
    """
    _check(rho, kind, steps, restarts, samples, chunk_size)
    start = time.perf_counter()
    generator_device = device if device is not None else next(model.parameters()).device
    generator = generator_for(torch.device(generator_device), seed)
    pieces = chunks(data, chunk_size) if chunk_size is not None else [data]
    sizes = np.array([int(piece[0].shape[0]) for piece in pieces] if chunk_size is not None else [1.0])
    total = len(pieces) * (restarts * steps if kind == "worst" else samples)
    bar = progress_bar(total, f"{kind}-case sharpness", progress, unit="gradient" if kind == "worst" else "draw")
    delta: Optional[torch.Tensor] = None
    gradients = losses = 0
    with bar:
        if kind == "average":
            objective = DataLoss(model, loss, data, params=params, dtype=dtype, device=device)
            base, values = average_case(objective, rho, adaptive=adaptive, samples=samples, generator=generator,
                                        tick=lambda: bar.update(1))
            value, stderr = float(np.mean(values)), standard_error(values)
            gradients, losses = objective.num_gradients, objective.num_losses
        else:
            bases, values, per_start = [], [], []
            for piece in pieces:  # one chunk's copy of the parameters at a time
                objective = DataLoss(model, loss, piece, params=params, dtype=dtype, device=device)
                base, best, found, starts = worst_case(objective, rho, adaptive=adaptive, steps=steps,
                                                       restarts=restarts, generator=generator,
                                                       tick=lambda: bar.update(1))
                bases.append(base)
                values.append(best)
                per_start.append(starts)
                delta = found
                gradients, losses = gradients + objective.num_gradients, losses + objective.num_losses
            base = float(np.average(bases, weights=sizes))
            value = float(np.average(values, weights=sizes))
            stderr = standard_error(values) if chunk_size is not None else None
            values = values if chunk_size is not None else per_start[0]
    return SharpnessResult(
        kind=kind, value=value, stderr=stderr, values=np.asarray(values, dtype=np.float64), loss=base,
        adaptive=adaptive, num_gradients=gradients, num_losses=losses, seed=seed_value(seed),
        seconds=time.perf_counter() - start, dimension=objective.dimension, dtype=dtype_name(objective.dtype), rho=float(rho),
        chunk_size=chunk_size, num_chunks=len(pieces), steps=steps if kind == "worst" else None,
        restarts=restarts if kind == "worst" else None, samples=samples if kind == "average" else None,
        delta=delta if return_delta and kind == "worst" and chunk_size is None else None,
    )
