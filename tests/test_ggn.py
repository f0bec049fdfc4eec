"""GGNOperator and FisherOperator against dense references built independently with torch.func (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import landscape
from landscape import DataError, HessianOperator, LossError, ModelLoss, OptionError
from landscape.losses import squared_loss
from landscape.operators.ggn import FisherOperator, GGNOperator
from conftest import make_data, make_mlp
from reference import dense_ggn, per_sample_gradients

I75 = torch.eye(75, dtype=torch.float64)  # the MLP of conftest has 75 parameters


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def randn(n: int, *shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, n, generator=gen, dtype=torch.float64)


def dense_of(op) -> torch.Tensor:
    return op.matmat(torch.eye(op.shape[0], dtype=op.dtype))


def float_targets(n: int = 40, seed: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def generic_ce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy the operators do not recognise: its output Hessian comes from autograd."""
    return -torch.log_softmax(outputs, dim=-1).gather(1, targets[:, None]).mean()


def small_cnn() -> nn.Sequential:
    torch.manual_seed(4)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3)).double()


# -- the GGN against dense references ------------------------------------------------------------------------------

@pytest.mark.parametrize("product, vectorize", [("reverse", False), ("reverse", True), ("forward", None)])
def test_ggn_matches_dense_cross_entropy(mlp, data, product, vectorize):
    G = dense_ggn(mlp, *data)
    op = GGNOperator(mlp, F.cross_entropy, data, product=product, vectorize=vectorize)
    assert op.shape == G.shape and op.dtype == torch.float64
    V = randn(75, 4, seed=1)
    assert rel(op.matmat(V), V @ G.T) < 1e-10
    assert rel(op.matvec(V[0]), G @ V[0]) < 1e-10
    assert rel(op @ V.T, G @ V.T) < 1e-10


@pytest.mark.parametrize("name, loss, targets", [
    ("mse", F.mse_loss, float_targets()),
    ("squared-labels", squared_loss, make_data()[1]),
    ("squared-float", squared_loss, float_targets()),
    ("generic-ce", generic_ce, make_data()[1]),  # autograd's output Hessian, no closed form
    ("mse-module", nn.MSELoss(), float_targets()),
    ("ignored-label", F.cross_entropy, torch.where(torch.arange(40) == 5, -100, make_data()[1])),  # no closed form
])
@pytest.mark.parametrize("product", ["reverse", "forward"])
def test_ggn_matches_dense_other_losses(mlp, data, name, loss, targets, product):
    X = data[0]
    G = dense_ggn(mlp, X, targets, loss)
    op = GGNOperator(mlp, loss, (X, targets), product=product)
    V = randn(75, 3, seed=2)
    assert rel(op.matmat(V), V @ G.T) < 1e-10


def test_generic_output_hessian_vectorized(mlp, data):
    G = dense_ggn(mlp, *data, loss=generic_ce)
    op = GGNOperator(mlp, generic_ce, data, vectorize=True)
    assert rel(dense_of(op), G) < 1e-10


@pytest.mark.parametrize("S", [2, 5])  # fewer factors than outputs per sample (kept), or more (summed densely)
def test_outer_output_matrix(S):
    from landscape.operators.ggn import _Outer

    gen = torch.Generator().manual_seed(S)
    R = torch.randn(S, 6, 4, generator=gen, dtype=torch.float64)
    U = torch.randn(3, 6, 4, generator=gen, dtype=torch.float64)
    expected = torch.einsum("sbc,sbd,kbd->kbc", R, R, U) * 0.25
    assert rel(_Outer(R, 0.25).apply(U), expected) < 1e-14


def test_ggn_matches_dense_on_a_cnn():
    model = small_cnn()
    gen = torch.Generator().manual_seed(5)
    X = torch.randn(12, 1, 6, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (12,), generator=gen)
    G = dense_ggn(model, X, y)
    for product in ("reverse", "forward"):
        op = GGNOperator(model, F.cross_entropy, (X, y), product=product)
        assert rel(dense_of(op), G) < 1e-10


@pytest.mark.parametrize("loss, targets", [(squared_loss, make_data()[1]), (F.mse_loss, float_targets())])
def test_ggn_equals_hessian_for_a_linear_model(data, loss, targets):
    torch.manual_seed(6)
    model = nn.Linear(5, 3).double()
    X = data[0]
    ggn = GGNOperator(model, loss, (X, targets))
    hess = HessianOperator(model, loss, (X, targets), product="reverse")
    V = randn(ggn.shape[0], 5, seed=3)
    assert rel(ggn.matmat(V), hess.matmat(V)) < 1e-10


# -- operator properties ------------------------------------------------------------------------------------------

def test_streamed_batches_equal_one_batch(mlp, data):
    X, y = data
    batches = [(X[:7], y[:7]), (X[7:8], y[7:8]), (X[8:], y[8:])]
    V = randn(75, 3, seed=4)
    single = GGNOperator(mlp, F.cross_entropy, (X, y))
    for product in ("reverse", "forward"):
        streamed = GGNOperator(mlp, F.cross_entropy, batches, product=product)
        assert rel(streamed.matmat(V), single.matmat(V)) < 1e-10
    for kind in ("exact", "empirical"):
        one = FisherOperator(mlp, F.cross_entropy, (X, y), kind=kind)
        many = FisherOperator(mlp, F.cross_entropy, batches, kind=kind)
        assert rel(many.matmat(V), one.matmat(V)) < 1e-10


@pytest.mark.parametrize("make", [
    lambda m, d: GGNOperator(m, F.cross_entropy, d),
    lambda m, d: GGNOperator(m, F.cross_entropy, d, product="forward"),
    lambda m, d: FisherOperator(m, F.cross_entropy, d, kind="true", num_samples=3),
    lambda m, d: FisherOperator(m, F.cross_entropy, d, kind="empirical"),
])
def test_matmat_stacked_matvecs_symmetric_psd(mlp, data, make):
    op = make(mlp, data)
    V = randn(75, 4, seed=5)
    block = op.matmat(V)
    assert rel(block, torch.stack([op.matvec(v) for v in V])) < 1e-12
    u, v = V[0], V[1]
    assert abs(float(u @ op.matvec(v) - v @ op.matvec(u))) < 1e-12 * float(op.matvec(u).norm() * v.norm())
    A = dense_of(op)
    assert rel(A, A.T) < 1e-12
    assert float(torch.linalg.eigvalsh(0.5 * (A + A.T))[0]) >= -1e-12


# -- the Fisher -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss, targets", [
    (F.cross_entropy, make_data()[1]), (F.mse_loss, float_targets()), (squared_loss, make_data()[1]),
])
def test_exact_fisher_equals_ggn(mlp, data, loss, targets):
    X = data[0]
    G = dense_ggn(mlp, X, targets, loss)
    op = FisherOperator(mlp, loss, (X, targets), kind="exact")
    assert rel(dense_of(op), G) < 1e-10


def test_true_fisher_approaches_ggn_with_more_samples(mlp, data):
    G = dense_ggn(mlp, *data)
    errors = [rel(dense_of(FisherOperator(mlp, F.cross_entropy, data, kind="true", num_samples=s, seed=1)), G)
              for s in (20, 2000)]
    assert errors[1] < 0.1 and errors[1] < errors[0] / 3  # ~1/sqrt(S)


@pytest.mark.parametrize("loss", [F.mse_loss, squared_loss])
def test_true_gaussian_fisher_approaches_ggn(mlp, data, loss):
    # the implied variance: unit for ½‖f − y‖², C/2 for F.mse_loss; either way the Fisher's mean is the GGN
    X, Y = data[0], float_targets()
    G = dense_ggn(mlp, X, Y, loss)
    errors = [rel(dense_of(FisherOperator(mlp, loss, (X, Y), kind="true", num_samples=s, seed=2)), G)
              for s in (20, 2000)]
    assert errors[1] < 0.1 and errors[1] < errors[0] / 3


def test_true_fisher_is_a_fixed_matrix(mlp, data):
    X, y = data
    batches = [(X[:15], y[:15]), (X[15:], y[15:])]
    V = randn(75, 2, seed=6)
    for source in ((X, y), batches):
        op = FisherOperator(mlp, F.cross_entropy, source, kind="true", seed=3)
        first = op.matmat(V)
        assert torch.equal(op.matmat(V), first)  # the same draws at every product, cached or streamed
        assert op.check_deterministic() == 0.0
        again = FisherOperator(mlp, F.cross_entropy, source, kind="true", seed=3)
        assert torch.equal(again.matmat(V), first)
        other = FisherOperator(mlp, F.cross_entropy, source, kind="true", seed=4)
        assert rel(other.matmat(V), first) > 1e-3


@pytest.mark.parametrize("loss, targets", [
    (F.cross_entropy, make_data()[1]), (F.mse_loss, float_targets()), (squared_loss, make_data()[1]),
])
def test_empirical_fisher_equals_per_sample_loop(mlp, data, loss, targets):
    X = data[0]
    Gs = per_sample_gradients(mlp, X, targets, loss)
    reference = Gs.T @ Gs / X.shape[0]
    for product in ("reverse", "forward"):
        op = FisherOperator(mlp, loss, (X, targets), kind="empirical", product=product)
        assert rel(dense_of(op), reference) < 1e-10


# -- the algorithms accept them ---------------------------------------------------------------------------------

def test_lanczos_trace_and_density_on_ggn(mlp, data):
    op = GGNOperator(mlp, F.cross_entropy, data)
    evals = torch.linalg.eigvalsh(dense_ggn(mlp, *data)).numpy()
    result = landscape.lanczos(op, 3)
    assert np.allclose(np.sort(result.values)[::-1], evals[::-1][:3], rtol=1e-6, atol=0)
    assert abs(landscape.trace(op, 75).estimate - evals.sum()) < 1e-10 * abs(evals.sum())
    density = landscape.spectral_density(FisherOperator(mlp, F.cross_entropy, data, kind="exact"), num_probes=2,
                                         num_steps=10)
    nodes = density.nodes[np.isfinite(density.nodes)]
    assert nodes.min() > evals.min() - 1e-8 and nodes.max() < evals.max() + 1e-8


# -- semantics shared with HessianOperator ----------------------------------------------------------------------

def test_parameter_filter_gives_the_ggn_of_those_parameters(mlp, data):
    names = ["0.bias", "2.weight"]
    op = GGNOperator(mlp, F.cross_entropy, data, params=names)
    assert op.names == names and op.shape == (32, 32)
    assert rel(dense_of(op), dense_ggn(mlp, *data, names=names)) < 1e-10


def test_float64_on_request_for_a_float32_model():
    model32 = make_mlp(dtype=torch.float32)
    X32, y = make_data(dtype=torch.float32)
    op = GGNOperator(model32, F.cross_entropy, (X32, y), dtype=torch.float64)
    assert all(p.dtype == torch.float32 for p in model32.parameters())
    G = dense_ggn(make_mlp(dtype=torch.float32).double(), X32.double(), y)
    out = op.matvec(I75[0].float())
    assert out.dtype == torch.float64 and rel(out, G[0]) < 1e-10


def test_batchnorm_dropout_model_runs_in_eval_mode(data):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, 3)).double()
    model.train()
    with torch.no_grad():
        model(data[0] * 2 + 1)  # non-trivial running statistics
    flags = [m.training for m in model.modules()]
    running = model[1].running_mean.clone()
    op = GGNOperator(model, F.cross_entropy, data)
    assert op.check_deterministic() < 1e-12
    A = dense_of(op)
    assert [m.training for m in model.modules()] == flags and torch.equal(model[1].running_mean, running)
    model.eval()
    assert rel(A, dense_ggn(model, *data)) < 1e-10


def test_torchscript_model_on_the_reverse_path(mlp, data):
    scripted = torch.jit.script(mlp)
    op = GGNOperator(scripted, F.cross_entropy, data)
    V = randn(75, 2, seed=7)
    assert rel(op.matmat(V), V @ dense_ggn(mlp, *data).T) < 1e-10
    with pytest.raises(OptionError, match="torch.func"):
        GGNOperator(scripted, F.cross_entropy, data, product="forward")


def test_release_drops_the_cached_linearisation(mlp, data):
    op = GGNOperator(mlp, F.cross_entropy, data)
    v = randn(75, seed=8)
    first = op.matvec(v)
    assert op._cache is not None
    op.release()
    assert op._cache is None and torch.equal(op.matvec(v), first)


# -- errors ----------------------------------------------------------------------------------------------------

def test_model_loss_raises(mlp, data):
    model_loss = ModelLoss(lambda model, batch: mean_ce(model(batch[0]), batch[1]))
    with pytest.raises(OptionError, match="output loss"):
        GGNOperator(mlp, model_loss, data)
    with pytest.raises(OptionError, match="output loss"):
        FisherOperator(mlp, model_loss, data, kind="exact")


@pytest.mark.parametrize("kwargs", [{"kind": "fisher"}, {"num_samples": 0}, {"num_samples": 2.5}, {"seed": "a"},
                                    {"product": "layerwise"}])
def test_bad_fisher_options_raise(mlp, data, kwargs):
    with pytest.raises(OptionError):
        FisherOperator(mlp, F.cross_entropy, data, **kwargs)


def test_fisher_needs_a_known_likelihood(mlp, data):
    with pytest.raises(OptionError, match="empirical"):
        FisherOperator(mlp, generic_ce, data, kind="true")
    FisherOperator(mlp, generic_ce, data, kind="empirical")  # any per-sample mean loss


def test_cross_entropy_fisher_needs_2d_outputs(data):
    model = nn.Sequential(nn.Linear(5, 3), nn.Unflatten(1, (3, 1))).double()
    op = FisherOperator(model, F.cross_entropy, (data[0], data[1][:, None]), kind="exact")
    with pytest.raises(DataError, match="classes"):
        op.matvec(randn(op.shape[0]))


@pytest.mark.parametrize("product", ["reverse", "forward"])
def test_nan_raises(mlp, data, product):
    X, y = data
    bad = X.clone()
    bad[30, 2] = float("nan")
    with pytest.raises(LossError, match="not finite"):
        GGNOperator(mlp, F.cross_entropy, (bad, y), product=product).matvec(randn(75))
    with pytest.raises(LossError, match="not finite"):  # in a later batch
        GGNOperator(mlp, F.cross_entropy, [(X[:20], y[:20]), (bad[20:], y[20:])], product=product).matvec(randn(75))
    Y = float_targets()
    Y[3, 1] = float("nan")  # the MSE output Hessian ignores the targets, but the loss is NaN: fail as Hessians do
    with pytest.raises(LossError, match="not finite"):
        GGNOperator(mlp, F.mse_loss, (X, Y), product=product).matvec(randn(75))


def test_non_scalar_loss_raises(mlp, data):
    op = GGNOperator(mlp, lambda out, y: F.cross_entropy(out, y, reduction="none"), data)
    with pytest.raises(LossError, match="scalar"):
        op.matvec(randn(75))


class _WithUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.ones(2))
        self.a = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x)


@pytest.mark.parametrize("product, vectorize", [("reverse", False), ("reverse", True), ("forward", None)])
def test_parameters_the_outputs_ignore_have_zero_rows(data, product, vectorize):
    torch.manual_seed(7)
    model = _WithUnused().double()
    A = dense_of(GGNOperator(model, F.cross_entropy, data, product=product, vectorize=vectorize))
    assert torch.count_nonzero(A[:2]) == 0 and torch.count_nonzero(A[:, :2]) == 0
    assert rel(A[2:, 2:], dense_ggn(model, *data, names=["a.weight", "a.bias"])) < 1e-10
    only = GGNOperator(model, F.cross_entropy, data, params="unused", product=product, vectorize=vectorize)
    assert torch.count_nonzero(dense_of(only)) == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("make", [
    lambda **kw: ("ggn-reverse", GGNOperator(make_mlp(), F.cross_entropy, make_data(), **kw)),
    lambda **kw: ("ggn-forward", GGNOperator(make_mlp(), F.cross_entropy, make_data(), product="forward", **kw)),
    lambda **kw: ("mse-generic", GGNOperator(make_mlp(), lambda a, t: ((a - t) ** 2).mean(),
                                             (make_data()[0], float_targets()), **kw)),
    lambda **kw: ("exact", FisherOperator(make_mlp(), F.cross_entropy, make_data(), kind="exact", **kw)),
    lambda **kw: ("empirical", FisherOperator(make_mlp(), F.cross_entropy, make_data(), kind="empirical", **kw)),
    lambda **kw: ("true", FisherOperator(make_mlp(), F.cross_entropy, make_data(), num_samples=7, **kw)),
    lambda **kw: ("true-mse", FisherOperator(make_mlp(), F.mse_loss, (make_data()[0], float_targets()),
                                             num_samples=7, **kw)),
])
def test_on_cuda(make):
    name, gpu = make(device="cuda")
    V = randn(75, 3, seed=9)
    out = gpu.matmat(V.cuda())
    assert out.device.type == "cuda" and rel(gpu.matmat(V.cuda()), out) < 1e-12
    if not name.startswith("true"):  # the CUDA generator draws other labels than the CPU one
        assert rel(out.cpu(), make()[1].matmat(V)) < 1e-10
    assert landscape.lanczos(gpu, 2, seed=0).vectors.device.type == "cuda"
