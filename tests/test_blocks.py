"""Per-block spectra (``--per-layer`` on a transformer): the blocks of a model, and each block's curvature against
the dense Hessian (double backward, float64) restricted to the block's coordinates, slices of packed parameters
included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from landscape.analysis import AnalysisSettings, curvature
from landscape.models import gpt
from landscape.operators.blocks import BlockOperator, restrict
from landscape.operators.hessian import HessianOperator
from landscape.param_blocks import KINDS, Block, Part, model_blocks
from reference import double_backward_hessian

TINY = dict(vocab_size=11, seq_len=6, d_model=8, n_layers=1, n_heads=2, d_ff=16)


def lm_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every position against its target token (the test's own loss, not the library's)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))


class PackedEncoder(nn.Module):
    """Tokens → an ``nn.TransformerEncoderLayer`` (packed ``in_proj_weight``) → logits per position."""

    def __init__(self, vocab: int = 11, d: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.layer = nn.TransformerEncoderLayer(d, 2, 12, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(self.emb(tokens)))


def spread(model: nn.Module, seed: int) -> nn.Module:
    """``model`` in float64, eval mode, with weights large enough that attention is far from uniform."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.double().eval()


@pytest.fixture(scope="module", params=["gpt", "packed"])
def case(request):
    """A tiny transformer, a batch of tokens and targets, and the dense Hessian of the mean loss (double backward)."""
    model = spread(gpt(**TINY) if request.param == "gpt" else PackedEncoder(), seed=1)
    gen = torch.Generator().manual_seed(2)
    X, y = torch.randint(0, 11, (3, 6), generator=gen), torch.randint(0, 11, (3, 6), generator=gen)
    return model, (X, y), double_backward_hessian(model, X, y, lm_loss)


def block_coordinates(model: nn.Module, block: Block) -> torch.Tensor:
    """The block's positions in the flat vector of every parameter, from a mask written with Python slicing."""
    masks = {name: torch.zeros(p.shape, dtype=torch.bool) for name, p in model.named_parameters()}
    for part in block.parts:
        index = (slice(None),) * (part.dim or 0) + (slice(part.start, part.stop) if part.dim is not None else
                                                    slice(None),)
        masks[part.param][index] = True
    return torch.cat([m.reshape(-1) for m in masks.values()]).nonzero().squeeze(1)


def test_blocks_of_a_gpt_are_the_papers_blocks():
    blocks = model_blocks(gpt(**TINY))
    assert [(b.name, b.kind) for b in blocks] == [
        ("tok_emb", "embedding"), ("pos_emb", "embedding"), ("blocks.0.ln1", "norm"), ("blocks.0.attn.q", "query"),
        ("blocks.0.attn.k", "key"), ("blocks.0.attn.v", "value"), ("blocks.0.attn.o", "output"),
        ("blocks.0.ln2", "norm"), ("blocks.0.mlp.fc", "mlp"), ("blocks.0.mlp.proj", "mlp"), ("ln_f", "norm"),
        ("head", "head")]
    assert blocks[3].params == ["blocks.0.attn.q.weight", "blocks.0.attn.q.bias"] and not blocks[3].sliced
    assert {b.kind for b in blocks} <= set(KINDS)


def test_packed_attention_is_split_into_query_key_value_rows():
    model = PackedEncoder()
    blocks = {b.name: b for b in model_blocks(model)}
    for i, (short, kind) in enumerate((("q", "query"), ("k", "key"), ("v", "value"))):
        block = blocks[f"layer.self_attn.{short}"]
        assert block.kind == kind and block.sliced and block.numel == 8 * 8 + 8
        assert block.parts == (Part("layer.self_attn.in_proj_weight", 0, 8 * i, 8 * (i + 1)),
                               Part("layer.self_attn.in_proj_bias", 0, 8 * i, 8 * (i + 1)))
        assert block.attrs(3)["slices"] == [f"[{8 * i}:{8 * (i + 1)}]"] * 2
    assert blocks["layer.self_attn.out_proj"].kind == "output"
    assert blocks["layer.linear1"].kind == blocks["layer.linear2"].kind == "mlp"
    assert blocks["layer.norm1"].kind == "norm" and blocks["emb"].kind == "embedding"
    assert blocks["head"].kind == "head"


def test_separate_key_value_sizes_keep_their_weights_and_share_the_packed_bias():
    attention = nn.MultiheadAttention(8, 2, kdim=4, vdim=6, add_bias_kv=True)
    blocks = {b.name: b for b in model_blocks(attention)}
    assert blocks["k"].parts == (Part("k_proj_weight"), Part("in_proj_bias", 0, 8, 16), Part("bias_k"))
    assert blocks["v"].kind == "value" and blocks["v"].numel == 8 * 6 + 8 + 8
    assert blocks["out_proj"].kind == "output"


@pytest.mark.parametrize("model, frozen", [
    (gpt(**TINY), "head.bias"), (PackedEncoder(), "layer.self_attn.in_proj_bias"),
    (nn.MultiheadAttention(8, 2, kdim=4, vdim=6, add_bias_kv=True), "bias_v")], ids=["gpt", "packed", "kdim"])
def test_blocks_hold_every_trainable_entry_once(model, frozen):
    model.get_parameter(frozen).requires_grad_(False)  # a frozen parameter belongs to no block
    seen = torch.cat([block_coordinates(model, b) for b in model_blocks(model)])
    trainable = torch.cat([torch.full((p.numel(),), p.requires_grad) for p in model.parameters()]).nonzero()
    assert torch.equal(seen.sort().values, trainable.squeeze(1))


def test_each_block_operator_is_the_dense_hessian_restricted_to_its_coordinates(case):
    model, batch, H = case
    for block in model_blocks(model):
        op = restrict(HessianOperator(model, lm_loss, batch, params=block.params), block, model)
        assert isinstance(op, BlockOperator) == block.sliced
        index = block_coordinates(model, block)
        assert op.shape == (block.numel, block.numel) == (len(index),) * 2
        dense = op.matmat(torch.eye(block.numel, dtype=torch.float64))
        truth = H[index][:, index]
        assert float(truth.abs().max()) > 1e-4, block.name  # a block with curvature worth comparing
        torch.testing.assert_close(dense, truth, rtol=1e-10, atol=1e-12 * float(H.abs().max()), msg=block.name)


def test_per_block_top_eigenvalues_and_traces_match_the_restricted_dense_hessian(case):
    model, batch, H = case
    settings = AnalysisSettings(metrics=("eigs", "trace"), top_k=3, tol=1e-10, trace_matvecs=200, dtype=torch.float64)
    for block in model_blocks(model):
        results = curvature(model, lm_loss, batch, settings, block=block)
        index = block_coordinates(model, block)
        sub = H[index][:, index]
        truth = torch.linalg.eigvalsh(sub)
        np.testing.assert_allclose(np.sort(results["eigen"].values), truth[-3:].numpy(), rtol=1e-7,
                                   atol=1e-9 * float(truth.abs().max()), err_msg=block.name)
        np.testing.assert_allclose(results["trace"].estimate, float(sub.trace()), rtol=1e-8,
                                   atol=1e-10 * float(H.abs().max()), err_msg=block.name)


class Logits(nn.Module):
    """A Hugging Face model's logits (its output is a ModelOutput)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens).logits


def test_gpt2_packed_c_attn_columns_are_exact_query_key_value_blocks():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=11, n_positions=6, bos_token_id=0,
                                     eos_token_id=0)
    model = spread(Logits(transformers.GPT2LMHeadModel(config)), seed=3)
    gen = torch.Generator().manual_seed(4)
    X, y = torch.randint(0, 11, (1, 6), generator=gen), torch.randint(0, 11, (1, 6), generator=gen)
    packed = ["model.transformer.h.0.attn.c_attn.weight", "model.transformer.h.0.attn.c_attn.bias"]
    H = double_backward_hessian(model, X, y, lm_loss, names=packed)
    blocks = {b.name: b for b in model_blocks(model)}
    for i, short in enumerate("qkv"):
        block = blocks[f"model.transformer.h.0.attn.c_attn.{short}"]
        assert block.parts == (Part(packed[0], 1, 8 * i, 8 * (i + 1)), Part(packed[1], 0, 8 * i, 8 * (i + 1)))
        op = restrict(HessianOperator(model, lm_loss, (X, y), params=block.params), block, model)
        index = torch.cat([torch.arange(24).view(1, 24).add(24 * torch.arange(8).view(8, 1))[:, 8 * i:8 * (i + 1)]
                           .reshape(-1), 8 * 24 + torch.arange(8 * i, 8 * (i + 1))])
        dense = op.matmat(torch.eye(block.numel, dtype=torch.float64))
        torch.testing.assert_close(dense, H[index][:, index], rtol=1e-10, atol=1e-12 * float(H.abs().max()))


def test_hugging_face_blocks_are_named_for_what_they_are():
    transformers = pytest.importorskip("transformers")
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=8, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=16,
        vocab_size=11))
    assert [(b.name.removeprefix("model.layers.0."), b.kind) for b in model_blocks(llama)] == [
        ("model.embed_tokens", "embedding"), ("self_attn.q_proj", "query"), ("self_attn.k_proj", "key"),
        ("self_attn.v_proj", "value"), ("self_attn.o_proj", "output"), ("mlp.gate_proj", "mlp"),
        ("mlp.up_proj", "mlp"), ("mlp.down_proj", "mlp"), ("input_layernorm", "norm"),
        ("post_attention_layernorm", "norm"), ("model.norm", "norm"), ("lm_head", "head")]
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(
        hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, vocab_size=11))
    kinds = {b.name.removeprefix("bert.").removeprefix("encoder.layer.0."): b.kind for b in model_blocks(bert)}
    assert kinds == {
        "embeddings.word_embeddings": "embedding", "embeddings.position_embeddings": "embedding",
        "embeddings.token_type_embeddings": "embedding", "embeddings.LayerNorm": "norm",
        "attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
        "attention.output.dense": "output", "attention.output.LayerNorm": "norm", "intermediate.dense": "mlp",
        "output.dense": "mlp", "output.LayerNorm": "norm", "pooler.dense": "other", "classifier": "head"}
