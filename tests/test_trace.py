"""Trace and diagonal estimators: exact cases, error rates on a decaying spectrum, standard-error coverage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landscape import (
    DenseOperator,
    HessianOperator,
    OptionError,
    diagonal,
    hutchinson,
    hutchpp,
    krylov_hutchinson,
    trace,
)
from conftest import mean_ce
from reference import random_symmetric, spectrum_matrix

ESTIMATORS = {"hutchinson": hutchinson, "hutch++": hutchpp, "krylov": krylov_hutchinson}


@pytest.fixture(scope="module")
def decaying():
    """1000×1000 with λ_k = k^−1.5 and a seeded random orthogonal basis (the ALGORITHMS.md benchmark)."""
    lam = np.arange(1, 1001, dtype=np.float64) ** -1.5
    return DenseOperator(spectrum_matrix(lam, seed=0)), float(lam.sum())


def median_error(op, true, method, m, seeds=range(20)):
    return float(np.median([abs(ESTIMATORS[method](op, m, seed=s).estimate - true) / true for s in seeds]))


@pytest.mark.parametrize("seed", [0, 1, 7, 123])
def test_hutchinson_exact_on_diagonal(seed):
    d = torch.linspace(-3.0, 5.0, 50, dtype=torch.float64) ** 3
    op = DenseOperator(torch.diag(d))
    result = hutchinson(op, 7, seed=seed)
    assert result.estimate == pytest.approx(float(d.sum()), rel=1e-12, abs=1e-12)
    assert result.stderr < 1e-10
    assert result.exact_part == 0.0 and result.samples.shape == (7,)
    est = diagonal(op, 5, seed=seed)
    torch.testing.assert_close(est.diagonal, d, rtol=1e-12, atol=1e-12)
    # zero in exact arithmetic; the one-pass variance (Σx² − m·mean²) leaves ~sqrt(eps)·|d| of rounding
    assert torch.all(est.stderr <= 1e-6 * d.abs().max())


def test_diagonal_estimate_converges_on_dense_matrix():
    A = random_symmetric(30, seed=3) + 10 * torch.eye(30, dtype=torch.float64)
    est = diagonal(DenseOperator(A), 4000, seed=0, block_size=512)
    err = (est.diagonal - A.diagonal()).abs()
    assert est.num_matvecs == 4000
    # each entry is a mean of 4000 samples: within 5 of its standard errors, and the standard errors are right
    assert torch.all(err <= 5 * est.stderr)
    off = (A.square().sum(dim=1) - A.diagonal().square()).sqrt() / np.sqrt(4000)  # exact stderr of z_i(Az)_i
    torch.testing.assert_close(est.stderr, off, rtol=0.1, atol=0)


@pytest.mark.parametrize("method", ["hutch++", "krylov"])
def test_deflated_estimators_exact_on_low_rank(method):
    # rank 5 < the deflation space: Q spans the range of A, so the estimate is exact
    lam = np.concatenate([[4.0, 3.0, 2.0, -1.0, 0.5], np.zeros(95)])
    op = DenseOperator(spectrum_matrix(lam, seed=4))
    result = ESTIMATORS[method](op, 30, seed=0)
    assert result.estimate == pytest.approx(8.5, rel=1e-10)
    assert result.exact_part == pytest.approx(8.5, rel=1e-10)


def test_error_rates_on_decaying_spectrum(decaying):
    op, true = decaying
    hutch = median_error(op, true, "hutchinson", 99)
    hpp = {m: median_error(op, true, "hutch++", m) for m in (30, 99, 300)}
    kry = median_error(op, true, "krylov", 99)
    assert 0.02 <= hutch <= 0.08  # ALGORITHMS.md: 0.044
    assert hpp[99] < 0.005  # ALGORITHMS.md: 0.0019
    assert hpp[300] * 3 <= hpp[30]  # O(1/m): 0.012 → 0.00034 in ALGORITHMS.md
    assert hpp[99] < hpp[30] and hpp[300] < hpp[99]
    assert kry <= hpp[99]


def test_hutchinson_stderr_coverage():
    A = random_symmetric(100, seed=0)
    true = float(A.trace())
    op = DenseOperator(A)
    covered = []
    for seed in range(200):
        result = hutchinson(op, 50, seed=seed)
        np.testing.assert_allclose(result.stderr, result.samples.std(ddof=1) / np.sqrt(50), rtol=1e-12)
        covered.append(abs(result.estimate - true) <= 2 * result.stderr)
    assert 0.88 <= np.mean(covered) <= 0.99


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "krylov"])
def test_num_matvecs_and_dispatch(decaying, method):
    op, _ = decaying
    before = op.num_matvecs
    result = trace(op, 31, method=method, seed=2)
    assert result.method == method
    assert result.num_matvecs == op.num_matvecs - before == 31
    assert result.dimension == 1000
    assert result.normalized == pytest.approx(result.estimate / 1000)
    assert result.estimate == pytest.approx(result.exact_part + result.samples.mean(), rel=1e-12)
    # the same seed gives the same estimate; block_size only changes how products are grouped
    again = ESTIMATORS[method](op, 31, seed=2, block_size=4)
    assert again.estimate == pytest.approx(result.estimate, rel=1e-10)


def test_bad_options(decaying):
    op, _ = decaying
    with pytest.raises(OptionError):
        trace(op, method="bad")
    with pytest.raises(OptionError):
        hutchinson(op, 0)
    with pytest.raises(OptionError):
        hutchpp(op, 2)
    with pytest.raises(OptionError):
        krylov_hutchinson(op, 10, krylov_fraction=1.0)
    with pytest.raises(OptionError):
        diagonal(op, 0)


def test_krylov_trace_of_mlp_hessian_is_exact_at_full_budget(mlp, data, mlp_hessian):
    op = HessianOperator(mlp, mean_ce, data)
    n = op.shape[0]
    true = float(mlp_hessian.trace())
    # krylov spends half the budget on the Krylov space: 2n products span all of R^n
    result = trace(op, 2 * n, method="krylov", seed=0)
    assert result.estimate == pytest.approx(true, rel=1e-8)
    assert result.num_matvecs == n  # nothing left to sample once the space is full
    # and a small budget still lands within a few standard errors
    small = trace(op, 30, method="krylov", seed=1)
    assert abs(small.estimate - true) <= 5 * small.stderr + 1e-12


@pytest.mark.parametrize("method", ["krylov", "hutch++", "hutchinson"])
def test_a_budget_of_n_products_buys_the_exact_trace(method):
    A = random_symmetric(300, seed=5)
    result = trace(DenseOperator(A), 300, method=method, block_size=64)
    assert result.method == "exact" and result.stderr == 0.0 and result.num_matvecs == 300
    assert result.estimate == pytest.approx(float(A.trace()), rel=1e-12)
