"""The layers with cheap second derivatives (landscape.operators.kernels) that the reverse Hessian product builds its
gradient graph with: each custom node's second derivative against finite differences (gradgradcheck), and the
Hessian products of models made of them against the double-backward Hessian of the plain layers."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from landscape import HessianOperator
from landscape.models import gpt, resnet18
from landscape.operators import kernels
from landscape.operators.kernels import activations, conv, cross_entropy, linear
from landscape.operators.next_token import next_token
from reference import double_backward_products


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=torch.float64, requires_grad=True)


# -- each node's first and second derivatives against finite differences ------------------------------------------
def _conv_case() -> tuple[Callable, tuple]:
    setting = conv.Setting([2, 1], [1, 0], [1, 2], 2)
    return (lambda x, w, b: conv.Conv.apply(x, w, b, setting)), (_randn(2, 4, 5, 6, seed=1), _randn(6, 2, 3, 2, seed=2),
                                                                  _randn(6, seed=3))


NODES = {
    "conv": _conv_case,
    "linear": lambda: (linear.Linear.apply, (_randn(2, 3, 4, seed=1), _randn(5, 4, seed=2), _randn(5, seed=3))),
    "relu": lambda: (activations.ReLU.apply, (_randn(3, 7, seed=1),)),
    "gelu": lambda: ((lambda x: activations.GELU.apply(x, "none")), (_randn(3, 7, seed=1),)),
    "gelu-tanh": lambda: ((lambda x: activations.GELU.apply(x, "tanh")), (_randn(3, 7, seed=1),)),
    "cross-entropy": lambda: ((lambda z: cross_entropy.CrossEntropy.apply(z, torch.tensor([0, 2, -100, 1]), -100)),
                              (_randn(4, 3, seed=1),)),
}


@pytest.mark.parametrize("name", NODES)
def test_second_derivatives_of_each_node_match_finite_differences(name):
    fn, inputs = NODES[name]()
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_gelu_second_derivative_is_the_derivative_of_its_first():
    x = torch.linspace(-4, 4, 41, dtype=torch.float64, requires_grad=True)
    for approximate in ("none", "tanh"):
        first = torch.autograd.grad(F.gelu(x, approximate=approximate).sum(), x, create_graph=True)[0]
        second = torch.autograd.grad(first.sum(), x)[0]
        torch.testing.assert_close(activations.gelu_second(x.detach(), approximate), second)


# -- Hessian products of models built from them, against the dense Hessian of the plain layers ----------------------
class Residual(nn.Module):
    """A ResNet-style block with a padded 1-d convolution, eval-mode batch norm and a bias-free shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm1d(2)
        self.head = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.bn(self.conv(x)) + x, approximate="tanh").flatten(1))


def _spread_batch_norm(model: nn.Module) -> nn.Module:
    """Running statistics away from (0, 1), so that the affine form of eval-mode batch norm is tested."""
    gen = _gen(5)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=gen, dtype=torch.float64) - 0.5)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen, dtype=torch.float64) + 0.5)
            module.weight.data.copy_(torch.rand(module.weight.shape, generator=gen, dtype=torch.float64) + 0.5)
    return model.eval()


def resnet_case():
    model = _spread_batch_norm(resnet18(width=2, num_classes=3).double())
    X = torch.randn(3, 3, 4, 4, generator=_gen(1), dtype=torch.float64)
    return model, (X, torch.tensor([0, 2, 1])), F.cross_entropy


def residual_case():
    model = _spread_batch_norm(Residual().double())
    X = torch.randn(4, 2, 5, generator=_gen(1), dtype=torch.float64)
    return model, (X, torch.tensor([0, 2, 1, 1])), (lambda out, y: F.cross_entropy(out, y, ignore_index=1))


def conv3d_case():
    model = _spread_batch_norm(nn.Sequential(nn.Conv3d(1, 2, 2, stride=2), nn.BatchNorm3d(2), nn.ReLU(), nn.Flatten(),
                                             nn.Linear(2, 2)).double())
    X = torch.randn(3, 1, 2, 2, 2, generator=_gen(1), dtype=torch.float64)
    return model, (X, torch.randn(3, 2, generator=_gen(2), dtype=torch.float64)), F.mse_loss


def gpt_case():
    torch.manual_seed(0)
    model = gpt(vocab_size=7, seq_len=5, d_model=4, n_layers=1, n_heads=2, d_ff=8).double().eval()
    tokens = torch.randint(0, 7, (2, 5), generator=_gen(1))
    return model, (tokens, tokens), next_token


CASES = {"resnet18": resnet_case, "conv1d-bn-gelu-ignore-index": residual_case, "conv3d-bn-relu-mse": conv3d_case,
         "gpt": gpt_case}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    model, data, loss = CASES[request.param]()
    V = torch.randn(4, sum(p.numel() for p in model.parameters()), generator=_gen(3), dtype=torch.float64)
    return model, data, loss, V, double_backward_products(model, *data, V, loss=loss)


@pytest.mark.parametrize("vectorize", [False, True])
def test_reverse_products_built_with_the_kernels_equal_the_dense_hessian(case, vectorize, monkeypatch):
    model, data, loss, V, VH = case
    used = []
    for func, replacement in list(kernels.REPLACEMENTS.items()):
        def spy(*args, _replacement=replacement, **kwargs):
            out = _replacement(*args, **kwargs)
            used.append(out is not NotImplemented)
            return out
        monkeypatch.setitem(kernels.REPLACEMENTS, func, spy)
    op = HessianOperator(model, loss, data, product="auto", vectorize=vectorize)
    torch.testing.assert_close(op.matmat(V), VH, rtol=1e-10, atol=1e-12)
    assert op.product == "reverse" and any(used)  # the default path, through the kernels
