"""The hand-written layerwise product path against the dense float64 Hessian and against autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import make_data
from reference import dense_hessian
from landscape import HessianOperator, LossError, OptionError
from landscape.losses import squared_loss
from landscape.operators import layerwise

LOSSES = {
    "F.cross_entropy": (F.cross_entropy, "labels"),
    "nn.CrossEntropyLoss": (nn.CrossEntropyLoss(), "labels"),
    "F.mse_loss": (F.mse_loss, "values"),
    "nn.MSELoss": (nn.MSELoss(), "values"),
    "squared_loss labels": (squared_loss, "labels"),
    "squared_loss values": (squared_loss, "values"),
}
ACTIVATIONS = [nn.Tanh, nn.Sigmoid, nn.ReLU, lambda: nn.LeakyReLU(0.1)]


def net(activation, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 7), activation(), nn.Linear(7, 6), activation(), nn.Dropout(0.3), nn.Linear(6, 3)
    ).double()


def targets(kind: str, n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    X, y = make_data(n=n)
    if kind == "values":
        y = torch.randn(n, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return X, y


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_products_match_dense_hessian(activation, loss_name):
    loss, kind = LOSSES[loss_name]
    model = net(activation)
    X, y = targets(kind)
    op = HessianOperator(model, loss, (X, y))
    assert op.product == "layerwise"
    H = dense_hessian(model.eval(), X, y, loss=loss)
    V = torch.randn(4, op.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert relative(op.matmat(V), V @ H) < 1e-10
    assert relative(op.matvec(V[1]), H @ V[1]) < 1e-10


def test_equals_reverse_path_on_streamed_batches():
    model = net(nn.Tanh)
    X, y = make_data(n=53)
    batches = [(X[:20], y[:20]), (X[20:41], y[20:41]), (X[41:], y[41:])]
    fast = HessianOperator(model, F.cross_entropy, batches)
    slow = HessianOperator(model, F.cross_entropy, batches, product="reverse")
    V = torch.randn(3, fast.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert fast.product == "layerwise"
    assert relative(fast.matmat(V), slow.matmat(V)) < 1e-10


def test_parameter_subset_and_inputs_transformed_before_the_first_linear():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Tanh(), nn.Sequential(nn.Linear(6, 5), nn.ReLU()), nn.Linear(5, 3)
    ).double()
    X = torch.randn(30, 2, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(0))
    names = ["2.0.bias", "3.weight"]
    op = HessianOperator(model, F.cross_entropy, (X, y), params=names)
    assert op.product == "layerwise"
    H = dense_hessian(model, X, y, loss=F.cross_entropy, names=names)
    V = torch.randn(2, op.shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert relative(op.matmat(V), V @ H) < 1e-10


def test_unsupported_models_and_losses_use_autograd():
    bn = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).double()
    X, y = make_data()
    assert HessianOperator(bn, F.cross_entropy, (X, y)).product == "reverse"
    assert HessianOperator(net(nn.Tanh), lambda out, t: F.cross_entropy(out, t), (X, y)).product == "reverse"
    assert HessianOperator(net(nn.GELU), F.cross_entropy, (X, y)).product == "reverse"
    with pytest.raises(OptionError, match="layerwise"):
        HessianOperator(bn, F.cross_entropy, (X, y), product="layerwise")


def test_probability_targets_fall_back_to_autograd_under_auto():
    model = net(nn.Tanh)
    X, _ = make_data()
    soft = torch.softmax(torch.randn(40, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64), -1)
    op = HessianOperator(model, F.cross_entropy, (X, soft))
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    H = dense_hessian(model.eval(), X, soft, loss=F.cross_entropy)
    assert relative(op.matvec(v), H @ v) < 1e-10
    assert op.product == "reverse"
    strict = HessianOperator(model, F.cross_entropy, (X, soft), product="layerwise")
    with pytest.raises(OptionError, match="cannot handle"):
        strict.matvec(v)


def test_nan_inputs_raise():
    model = net(nn.Tanh)
    X, y = make_data()
    X[3, 1] = float("nan")
    op = HessianOperator(model, F.cross_entropy, (X, y))
    with pytest.raises(LossError):
        op.matvec(torch.ones(op.shape[0], dtype=torch.float64))


def cnn(activation, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3), activation(), nn.Conv2d(3, 4, 2, stride=2, padding=1), activation(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 3),
    ).double()


@pytest.mark.parametrize("loss_name", ["F.cross_entropy", "F.mse_loss", "squared_loss labels"])
@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh])
def test_convolutional_net_matches_dense_hessian(activation, loss_name):
    loss, kind = LOSSES[loss_name]
    model = cnn(activation)
    _, y = targets(kind, n=24)
    X = torch.randn(24, 1, 8, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    op = HessianOperator(model, loss, (X, y))
    assert op.product == "layerwise"
    H = dense_hessian(model.eval(), X, y, loss=loss)
    V = torch.randn(3, op.shape[0], generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert relative(op.matmat(V), V @ H) < 1e-10
    first = HessianOperator(model, loss, (X, y), params="0.*")
    H0 = dense_hessian(model, X, y, loss=loss, names=["0.weight", "0.bias"])
    W = V[:, : first.shape[0]]
    assert relative(first.matmat(W), W @ H0) < 1e-10


def test_average_pooling_falls_back_to_autograd():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(18, 3)).double()
    X = torch.randn(10, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))
    assert HessianOperator(model, F.cross_entropy, (X, y)).product == "reverse"


# ------------------------------------------------------------------------------ squared loss (layerwise_kind protocol)


def test_squared_loss_is_recognised_by_its_declared_kind():
    assert squared_loss.layerwise_kind == "squared"
    assert layerwise.loss_kind(squared_loss) == "squared"
    model = net(nn.Tanh)
    X, y = make_data()
    assert HessianOperator(model, squared_loss, (X, y)).product == "layerwise"
    assert HessianOperator(model, lambda out, t: squared_loss(out, t), (X, y)).product == "reverse"


def test_declared_kind_is_ignored_unless_known_and_not_copied_by_a_wrapper():
    import functools

    def unknown(out, t):
        return squared_loss(out, t)

    unknown.layerwise_kind = "hinge"
    assert layerwise.loss_kind(unknown) is None

    @functools.wraps(squared_loss)  # copies layerwise_kind, but computes twice the loss
    def doubled(out, t):
        return 2 * squared_loss(out, t)

    assert doubled.layerwise_kind == "squared" and layerwise.loss_kind(doubled) is None
    X, y = make_data()
    assert HessianOperator(net(nn.Tanh), doubled, (X, y)).product == "reverse"


@pytest.mark.parametrize("kind", ["labels", "values"])
def test_squared_loss_on_streamed_batches_equals_the_reverse_path(kind):
    model = net(nn.Sigmoid)
    X, y = targets(kind, n=53)
    batches = [(X[:20], y[:20]), (X[20:41], y[20:41]), (X[41:], y[41:])]
    fast = HessianOperator(model, squared_loss, batches)
    slow = HessianOperator(model, squared_loss, batches, product="reverse")
    V = torch.randn(3, fast.shape[0], generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    assert relative(fast.matmat(V), slow.matmat(V)) < 1e-10
    assert fast.product == "layerwise"


def test_squared_loss_with_broadcasting_targets():
    model = net(nn.Tanh)
    X, _ = make_data()
    row = torch.randn(1, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)  # same target for all
    op = HessianOperator(model, squared_loss, (X, row))
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    assert relative(op.matvec(v), dense_hessian(model.eval(), X, row, loss=squared_loss) @ v) < 1e-10
    assert op.product == "layerwise"
    # (40, 3) outputs against (3, 40) targets: same size, but the loss does not treat them as one target per
    # output, so "auto" falls back to autograd and "layerwise" refuses
    wrong = torch.randn(3, 40, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    auto = HessianOperator(model, squared_loss, (X, wrong))
    with pytest.raises(RuntimeError):  # the loss itself cannot broadcast them
        auto.matvec(v)
    assert auto.product == "reverse"
    strict = HessianOperator(model, squared_loss, (X, wrong), product="layerwise")
    with pytest.raises(OptionError, match="cannot handle this data: the squared loss needs float targets"):
        strict.matvec(v)
    labels_2d = torch.zeros(40, 1, dtype=torch.long)
    strict = HessianOperator(model, squared_loss, (X, labels_2d), product="layerwise")
    with pytest.raises(OptionError, match="integer labels needs one label per sample"):
        strict.matvec(v)
