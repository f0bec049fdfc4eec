"""The same products and algorithms on CUDA: every tensor stays on the operator's device. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from conftest import make_data, make_mlp
from landscape import HessianOperator, hutchpp, lanczos, spectral_density

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("product", ["layerwise", "reverse", "forward"])
def test_products_on_cuda_match_cpu(product):
    model, (X, y) = make_mlp(), make_data()
    cpu = HessianOperator(model, F.cross_entropy, (X, y), product=product)
    gpu = HessianOperator(model, F.cross_entropy, (X, y), product=product, device="cuda")
    V = torch.randn(3, cpu.shape[0], dtype=torch.float64)
    out = gpu.matmat(V.cuda())
    assert out.device.type == "cuda"
    assert torch.allclose(out.cpu(), cpu.matmat(V), rtol=1e-10, atol=1e-12)


def test_algorithms_on_cuda_keep_their_tensors_there():
    op = HessianOperator(make_mlp(), F.cross_entropy, make_data(), device="cuda")
    top = lanczos(op, 3, seed=0)
    assert top.vectors.device.type == "cuda"
    cpu_top = lanczos(HessianOperator(make_mlp(), F.cross_entropy, make_data()), 3, seed=0)
    assert abs(top.values - cpu_top.values).max() < 1e-8
    assert spectral_density(op, num_probes=2, num_steps=10).weights.sum() > 0
    assert hutchpp(op, 30, seed=0).num_matvecs == 30


def test_compiled_product_on_cuda_matches_cpu():
    model, (X, y) = make_mlp(), make_data()
    cpu = HessianOperator(model, F.cross_entropy, (X, y), product="reverse")
    gpu = HessianOperator(model, F.cross_entropy, (X, y), compile=True, device="cuda")
    V = torch.randn(3, cpu.shape[0], dtype=torch.float64)
    out = gpu.matmat(V.cuda())
    assert out.device.type == "cuda"
    assert torch.allclose(out.cpu(), cpu.matmat(V), rtol=1e-10, atol=1e-12)


def test_resnet18_product_on_cuda_matches_cpu():
    from landscape.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=3, width=4).double().eval()
    X, y = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    cpu = HessianOperator(model, F.cross_entropy, (X, y))
    gpu = HessianOperator(model, F.cross_entropy, (X, y), device="cuda")
    v = torch.randn(cpu.shape[0], dtype=torch.float64)
    assert torch.allclose(gpu.matvec(v.cuda()).cpu(), cpu.matvec(v), rtol=1e-9, atol=1e-12)


def test_training_with_tracking_on_cuda_matches_cpu(tmp_path):
    from landscape import store
    from landscape.cli import main

    common = ["train", "--model", "mlp", "--model-kwargs", '{"sizes": [64, 8, 10]}', "--data", "digits", "--subset",
              "101", "--dtype", "float64", "--lr", "0.1", "--steps", "10", "--track-every", "5", "--quiet"]
    assert main([*common, "-o", str(tmp_path / "cpu.h5")]) == 0
    assert main([*common, "--device", "cuda", "-o", str(tmp_path / "gpu.h5")]) == 0
    cpu, gpu = (store.read_run(tmp_path / f"{d}.h5").tables["run/curvature"] for d in ("cpu", "gpu"))
    for column in ("lambda_max", "trace", "train_loss", "grad_norm"):
        assert torch.allclose(torch.as_tensor(gpu[column]), torch.as_tensor(cpu[column]), rtol=1e-8), column
