"""The forward-over-reverse Hessian product under the mean squared error: ``F.mse_loss``/``nn.MSELoss`` fail there on
torch 2.13 ("ZeroTensors are immutable") and crash the interpreter under ``torch.compile``; landscape computes the
same loss elementwise on that path (:mod:`landscape.operators.mse`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from landscape.errors import OptionError
from landscape.operators import HessianOperator, ModelLoss
from landscape.operators.mse import elementwise_mse, mse_elementwise
from reference import dense_hessian

ROOT = Path(__file__).resolve().parents[1]


def regression_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    gen = torch.Generator().manual_seed(1)
    return model, torch.randn(7, 3, generator=gen, dtype=torch.float64), torch.randn(7, 2, generator=gen,
                                                                                      dtype=torch.float64)


def probes(n: int) -> torch.Tensor:
    return torch.randn(3, n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


@pytest.mark.parametrize("name", ["F.mse_loss", "nn.MSELoss()", "nn.MSELoss(reduction='sum')", "model loss"])
def test_forward_product_under_mse_equals_the_dense_hessian(name):
    model, X, Y = regression_case()
    loss = {"F.mse_loss": F.mse_loss, "nn.MSELoss()": nn.MSELoss(), "nn.MSELoss(reduction='sum')": nn.MSELoss(
        reduction="sum"), "model loss": ModelLoss(lambda m, batch: F.mse_loss(m(batch[0]), batch[1]))}[name]
    truth_loss = (lambda out, y: F.mse_loss(out, y, reduction="sum")) if "sum" in name else F.mse_loss
    H = dense_hessian(model, X, Y, truth_loss)
    V = probes(H.shape[0])
    op = HessianOperator(model, loss, (X, Y), product="forward")
    torch.testing.assert_close(op.matmat(V), V @ H.T, rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore:size_average and reduce args will be deprecated")
def test_elementwise_mse_is_f_mse_loss():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 3, generator=gen, dtype=torch.float64), torch.randn(4, 3, generator=gen, dtype=torch.float64)
    w = torch.rand(4, 3, generator=gen, dtype=torch.float64)
    for kwargs in ({}, {"reduction": "sum"}, {"reduction": "none"}, {"reduce": False}, {"size_average": False},
                   {"weight": w}):
        torch.testing.assert_close(mse_elementwise(a, b, **kwargs), F.mse_loss(a, b, **kwargs), rtol=1e-14, atol=0)
    with pytest.warns(UserWarning, match="target size"):
        expected = F.mse_loss(a, b[:1])
    torch.testing.assert_close(mse_elementwise(a, b[:1]), expected, rtol=1e-14, atol=0)  # broadcast alike
    with pytest.raises(ValueError, match="reduction"):
        mse_elementwise(a, b, reduction="max")
    with elementwise_mse():
        torch.testing.assert_close(nn.MSELoss()(a, b), F.mse_loss(a, b), rtol=1e-14, atol=0)
    torch.testing.assert_close(torch.exp(a), a.exp())  # nothing else changes, and the mode is gone


COMPILED = textwrap.dedent("""
    import json, sys
    import torch
    from torch import nn
    from landscape.operators import HessianOperator
    from test_mse_forward import probes, regression_case
    model, X, Y = regression_case()
    op = HessianOperator(model, nn.MSELoss(), (X, Y), compile=True)
    print(json.dumps(op.matmat(probes(op.shape[0])).tolist()))
""")


@pytest.mark.slow
def test_compiled_product_under_mse_runs_and_equals_the_dense_hessian():
    """In a subprocess: torch.compile of this product segfaulted the interpreter before the workaround."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", COMPILED], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    model, X, Y = regression_case()
    H = dense_hessian(model, X, Y, F.mse_loss)
    V = probes(H.shape[0])
    product = torch.tensor(json.loads(proc.stdout.strip().splitlines()[-1]), dtype=torch.float64)
    torch.testing.assert_close(product, V @ H.T, rtol=1e-10, atol=1e-12)


def test_forward_product_without_a_forward_formula_is_refused_in_one_line():
    model, X, Y = regression_case()
    op = HessianOperator(model, F.huber_loss, (X, Y), product="forward")  # torch has no forward AD for its backward
    with pytest.raises(OptionError, match='^product="forward" needs a forward-mode derivative.*use product="reverse"$'):
        op.matvec(probes(op.shape[0])[0])
