"""Attention kernels that every derivative passes through, chosen with no action from the user.

``F.scaled_dot_product_attention`` picks a fused kernel (flash attention on CPU; flash, memory-efficient or cuDNN on
CUDA) whose backward is not differentiable again and which has no forward-mode formula, so a Hessian product (double
backward, or forward-over-reverse), a Gauss-Newton product (``jvp``) or a vmapped per-sample gradient fails on any
model with attention. ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` in eval mode may also take a
"fast path" (``torch._native_multi_head_attention``, a fused encoder layer) that has no derivatives at all, chosen
when no input seems to need a gradient, as under ``torch.func.jvp``.

:func:`differentiable_attention` turns both off for the code it wraps: attention runs the math kernel (plain matrix
products and a softmax, differentiable to any order in both modes, on every device) and the modules take their
ordinary path. Every evaluation of a model by an operator, an evaluator or a Jacobian norm goes through it
(:mod:`landscape.operators.functional`); plain training (first-order backward only) keeps the fused kernels.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


@contextlib.contextmanager
def differentiable_attention() -> Iterator[None]:
    """Run the wrapped code with the math attention kernel and without the multi-head-attention fast path.

    Under ``torch.compile`` the choice is made by whoever enters the context outside the compiled call (the
    compiled Hessian product does); inside, this is a no-op, so tracing sees no global state change.
    """
    if torch.compiler.is_compiling():
        yield
        return
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
