"""Attention models on every path, with no user action: ``nn.TransformerEncoderLayer`` (whose eval-mode fast path has
no derivatives) and the built-in ``gpt`` (``F.scaled_dot_product_attention``, whose fused CPU kernel has no second
derivative and no forward-mode formula), against dense truths by double backward under the math kernel (float64;
both models have a learnable LayerNorm, so ``torch.func.hessian`` is no truth here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from landscape.jacobian import jacobian_norms
from landscape.models import gpt
from landscape.operators import FisherOperator, GGNOperator, HessianOperator
from landscape.operators.attention import differentiable_attention
from landscape.operators.evaluation import Evaluator
from landscape.operators.hessian import PRODUCTS
from landscape.surface import eigen_directions
from landscape.tracking import CurvatureTracker, TrackerSettings
from reference import dense_norms, double_backward_ggn, double_backward_hessian, per_sample_gradients


class EncoderClassifier(nn.Module):
    """One ``nn.TransformerEncoderLayer`` (batch first, post-norm, ReLU: eligible for the fast path in eval mode),
    mean-pooled into a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(1))


def token_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (B, T, V) logits against (B, T) targets."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def encoder_case():
    torch.manual_seed(0)
    model = EncoderClassifier().double().eval()
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(6, 3, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (6,), generator=gen)
    return model, (X, y), F.cross_entropy


def gpt_case():
    torch.manual_seed(0)
    model = gpt(vocab_size=5, seq_len=4, d_model=4, n_layers=1, n_heads=2, d_ff=8).double().eval()
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 5, (3, 4), generator=gen)
    targets = torch.randint(0, 5, (3, 4), generator=gen)
    return model, (tokens, targets), token_ce


CASES = {"encoder": encoder_case, "gpt": gpt_case}


def dense(op) -> torch.Tensor:
    """The operator as a matrix, one product per column."""
    return op.matmat(torch.eye(op.shape[0], dtype=op.dtype))


def close(A: torch.Tensor, B: torch.Tensor) -> None:
    torch.testing.assert_close(A, B, rtol=0, atol=1e-10 * max(1.0, float(B.abs().max())))


@pytest.mark.parametrize("case", CASES)
def test_hessian_products_on_every_path_equal_the_double_backward_hessian(case):
    model, (X, y), loss = CASES[case]()
    truth = double_backward_hessian(model, X, y, loss)
    for product in PRODUCTS:  # every path, the default ("auto") among them; the layerwise sweeps refuse attention
        if product != "layerwise":
            close(dense(HessianOperator(model, loss, (X, y), product=product)), truth)


@pytest.mark.parametrize("case", CASES)
def test_ggn_and_fisher_equal_their_dense_truths(case):
    model, (X, y), loss = CASES[case]()
    ggn = double_backward_ggn(model, X, y, loss)
    for product in ("reverse", "forward"):
        close(dense(GGNOperator(model, loss, (X, y), product=product)), ggn)
    with sdpa_kernel(SDPBackend.MATH):
        G = per_sample_gradients(model, X, y, loss)
    for product in ("reverse", "forward"):
        close(dense(FisherOperator(model, loss, (X, y), kind="empirical", product=product)), G.T @ G / len(X))
    if case == "encoder":  # the exact Fisher of a categorical model is its GGN
        close(dense(FisherOperator(model, loss, (X, y), kind="exact")), ggn)


def test_jacobian_norms_of_an_encoder_equal_the_dense_jacobians():
    model, (X, y), _ = encoder_case()
    result = jacobian_norms(model, (X, y), progress=False)
    with differentiable_attention():  # the reference's jacrev differentiates in the inputs alone: no fast path there
        frobenius, spectral = dense_norms(lambda x: model(x), X)
    np.testing.assert_allclose(result.frobenius, frobenius, rtol=1e-10)
    np.testing.assert_allclose(result.spectral, spectral, rtol=1e-8)


def test_surface_along_the_top_eigenvector_of_a_gpt():
    model, (X, y), loss = gpt_case()
    values, vectors = torch.linalg.eigh(double_backward_hessian(model, X, y, loss))
    directions = eigen_directions(model, loss, (X, y), 1, dtype=torch.float64, tol=1e-10, progress=False)
    assert directions.description["eigenvalues"][0] == pytest.approx(float(values[-1]), rel=1e-8)
    assert abs(float(directions.directions[0] @ vectors[:, -1])) == pytest.approx(1.0, abs=1e-6)
    point = directions.origin + 0.3 * directions.directions[0]
    names = [name for name, _ in model.named_parameters()]
    parts = [t.reshape(1, *p.shape) for t, p in zip(point.split([p.numel() for p in model.parameters()]),
                                                       model.parameters())]
    value = Evaluator(model, loss, (X, y), dtype=torch.float64, device=torch.device("cpu"), names=names).at(parts)[0]
    state = {name: t[0] for name, t in zip(names, parts)}
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        direct = loss(torch.func.functional_call(model, state, (X,)), y)
    assert value[0] == pytest.approx(float(direct), rel=1e-12)


def test_a_tracking_record_of_an_encoder_equals_its_dense_truths():
    model, (X, y), loss = encoder_case()
    settings = TrackerSettings(tol=1e-10, trace_matvecs=0, also_lambda_max=("ggn",), jacobian=True)
    record = CurvatureTracker(loss, (X, y), settings=settings).measure(model, 0)
    hessian = double_backward_hessian(model, X, y, loss)
    assert record["lambda_max"] == pytest.approx(float(torch.linalg.eigvalsh(hessian)[-1]), rel=1e-8)
    ggn = double_backward_ggn(model, X, y, loss)
    assert record["lambda_max_ggn"] == pytest.approx(float(torch.linalg.eigvalsh(ggn)[-1]), rel=1e-8)
    with differentiable_attention():
        _, spectral = dense_norms(lambda x: model(x), X)
    assert record["jacobian_max"] == pytest.approx(float(spectral.max()), rel=1e-8)


def test_the_attention_choice_is_undone_afterwards():
    before = (torch.backends.mha.get_fastpath_enabled(), torch.backends.cuda.flash_sdp_enabled(),
              torch.backends.cuda.mem_efficient_sdp_enabled())
    with differentiable_attention():
        assert not torch.backends.mha.get_fastpath_enabled() and not torch.backends.cuda.flash_sdp_enabled()
        assert torch.backends.cuda.math_sdp_enabled()
    assert (torch.backends.mha.get_fastpath_enabled(), torch.backends.cuda.flash_sdp_enabled(),
            torch.backends.cuda.mem_efficient_sdp_enabled()) == before
