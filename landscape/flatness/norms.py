"""Two flatness measures that rescaling a ReLU network's layers leaves unchanged, computed from one parameter vector.

**Fisher-Rao norm** (Liang, Poggio, Rakhlin, Stokes 2019, "Fisher-Rao metric, geometry and complexity of neural
networks"; one of the generalization measures Jiang et al. 2020 compare): the empirical version with the data's labels,

    ‖θ‖²_fr = (1/N) Σ_i ⟨θ, ∇_θ ℓ_i(θ)⟩²,

ℓ_i the loss of sample i. Each ⟨θ, ∇ℓ_i⟩ is the derivative of ℓ_i along θ, ⟨∂ℓ_i/∂f_i, J_i θ⟩ (f_i the model's
outputs on sample i, J_i their Jacobian in θ): one forward-mode JVP of the outputs in the direction θ per batch, and
the gradient of the batch-mean loss in the outputs times the batch size, which is ∂ℓ_i/∂f_i on each sample's rows. No
per-sample gradient is formed. A function-preserving rescaling θ' = Dθ (D positive diagonal) turns ∇ℓ_i into D⁻¹∇ℓ_i,
so every ⟨θ, ∇ℓ_i⟩, and the norm, is unchanged exactly.

**Relative flatness** (Petzka, Kamp, Adilova, Sminchisescu, Boley 2021, "Relative flatness and generalization", the
trace version κ^φ_Tr): for the weight matrix W (m × d, rows w_s) of a feature layer,

    κ = Σ_{s,s'} ⟨w_s, w_s'⟩ tr H_{s,s'} = tr(W Wᵀ T),   T[s, s'] = tr H_{s,s'} = Σ_j H[(s,j), (s',j)],

H_{s,s'} = ∂²L/∂w_s∂w_s' the d × d blocks of the Hessian of the mean loss L over the data in W. Scaling W by α and
the layer that computes its input features by 1/α (a ReLU network computes the same function) scales W Wᵀ by α² and
H by 1/α²: κ is unchanged while λmax and tr H change at will (Dinh et al. 2017).
"""

from __future__ import annotations

import math
import time
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import nn
from torch.func import jvp

from landscape.devices import dtype_name
from landscape.errors import LossError, OptionError, option
from landscape.flatness.objective import DataLoss, standard_error
from landscape.linalg.blocks import default_block_size
from landscape.linalg.random import Seed, generator_for, seed_value
from landscape.operators.batches import is_single_batch
from landscape.operators.functional import ModelLoss, call_with
from landscape.operators.hessian import HessianOperator
from landscape.operators.params import ParamFilter, select_parameters
from landscape.progress import progress_bar
from landscape.results import SharpnessResult

#: The largest layer (m·d entries) whose T :func:`relative_flatness` computes exactly, one product per entry.
EXACT_LIMIT = 4096
#: Rademacher probes per estimate of T when the layer is larger than :data:`EXACT_LIMIT` (or ``probes`` is given).
DEFAULT_PROBES = 10


def fisher_rao_norm(
    model: nn.Module,
    loss: Any,
    data: Any,
    *,
    params: ParamFilter = None,
    dtype: Optional[torch.dtype] = None,
    device: Optional[torch.device | str] = None,
    progress: Optional[bool] = None,
) -> SharpnessResult:
    """The empirical Fisher-Rao norm ‖θ‖²_fr = (1/N) Σ_i ⟨θ, ∇_θ ℓ_i(θ)⟩² of the selected parameters θ (``params``,
    default every trainable one) over ``data`` with its labels (Liang et al. 2019).

    ``loss(outputs, targets)`` must be the mean over the batch's samples of a per-sample loss ℓ_i of that sample's
    outputs (``F.cross_entropy``, ``F.mse_loss``, ...): ⟨θ, ∇ℓ_i⟩ is then read off one forward-mode JVP of the outputs
    along θ and the batch size times the gradient of the loss in the outputs (see the module's docstring). Under the
    next-token loss (:func:`~landscape.operators.next_token.next_token`) a sample is a sequence and ℓ_i the mean
    cross-entropy of its T−1 predictions. A :class:`~landscape.operators.functional.ModelLoss` cannot be split into
    samples and is refused.

    The result: ``value`` the norm, ``stderr`` its standard error over the samples, ``values`` the per-sample inner
    products ⟨θ, ∇ℓ_i⟩ (signed; the norm is the mean of their squares), ``loss`` L(θ) from the same pass over the data
    (counted in ``num_gradients``, one pass). Computed in ``dtype`` on ``device`` (default: the model's; float32 for a
    half-precision model); the model is not modified.
    """
    if isinstance(loss, ModelLoss):
        raise LossError("fisher_rao_norm needs a per-sample loss loss(outputs, targets), the batch mean of one loss "
                        f"per sample; {loss!r} computes the batch's loss from the model as a whole and cannot be "
                        "split into samples")
    start = time.perf_counter()
    objective = DataLoss(model, loss, data, params=params, dtype=dtype, device=device)
    direction = objective.layout.split(objective.theta)
    total, count, products = 0.0, 0, []
    with progress_bar(_batch_count(data), "Fisher-Rao norm", progress, unit="batch") as bar:
        for batch, size in objective.batches():
            value, inner = _directional_derivatives(objective, direction, batch, size)
            total += value * size
            count += size
            products.append(inner.detach().to("cpu", torch.float64))
            bar.update(1)
    base = total / count
    inner = torch.cat(products).numpy()
    if not (math.isfinite(base) and np.isfinite(inner).all()):
        raise LossError("the loss or its derivative along θ is not finite (NaN or inf in the data or model?)")
    squares = inner**2
    return SharpnessResult(
        kind="fisher_rao", value=float(squares.mean()), stderr=standard_error(squares), values=inner, loss=base,
        adaptive=False, num_gradients=1, num_losses=0, seed=None, seconds=time.perf_counter() - start,
        dimension=objective.dimension, dtype=dtype_name(objective.dtype),
    )


def _directional_derivatives(objective: DataLoss, direction: tuple[torch.Tensor, ...], batch: Any,
                             size: int) -> tuple[float, torch.Tensor]:
    """The batch-mean loss and each sample's ⟨θ, ∇ℓ_i⟩ (a (size,) tensor): J θ by one JVP of the outputs along
    θ, dotted with size · ∂(batch mean)/∂outputs."""
    def outputs_at(*parts: torch.Tensor) -> torch.Tensor:
        return call_with(objective.model, {**objective.fixed, **dict(zip(objective.names, parts))}, batch[0])

    outputs, tangent = jvp(outputs_at, direction, direction)
    if not isinstance(outputs, torch.Tensor) or outputs.ndim == 0 or outputs.shape[0] != size:
        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise LossError(f"fisher_rao_norm needs model outputs with the batch's {size} samples along the first "
                        f"dimension, got {shape}")
    leaf = outputs.detach().requires_grad_()
    with torch.enable_grad():
        value = objective.loss(leaf, batch[1])
        if not isinstance(value, torch.Tensor) or value.ndim != 0:
            raise LossError("the loss must return a scalar (the batch mean); reduce it with .mean()")
        (gradient,) = torch.autograd.grad(value, leaf)
    return float(value.detach()), (gradient * tangent).reshape(size, -1).sum(1).mul_(size)


def relative_flatness(
    model: nn.Module,
    loss: Any,
    data: Any,
    *,
    layer: Optional[str] = None,
    probes: Optional[int] = None,
    dtype: Optional[torch.dtype] = None,
    device: Optional[torch.device | str] = None,
    seed: Seed = 0,
    progress: Optional[bool] = None,
) -> SharpnessResult:
    """Relative flatness κ = Σ_{s,s'} ⟨w_s, w_s'⟩ tr H_{s,s'} = tr(W Wᵀ T) of the weight matrix W (m × d) named
    ``layer`` (Petzka et al. 2021, κ^φ_Tr; formulas in the module's docstring).

    ``layer`` defaults to the last two-dimensional trainable parameter, the output layer acting on the penultimate
    features. T[s, s'] = Σ_j H[(s,j), (s',j)] comes from Hessian-vector products in W alone: exactly, one product per
    entry of W, when m·d ≤ :data:`EXACT_LIMIT` and ``probes`` is None; else from ``probes`` (default
    :data:`DEFAULT_PROBES`) Rademacher vectors v ∈ R^d, m products each (the matrices with v as row s'), as
    T[s, s'] ≈ v · (H E_{s'})_s, unbiased since E vvᵀ = I. The result: ``value`` κ, ``stderr`` over the probes (None
    when exact), ``values`` the per-probe estimates (or the exact value), ``num_gradients`` the Hessian-vector
    products used, ``num_losses`` one (L(θ), ``loss``), ``samples`` the probes, ``seed`` (both None when exact),
    ``dimension`` m·d. Computed in ``dtype`` on ``device``; the model is not modified.
    """
    if probes is not None and (not isinstance(probes, int) or isinstance(probes, bool) or probes < 1):
        raise OptionError(f"{option('probes')} must be a positive integer, got {probes!r}")
    start = time.perf_counter()
    name = _feature_layer(model, layer)
    op = HessianOperator(model, loss, data, params=[name], dtype=dtype, device=device)
    W = op.params[0]
    m, d = W.shape
    exact = probes is None and m * d <= EXACT_LIMIT
    if exact:
        directions: Iterator[torch.Tensor] = iter(torch.eye(d, dtype=op.dtype, device=op.device))
        count = d
    else:
        count = probes if probes is not None else DEFAULT_PROBES
        directions = _rademacher(count, d, generator_for(op, seed), op.dtype, op.device)
    gram = W @ W.T
    estimates = []
    with progress_bar(count * m, "relative flatness", progress) as bar:
        for u in directions:
            estimates.append(float((gram * _trace_blocks(op, u, m, bar.update)).sum()))
    op.release()
    objective = DataLoss(model, loss, data, params=[name], dtype=dtype, device=device)
    base = objective.value(objective.theta)
    values = np.array([sum(estimates)] if exact else estimates, dtype=np.float64)
    return SharpnessResult(
        kind="relative_flatness", value=float(values.mean()), stderr=None if exact else standard_error(values),
        values=values, loss=base, adaptive=False, num_gradients=op.num_matvecs, num_losses=1,
        seed=None if exact else seed_value(seed), seconds=time.perf_counter() - start, dimension=m * d,
        dtype=dtype_name(op.dtype), samples=None if exact else count, layer=name,
    )


def _feature_layer(model: nn.Module, layer: Optional[str]) -> str:
    """The name of the weight matrix relative flatness is of: ``layer``, else the last 2-D trainable parameter."""
    shapes = {name: p.shape for name, p in model.named_parameters()}
    if layer is None:
        matrices = [name for name in select_parameters(model) if len(shapes[name]) == 2]
        if not matrices:
            raise OptionError(f"relative flatness needs a two-dimensional weight matrix and the model has no "
                              f"trainable one; name one with {option('layer')}")
        return matrices[-1]
    if layer not in shapes:
        raise OptionError(f"{option('layer')} must name a parameter of the model, got {layer!r}; names are: "
                          f"{list(shapes)}")
    if len(shapes[layer]) != 2:
        raise OptionError(f"{option('layer')} must name a two-dimensional weight matrix (m × d), got {layer!r} of "
                          f"shape {tuple(shapes[layer])}")
    return layer


def _rademacher(count: int, d: int, generator: torch.Generator, dtype: torch.dtype,
                device: torch.device) -> Iterator[torch.Tensor]:
    """``count`` seeded Rademacher (±1) vectors of length d, one at a time."""
    for _ in range(count):
        bits = torch.randint(0, 2, (d,), generator=generator, device=device, dtype=torch.int8)
        yield bits.to(dtype).mul_(2).sub_(1)


def _trace_blocks(op: HessianOperator, u: torch.Tensor, m: int, tick: Any) -> torch.Tensor:
    """C (m × m) with C[s, s'] = u · (H E_{s'})_s, E_{s'} the matrix whose row s' is u (zero elsewhere): m products,
    in blocks that fit memory; Σ_j C over u = e_j is T, and E C = T for Rademacher u."""
    d = u.shape[0]
    C = torch.empty(m, m, dtype=op.dtype, device=op.device)
    step = default_block_size(op.shape[0], m, None)
    for first in range(0, m, step):
        rows = torch.arange(first, min(m, first + step), device=op.device)
        E = torch.zeros(len(rows), m, d, dtype=op.dtype, device=op.device)
        E[torch.arange(len(rows), device=op.device), rows] = u
        C[:, rows] = (op.matmat(E.reshape(len(rows), m * d)).reshape(len(rows), m, d) @ u).T
        tick(len(rows))
    return C


def _batch_count(data: Any) -> Optional[int]:
    """The number of batches in ``data`` where it can be told without iterating (for the progress bar)."""
    if is_single_batch(data):
        return 1
    try:
        return len(data)
    except TypeError:
        return None
