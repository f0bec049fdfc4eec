"""``compile=True`` (``--compile``): the compiled forward-over-reverse product equals the dense Hessian."""

from __future__ import annotations

import pytest
import torch

from landscape import HessianOperator, OptionError
from landscape.analysis import AnalysisSettings
from landscape.operators.factory import curvature_operator
from landscape.tracking import CurvatureTracker, TrackerSettings
from conftest import make_mlp, mean_ce


def test_compiled_products_match_dense_and_are_shared(mlp, data, mlp_hessian):
    """float64: a matvec and a 3-column block (vmapped) to 1e-10, streamed batches, and a second operator on a
    different model of the same kind reuses the compiled graphs and is right too."""
    n = mlp_hessian.shape[0]
    gen = torch.Generator().manual_seed(0)
    V = torch.randn(3, n, generator=gen, dtype=torch.float64)
    op = HessianOperator(mlp, mean_ce, data, compile=True)
    assert op.product == "forward"
    torch.testing.assert_close(op.matvec(V[0]), mlp_hessian @ V[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.matmat(V), V @ mlp_hessian.T, rtol=1e-10, atol=1e-12)
    X, y = data
    streamed = HessianOperator(mlp, mean_ce, [(X[:20], y[:20]), (X[20:], y[20:])], compile=True)
    torch.testing.assert_close(streamed.matvec(V[1]), mlp_hessian @ V[1], rtol=1e-10, atol=1e-12)
    other = make_mlp(seed=1)
    reference = HessianOperator(other, mean_ce, data, product="reverse")
    compiled = HessianOperator(other, mean_ce, data, compile=True)
    torch.testing.assert_close(compiled.matvec(V[2]), reference.matvec(V[2]), rtol=1e-10, atol=1e-12)


def test_compile_options_are_checked(mlp, data):
    with pytest.raises(OptionError, match="cannot be compiled"):
        HessianOperator(mlp, mean_ce, data, product="reverse", compile=True)
    with pytest.raises(OptionError, match="^compile applies to curvature hessian"):
        AnalysisSettings(curvature="ggn", compile=True)
    with pytest.raises(OptionError, match="^compile applies to curvature hessian"):
        curvature_operator("fisher", mlp, mean_ce, data, compile=True)
    with pytest.raises(OptionError, match="^compile applies to curvature hessian"):
        CurvatureTracker(mean_ce, data, settings=TrackerSettings(curvature="ggn", compile=True))
