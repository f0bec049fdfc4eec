"""Weight matching (Ainsworth et al. 2023, "Git Re-Basin"): permute the hidden units of network B to line up with
network A's. A permutation of hidden units leaves the function unchanged, so B stays the same network, but the
straight path from A to the permuted B often crosses a much lower loss barrier than the path to B as it was.

For each hidden layer ℓ a permutation Pℓ of its units is chosen to maximize Σℓ ⟨Wℓᴬ, Pℓ Wℓᴮ Pℓ₋₁ᵀ⟩ (plus the biases'
and BatchNorm scales' and shifts' ⟨bℓᴬ, Pℓ bℓᴮ⟩), by coordinate descent: with the other permutations fixed, the best
Pℓ is a linear assignment problem (``scipy.optimize.linear_sum_assignment``) on the similarity of A's and B's units
through the layer's incoming and outgoing weights. Layers are visited in a seeded random order, sweep after sweep,
until a sweep changes nothing; a permutation is replaced only when the new one strictly increases the objective, so
the descent stops.

Supported networks (:data:`SUPPORTED`): an ``nn.Sequential`` (nested ``nn.Sequential`` are read through) of
``Linear`` and ``Conv1d/2d/3d`` layers (``groups=1``), ``BatchNorm1d/2d/3d`` after them (weight, bias, running mean
and variance are permuted with the channels), elementwise activations, dropout, pooling, and ``Flatten`` between the
last convolution and the first ``Linear`` (each channel maps to its block of flattened features). The inputs and the
outputs of the network are never permuted. Anything else (residual blocks, attention, a ``LayerNorm``, a layer with
groups) is refused with an :class:`~landscape.errors.OptionError` naming the module.

This module works on models and state dicts only (the inputs' layer): :func:`landscape.surface.run_surface` calls it
for ``landscape surface A B --directions line --align``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from landscape.errors import OptionError
from landscape.errors import option as option_name

__all__ = ["SUPPORTED", "match_permutations", "permute_model", "random_permutations", "weight_matching"]

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: modules that act on each unit (or each channel) alone, and so commute with a permutation of the units
_ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid,
    nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
#: What weight matching accepts, in words (the refusal names it).
SUPPORTED = ("nn.Sequential networks of Linear and Conv1d/2d/3d layers (groups=1), BatchNorm1d/2d/3d, elementwise "
             "activations, dropout, pooling, and Flatten before the first Linear")
_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True)
class _Layer:
    """A Linear or convolution: its state-dict keys, its output units, the BatchNorms on its output, and how many
    input features each unit of the previous layer feeds (1, or the spatial size after a Flatten)."""

    weight: str
    bias: Optional[str]
    units: int
    block: int
    norms: list[str] = field(default_factory=list)


def _leaves(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """The modules of a Sequential in the order they run, nested Sequentials read through, with their key prefix."""
    for name, child in module.named_children():
        if isinstance(child, nn.Sequential):
            yield from _leaves(child, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", child


def _refuse(what: str) -> OptionError:
    return OptionError(f"weight matching ({option_name('align')}) supports {SUPPORTED}; {what}")


def _spec(model: nn.Module) -> list[_Layer]:
    """The weight layers of ``model`` in order, with what permutes along with each one's output units."""
    if not isinstance(model, nn.Sequential):
        raise _refuse(f"this model is a {type(model).__name__}")
    layers: list[_Layer] = []
    flattened = False
    for name, module in _leaves(model):
        if isinstance(module, _WEIGHTED):
            if not isinstance(module, nn.Linear) and module.groups != 1:
                raise _refuse(f"{name} is a convolution with groups={module.groups}")
            units_in = module.in_features if isinstance(module, nn.Linear) else module.in_channels
            block = 1
            if layers:
                before = layers[-1].units
                if units_in % before or (units_in != before and not (flattened and isinstance(module, nn.Linear))):
                    raise _refuse(f"{name} takes {units_in} inputs where the layer before gives {before} units")
                block = units_in // before
            units = module.out_features if isinstance(module, nn.Linear) else module.out_channels
            layers.append(_Layer(f"{name}.weight", None if module.bias is None else f"{name}.bias", units, block))
            flattened = False
        elif isinstance(module, _NORMS):
            if layers and (flattened or module.num_features != layers[-1].units):
                raise _refuse(f"{name} normalizes {module.num_features} features, not the {layers[-1].units} "
                              "channels of the layer before")
            if layers:  # a BatchNorm on the inputs is not permuted
                layers[-1].norms.append(name)
        elif isinstance(module, nn.Flatten):
            if (module.start_dim, module.end_dim) != (1, -1):
                raise _refuse(f"{name} flattens dims {module.start_dim}..{module.end_dim}, not 1..-1")
            flattened = True
        elif not isinstance(module, _ELEMENTWISE):
            raise _refuse(f"{name} is a {type(module).__name__}")
    return layers


def _checked_specs(model_a: nn.Module, model_b: nn.Module) -> list[_Layer]:
    spec = _spec(model_a)
    shapes = [(k, tuple(v.shape)) for k, v in model_a.state_dict().items()]
    if _spec(model_b) != spec or shapes != [(k, tuple(v.shape)) for k, v in model_b.state_dict().items()]:
        raise OptionError("weight matching needs two networks of one architecture (the same layers and shapes)")
    return spec


# -- permutations of a state dict ------------------------------------------------------------------------------
def _features(perm: np.ndarray, block: int) -> np.ndarray:
    """The permutation of input features that a permutation of the units feeding them in blocks of ``block`` makes."""
    return (perm[:, None] * block + np.arange(block)).reshape(-1)


def _index(perm: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(perm, dtype=torch.long, device=like.device)


def _permuted_state(state: dict[str, torch.Tensor], spec: Sequence[_Layer], perms: Sequence[np.ndarray],
                    ) -> dict[str, torch.Tensor]:
    """A new state dict: unit j of hidden layer ℓ is unit ``perms[ℓ][j]`` of ``state``, everywhere it appears."""
    out = dict(state)
    for i, layer in enumerate(spec):
        weight = state[layer.weight]
        if i < len(perms):
            rows = _index(perms[i], weight)
            weight = weight[rows]
            for key in [layer.bias] + [f"{norm}.{t}" for norm in layer.norms for t in _NORM_TENSORS]:
                if key is not None and key in state:
                    out[key] = state[key][rows]
        if i > 0:
            weight = weight[:, _index(_features(perms[i - 1], layer.block), weight)]
        out[layer.weight] = weight
    return out


def _by_input_unit(weight: np.ndarray, units: int) -> np.ndarray:
    """A weight's incoming connections grouped per input unit: (units, everything else)."""
    return weight.reshape(weight.shape[0], units, -1).transpose(1, 0, 2).reshape(units, -1)


def _similarity(a: dict[str, np.ndarray], b: dict[str, np.ndarray], spec: Sequence[_Layer],
                perms: Sequence[np.ndarray], i: int) -> np.ndarray:
    """C[j, k]: how well B's unit k of hidden layer i matches A's unit j, the other permutations held: the inner
    product of their incoming weights (B's inputs permuted), biases and BatchNorm scales and shifts, plus of their
    outgoing weights (B's next layer's outputs permuted)."""
    layer, following = spec[i], spec[i + 1]
    wb = b[layer.weight]
    if i > 0:
        wb = wb[:, _features(perms[i - 1], layer.block)]
    c = a[layer.weight].reshape(layer.units, -1) @ wb.reshape(layer.units, -1).T
    for key in [layer.bias] + [f"{norm}.{t}" for norm in layer.norms for t in ("weight", "bias")]:
        if key is not None and key in a:
            c += np.outer(a[key], b[key])
    wb = b[following.weight]
    if i + 1 < len(perms):
        wb = wb[perms[i + 1]]
    return c + _by_input_unit(a[following.weight], layer.units) @ _by_input_unit(wb, layer.units).T


def _numpy(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().to("cpu", torch.float64).numpy() for k, v in model.state_dict().items()
            if v.is_floating_point()}


# -- the public functions --------------------------------------------------------------------------------------
def match_permutations(model_a: nn.Module, model_b: nn.Module, *, seed: int = 0, max_sweeps: int = 100,
                       ) -> list[np.ndarray]:
    """The permutations of B's hidden units that weight matching finds, one index array per hidden layer (unit j of
    the aligned B is B's unit ``perm[j]``), from the identity, visiting the layers in an order shuffled with ``seed``
    each sweep, until a sweep changes nothing (at most ``max_sweeps`` sweeps). Computed in float64 on the CPU."""
    spec = _checked_specs(model_a, model_b)
    a, b = _numpy(model_a), _numpy(model_b)
    perms = [np.arange(layer.units) for layer in spec[:-1]]
    rng = np.random.default_rng(seed)
    for _ in range(max_sweeps):
        changed = False
        for i in rng.permutation(len(perms)):
            c = _similarity(a, b, spec, perms, i)
            _, best = linear_sum_assignment(c, maximize=True)
            rows = np.arange(len(best))
            old, new = c[rows, perms[i]].sum(), c[rows, best].sum()
            if new > old + 1e-12 * max(abs(old), 1.0):
                perms[i], changed = best, True
        if not changed:
            break
    return perms


def permute_model(model: nn.Module, permutations: Sequence[np.ndarray]) -> nn.Module:
    """A copy of ``model`` with its hidden units permuted (unit j of hidden layer ℓ is the model's unit
    ``permutations[ℓ][j]``); the model itself is left as it is. The copy computes the same function."""
    spec = _spec(model)
    if [len(p) for p in permutations] != [layer.units for layer in spec[:-1]] or not all(
            np.array_equal(np.sort(p), np.arange(len(p))) for p in permutations):
        raise OptionError(f"permutations must be one permutation of 0..n-1 per hidden layer, n = "
                          f"{[layer.units for layer in spec[:-1]]}")
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(_permuted_state(model.state_dict(), spec, [np.asarray(p) for p in permutations]))
    return permuted


def random_permutations(model: nn.Module, *, seed: int = 0) -> list[np.ndarray]:
    """A random permutation of every hidden layer's units, drawn with ``seed`` (to make an equivalent network)."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(layer.units) for layer in _spec(model)[:-1]]


def weight_matching(model_a: nn.Module, model_b: nn.Module, *, seed: int = 0, max_sweeps: int = 100) -> nn.Module:
    """A copy of ``model_b`` with its hidden units permuted to line up with ``model_a``'s (see
    :func:`match_permutations`); it computes the same function as ``model_b``, which is left as it is."""
    return permute_model(model_b, match_permutations(model_a, model_b, seed=seed, max_sweeps=max_sweeps))
