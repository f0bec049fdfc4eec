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
