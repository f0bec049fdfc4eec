"""Lipschitz estimates of a model from both sides.

- From below: the largest per-sample Jacobian spectral norm over a data set
  (:func:`landscape.jacobian.jacobian_norms`) is the Lipschitz norm of the model over the data, a lower
  bound on its global Lipschitz constant.
- From above: for a plain feed-forward net f = g_L ∘ … ∘ g_1, Lip(f) ≤ Π Lip(g_l); a linear layer's Lipschitz constant
  (in the Euclidean norm) is its spectral norm, an activation's the bound on its slope.

The bound holds for the logits and for the softmax probabilities alike: softmax is 1-Lipschitz (its Jacobian
diag(p) − ppᵀ has spectral norm at most ½), so it can only shrink the logits' constant. The spectral norms of
convolutions come from power iteration, which approaches the true norm from below; once converged (``tol``) the
product is an upper bound up to that tolerance.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.func import vjp

from landscape.errors import OptionError
from landscape.operators.functional import eval_mode

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
ONE_LIPSCHITZ = (
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Tanh, nn.Softmax, nn.Flatten, nn.Unflatten, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)
KNOWN = (nn.Linear, *CONVOLUTIONS, *MAX_POOLS, *ONE_LIPSCHITZ, nn.LeakyReLU, nn.ELU, nn.Sigmoid)
SUPPORTED = ("Linear, Conv1d/2d/3d, MaxPool1d/2d/3d, ReLU, ReLU6, Hardtanh, Tanh, LeakyReLU, ELU, Sigmoid, Softmax, "
             "Flatten, Unflatten, Dropout and Identity inside (nested) nn.Sequential")


def _pool_overlap(module: nn.Module, spatial: int) -> int:
    """The most pooling windows one input entry can fall in (1 when the windows do not overlap)."""

    def per_dim(value: Any) -> tuple[int, ...]:
        return tuple(value) if isinstance(value, (tuple, list)) else (value,) * spatial

    kernel = per_dim(module.kernel_size)
    stride = per_dim(module.stride if module.stride is not None else module.kernel_size)
    dilation = per_dim(module.dilation)
    count = 1
    for k, s, d in zip(kernel, stride, dilation):
        count *= min(k, math.ceil(((k - 1) * d + 1) / s))
    return count


def layer_spectral_norm(module: nn.Module, input_shape: Sequence[int], *, iterations: int = 100, tol: float = 1e-8,
                        seed: int = 0) -> float:
    """The spectral norm (largest singular value) of a Linear or convolution layer's linear part (no bias).

    Linear: ‖W‖₂ exactly (an SVD), whatever the input shape. Convolution: power iteration on AᵀA for the convolution
    operator A itself (the module's stride, padding and padding mode, dilation and groups; the adjoint by a VJP) on
    one input of ``input_shape`` = (C, *spatial): the norm depends on the input size, and differs from the norm of
    the reshaped kernel. Stops when the estimate changes by less than ``tol`` (relative) or after ``iterations``;
    the estimate never exceeds the true norm.
    """
    if isinstance(module, nn.Linear):
        return float(torch.linalg.matrix_norm(module.weight.detach(), 2))
    if not isinstance(module, CONVOLUTIONS):
        raise OptionError(f"layer_spectral_norm handles Linear and Conv1d/2d/3d layers, got {type(module).__name__}")
    if iterations < 1:
        raise OptionError(f"iterations must be a positive integer, got {iterations!r}")
    weight = module.weight.detach()
    shape = (1, *(int(s) for s in input_shape))
    if len(shape) != weight.ndim:
        raise OptionError(f"{type(module).__name__} needs an input shape (C, {'H, W' if weight.ndim == 4 else '...'})"
                          f" of {weight.ndim - 1} dimensions, got {tuple(input_shape)}")

    def conv(x: torch.Tensor) -> torch.Tensor:
        return module._conv_forward(x, weight, None)

    generator = torch.Generator().manual_seed(int(seed))
    v = torch.randn(shape, generator=generator, dtype=weight.dtype).to(weight.device)
    with torch.no_grad():
        _, adjoint = vjp(conv, torch.zeros_like(v))  # A is linear: its adjoint does not depend on the point
        v = v / v.norm()
        sigma = 0.0
        for _ in range(iterations):
            av = conv(v)
            estimate = float(av.norm())  # sqrt of the Rayleigh quotient vᵀAᵀAv, ‖v‖ = 1
            (w,) = adjoint(av)
            size = float(w.norm())
            if size == 0:
                return estimate
            converged = abs(estimate - sigma) <= tol * estimate
            sigma = estimate
            if converged:
                break
            v = w / size
    return sigma


def _leaves(module: nn.Module) -> Iterator[nn.Module]:
    if isinstance(module, nn.Sequential):
        for child in module:
            yield from _leaves(child)
    else:
        yield module


def _factor(module: nn.Module, input_shape: tuple[int, ...]) -> float:
    """The Lipschitz constant of one layer of a feed-forward net, for inputs of ``input_shape`` (no batch dim)."""
    if isinstance(module, (nn.Linear, *CONVOLUTIONS)):
        return layer_spectral_norm(module, input_shape)
    if isinstance(module, ONE_LIPSCHITZ):
        return 1.0
    if isinstance(module, nn.LeakyReLU):
        return max(1.0, abs(float(module.negative_slope)))
    if isinstance(module, nn.ELU):
        return max(1.0, float(module.alpha))
    if isinstance(module, nn.Sigmoid):
        return 0.25
    if isinstance(module, MAX_POOLS):
        # |max(a) − max(b)| ≤ max|a − b|, so each window adds at most the squared changes inside it
        return math.sqrt(_pool_overlap(module, len(input_shape) - 1))
    raise _unsupported(module)


def lipschitz_upper_bound(model: nn.Module, input_shape: Sequence[int]) -> float:
    """Π over the layers of their Lipschitz constants: an upper bound on the model's Lipschitz constant (ℓ2 norms).

    ``model`` is an ``nn.Sequential`` (nested allowed) of Linear/Conv layers and the activations, pools and shape
    changes listed in ``SUPPORTED`` (Sigmoid counts ¼, overlapping max pools √(windows per entry)); a single such
    layer is accepted too. Each layer's input shape is read off a dummy forward in eval mode on one zero input of
    ``input_shape`` (no batch dimension). Anything else (residual blocks, BatchNorm, attention) raises OptionError.
    The bound is for the model in eval mode (Dropout off); it bounds softmax probabilities too (softmax is
    1-Lipschitz).
    """
    leaves = list(_leaves(model))
    for leaf in leaves:  # fail on an unsupported module before any computation
        if not isinstance(leaf, KNOWN):
            raise _unsupported(leaf)
    reference = next(iter(model.parameters()), None)
    dtype = reference.dtype if reference is not None else torch.get_default_dtype()
    device = reference.device if reference is not None else torch.device("cpu")
    x = torch.zeros(1, *(int(s) for s in input_shape), dtype=dtype, device=device)
    bound = 1.0
    with torch.no_grad(), eval_mode(model):
        for leaf in leaves:
            bound *= _factor(leaf, tuple(x.shape[1:]))
            x = leaf(x)
    return bound


def _unsupported(module: nn.Module) -> OptionError:
    return OptionError(f"lipschitz_upper_bound cannot bound {type(module).__name__} ({module!r}); it handles "
                       f"{SUPPORTED}")

