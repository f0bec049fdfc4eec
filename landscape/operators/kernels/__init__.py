"""Layers with cheap second derivatives, for the reverse-over-reverse Hessian product.

The reverse product differentiates a batch's gradient graph once more. autograd's generic double-backward formulas
are correct but slow for the layers that dominate real models: a convolution's computes its weight term as a
convolution with a batch-sized kernel, a batch normalisation in eval mode runs its training-mode formula, ReLU, GELU,
layer norm and cross-entropy recompute from the primal what the reused graph could keep, and attention runs the
scaling, masking and softmax steps of the math kernel again. While :class:`SecondOrderKernels` is active,
``F.conv1d/2d/3d``, ``F.linear``, eval-mode ``F.batch_norm``, ``F.layer_norm`` (over the last dimension, with weight
and bias), ``F.relu`` / ``torch.relu``, ``F.gelu``, ``F.scaled_dot_product_attention`` (no mask but the causal one,
no dropout), ``F.cross_entropy`` (class indices, mean) and the next-token loss
(:func:`~landscape.operators.next_token.next_token`, without its copy of the logits) build custom autograd nodes whose
backward is itself a node with direct second-order formulas (:mod:`.conv`, :mod:`.linear`, :mod:`.batch_norm`,
:mod:`.layer_norm`, :mod:`.activations`, :mod:`.attention`, :mod:`.cross_entropy`); every other call, and any of
these with arguments they do not cover, runs unchanged (as do the calls inside a torch function the mode hands on,
such as those of ``F.multi_head_attention_forward``). The products are exact (the same derivatives, in another order
of operations); the second backward of these nodes is not differentiable again (``once_differentiable``), which a
Hessian-vector product never needs.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from landscape.operators.kernels import activations, attention, batch_norm, conv, cross_entropy, layer_norm, linear
from landscape.operators.next_token import next_token

#: the torch functions replaced, and by what; a replacement returns NotImplemented for arguments it does not cover
REPLACEMENTS: dict[Callable[..., Any], Callable[..., Any]] = {
    F.conv1d: conv.conv, F.conv2d: conv.conv, F.conv3d: conv.conv,
    F.linear: linear.linear,
    F.batch_norm: batch_norm.batch_norm,
    F.layer_norm: layer_norm.layer_norm,
    F.relu: activations.relu, torch.relu: activations.relu,
    F.gelu: activations.gelu,
    F.cross_entropy: cross_entropy.cross_entropy,
    next_token: cross_entropy.next_token,
    F.scaled_dot_product_attention: attention.scaled_dot_product_attention,
}


class SecondOrderKernels(TorchFunctionMode):
    """Within ``with SecondOrderKernels():``, the layers of :data:`REPLACEMENTS` build nodes with cheap second
    derivatives."""

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        replacement = REPLACEMENTS.get(func)
        if replacement is not None:
            out = replacement(*args, **kwargs)
            if out is not NotImplemented:
                return out
        return func(*args, **kwargs)
