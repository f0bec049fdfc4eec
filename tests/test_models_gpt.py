"""The built-in ``gpt`` model: shapes, parameter count, causality and the names per-block spectra rely on."""

from __future__ import annotations

import pytest
import torch

from landscape.models import BUILTIN_MODELS, gpt

TINY = dict(vocab_size=11, seq_len=6, d_model=8, n_layers=1, n_heads=2, d_ff=16)


def test_gpt_is_builtin_and_default_size_is_about_ten_million():
    assert BUILTIN_MODELS["gpt"] is gpt
    assert sum(p.numel() for p in gpt().parameters()) == 9_007_104


def test_gpt_maps_tokens_to_logits_and_is_causal():
    torch.manual_seed(0)
    model = gpt(**TINY).double().eval()
    tokens = torch.randint(0, 11, (3, 6))
    logits = model(tokens)
    assert logits.shape == (3, 6, 11) and logits.dtype == torch.float64
    for t in range(6):
        changed = tokens.clone()
        changed[:, t] = (changed[:, t] + 1) % 11
        other = model(changed)
        torch.testing.assert_close(other[:, :t], logits[:, :t], rtol=0, atol=1e-12)
        assert (other[:, t:] - logits[:, t:]).abs().amax() > 1e-6


def test_gpt_names_each_projection_and_refuses_long_sequences():
    names = {n for n, _ in gpt(**TINY).named_parameters()}
    for part in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc", "mlp.proj", "ln1", "ln2"):
        assert f"blocks.0.{part}.weight" in names
    assert {"tok_emb.weight", "pos_emb.weight", "ln_f.weight", "head.weight"} <= names
    with pytest.raises(ValueError, match="seq_len"):
        gpt(**TINY)(torch.zeros(1, 7, dtype=torch.long))
