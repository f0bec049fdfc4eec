"""`--max-basis`: Lanczos keeps at most that many vectors (thick restarts) and still finds the dense top
eigenvalues; the density runs without reorthogonalization when probes × steps would exceed it, and says so."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from landscape import store
from landscape.cli import main
from landscape.models import mlp

from reference import dense_hessian

SIZES = [4, 8, 3]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("max_basis")
    torch.manual_seed(0)
    model = mlp(SIZES)
    gen = torch.Generator().manual_seed(1)
    X, y = torch.randn(40, 4, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    torch.save(model.state_dict(), folder / "model.pt")
    np.savez(folder / "data.npz", X=X.numpy(), y=y.numpy())
    upcast = mlp(SIZES).double()
    upcast.load_state_dict(model.state_dict())
    truth = torch.linalg.eigvalsh(dense_hessian(upcast, X.double(), y)).flip(0).numpy()
    return folder, truth


def analyze(folder, capsys, *extra):
    out = folder / f"out{len(list(folder.glob('out*.h5')))}.h5"
    code = main(["analyze", str(folder / "model.pt"), "--model", "mlp", "--model-kwargs", json.dumps({"sizes": SIZES}),
                 "--data", str(folder / "data.npz"), "--dtype", "float64", "--quiet", "-o", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.err, (next(iter(store.read_results(out).values())) if code == 0 else None)


def test_lanczos_restarts_within_max_basis_and_finds_the_dense_top_eigenvalues(files, capsys):
    folder, truth = files
    code, err, record = analyze(folder, capsys, "--metrics", "eigs", "--top-k", "4", "--max-basis", "6", "--tol",
                                "1e-10")
    assert code == 0, err
    eigen = record.results["eigen"]
    np.testing.assert_allclose(eigen.values, truth[:4], rtol=1e-8)
    assert eigen.restarts > 0 and eigen.num_matvecs > 6 and record.attrs["max_basis"] == 6


def test_density_beyond_max_basis_runs_without_reorthogonalization_and_says_so(files, capsys):
    folder, truth = files
    code, err, record = analyze(folder, capsys, "--metrics", "density", "--density-probes", "3", "--density-steps",
                                "10", "--max-basis", "20")
    assert code == 0, err
    density = record.results["density"]
    assert not density.reorthogonalize and "without reorthogonalization" in err
    assert "without reorthogonalization" in " ".join(record.attrs["notes"])
    assert truth[-1] - 1e-8 <= np.nanmin(density.nodes) and np.nanmax(density.nodes) <= truth[0] + 1e-8
    code, err, record = analyze(folder, capsys, "--metrics", "density", "--density-probes", "3", "--density-steps",
                                "10", "--max-basis", "30")
    assert code == 0 and record.results["density"].reorthogonalize and "reorthogonalization" not in err


def test_max_basis_below_top_k_plus_two_is_refused_naming_both_flags(files, capsys):
    folder, _ = files
    code, err, _ = analyze(folder, capsys, "--metrics", "eigs", "--top-k", "5", "--max-basis", "6")
    assert code == 2 and "--max-basis must be at least --top-k + 2 = 7" in err and len(err.strip().splitlines()) == 1
