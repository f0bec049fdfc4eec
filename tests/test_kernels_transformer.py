"""The transformer layers with cheap second derivatives (landscape.operators.kernels: layer norm, attention and the
next-token loss): each node's first and second derivatives against finite differences (gradcheck, gradgradcheck),
its second derivatives for every subset of tangents against plain double backward of the torch layer, and the Hessian
products of transformers built from them against the double-backward Hessian of the plain layers. Also the linear
layer's terms that its backward node leaves to its own node (kernels.linear.Deferred), in the passes that could lose
or misplace them."""

from __future__ import annotations

import itertools
from typing import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from landscape import HessianOperator
from landscape.models import gpt
from landscape.operators import kernels
from landscape.operators.kernels import SecondOrderKernels, attention, cross_entropy, layer_norm
from landscape.operators.next_token import next_token
from reference import double_backward_products

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=F64, requires_grad=True)


def _tokens(*shape: int, vocab: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=_gen(seed))


# -- each node against finite differences, and against the torch layer's double backward ----------------------------
def _layer_norm_case() -> tuple[Callable, Callable, tuple]:
    weight = (torch.rand(6, generator=_gen(2), dtype=F64) + 0.5).requires_grad_()
    inputs = (_randn(2, 3, 6, seed=1), weight, _randn(6, seed=3))
    return ((lambda x, w, b: layer_norm.LayerNorm.apply(x, w, b, 1e-5)),
            (lambda x, w, b: F.layer_norm(x, (6,), w, b)), inputs)


def _attention_case(causal: bool, queries: int, keys: int) -> Callable[[], tuple[Callable, Callable, tuple]]:
    def case() -> tuple[Callable, Callable, tuple]:
        inputs = (_randn(2, 3, queries, 4, seed=1), _randn(2, 3, keys, 4, seed=2), _randn(2, 3, keys, 5, seed=3))
        return ((lambda q, k, v: attention.Attention.apply(q, k, v, causal, 0.7)),
                (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=0.7)), inputs)
    return case


def _next_token_case() -> tuple[Callable, Callable, tuple]:
    tokens = _tokens(3, 4, vocab=5)
    tokens[1, 2] = -100  # a target the loss ignores, as F.cross_entropy does
    return (lambda z: cross_entropy.next_token(z, tokens)), (lambda z: next_token(z, tokens)), (_randn(3, 4, 5),)


NODES = {
    "layer-norm": _layer_norm_case,
    "attention-causal": _attention_case(True, 6, 6),
    "attention-causal-odd": _attention_case(True, 5, 5),
    "attention": _attention_case(False, 4, 6),
    "attention-causal-rectangular": _attention_case(True, 4, 6),
    "next-token": _next_token_case,
}


@pytest.mark.parametrize("name", NODES)
def test_second_derivatives_of_each_node_match_finite_differences(name):
    fn, _, inputs = NODES[name]()
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("name", NODES)
def test_each_node_has_the_values_gradients_and_second_derivatives_of_the_torch_layer(name):
    """For every non-empty subset of tangents of the gradients (the others absent, as autograd passes them), the
    derivative of the kernel's gradient equals plain double backward of the torch layer under the math kernel."""
    fn, plain, inputs = NODES[name]()
    with sdpa_kernel(SDPBackend.MATH):
        out, truth = fn(*inputs), plain(*inputs)
        torch.testing.assert_close(out, truth, rtol=1e-13, atol=1e-14)
        cotangent = torch.randn(out.shape, generator=_gen(4), dtype=F64).requires_grad_()
        firsts = [torch.autograd.grad(y, inputs, cotangent, create_graph=True) for y in (out, truth)]
        torch.testing.assert_close(firsts[0], firsts[1], rtol=1e-13, atol=1e-14)
        tangents = [torch.randn(t.shape, generator=_gen(5 + i), dtype=F64) for i, t in enumerate(inputs)]
        for k in range(1, len(inputs) + 1):
            for subset in itertools.combinations(range(len(inputs)), k):
                seconds = [torch.autograd.grad([g[i] for i in subset], (cotangent, *inputs),
                                               [tangents[i] for i in subset], retain_graph=True, allow_unused=True)
                           for g in firsts]
                for mine, true in zip(*seconds):
                    if true is None:
                        assert mine is None or not mine.any()
                    else:
                        torch.testing.assert_close(mine, true, rtol=1e-12, atol=1e-13)


# -- arguments the kernels do not cover run unchanged --------------------------------------------------------------
UNCOVERED = {
    "layer-norm without bias": lambda x: F.layer_norm(x, (4,), torch.ones(4, dtype=F64), None),
    "layer-norm over two dimensions": lambda x: F.layer_norm(x, (3, 4), torch.ones(3, 4, dtype=F64),
                                                             torch.zeros(3, 4, dtype=F64)),
    "attention with a mask": lambda x: F.scaled_dot_product_attention(x, x, x, attn_mask=torch.ones(3, 3).bool()),
    "attention with dropout": lambda x: F.scaled_dot_product_attention(x, x, x, dropout_p=0.5),
    "next-token of logits needing no gradient": lambda x: next_token(x.detach(), torch.zeros(2, 3, dtype=torch.long)),
}


@pytest.mark.parametrize("name", UNCOVERED)
def test_uncovered_arguments_run_as_torch_runs_them(name, monkeypatch):
    x = _randn(2, 3, 4, seed=1)
    calls = []
    for func, replacement in list(kernels.REPLACEMENTS.items()):
        def spy(*args, _replacement=replacement, **kwargs):
            out = _replacement(*args, **kwargs)
            calls.append(out is NotImplemented)
            return out
        monkeypatch.setitem(kernels.REPLACEMENTS, func, spy)
    torch.manual_seed(0)
    with SecondOrderKernels():
        out = UNCOVERED[name](x)
    torch.manual_seed(0)
    torch.testing.assert_close(out, UNCOVERED[name](x), rtol=0, atol=0)
    assert calls and calls[0]  # the first replacement asked (the one named) declined


# -- Hessian products of transformers built from them ----------------------------------------------------------------
class EncoderLM(nn.Module):
    """A pre-LayerNorm ``nn.TransformerEncoderLayer`` between an embedding and a linear head: its layer norms and
    GELU go through the kernels, its attention (``F.multi_head_attention_forward``, whose inner calls the kernels do
    not see) runs as torch runs it."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 8)
        self.layer = nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0, activation="gelu", batch_first=True,
                                                norm_first=True)
        self.head = nn.Linear(8, 7)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(self.emb(tokens)))


def gpt_case():
    torch.manual_seed(0)
    model = gpt(vocab_size=7, seq_len=6, d_model=8, n_layers=2, n_heads=2, d_ff=12).double().eval()
    for module in model.modules():  # LayerNorm weights and biases away from (1, 0)
        if isinstance(module, nn.LayerNorm):
            module.weight.data.uniform_(0.5, 1.5, generator=_gen(7))
            module.bias.data.normal_(generator=_gen(8))
    tokens = _tokens(3, 6)
    return model, (tokens, tokens), next_token


def encoder_case():
    torch.manual_seed(0)
    model = EncoderLM().double().eval()
    tokens = _tokens(2, 5, seed=2)
    return model, (tokens, tokens), next_token


#: the models, and the replaced functions that each must go through
CASES = {"gpt": (gpt_case, {F.layer_norm, F.scaled_dot_product_attention, F.gelu, next_token}),
         "encoder-layer": (encoder_case, {F.layer_norm, F.gelu, next_token})}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    make, expected = CASES[request.param]
    model, data, loss = make()
    V = torch.randn(3, sum(p.numel() for p in model.parameters()), generator=_gen(3), dtype=F64)
    return model, data, loss, V, double_backward_products(model, *data, V, loss=loss), expected


@pytest.mark.parametrize("vectorize", [False, True])
def test_reverse_products_through_the_transformer_kernels_equal_double_backward(case, vectorize, monkeypatch):
    model, data, loss, V, VH, expected = case
    used = set()
    for func, replacement in list(kernels.REPLACEMENTS.items()):
        def spy(*args, _func=func, _replacement=replacement, **kwargs):
            out = _replacement(*args, **kwargs)
            if out is not NotImplemented:
                used.add(_func)
            return out
        monkeypatch.setitem(kernels.REPLACEMENTS, func, spy)
    op = HessianOperator(model, loss, data, vectorize=vectorize)
    torch.testing.assert_close(op.matmat(V), VH, rtol=1e-10, atol=1e-12)
    assert op.product == "reverse"
    assert expected <= used


def test_the_gradient_through_the_kernels_is_the_gradient():
    model, (tokens, _), _ = gpt_case()
    params = list(model.parameters())
    with sdpa_kernel(SDPBackend.MATH):
        truth = torch.autograd.grad(next_token(model(tokens), tokens), params)
        with SecondOrderKernels():
            value = next_token(model(tokens), tokens)
            grads = torch.autograd.grad(value, params, create_graph=True)
    torch.testing.assert_close(value, next_token(model(tokens), tokens).detach(), rtol=1e-14, atol=0)
    torch.testing.assert_close(grads, truth, rtol=1e-12, atol=1e-14)


# -- the linear layer's deferred terms --------------------------------------------------------------------------------
def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


@pytest.mark.parametrize("vectorize", [False, True])
def test_products_of_a_loss_linear_in_the_last_layer_take_its_deferred_terms(vectorize):
    """The last layer's output gets no gradient in the product but through the edge that orders its nodes."""
    model = _mlp()
    X, y = torch.randn(5, 3, generator=_gen(1), dtype=F64), torch.randn(5, 2, generator=_gen(2), dtype=F64)

    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # linear in the outputs
        return (out * target).sum()

    V = torch.randn(3, sum(p.numel() for p in model.parameters()), generator=_gen(3), dtype=F64)
    op = HessianOperator(model, loss, (X, y), vectorize=vectorize)
    torch.testing.assert_close(op.matmat(V), double_backward_products(model, X, y, V, loss=loss), rtol=1e-12,
                               atol=1e-13)


def _layer(deferring: bool) -> tuple[torch.Tensor, ...]:
    """One linear layer on an input that needs a gradient, its output and the gradient graph of ``sum(y²)``."""
    x, weight = _randn(4, 3, seed=1), _randn(2, 3, seed=2)
    with SecondOrderKernels() if deferring else torch.enable_grad():
        y = F.linear(x, weight)
        gx, gw = torch.autograd.grad(y.pow(2).sum(), (x, weight), create_graph=True)
    return x, weight, y, gx, gw


def test_terms_left_by_a_pass_that_did_not_need_the_layer_are_not_taken_by_the_next():
    tangents = (torch.randn(4, 3, generator=_gen(3), dtype=F64), torch.randn(2, 3, generator=_gen(4), dtype=F64))
    results = []
    for deferring in (True, False):
        x, weight, y, gx, gw = _layer(deferring)
        assert (type(y.grad_fn).__name__ == "LinearBackward") == deferring
        # the derivative in the layer's output: its own node is not run, its backward node leaves terms
        at_output = torch.autograd.grad((gx, gw), y, tangents, retain_graph=True)
        # a first-order pass through the layer's own node, which must not take them
        first = torch.autograd.grad(y.sum(), (x, weight), retain_graph=True)
        results.append((at_output, first))
    torch.testing.assert_close(results[0], results[1], rtol=1e-14, atol=1e-15)


def test_two_gradient_graphs_of_one_layer_leave_their_terms_together():
    x, weight = _randn(4, 3, seed=1), _randn(2, 3, seed=2)
    tangents = (torch.randn(4, 3, generator=_gen(3), dtype=F64), torch.randn(2, 3, generator=_gen(4), dtype=F64))
    results = []
    for deferring in (True, False):
        with SecondOrderKernels() if deferring else torch.enable_grad():
            y = F.linear(x, weight)
            first = torch.autograd.grad(y.pow(2).sum(), (x, weight), create_graph=True, retain_graph=True)
            second = torch.autograd.grad(y.pow(3).sum(), (x, weight), create_graph=True)
        sums = [f + s for f, s in zip(first, second)]
        results.append(torch.autograd.grad(sums, (x, weight), tangents))
    torch.testing.assert_close(results[0], results[1], rtol=1e-13, atol=1e-14)
