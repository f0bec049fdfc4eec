"""The Fisher-Rao norm and relative flatness against dense float64 truths (per-sample gradients by a loop of
autograd.grad, the Hessian by torch.func.hessian), and their invariance under function-preserving rescalings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import make_data, make_mlp
from reference import dense_hessian
from landscape.errors import LossError, OptionError
from landscape.flatness import norms
from landscape.flatness.norms import fisher_rao_norm, relative_flatness
from landscape.operators.functional import ModelLoss
from landscape.operators.next_token import next_token


def relu_mlp(seed: int = 0) -> nn.Sequential:
    """Linear(5, 6) - ReLU - Linear(6, 6) - ReLU - Linear(6, 3) in float64."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3)).double()


def rescaled(model: nn.Sequential, layer: int, following: int, alpha: float) -> nn.Sequential:
    """A copy whose ``layer`` (weight and bias) is scaled by α and the ``following`` layer's weight by 1/α: the same
    function, a ReLU sitting between them."""
    copy = relu_mlp()
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        copy[layer].weight.mul_(alpha)
        copy[layer].bias.mul_(alpha)
        copy[following].weight.div_(alpha)
    return copy


def inner_products(model: nn.Module, X: torch.Tensor, y: torch.Tensor, per_sample, names=None) -> torch.Tensor:
    """⟨θ, ∇ℓ_i⟩ for each sample, each ∇ℓ_i by its own torch.autograd.grad call."""
    named = dict(model.named_parameters())
    params = [named[n] for n in (names or list(named))]
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    rows = []
    for i in range(X.shape[0]):
        grads = torch.autograd.grad(per_sample(model, i), params)
        rows.append(theta @ torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


# -- Fisher-Rao norm -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("params", [None, "2.*"])
def test_fisher_rao_matches_per_sample_gradients(params):
    model = make_mlp()
    X, y = make_data(n=30)
    names = None if params is None else ["2.weight", "2.bias"]
    truth = inner_products(model, X, y, lambda m, i: F.cross_entropy(m(X[i:i + 1]), y[i:i + 1]), names)
    result = fisher_rao_norm(model, F.cross_entropy, (X, y), params=params)
    np.testing.assert_allclose(result.values, truth.numpy(), rtol=1e-10, atol=1e-12)
    squares = truth.numpy() ** 2
    assert result.value == pytest.approx(squares.mean(), rel=1e-10)
    assert result.stderr == pytest.approx(squares.std(ddof=1) / math.sqrt(30), rel=1e-10)
    assert result.loss == pytest.approx(F.cross_entropy(model(X), y).item(), rel=1e-12)
    assert result.kind == "fisher_rao" and result.dtype == "float64" and not result.adaptive and result.rho is None
    assert result.dimension == (75 if params is None else 27)


def test_fisher_rao_batches_and_mse():
    """Per-sample terms under the mean-squared error (a mean over samples and outputs) and data in uneven batches."""
    model = make_mlp()
    X, _ = make_data(n=25)
    targets = torch.randn(25, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    truth = inner_products(model, X, targets, lambda m, i: F.mse_loss(m(X[i:i + 1]), targets[i:i + 1]))
    batches = [(X[:10], targets[:10]), (X[10:], targets[10:])]
    result = fisher_rao_norm(model, F.mse_loss, batches)
    np.testing.assert_allclose(result.values, truth.numpy(), rtol=1e-10, atol=1e-12)
    assert result.loss == pytest.approx(F.mse_loss(model(X), targets).item(), rel=1e-12)


def test_fisher_rao_next_token_terms_are_sequences():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(7, 4), nn.Tanh(), nn.Linear(4, 7)).double()
    tokens = torch.randint(0, 7, (5, 6), generator=torch.Generator().manual_seed(2))
    truth = inner_products(model, tokens, tokens, lambda m, i: next_token(m(tokens[i:i + 1]), tokens[i:i + 1]))
    result = fisher_rao_norm(model, next_token, (tokens, tokens))
    np.testing.assert_allclose(result.values, truth.numpy(), rtol=1e-10, atol=1e-12)


def test_fisher_rao_is_invariant_under_rescaling():
    model = relu_mlp()
    X, y = make_data(n=20)
    other = rescaled(model, 2, 4, alpha=5.0)
    torch.testing.assert_close(other(X), model(X), rtol=1e-12, atol=1e-12)
    before = fisher_rao_norm(model, F.cross_entropy, (X, y))
    after = fisher_rao_norm(other, F.cross_entropy, (X, y))
    np.testing.assert_allclose(after.values, before.values, rtol=1e-10, atol=1e-13)
    assert after.value == pytest.approx(before.value, rel=1e-10)
    # the gradient itself does change: the invariance is not a property of an unchanged θ
    grads = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(F.cross_entropy(m(X), y), list(m.parameters()))])
             for m in (model, other)]
    assert not torch.allclose(grads[0].norm(), grads[1].norm(), rtol=1e-2)


def test_fisher_rao_refuses_a_model_loss():
    X, y = make_data(n=8)
    with pytest.raises(LossError, match="split into samples"):
        fisher_rao_norm(make_mlp(), ModelLoss(lambda m, b: F.cross_entropy(m(b[0]), b[1])), (X, y))


# -- relative flatness -----------------------------------------------------------------------------------------------

def dense_kappa(model: nn.Module, X: torch.Tensor, y: torch.Tensor, layer: str) -> float:
    """Σ_{s,s'} ⟨w_s, w_s'⟩ tr H_{s,s'} with H the dense Hessian of the mean loss in the layer's weight."""
    W = dict(model.named_parameters())[layer].detach()
    m, d = W.shape
    H = dense_hessian(model, X, y, F.cross_entropy, names=[layer]).reshape(m, d, m, d)
    return sum(float(W[s] @ W[t]) * float(torch.trace(H[s, :, t, :])) for s in range(m) for t in range(m))


@pytest.mark.parametrize("layer, shape", [(None, (3, 8)), ("0.weight", (8, 5))])
def test_relative_flatness_exact_matches_dense_hessian(layer, shape):
    model = make_mlp()
    X, y = make_data(n=30)
    name = layer or "2.weight"
    result = relative_flatness(model, F.cross_entropy, [(X[:12], y[:12]), (X[12:], y[12:])], layer=layer)
    assert result.value == pytest.approx(dense_kappa(model, X, y, name), rel=1e-10)
    m, d = shape
    assert (result.layer, result.dimension, result.num_gradients) == (name, m * d, m * d)
    assert result.stderr is None and result.samples is None and result.seed is None and len(result.values) == 1
    assert result.loss == pytest.approx(F.cross_entropy(model(X), y).item(), rel=1e-12)
    assert result.kind == "relative_flatness" and result.dtype == "float64"


def test_relative_flatness_probes_are_unbiased():
    model = make_mlp()
    X, y = make_data(n=30)
    truth = dense_kappa(model, X, y, "2.weight")
    result = relative_flatness(model, F.cross_entropy, (X, y), probes=300, seed=4)
    assert abs(result.value - truth) < 4 * result.stderr
    assert result.stderr < 0.2 * abs(truth)  # the check above has teeth
    assert (result.samples, result.seed, result.num_gradients, len(result.values)) == (300, 4, 900, 300)
    again = relative_flatness(model, F.cross_entropy, (X, y), probes=300, seed=4)
    np.testing.assert_array_equal(again.values, result.values)


def test_relative_flatness_is_invariant_under_rescaling():
    """W (the output layer) × α and the layer computing its features × 1/α: κ stays, the Hessian's trace moves."""
    model = relu_mlp()
    X, y = make_data(n=20)
    other = rescaled(model, 2, 4, alpha=1 / 3)  # the features × 1/3, W = layer 4's weight × 3
    torch.testing.assert_close(other(X), model(X), rtol=1e-12, atol=1e-12)
    traces = [float(torch.trace(dense_hessian(m, X, y, F.cross_entropy))) for m in (model, other)]
    assert traces[1] > 1.5 * traces[0]
    for probes in (None, 4):
        before = relative_flatness(model, F.cross_entropy, (X, y), probes=probes)
        after = relative_flatness(other, F.cross_entropy, (X, y), probes=probes)
        np.testing.assert_allclose(after.values, before.values, rtol=1e-9)


def test_relative_flatness_probes_above_the_exact_limit_and_blocks(monkeypatch):
    """Above the exact limit the default is 10 probes; products in blocks smaller than m give the same T."""
    model = make_mlp()
    X, y = make_data(n=30)
    monkeypatch.setattr(norms, "default_block_size", lambda n, k, block_size: 3)  # rows of E in blocks of 3
    exact = relative_flatness(model, F.cross_entropy, (X, y), layer="0.weight")
    assert exact.value == pytest.approx(dense_kappa(model, X, y, "0.weight"), rel=1e-10)
    monkeypatch.setattr(norms, "EXACT_LIMIT", 16)
    sampled = relative_flatness(model, F.cross_entropy, (X, y), layer="0.weight", seed=1)
    assert (sampled.samples, sampled.num_gradients) == (10, 80)
    assert abs(sampled.value - exact.value) < 4 * sampled.stderr


def test_relative_flatness_options():
    model = make_mlp()
    X, y = make_data(n=8)
    with pytest.raises(OptionError, match="layer.*names are"):
        relative_flatness(model, F.cross_entropy, (X, y), layer="9.weight")
    with pytest.raises(OptionError, match="two-dimensional"):
        relative_flatness(model, F.cross_entropy, (X, y), layer="2.bias")
    with pytest.raises(OptionError, match="probes"):
        relative_flatness(model, F.cross_entropy, (X, y), probes=0)
