"""HessianOperator against dense ``torch.func.hessian`` references on a small float64 MLP."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.sparse.linalg
import torch
from torch import nn

import landscape
from landscape import DataError, HessianOperator, LossError, OptionError, ParameterError
from conftest import make_data, make_mlp, mean_ce
from reference import dense_hessian


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def randn(n: int, *shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, n, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("product", ["reverse", "forward"])
@pytest.mark.parametrize("vectorize", [True, False])
def test_matvec_and_matmat_match_dense(mlp, data, mlp_hessian, product, vectorize):
    op = HessianOperator(mlp, mean_ce, data, product=product, vectorize=vectorize)
    n = mlp_hessian.shape[0]
    assert op.shape == (n, n) and op.dtype == torch.float64
    for seed in range(3):
        v = randn(n, seed=seed)
        assert rel(op.matvec(v), mlp_hessian @ v) < 1e-10
    V = randn(n, 4, seed=10)
    block = op.matmat(V)
    assert block.shape == (4, n)
    assert rel(block, V @ mlp_hessian.T) < 1e-10
    stacked = torch.stack([op.matvec(v) for v in V])
    assert rel(block, stacked) < 1e-12
    # __matmul__ on a vector and on an (n, k) matrix
    assert rel(op @ V[0], mlp_hessian @ V[0]) < 1e-10
    assert rel(op @ V.T, mlp_hessian @ V.T) < 1e-10


@pytest.mark.parametrize("product", ["reverse", "forward"])
def test_streamed_batches_equal_concatenated_batch(mlp, data, product):
    X, y = data
    cuts = [0, 7, 25, 40]  # three uneven batches
    batches = [(X[a:b], y[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    single = HessianOperator(mlp, mean_ce, (X, y), product=product)
    streamed = HessianOperator(mlp, mean_ce, batches, product=product)
    V = randn(single.shape[0], 3, seed=3)
    assert rel(streamed.matmat(V), single.matmat(V)) < 1e-10
    assert rel(streamed.matvec(V[0]), single.matvec(V[0])) < 1e-10


def test_streamed_equals_dense_of_full_data(mlp, data, mlp_hessian):
    X, y = data
    batches = [(X[:13], y[:13]), (X[13:14], y[13:14]), (X[14:], y[14:])]
    op = HessianOperator(mlp, mean_ce, batches)
    v = randn(op.shape[0], seed=4)
    assert rel(op.matvec(v), mlp_hessian @ v) < 1e-10


def _sub_block(model, H, names):
    """Rows/columns of the full dense Hessian that belong to ``names``."""
    index, start = [], 0
    for name, p in model.named_parameters():
        if name in names:
            index.extend(range(start, start + p.numel()))
        start += p.numel()
    index = torch.tensor(index)
    return H[index][:, index]


@pytest.mark.parametrize(
    "params, names",
    [
        ("0.*", ["0.weight", "0.bias"]),
        ("*.bias", ["0.bias", "2.bias"]),
        (["2.weight", "0.bias"], ["0.bias", "2.weight"]),
        (lambda name, p: name.startswith("2."), ["2.weight", "2.bias"]),
        (lambda name, p: p.ndim == 2, ["0.weight", "2.weight"]),
    ],
)
def test_parameter_filter_gives_sub_block(mlp, data, mlp_hessian, params, names):
    op = HessianOperator(mlp, mean_ce, data, params=params)
    assert op.names == names  # named_parameters order, whatever the order of the patterns
    block = _sub_block(mlp, mlp_hessian, names)
    assert op.shape == block.shape
    # the sub-block of the full Hessian, and (independently) the Hessian w.r.t. those parameters alone
    assert torch.allclose(block, dense_hessian(mlp, *data, names=names), rtol=0, atol=1e-12)
    V = randn(op.shape[0], 3, seed=5)
    assert rel(op.matmat(V), V @ block.T) < 1e-10


def test_float64_on_request_for_float32_model():
    model32 = make_mlp(dtype=torch.float32)
    X32, y = make_data(dtype=torch.float32)
    op = HessianOperator(model32, mean_ce, (X32, y), dtype=torch.float64)
    assert op.dtype == torch.float64
    assert all(p.dtype == torch.float32 for p in model32.parameters())  # the model itself is untouched
    model64 = make_mlp(dtype=torch.float32).double()
    H = dense_hessian(model64, X32.double(), y)
    V = randn(op.shape[0], 3, seed=6)
    out = op.matmat(V)
    assert out.dtype == torch.float64
    assert rel(out, V @ H.T) < 1e-10
    # a float32 vector is accepted and promoted
    assert rel(op.matvec(V[0].float()), H @ V[0].float().double()) < 1e-10


def _bn_dropout_model() -> nn.Sequential:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 3)).double()
    # non-trivial running statistics, so that eval mode differs visibly from batch statistics
    X, _ = make_data(seed=7)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(X * 2 + 1)
    return model


def test_batchnorm_dropout_model_in_train_mode(data):
    model = _bn_dropout_model()
    model.train()
    flags = [m.training for m in model.modules()]
    running = model[1].running_mean.clone()
    op = HessianOperator(model, mean_ce, data)
    assert op.check_deterministic() < 1e-12
    model.eval()
    H = dense_hessian(model, *data)
    model.train()
    V = randn(op.shape[0], 3, seed=8)
    assert rel(op.matmat(V), V @ H.T) < 1e-10
    assert [m.training for m in model.modules()] == flags  # training flags restored
    assert torch.equal(model[1].running_mean, running)  # BatchNorm statistics untouched

    # the same with the forward product and streamed batches (no cached graph)
    X, y = data
    op_fwd = HessianOperator(model, mean_ce, [(X[:15], y[:15]), (X[15:], y[15:])], product="forward")
    op_fwd.check_deterministic()
    assert rel(op_fwd.matmat(V), V @ H.T) < 1e-10
    assert [m.training for m in model.modules()] == flags


def test_check_deterministic_raises_on_random_loss(mlp, data):
    gen = torch.Generator().manual_seed(0)

    def noisy(out, y):
        return mean_ce(out, y) * (1 + torch.rand((), generator=gen, dtype=out.dtype))

    X, y = data
    op = HessianOperator(mlp, noisy, [(X, y)])  # a list of batches: the graph is rebuilt per product
    with pytest.raises(LossError):
        op.check_deterministic()


def test_num_matvecs_counts_columns(mlp, data):
    op = HessianOperator(mlp, mean_ce, data)
    n = op.shape[0]
    assert op.num_matvecs == 0
    op.matvec(randn(n))
    assert op.num_matvecs == 1
    op.matmat(randn(n, 5))
    assert op.num_matvecs == 6
    op @ randn(n, 3).T
    assert op.num_matvecs == 9


# -- errors ---------------------------------------------------------------------------------------------------

def test_non_scalar_loss_raises(mlp, data):
    op = HessianOperator(mlp, lambda out, y: nn.functional.cross_entropy(out, y, reduction="none"), data)
    with pytest.raises(LossError, match="scalar"):
        op.matvec(randn(op.shape[0]))


def test_empty_data_raises(mlp):
    with pytest.raises(DataError):
        HessianOperator(mlp, mean_ce, [])


def test_empty_batches_raise_at_product(mlp):
    X = torch.zeros(0, 5, dtype=torch.float64)
    y = torch.zeros(0, dtype=torch.long)
    op = HessianOperator(mlp, mean_ce, [(X, y)])
    with pytest.raises(DataError):
        op.matvec(randn(op.shape[0]))


def test_pattern_matching_nothing_raises(mlp, data):
    with pytest.raises(ParameterError, match="nothing|match no parameter"):
        HessianOperator(mlp, mean_ce, data, params="encoder.*")


def test_frozen_parameters_raise(data):
    model = make_mlp()
    model[0].weight.requires_grad_(False)
    with pytest.raises(ParameterError, match="0.weight"):
        HessianOperator(model, mean_ce, data, params="0.*")
    # the default selection skips it instead
    op = HessianOperator(model, mean_ce, data)
    assert "0.weight" not in op.names


@pytest.mark.parametrize("product", ["reverse", "forward"])
def test_nan_loss_raises(mlp, data, product):
    op = HessianOperator(mlp, lambda out, y: mean_ce(out, y) * float("nan"), data, product=product)
    with pytest.raises(LossError):
        op.matvec(randn(op.shape[0]))


@pytest.mark.parametrize("product", ["reverse", "forward"])
def test_nan_loss_in_a_later_batch_raises(mlp, data, product):
    X, y = data
    X = X.clone()
    X[30, 0] = float("nan")  # only the second batch has a NaN loss
    op = HessianOperator(mlp, mean_ce, [(X[:20], y[:20]), (X[20:], y[20:])], product=product)
    with pytest.raises(LossError):
        op.matvec(randn(op.shape[0]))


def test_wrong_vector_shape_raises(mlp, data):
    op = HessianOperator(mlp, mean_ce, data)
    n = op.shape[0]
    with pytest.raises(OptionError):
        op.matvec(randn(n + 1))
    with pytest.raises(OptionError):
        op.matvec(randn(n, 2))
    with pytest.raises(OptionError):
        op.matmat(randn(n))
    with pytest.raises(OptionError):
        op.matmat(randn(n - 1, 2))


def test_bad_options_raise(mlp, data):
    with pytest.raises(OptionError):
        HessianOperator(mlp, mean_ce, data, product="sideways")
    with pytest.raises(OptionError):
        HessianOperator(mlp, mean_ce, data, dtype=torch.int64)


def test_errors_share_one_base_class():
    for err in (DataError, LossError, OptionError, ParameterError):
        assert issubclass(err, landscape.LandscapeError)


def test_to_scipy_eigsh_matches_dense(mlp, data, mlp_hessian):
    op = HessianOperator(mlp, mean_ce, data)
    A = op.to_scipy()
    assert A.shape == op.shape and A.dtype == np.float64
    vals = scipy.sparse.linalg.eigsh(A, k=3, which="LA", return_eigenvectors=False, tol=1e-12)
    true = torch.linalg.eigvalsh(mlp_hessian).numpy()[::-1][:3]
    np.testing.assert_allclose(np.sort(vals)[::-1], true, rtol=1e-8)
    # numpy block in, numpy block out
    V = np.random.default_rng(0).standard_normal((op.shape[0], 2))
    np.testing.assert_allclose(A @ V, mlp_hessian.numpy() @ V, rtol=1e-10, atol=1e-12)


def test_gradient_is_the_mean_gradient_over_streamed_batches():
    model = make_mlp()
    X, y = make_data(n=50)
    batches = [(X[:20], y[:20]), (X[20:45], y[20:45]), (X[45:], y[45:])]
    op = HessianOperator(model, mean_ce, batches, dtype=torch.float64)
    model64 = copy.deepcopy(model).double()
    expected = torch.cat([g.flatten() for g in torch.autograd.grad(mean_ce(model64(X), y), model64.parameters())])
    torch.testing.assert_close(op.gradient(), expected, rtol=1e-12, atol=1e-14)


def test_resnet18_products_match_dense_on_selected_parameters():
    """The built-in ResNet-18 (BatchNorm in eval mode, residual shortcuts) through the default product path, on the
    parameters of its last block's second BatchNorm and its classifier, against torch.func.hessian in float64."""
    from landscape.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=3, width=4).double().eval()
    gen = torch.Generator().manual_seed(1)
    X, y = torch.randn(6, 3, 8, 8, generator=gen, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    names = [n for n, _ in model.named_parameters() if n.startswith(("10.bn2", "13."))]
    op = HessianOperator(model, mean_ce, (X, y), params=names)
    assert op.product == "reverse"
    state = {n: p.detach() for n, p in model.named_parameters()} | dict(model.named_buffers())

    def loss(*selected: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, state | dict(zip(names, selected)), (X,))
        return mean_ce(out, y)

    blocks = torch.func.hessian(loss, argnums=tuple(range(len(names))))(*(state[n] for n in names))
    dense = torch.cat([torch.cat([blocks[i][j].reshape(state[a].numel(), state[b].numel())
                                  for j, b in enumerate(names)], dim=1) for i, a in enumerate(names)])
    V = randn(op.shape[0], 3, seed=4)
    assert rel(op.matmat(V), V @ dense.T) < 1e-10
