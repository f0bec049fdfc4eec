"""The language-model loss: mean cross-entropy of every next-token prediction, and its accuracy.

A causal language model maps tokens (B, T) to logits (B, T, V); position t predicts token t + 1, so the last position
predicts nothing. :func:`next_token` is Hugging Face's ``labels=input_ids`` loss (logits at positions 0..T-2 against
tokens 1..T-1, the mean over all B·(T-1) predictions); token data yields ``(tokens, tokens)`` batches, so it is an
ordinary ``loss(outputs, targets)``, recognised by identity where a closed form is used (the GGN's and Fisher's
output Hessians, the accuracy).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torch.overrides import handle_torch_function, has_torch_function_variadic


def next_token(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``(1/(B(T-1))) Σ_{i,t<T-1} CE(logits[i, t], tokens[i, t+1])`` for logits (B, T, V) and int tokens (B, T).

    It takes part in torch's function overrides, as ``F.cross_entropy`` does, so that the Hessian product's kernels
    (:mod:`landscape.operators.kernels`) can compute it without copying the logits it slices."""
    if has_torch_function_variadic(logits, tokens):
        return handle_torch_function(next_token, (logits, tokens), logits, tokens)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def next_token_correct(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The sum over the B sequences of each one's accuracy over its T-1 predictions (a 0-d float tensor): divided by
    the number of sequences it is the accuracy over every predicted token, all sequences being T tokens long."""
    right = logits[:, :-1].argmax(-1) == tokens[:, 1:]
    return right.to(torch.float64).mean(1).sum()
