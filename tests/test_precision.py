"""Checkpoints saved in bfloat16 or float16: analyze, the operators, Jacobian norms and surfaces compute in the
precision asked for (float32 by default, float64 with --dtype), whatever the checkpoint's, and the results record
both precisions."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from landscape import FisherOperator, GGNOperator, HessianOperator, store
from landscape.cli import main
from landscape.jacobian import jacobian_norms
from landscape.models import mlp

from reference import dense_ggn, dense_hessian

SIZES = [4, 6, 3]
KWARGS = json.dumps({"sizes": SIZES})


@pytest.fixture(scope="module")
def models():
    """A small MLP in bfloat16 and in float16, and each one's exact float64 upcast."""
    torch.manual_seed(0)
    base = mlp(SIZES)
    out = {}
    for half in (torch.bfloat16, torch.float16):
        model = mlp(SIZES).to(half)
        model.load_state_dict({k: v.to(half) for k, v in base.state_dict().items()})
        out[half] = (model, mlp(SIZES).double())
        out[half][1].load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    return out


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(30, 4, generator=gen), torch.randint(0, 3, (30,), generator=gen)


def top(H: torch.Tensor, k: int) -> np.ndarray:
    return torch.linalg.eigvalsh(H).flip(0)[:k].numpy()


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_half_precision_state_dict_gives_the_eigenvalues_of_its_upcast(models, data, half, dtype, tmp_path,
                                                                         capsys):
    model, upcast = models[half]
    X, y = data
    torch.save(model.state_dict(), tmp_path / "half.pt")
    np.savez(tmp_path / "data.npz", X=X.numpy(), y=y.numpy())
    out = tmp_path / "out.h5"
    code = main(["analyze", str(tmp_path / "half.pt"), "--model", "mlp", "--model-kwargs", KWARGS, "--data",
                 str(tmp_path / "data.npz"), "--metrics", "eigs", "--top-k", "3", "--tol", "1e-9", "--dtype", dtype,
                 "--quiet", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    record = next(iter(store.read_results(out).values()))
    truth = top(dense_hessian(upcast, X.double(), y), 3)
    np.testing.assert_allclose(record.results["eigen"].values, truth, rtol=1e-12 if dtype == "float64" else 1e-5)
    assert record.attrs["dtype"] == dtype and record.attrs["saved_dtype"] == str(half).replace("torch.", "")


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_operators_on_a_half_precision_model_compute_in_float32_by_default(models, data, half):
    model, upcast = models[half]
    X, y = data
    V = torch.randn(2, sum(p.numel() for p in upcast.parameters()), generator=torch.Generator().manual_seed(2),
                    dtype=torch.float64)
    H, G = dense_hessian(upcast, X.double(), y), dense_ggn(upcast, X.double(), y)
    exact_fisher = functools.partial(FisherOperator, kind="exact")
    for operator, matrix in ((HessianOperator, H), (GGNOperator, G), (exact_fisher, G)):
        op = operator(model, F.cross_entropy, (X, y))
        assert op.dtype == torch.float32 and next(model.parameters()).dtype == half  # the model is left as it was
        torch.testing.assert_close(op.matmat(V.float()).double(), V @ matrix, rtol=1e-4, atol=1e-6)
        op64 = operator(model, F.cross_entropy, (X, y), dtype=torch.float64)
        torch.testing.assert_close(op64.matmat(V), V @ matrix, rtol=1e-10, atol=1e-12)


def test_jacobian_norms_of_a_half_precision_model_are_its_upcasts(models, data):
    model, upcast = models[torch.bfloat16]
    X, y = data
    norms = jacobian_norms(model, (X, y), method="exact")
    exact = jacobian_norms(upcast, (X.double(), y), method="exact")
    np.testing.assert_allclose(norms.frobenius, exact.frobenius, rtol=1e-5)


def test_a_surface_of_a_bfloat16_checkpoint_is_computed_in_float32(models, data, tmp_path, capsys):
    model, upcast = models[torch.bfloat16]
    X, y = data
    torch.save(model.state_dict(), tmp_path / "half.pt")
    np.savez(tmp_path / "data.npz", X=X.numpy(), y=y.numpy())
    code = main(["surface", str(tmp_path / "half.pt"), "--model", "mlp", "--model-kwargs", KWARGS, "--data",
                 str(tmp_path / "data.npz"), "--directions", "random", "--dims", "1", "--grid", "-1:1:3", "--quiet",
                 "-o", str(tmp_path / "s.h5")])
    assert code == 0, capsys.readouterr().err
    surface = next(iter(store.read_results(tmp_path / "s.h5").values())).results["surface"]
    centre = float(F.cross_entropy(upcast(X.double()), y).detach())
    assert surface.dtype == "float32"
    np.testing.assert_allclose(np.asarray(surface.loss).reshape(-1)[1], centre, rtol=1e-6)
