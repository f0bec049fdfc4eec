"""Per-sample input-output Jacobian norms and Lipschitz bounds, against dense float64 Jacobians."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from landscape import store
from landscape.errors import DataError, OptionError
from landscape.jacobian import jacobian_norms, layer_spectral_norm, lipschitz_upper_bound, per_sample_jacobian_norms
from landscape.results import JacobianResult

from conftest import make_data, make_mlp
from reference import dense_jacobians, dense_norms

CONVERGED = dict(power_iterations=2000, tol=1e-14)  # power iteration run to float64 precision


def make_cnn(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """Conv2d(1, 3, 3) - Tanh - MaxPool2d(2) - Flatten - Linear(27, 4) on 1×8×8 inputs."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, 4)).to(dtype)


def image_data(n: int = 12, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=gen, dtype=torch.float64), torch.zeros(n, dtype=torch.long)


# -- exact values ------------------------------------------------------------------------------------------------
def test_linear_model_norms_are_those_of_its_weight():
    torch.manual_seed(0)
    model = nn.Linear(6, 4).double()
    X = torch.randn(10, 6, dtype=torch.float64)
    result = jacobian_norms(model, (X, torch.zeros(10)), **CONVERGED)
    W = model.weight.detach()
    np.testing.assert_allclose(result.frobenius, float(torch.linalg.matrix_norm(W)), rtol=0, atol=1e-10)
    np.testing.assert_allclose(result.spectral, float(torch.linalg.matrix_norm(W, 2)), rtol=0, atol=1e-10)
    assert result.frobenius.dtype == np.float64 and result.frobenius.shape == (10,)


def test_probabilities_match_dense_softmax_jacobian():
    torch.manual_seed(0)
    model = nn.Linear(6, 4).double()
    X = torch.randn(8, 6, dtype=torch.float64)
    result = jacobian_norms(model, (X, torch.zeros(8)), outputs="probabilities", **CONVERGED)
    frob, spec = dense_norms(lambda x: torch.softmax(model(x), dim=1), X)
    np.testing.assert_allclose(result.frobenius, frob, rtol=1e-10)
    np.testing.assert_allclose(result.spectral, spec, rtol=1e-8)
    assert result.outputs == "probabilities"


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_exact_norms_match_dense_jacobians(kind):
    model, (X, y) = (make_mlp(), make_data(n=16)) if kind == "mlp" else (make_cnn(), image_data())
    frob, spec = per_sample_jacobian_norms(model, X, **CONVERGED)
    dense_frob, dense_spec = dense_norms(model, X)
    np.testing.assert_allclose(frob.numpy(), dense_frob, rtol=1e-8)
    np.testing.assert_allclose(spec.numpy(), dense_spec, rtol=1e-8)
    assert frob.dtype == spec.dtype == torch.float64 and frob.shape == spec.shape == (X.shape[0],)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_spectral_never_exceeds_frobenius(kind):
    model, (X, y) = (make_mlp(), make_data(n=16)) if kind == "mlp" else (make_cnn(), image_data())
    result = jacobian_norms(model, (X, y), power_iterations=5)  # even unconverged: a Rayleigh quotient
    _, dense_spec = dense_norms(model, X)
    assert np.all(result.spectral <= result.frobenius * (1 + 1e-12))
    assert np.all(result.spectral <= dense_spec * (1 + 1e-12))


# -- probe estimates ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_probe_frobenius_is_unbiased(distribution):
    model, (X, y) = make_mlp(), make_data(n=200)
    probes = 4
    result = jacobian_norms(model, (X, y), method="probe", num_probes=probes, spectral=False, seed=3,
                            distribution=distribution)
    J = dense_jacobians(model, X)
    A = J @ J.transpose(1, 2)  # (N, C, C): E‖Jᵀu‖² = tr A, Var = 2(‖A‖²_F − Σ A_ii²) or 2‖A‖²_F per probe
    exact = torch.linalg.matrix_norm(J).pow(2).numpy()
    off = A.pow(2).sum((1, 2)) - (A.diagonal(dim1=1, dim2=2).pow(2).sum(1) if distribution == "rademacher" else 0)
    stderr = float(torch.sqrt((2 * off / probes).sum())) / len(X)
    assert abs(np.mean(result.frobenius ** 2) - np.mean(exact)) < 5 * stderr
    assert not np.allclose(result.frobenius ** 2, exact)  # really random
    assert result.method == "probe" and result.num_probes == probes and result.distribution == distribution


def test_probe_frobenius_converges_and_is_exact_for_one_output():
    model, (X, y) = make_mlp(), make_data(n=8)
    exact = jacobian_norms(model, (X, y), spectral=False).frobenius
    many = jacobian_norms(model, (X, y), spectral=False, method="probe", num_probes=4096).frobenius
    np.testing.assert_allclose(many, exact, rtol=0.05)
    torch.manual_seed(0)
    scalar = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 1)).double()  # u = ±1: ‖Jᵀu‖ = ‖J‖
    one = jacobian_norms(scalar, (X, y), spectral=False, method="probe", num_probes=1).frobenius
    np.testing.assert_allclose(one, jacobian_norms(scalar, (X, y), spectral=False).frobenius, rtol=1e-12)


# -- streaming, dtype, device, the model untouched ---------------------------------------------------------------
def test_streaming_equals_single_batch():
    model, (X, y) = make_cnn(), image_data(n=12)
    whole = jacobian_norms(model, (X, y), **CONVERGED)
    parts = jacobian_norms(model, [(X[i:i + 5], y[i:i + 5]) for i in range(0, 12, 5)], **CONVERGED)
    np.testing.assert_allclose(parts.frobenius, whole.frobenius, rtol=1e-12)
    np.testing.assert_allclose(parts.spectral, whole.spectral, rtol=1e-10)


def test_model_is_left_unchanged_and_dtype_device_are_honoured():
    model = make_mlp(dtype=torch.float32)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    X, y = make_data(n=10, dtype=torch.float32)
    result = jacobian_norms(model, (X, y), dtype=torch.float64, device="cpu", **CONVERGED)
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, before[k]), k
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    reference = jacobian_norms(make_mlp(dtype=torch.float64), (X.double(), y), **CONVERGED)
    np.testing.assert_allclose(result.frobenius, reference.frobenius, rtol=1e-12)  # really computed in float64
    np.testing.assert_allclose(result.spectral, reference.spectral, rtol=1e-10)
    single = jacobian_norms(model, (X, y))  # the model's own dtype by default
    np.testing.assert_allclose(single.frobenius, reference.frobenius, rtol=1e-5)
    frob, spec = per_sample_jacobian_norms(model, X)
    assert frob.dtype == spec.dtype == torch.float32 and frob.device == spec.device == X.device


def test_dropout_is_off_during_the_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.5), nn.Tanh(), nn.Linear(8, 3)).double().train()
    X, y = make_data(n=6)
    a, b = (jacobian_norms(model, (X, y), spectral=False).frobenius for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert model.training


def test_bad_options_and_data_fail_clearly():
    model, (X, y) = make_mlp(), make_data(n=4)
    with pytest.raises(OptionError, match="outputs"):
        jacobian_norms(model, (X, y), outputs="softmax")
    with pytest.raises(OptionError, match="nothing to compute"):
        jacobian_norms(model, (X, y), frobenius=False, spectral=False)
    with pytest.raises(OptionError, match="method"):
        jacobian_norms(model, (X, y), method="hutchinson")
    with pytest.raises(DataError, match="floating-point"):
        jacobian_norms(model, (torch.ones(4, 5, dtype=torch.long), y))
    with pytest.raises(DataError, match="empty"):
        jacobian_norms(model, [])


# -- Lipschitz bounds ----------------------------------------------------------------------------------------------
def test_layer_bound_of_a_linear_layer_is_its_spectral_norm():
    torch.manual_seed(0)
    layer = nn.Linear(7, 5).double()
    expected = float(torch.linalg.matrix_norm(layer.weight.detach(), 2))
    assert lipschitz_upper_bound(layer, (7,)) == pytest.approx(expected, rel=1e-12)
    assert lipschitz_upper_bound(nn.Sequential(nn.Sequential(layer)), (7,)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("conv", [
    dict(in_channels=2, out_channels=3, kernel_size=3),
    dict(in_channels=2, out_channels=3, kernel_size=3, padding=1, stride=2),
    dict(in_channels=2, out_channels=4, kernel_size=2, padding=1, dilation=2, groups=2),
    dict(in_channels=2, out_channels=3, kernel_size=3, padding=1, padding_mode="circular"),
])
def test_conv_spectral_norm_matches_dense_operator(conv):
    torch.manual_seed(0)
    layer = nn.Conv2d(**conv).double()
    shape = (2, 5, 5)
    basis = torch.eye(50, dtype=torch.float64).reshape(50, *shape)
    with torch.no_grad():
        dense = (layer(basis) - layer(torch.zeros(1, *shape, dtype=torch.float64))).reshape(50, -1).T  # no bias
    expected = float(torch.linalg.matrix_norm(dense, 2))
    assert layer_spectral_norm(layer, shape, iterations=2000, tol=1e-14) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_layer_product_bounds_the_sampled_lipschitz_norm(kind):
    torch.manual_seed(0)
    if kind == "mlp":
        model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).double()
        X, y = make_data(n=30)
    else:
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 3)).double()
        X, y = image_data(n=30)
    result = jacobian_norms(model, (X, y), frobenius=False, lipschitz_bound=True, **CONVERGED)
    assert 0 < result.spectral_max <= result.lipschitz_upper
    assert result.lipschitz_upper == pytest.approx(lipschitz_upper_bound(model, X.shape[1:]), rel=1e-6)


def test_overlapping_max_pool_counts_its_overlap_and_the_bound_is_tight():
    pool = nn.Sequential(nn.MaxPool2d(3, stride=1), nn.Flatten())
    assert lipschitz_upper_bound(pool, (1, 5, 5)) == pytest.approx(3.0)  # each entry in up to 9 windows
    assert lipschitz_upper_bound(nn.MaxPool2d(2), (1, 4, 4)) == 1.0
    X = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    X[0, 0, 2, 2] = 1.0  # the maximum of all 9 windows: the Jacobian has one column of nine ones
    result = jacobian_norms(pool, (X, torch.zeros(1)))
    assert result.spectral_max == pytest.approx(3.0, rel=1e-12)
    layer = nn.Linear(3, 3)
    assert lipschitz_upper_bound(nn.Sequential(layer, nn.Sigmoid(), nn.LeakyReLU(2.0)), (3,)) == pytest.approx(
        0.25 * 2.0 * layer_spectral_norm(layer, (3,)))


def test_unsupported_module_is_named():
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    with pytest.raises(OptionError, match="BatchNorm1d"):
        lipschitz_upper_bound(model, (5,))
    with pytest.raises(OptionError, match="GELU"):
        jacobian_norms(nn.Sequential(nn.Linear(5, 3), nn.GELU()), make_data(n=3, dtype=torch.float32),
                       lipschitz_bound=True)


# -- results -------------------------------------------------------------------------------------------------------
def test_result_statistics_and_store_round_trip(tmp_path):
    model, (X, y) = make_mlp(), make_data(n=20)
    result = jacobian_norms(model, (X, y), lipschitz_bound=True)
    assert result.spectral_max == result.spectral[result.argmax]
    assert result.frobenius_mean == pytest.approx(result.frobenius.mean())
    assert result.quantiles((0.5,))["spectral"][0.5] == pytest.approx(np.median(result.spectral))
    assert result.lipschitz_upper is not None and result.num_samples == 20
    only_frob = jacobian_norms(model, (X, y), spectral=False, method="probe", seed=None)
    assert only_frob.argmax == int(np.argmax(only_frob.frobenius)) and only_frob.spectral_max is None
    for original in (result, only_frob):
        with h5py.File(tmp_path / "j.h5", "w") as handle:
            store.write_result(handle.create_group("jacobian"), original)
        with h5py.File(tmp_path / "j.h5", "r") as handle:
            back = store.read_result(handle["jacobian"])
        assert isinstance(back, JacobianResult)
        for field in dataclasses.fields(JacobianResult):
            a, b = getattr(original, field.name), getattr(back, field.name)
            if isinstance(a, np.ndarray):
                np.testing.assert_array_equal(a, b, err_msg=field.name)
            else:
                assert a == b, field.name
