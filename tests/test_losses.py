"""The squared loss, loss resolution by name or spec, provenance names and the target checks of ``landscape.losses``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_data, make_mlp
from torch import nn
from torch.func import hessian

import landscape
from landscape.errors import DataError, OptionError
from landscape.losses import BUILTIN_LOSSES, check_targets, loss_name, resolve_loss, squared_loss
from landscape.operators.functional import ModelLoss

HERE = str(Path(__file__).parent)


@pytest.fixture(autouse=True)
def tests_on_path(monkeypatch):
    """Make ``datasets_for_tests`` importable for the ``module:function`` specs."""
    monkeypatch.syspath_prepend(HERE)


def outputs_and_labels(n: int = 6, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, classes, generator=gen, dtype=torch.float64), torch.randint(0, classes, (n,), generator=gen)


# ------------------------------------------------------------------------------------------------------ squared loss


def test_squared_loss_closed_form():
    out, y = outputs_and_labels()
    onehot = torch.zeros_like(out)
    onehot[torch.arange(len(y)), y] = 1.0
    expected = 0.5 * ((out - onehot) ** 2).sum() / len(y)
    torch.testing.assert_close(squared_loss(out, y), expected)
    torch.testing.assert_close(squared_loss(out, onehot), expected)


def test_squared_loss_hessian_in_outputs_is_identity_over_n():
    out, y = outputs_and_labels()
    H = hessian(lambda o: squared_loss(o, y))(out).reshape(out.numel(), out.numel())
    torch.testing.assert_close(H, torch.eye(out.numel(), dtype=out.dtype) / len(y))


# -------------------------------------------------------------------------------------------------------- resolving


@pytest.mark.parametrize("name", ["ce", "cross_entropy", "cross-entropy"])
def test_cross_entropy_names_give_the_function_itself(name):
    assert resolve_loss(name) is F.cross_entropy


def test_builtin_names():
    assert resolve_loss("mse") is F.mse_loss and resolve_loss("squared") is squared_loss
    assert set(BUILTIN_LOSSES) == {"cross-entropy", "ce", "cross_entropy", "mse", "squared", "next-token",
                                   "next_token"}


def test_default_loss_follows_the_task():
    assert resolve_loss(None) is F.cross_entropy
    assert resolve_loss(None, "classification") is F.cross_entropy and resolve_loss(None, "regression") is F.mse_loss
    with pytest.raises(OptionError, match="no default loss for data of task 'unknown'; name the loss"):
        resolve_loss(None, "unknown")


def test_unknown_loss_lists_the_choices():
    with pytest.raises(OptionError, match=r"unknown loss 'hinge': expected one of cross-entropy, .*squared, "
                                          r".*next-token.*, or 'package.module:function'"):
        resolve_loss("hinge")


def test_callable_spec_is_a_model_loss():
    loss = resolve_loss("datasets_for_tests:cross_entropy_model_loss")
    assert isinstance(loss, ModelLoss) and loss.name == "datasets_for_tests:cross_entropy_model_loss"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:loss", "cannot import module 'no_such_module_xyz' of loss 'no_such_module_xyz:loss'"),
        ("datasets_for_tests:missing", "no attribute 'missing' named by loss 'datasets_for_tests:missing'"),
        ("datasets_for_tests:NOT_CALLABLE", "loss 'datasets_for_tests:NOT_CALLABLE' is not callable"),
    ],
)
def test_callable_spec_errors(spec, message):
    with pytest.raises(OptionError, match=message):
        resolve_loss(spec)


def test_model_loss_spec_gives_the_output_loss_hessian():
    model, (X, y) = make_mlp(), make_data()
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(2),
                    dtype=torch.float64)
    spec_loss = resolve_loss("datasets_for_tests:cross_entropy_model_loss")
    by_spec = landscape.HessianOperator(model, spec_loss, (X, y), dtype=torch.float64).matvec(v)
    by_name = landscape.HessianOperator(model, resolve_loss("ce"), (X, y), dtype=torch.float64).matvec(v)
    torch.testing.assert_close(by_spec, by_name)


# ------------------------------------------------------------------------------------------------------------ names


def test_loss_names():
    def my_loss(out, t):
        return F.l1_loss(out, t)

    assert [loss_name(resolve_loss(n)) for n in ("ce", "mse", "squared")] == ["cross-entropy", "mse", "squared"]
    assert loss_name(ModelLoss(my_loss, name="pkg.mod:fn")) == "pkg.mod:fn"
    assert loss_name(my_loss) == "test_loss_names.<locals>.my_loss"
    assert loss_name(nn.L1Loss()) == "L1Loss"


# ----------------------------------------------------------------------------------------------------- target checks


def test_valid_targets_pass():
    out, y = outputs_and_labels()
    for loss in (F.cross_entropy, squared_loss):
        check_targets(loss, out, y)
    check_targets(F.mse_loss, out, out.clone())
    check_targets(squared_loss, out, out.clone())
    check_targets(F.cross_entropy, out, out.softmax(1))


@pytest.mark.parametrize("loss", [F.cross_entropy, squared_loss])
def test_labels_out_of_range(loss):
    out, y = outputs_and_labels(classes=10)
    y[2] = 12
    with pytest.raises(DataError, match=r"labels out of range: found label 12 but the model has 10 outputs"):
        check_targets(loss, out, y)
    y[2], y[3] = 0, -1
    with pytest.raises(DataError, match="found label -1"):
        check_targets(loss, out, y)


def test_integer_labels_for_mse_suggest_squared():
    out, y = outputs_and_labels()
    with pytest.raises(DataError, match="mse loss needs float targets .* use the 'squared' loss"):
        check_targets(F.mse_loss, out, y)


@pytest.mark.parametrize("loss", [F.mse_loss, squared_loss])
def test_float_target_shape_mismatch(loss):
    out = torch.zeros(5, 1)
    with pytest.raises(DataError, match=r"got targets of shape \(5,\) for outputs of shape \(5, 1\)"):
        check_targets(loss, out, torch.zeros(5))


def test_cross_entropy_needs_2d_outputs():
    with pytest.raises(DataError, match=r"cross-entropy needs model outputs of shape \(batch, classes\); got \(5,\)"):
        check_targets(F.cross_entropy, torch.zeros(5), torch.zeros(5, dtype=torch.long))


def test_labels_must_be_one_per_sample():
    out, y = outputs_and_labels()
    with pytest.raises(DataError, match=r"integer labels must be one per sample, shape \(6,\).*got labels of shape "
                                        r"\(6, 1\)"):
        check_targets(squared_loss, out, y[:, None])


def test_model_losses_and_other_losses_are_not_checked():
    out, y = outputs_and_labels()
    check_targets(resolve_loss("datasets_for_tests:cross_entropy_model_loss"), out, y + 100)
    check_targets(nn.L1Loss(), out, y + 100)


def test_chebyshev_toy_initial_sharpness_is_documented_under_squared_loss():
    """ALGORITHMS.md's "λmax ≈ 2.9 at init" for the Chebyshev toy is the ½·MSE convention, i.e. the squared loss
    (F.mse_loss doubles it): the median over seeds lies near 2.9 (≈ 2.9 with Xavier-uniform, ≈ 2.4 with normal)."""
    from landscape.data import chebyshev
    from landscape.models import chebyshev_net

    X, y = chebyshev()
    sharpness = []
    for seed in range(5):
        torch.manual_seed(seed)
        model = chebyshev_net()
        squared = landscape.hessian_eigen(model, squared_loss, (X, y), k=1, dtype=torch.float64).values[0]
        mse = landscape.hessian_eigen(model, F.mse_loss, (X, y), k=1, dtype=torch.float64).values[0]
        torch.testing.assert_close(mse, 2 * squared)
        sharpness.append(float(squared))
    assert 2.0 < sorted(sharpness)[2] < 3.6
