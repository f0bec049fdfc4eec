"""Thick-restart Lanczos (and the power-iteration baseline) against dense ``torch.linalg.eigh``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landscape import DenseOperator, HessianOperator, OptionError, lanczos, power_iteration
from conftest import make_data, mean_ce
from reference import dense_hessian, dense_pairs, random_symmetric, spectrum_matrix, true_residuals


def assert_pairs_match(result, A, which, k, value_rtol=1e-8, vector_tol=1e-6):
    values, vectors = dense_pairs(A, which, k)
    assert result.values.shape == (k,)
    np.testing.assert_allclose(result.values, values, rtol=value_rtol, atol=0)
    assert result.vectors.shape == (k, A.shape[0])
    overlaps = (result.vectors * vectors).sum(dim=1).abs()
    assert torch.all(overlaps > 1 - vector_tol), overlaps
    assert torch.allclose(result.vectors.norm(dim=1), torch.ones(k, dtype=A.dtype), atol=1e-10)
    assert result.converged.all()


# 200×200 test matrices: a Wigner matrix (semicircle spectrum, small gaps at the edges) and a chosen spectrum
GAPPED = np.concatenate([[10.0, 9.0, 8.0, 7.0, 6.0], np.linspace(-3.0, 3.0, 194), [-5.0]])
MATRICES = {
    "wigner": lambda: random_symmetric(200, seed=1),
    "gapped": lambda: spectrum_matrix(GAPPED, seed=2),
}


@pytest.mark.parametrize("name", sorted(MATRICES))
@pytest.mark.parametrize("which, k", [("largest", 5), ("smallest", 1), ("smallest", 3), ("both", 4), ("both", 5)])
def test_eigenpairs_match_eigh(name, which, k):
    A = MATRICES[name]()
    result = lanczos(DenseOperator(A), k, which=which, seed=0)
    assert result.which == which
    assert_pairs_match(result, A, which, k)


def test_clustered_top_eigenvalues_converge():
    rest = np.linspace(-1.0, 1.5, 197)
    A = spectrum_matrix(np.concatenate([[2.0, 1.999, 1.998], rest]), seed=3)
    result = lanczos(DenseOperator(A), 3, tol=1e-10, max_matvecs=2000, seed=0)
    assert_pairs_match(result, A, "largest", 3, value_rtol=1e-10, vector_tol=1e-8)
    np.testing.assert_allclose(result.values, [2.0, 1.999, 1.998], rtol=1e-10)


def test_thick_restart_gives_same_answers():
    A = MATRICES["gapped"]()
    full = lanczos(DenseOperator(A), 5, tol=1e-8, seed=0)
    small = lanczos(DenseOperator(A), 5, max_basis=12, tol=1e-8, max_matvecs=2000, seed=0)
    assert small.restarts > 0
    assert_pairs_match(small, A, "largest", 5)
    np.testing.assert_allclose(small.values, full.values, rtol=1e-10)
    # the smallest end with restarts too
    bottom = lanczos(DenseOperator(A), 2, which="smallest", max_basis=8, tol=1e-8, max_matvecs=3000, seed=1)
    assert bottom.restarts > 0
    assert_pairs_match(bottom, A, "smallest", 2)


@pytest.mark.parametrize("max_basis", [None, 12])
def test_reported_residuals_match_true_residuals(max_basis):
    A = MATRICES["wigner"]()
    # converged: the reported residual is within 1e-6 (absolute) or a factor 10 of ‖Av − λv‖
    done = lanczos(DenseOperator(A), 5, max_basis=max_basis, max_matvecs=3000, seed=0)
    true = true_residuals(A, done)
    rep = done.residuals
    close = (np.abs(rep - true) <= 1e-6) | ((rep <= 10 * true) & (true <= 10 * rep))
    assert close.all(), (rep, true)
    assert np.all(done.relative_residuals <= 1e-6 * 1.0001)
    # stopped early: residuals are large and the recurrence's value must agree tightly with the true one
    early = lanczos(DenseOperator(A), 5, max_basis=max_basis, max_matvecs=30, seed=0)
    assert not early.converged.all()
    if max_basis is not None:
        assert early.restarts > 0
    np.testing.assert_allclose(early.residuals, true_residuals(A, early), rtol=1e-6, atol=1e-10)
    assert early.residual_history.shape == (30,)
    assert early.residual_history[-1] == pytest.approx(np.max(early.relative_residuals), rel=1e-12)


def test_warm_start_from_top_eigenvector():
    A = MATRICES["wigner"]()
    evals, evecs = torch.linalg.eigh(A)
    op = DenseOperator(A)
    result = lanczos(op, 1, v0=evecs[:, -1], tol=1e-8)
    assert result.num_matvecs <= 3
    assert result.values[0] == pytest.approx(float(evals[-1]), rel=1e-12)
    assert float((result.vectors[0] @ evecs[:, -1]).abs()) > 1 - 1e-12
    assert result.seed is None  # a warm start records no seed
    cold = lanczos(DenseOperator(A), 1, tol=1e-8, seed=0)
    assert cold.num_matvecs > 10 * result.num_matvecs


def test_num_matvecs_equals_operator_counter():
    A = MATRICES["gapped"]()
    op = DenseOperator(A)
    op.matvec(torch.ones(200, dtype=torch.float64))
    for kwargs in ({"k": 3}, {"k": 2, "which": "smallest", "max_basis": 10}, {"k": 4, "max_matvecs": 17}):
        before = op.num_matvecs
        result = lanczos(op, **kwargs)
        assert result.num_matvecs == op.num_matvecs - before > 0
    assert result.num_matvecs == 17


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_small_dimension_exhausts_krylov_space(which):
    A = spectrum_matrix([-3.0, -1.0, 0.5, 2.0, 4.0, 7.0], seed=4)
    result = lanczos(DenseOperator(A), 6, which=which, seed=0)
    assert result.num_matvecs == 6
    assert_pairs_match(result, A, which, 6, value_rtol=1e-10)


def _diag_degenerate():
    A = torch.diag(torch.tensor([5.0, 5.0, 5.0, 1.0, 0.5, 0.25, 0.1, -1.0], dtype=torch.float64))
    return DenseOperator(A), A


def _softmax_regression():
    # multinomial logistic regression: its Hessian is PSD with an exact 6-dimensional null space
    # (adding a constant to every logit changes nothing), so the smallest eigenvalue 0 has multiplicity 6
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3).double()
    X, y = make_data()
    return HessianOperator(model, mean_ce, (X, y)), dense_hessian(model, X, y)


@pytest.mark.parametrize("case, which", [(_diag_degenerate, "largest"), (_softmax_regression, "smallest")])
def test_repeated_eigenvalue_after_invariant_subspace(case, which):
    """A single start vector sees one direction per eigenspace; with tol=0 the iteration does not stop on an
    invariant subspace but continues from fresh directions until the space is exhausted, so multiplicities
    (here a triple eigenvalue, and the null space of a softmax-regression Hessian) are all found."""
    op, A = case()
    result = lanczos(op, 3, which=which, seed=0, tol=0.0)
    values, _ = dense_pairs(A, which, 3)
    np.testing.assert_allclose(result.values, values, rtol=1e-8, atol=1e-10)
    V = result.vectors
    assert torch.allclose(V @ V.T, torch.eye(3, dtype=torch.float64), atol=1e-8)


def test_hessian_of_mlp(mlp, data, mlp_hessian):
    op = HessianOperator(mlp, mean_ce, data)
    top = lanczos(op, 5, seed=0)
    assert_pairs_match(top, mlp_hessian, "largest", 5)
    bottom = lanczos(op, 1, which="smallest", seed=0)
    assert_pairs_match(bottom, mlp_hessian, "smallest", 1)


def test_bad_options():
    op = DenseOperator(MATRICES["gapped"]())
    with pytest.raises(OptionError):
        lanczos(op, 0)
    with pytest.raises(OptionError):
        lanczos(op, 201)
    with pytest.raises(OptionError):
        lanczos(op, 2, which="middle")
    with pytest.raises(OptionError):
        lanczos(op, 5, max_basis=6)
    with pytest.raises(OptionError):
        lanczos(op, 1, tol=-1.0)
    with pytest.raises(OptionError):
        lanczos(op, 1, v0=torch.ones(199, dtype=torch.float64))


# -- power iteration (the PyHessian baseline) ----------------------------------------------------------------

CLEAR_GAP = np.concatenate([[10.0], np.linspace(-5.0, 5.0, 199)])
POSITIVE = np.concatenate([[10.0, 9.0, 8.0], np.linspace(0.0, 5.0, 197)])


def test_power_iteration_top1_within_its_tolerance():
    A = spectrum_matrix(CLEAR_GAP, seed=6)
    result = power_iteration(DenseOperator(A), 1, seed=0)
    assert result.method == "power"
    assert result.converged.all()
    assert abs(result.values[0] - 10.0) / 10.0 < 1e-3
    assert float((result.vectors[0] @ torch.linalg.eigh(A)[1][:, -1]).abs()) > 0.99


def test_power_iteration_needs_more_matvecs_than_lanczos():
    A = spectrum_matrix(POSITIVE, seed=5)
    op = DenseOperator(A)
    lz = lanczos(op, 3, tol=1e-8, seed=0)
    pw = power_iteration(op, 3, tol=1e-8, max_iter=1000, seed=0)
    np.testing.assert_allclose(lz.values, [10.0, 9.0, 8.0], rtol=1e-10)
    np.testing.assert_allclose(pw.values, [10.0, 9.0, 8.0], rtol=1e-5)
    assert lz.num_matvecs < pw.num_matvecs
    assert pw.num_matvecs == op.num_matvecs - lz.num_matvecs
