"""Stochastic Lanczos quadrature: the exact facts of Gauss quadrature, checked against dense references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landscape import DenseOperator, HessianOperator, OptionError, spectral_density
from landscape.linalg.density import lanczos_tridiagonal
from landscape.linalg.random import generator_for, probes
from conftest import mean_ce
from reference import spectrum_matrix


def unit_probes(op, num_probes, seed, distribution="rademacher"):
    """The probes spectral_density draws, recomputed from the same seed, normalized."""
    Z = probes(op, num_probes, generator_for(op, seed), distribution)
    return Z / Z.norm(dim=1, keepdim=True)


@pytest.fixture
def matrix100():
    lam = np.concatenate([np.linspace(-1.0, 0.0, 20), np.linspace(0.0, 0.5, 70), np.linspace(2.0, 6.0, 10)])
    return spectrum_matrix(lam, seed=11)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
@pytest.mark.parametrize("reorthogonalize", [True, False])
def test_quadrature_facts(matrix100, distribution, reorthogonalize):
    op = DenseOperator(matrix100)
    n, P, m = 100, 4, 25
    result = spectral_density(op, num_probes=P, num_steps=m, seed=3, distribution=distribution,
                              reorthogonalize=reorthogonalize)
    assert result.nodes.shape == result.weights.shape == (P, m)
    assert result.num_matvecs == op.num_matvecs == P * m
    assert result.dimension == n and result.num_steps == m and result.reorthogonalize == reorthogonalize
    # Σ_k τ_k = 1 for each probe
    np.testing.assert_allclose(result.weights.sum(axis=1), np.ones(P), rtol=0, atol=1e-12)
    assert np.all(result.weights >= 0)
    # nodes are Ritz values: inside [λmin, λmax]
    evals = torch.linalg.eigvalsh(matrix100).numpy()
    assert np.nanmin(result.nodes) >= evals[0] - 1e-10 and np.nanmax(result.nodes) <= evals[-1] + 1e-10
    # n Σ τθ = n vᵀAv for the unit probe v
    V = unit_probes(op, P, 3, distribution)
    quad = ((V @ matrix100) * V).sum(dim=1).numpy()
    np.testing.assert_allclose(n * np.nansum(result.weights * result.nodes, axis=1), n * quad, rtol=1e-10)
    assert result.trace_estimate == pytest.approx(n * quad.mean(), rel=1e-10)


def test_trace_estimate_is_unbiased_on_average(matrix100):
    # E[n vᵀAv] = tr A for v = z/|z| with Rademacher z (|z|² = n exactly); 40 probes bring it within a few stderr
    op = DenseOperator(matrix100)
    result = spectral_density(op, num_probes=40, num_steps=5, seed=0)
    samples = 100 * np.nansum(result.weights * result.nodes, axis=1)
    stderr = samples.std(ddof=1) / np.sqrt(len(samples))
    assert abs(result.trace_estimate - float(matrix100.trace())) < 4 * stderr


def test_density_integrates_to_one(matrix100):
    result = spectral_density(DenseOperator(matrix100), num_probes=3, num_steps=30, seed=0)
    assert result.grid.shape == result.density.shape == (10_000,)
    assert np.all(np.diff(result.grid) > 0)
    assert np.all(result.density >= 0)
    assert np.trapezoid(result.density, result.grid) == pytest.approx(1.0, abs=1e-6)
    # the grid spans every node and the default kernel width follows 1e-5·max(1, range)
    width = np.nanmax(result.nodes) - np.nanmin(result.nodes)
    assert result.sigma == pytest.approx(np.sqrt(1e-5 * max(1.0, width)))
    assert result.grid[0] < np.nanmin(result.nodes) and result.grid[-1] > np.nanmax(result.nodes)
    # an explicit, wider kernel still integrates to one
    wide = spectral_density(DenseOperator(matrix100), num_probes=3, num_steps=30, seed=0, sigma=0.05,
                            grid_points=4000)
    assert np.trapezoid(wide.density, wide.grid) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("num_steps", [30, 45])
def test_full_krylov_space_gives_exact_eigenvalues_and_weights(num_steps):
    lam = np.linspace(-2.0, 3.0, 30) + 0.1 * np.sin(np.arange(30))
    A = spectrum_matrix(lam, seed=12)
    evals, evecs = torch.linalg.eigh(A)
    op = DenseOperator(A)
    P = 3
    result = spectral_density(op, num_probes=P, num_steps=num_steps, seed=5)
    assert result.num_steps == 30  # clipped to the dimension
    V = unit_probes(op, P, 5)
    for p in range(P):
        nodes = np.sort(result.nodes[p])
        np.testing.assert_allclose(nodes, evals.numpy(), rtol=1e-8, atol=1e-10)
        # Gauss weights = squared components of the unit probe on the eigenvectors
        order = np.argsort(result.nodes[p])
        np.testing.assert_allclose(result.weights[p][order], ((evecs.T @ V[p]) ** 2).numpy(), rtol=1e-6,
                                   atol=1e-10)


def test_early_exhaustion_pads_with_nan():
    # three distinct eigenvalues: every Krylov space has dimension 3
    d = torch.tensor([1.0] * 10 + [2.0] * 10 + [5.0] * 10, dtype=torch.float64)
    op = DenseOperator(torch.diag(d))
    result = spectral_density(op, num_probes=2, num_steps=10, seed=0)
    for p in range(2):
        finite = np.isfinite(result.nodes[p])
        assert finite.sum() == 3
        np.testing.assert_allclose(np.sort(result.nodes[p][finite]), [1.0, 2.0, 5.0], rtol=1e-10)
        # Rademacher probe: a third of |z|² on each eigenspace
        np.testing.assert_allclose(np.sort(result.weights[p][finite]), [1 / 3] * 3, rtol=1e-10)
        assert np.all(result.weights[p][~finite] == 0)
    assert result.trace_estimate == pytest.approx(80.0, rel=1e-12)
    assert np.trapezoid(result.density, result.grid) == pytest.approx(1.0, abs=1e-6)
    assert result.num_matvecs < 2 * 10  # exhausted probes stop spending products


@pytest.mark.parametrize("reorthogonalize", [True, False])
def test_lockstep_block_equals_single_probes(matrix100, reorthogonalize):
    op = DenseOperator(matrix100)
    start = probes(op, 4, generator_for(op, 9))
    alpha, beta, sizes = lanczos_tridiagonal(op, start, 20, reorthogonalize=reorthogonalize)
    assert alpha.shape == (4, 20) and beta.shape == (4, 19)
    assert np.all(sizes == 20)
    for p in range(4):
        a1, b1, s1 = lanczos_tridiagonal(op, start[p : p + 1], 20, reorthogonalize=reorthogonalize)
        np.testing.assert_allclose(alpha[p], a1[0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(beta[p], b1[0], rtol=1e-10, atol=1e-12)
        assert s1[0] == sizes[p]


def test_tridiagonal_matches_dense_lanczos(matrix100):
    # alpha_0 = vᵀAv and beta_0 = ‖Av − alpha_0 v‖ for the unit start v
    op = DenseOperator(matrix100)
    v = torch.randn(1, 100, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    alpha, beta, _ = lanczos_tridiagonal(op, v, 3)
    u = v[0] / v[0].norm()
    Au = matrix100 @ u
    a0 = float(u @ Au)
    assert alpha[0, 0] == pytest.approx(a0, rel=1e-12)
    assert beta[0, 0] == pytest.approx(float((Au - a0 * u).norm()), rel=1e-12)


def test_hessian_density_of_mlp(mlp, data, mlp_hessian):
    # Cross-entropy is invariant to adding a constant to every logit, so the Hessian has an exact null space
    # (dimension 9 here: last bias plus one shift per hidden unit). A Krylov space sees each distinct eigenvalue
    # once, so a full run ends after n − 8 steps with the distinct eigenvalues as nodes.
    op = HessianOperator(mlp, mean_ce, data)
    n = op.shape[0]
    evals = torch.linalg.eigvalsh(mlp_hessian).numpy()
    zero = np.abs(evals) < 1e-12
    assert zero.sum() == 9
    distinct = np.sort(np.concatenate([evals[~zero], [0.0]]))
    result = spectral_density(op, num_probes=2, num_steps=n, seed=0)
    for p in range(2):
        finite = np.isfinite(result.nodes[p])
        assert finite.sum() == n - 8
        np.testing.assert_allclose(np.sort(result.nodes[p][finite]), distinct, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(result.weights.sum(axis=1), 1.0, atol=1e-12)
    assert np.trapezoid(result.density, result.grid) == pytest.approx(1.0, abs=1e-6)


def test_bad_options(matrix100):
    op = DenseOperator(matrix100)
    with pytest.raises(OptionError):
        spectral_density(op, num_probes=0)
    with pytest.raises(OptionError):
        spectral_density(op, num_steps=0)
    with pytest.raises(OptionError):
        spectral_density(op, grid_points=1)
    with pytest.raises(OptionError):
        spectral_density(op, distribution="uniform")
