"""The next-token loss: Hugging Face's formula, its pairing checks, and every operator under it against dense truths
built by double backward (tests/reference.py), on a tiny embedding LM and on the built-in gpt (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape import DataError, HessianOperator, OptionError
from landscape.losses import check_targets, loss_name, resolve_loss
from landscape.models import gpt
from landscape.operators import ggn
from landscape.operators.evaluation import fit
from landscape.operators.ggn import FisherOperator, GGNOperator
from landscape.operators.next_token import next_token
from reference import double_backward_ggn, double_backward_hessian, per_token_gradients

V = 5


def tiny_lm(seed: int = 0) -> nn.Sequential:
    """Embedding → LayerNorm (random affine) → Linear → Tanh → Linear: (B, T) tokens to (B, T, V) logits."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Embedding(V, 4), nn.LayerNorm(4), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, V))
    with torch.no_grad():
        model[1].weight.normal_(1.0, 0.3)
        model[1].bias.normal_(0.0, 0.3)
    return model.double().eval()


def tiny_gpt(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = gpt(vocab_size=7, seq_len=5, d_model=4, n_layers=1, n_heads=2, d_ff=8).double().eval()
    with torch.no_grad():  # larger weights than GPT-2's init, so that the curvature is far from zero
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def tokens(batch: int = 3, length: int = 5, vocab: int = V, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def dense_of(op) -> torch.Tensor:
    return op.matmat(torch.eye(op.shape[0], dtype=op.dtype))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# -- the loss -------------------------------------------------------------------------------------------------


def test_next_token_is_hugging_faces_shifted_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    logits, ids = torch.randn(3, 6, 9, generator=gen, dtype=torch.float64), tokens(3, 6, 9)
    # transformers' GPT2LMHeadModel before ForCausalLMLoss: shift, flatten, nn.CrossEntropyLoss
    shift_logits, shift_labels = logits[..., :-1, :].contiguous(), ids[..., 1:].contiguous()
    hf = nn.CrossEntropyLoss()(shift_logits.view(-1, 9), shift_labels.view(-1))
    by_hand = -torch.stack([torch.log_softmax(logits[i, t], -1)[ids[i, t + 1]]
                            for i in range(3) for t in range(5)]).mean()
    torch.testing.assert_close(next_token(logits, ids), hf, rtol=1e-15, atol=0)
    torch.testing.assert_close(next_token(logits, ids), by_hand, rtol=1e-14, atol=0)


def test_next_token_equals_a_transformers_model_loss():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=13, n_positions=8, n_embd=8, n_layer=1, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = tokens(2, 8, 13)
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    torch.testing.assert_close(next_token(out.logits, ids), out.loss, rtol=1e-6, atol=0)


def test_next_token_by_name_default_and_record_name():
    assert resolve_loss("next-token") is next_token and resolve_loss("next_token") is next_token
    assert resolve_loss(None, "language-model") is next_token
    assert loss_name(next_token) == "next-token"


@pytest.mark.parametrize("logits, targets, match", [
    (torch.zeros(2, 4, V), torch.full((2, 4), V), f"found token {V} but the model's vocabulary has {V}"),
    (torch.zeros(2, 4, V), torch.full((2, 4), -1), "found token -1"),
    (torch.zeros(2, 4, V), torch.zeros(2, 4), "integer tokens"),
    (torch.zeros(2, V), torch.zeros(2, 4, dtype=torch.long), r"\(batch, positions, vocabulary\)"),
    (torch.zeros(2, 1, V), torch.zeros(2, 1, dtype=torch.long), "at least 2 tokens"),
])
def test_check_targets_refuses_what_the_next_token_loss_cannot_take(logits, targets, match):
    with pytest.raises(DataError, match=match):
        check_targets(next_token, logits, targets)


def test_cross_entropy_on_sequence_logits_points_to_next_token():
    with pytest.raises(DataError, match="next-token"):
        check_targets(F.cross_entropy, torch.zeros(2, 4, V), torch.zeros(2, 4, dtype=torch.long))


def test_accuracy_is_over_every_predicted_token():
    model, X = tiny_lm(), tokens(4, 6)
    with torch.no_grad():
        logits = model(X)
    right = (logits[:, :-1].argmax(-1) == X[:, 1:]).double().mean()
    batches = [(X[:3], X[:3]), (X[3:], X[3:])]  # uneven batches: weighted by their sequences
    loss, accuracy = fit(model, next_token, batches, dtype=torch.float64)
    assert accuracy == pytest.approx(float(right), abs=1e-15)
    assert loss == pytest.approx(float(next_token(logits, X)), rel=1e-14)


# -- the operators against dense truths ------------------------------------------------------------------------


@pytest.mark.parametrize("make", [tiny_lm, tiny_gpt], ids=["embedding-lm", "gpt"])
def test_hessian_matches_double_backward(make):
    model = make()
    vocab = model.head.out_features if hasattr(model, "head") else V
    X = tokens(3, 5, vocab)
    truth = double_backward_hessian(model, X, X, next_token)
    op = HessianOperator(model, next_token, [(X[:2], X[:2]), (X[2:], X[2:])], dtype=torch.float64)
    assert op.product == "reverse"  # not an nn.Sequential of the layerwise sweeps' layers
    assert rel(dense_of(op), truth) < 1e-12


def test_layerwise_product_is_refused_for_the_next_token_loss():
    X = tokens()
    with pytest.raises(OptionError, match="layerwise"):
        HessianOperator(tiny_lm(), next_token, (X, X), product="layerwise")


@pytest.mark.parametrize("make", [tiny_lm, tiny_gpt], ids=["embedding-lm", "gpt"])
@pytest.mark.parametrize("product", ["reverse", "forward"])
def test_ggn_closed_form_matches_dense_truth(make, product, monkeypatch):
    model = make()
    vocab = model.head.out_features if hasattr(model, "head") else V
    X = tokens(3, 5, vocab)
    truth = double_backward_ggn(model, X, X, next_token)
    used = []
    monkeypatch.setattr(ggn._NextTokenSoftmax, "apply", lambda self, U: used.append(1) or ggn._Softmax.apply(self, U))
    op = GGNOperator(model, next_token, (X, X), dtype=torch.float64, product=product)
    assert rel(dense_of(op), truth) < 1e-12
    assert used  # the closed form, not autograd's double backward of the loss
    exact = FisherOperator(model, next_token, (X, X), kind="exact", dtype=torch.float64, product=product)
    assert rel(dense_of(exact), truth) < 1e-12


def test_ggn_autograd_fallback_agrees_with_the_closed_form():
    model, X = tiny_lm(), tokens()
    op = GGNOperator(model, lambda logits, ids: next_token(logits, ids), (X, X), dtype=torch.float64)
    assert rel(dense_of(op), double_backward_ggn(model, X, X, next_token)) < 1e-12


def test_empirical_fisher_is_the_per_token_outer_product():
    model, X = tiny_lm(), tokens()
    G = per_token_gradients(model, X)
    op = FisherOperator(model, next_token, [(X[:1], X[:1]), (X[1:], X[1:])], kind="empirical", dtype=torch.float64)
    assert rel(dense_of(op), G.T @ G / G.shape[0]) < 1e-12


def test_true_fisher_averages_to_the_ggn():
    model, X = tiny_lm(), tokens()
    op = FisherOperator(model, next_token, (X, X), kind="true", num_samples=4000, seed=3, dtype=torch.float64)
    F1 = dense_of(op)
    torch.testing.assert_close(F1, F1.T)
    assert rel(F1, double_backward_ggn(model, X, X, next_token)) < 0.05
