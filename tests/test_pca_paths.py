"""Trajectories on the PCA plane (Li et al. 2018, §7) and loss barriers on a line (Frankle et al. 2020): the
directions against numpy's SVD of the stacked differences, the coordinates against direct projection, the barrier
against a direct evaluation of the loss by functional_call, the CLI, `landscape compare` and the drawings."""

from __future__ import annotations

import argparse
import contextlib
import io

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from conftest import make_data, make_mlp, mean_ce  # noqa: E402
from landscape import store  # noqa: E402
from landscape.checkpoints import load_checkpoint, save_checkpoint  # noqa: E402
from landscape.cli import join_grid_values  # noqa: E402
from landscape.cli import surface as cli_surface  # noqa: E402
from landscape.compare import flatness_table  # noqa: E402
from landscape.data import load_data  # noqa: E402
from landscape.errors import OptionError, ParameterError, StoreError, command_line_names  # noqa: E402
from landscape.plot.paths import draw_barrier, draw_trajectory  # noqa: E402
from landscape.surface import (  # noqa: E402
    checkpoint_line,
    evaluate_surface,
    flat_parameters,
    loss_barrier,
    path_grid,
    pca_directions,
    trajectory_runs,
)

SIZES = [64, 6, 10]
COMMON = ["--data", "digits", "--subset", "60", "--quiet", "--dtype", "float64"]


def _svd_truth(thetas: list[torch.Tensor], origin: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """numpy's SVD of the stacked differences: the top two right singular vectors and their explained variance."""
    diffs = np.stack([(t - origin).numpy() for t in thetas])
    _, s, vt = np.linalg.svd(diffs, full_matrices=False)
    return vt[:2], s[:2] ** 2 / (s ** 2).sum()


def _same_up_to_sign(a: np.ndarray, b: np.ndarray, atol: float) -> bool:
    return bool(np.allclose(a, b, atol=atol) or np.allclose(a, -b, atol=atol))


# -- PCA directions ------------------------------------------------------------------------------------------------
def test_pca_directions_equal_numpy_svd_of_the_differences():
    gen = torch.Generator().manual_seed(0)
    # a curved path in 300 dimensions: a drift, a bend and noise, so the spectrum has a clear top two
    t = torch.linspace(0, 1, 8, dtype=torch.float64)[:, None]
    a, b = torch.randn(2, 300, generator=gen, dtype=torch.float64)
    thetas = list(3 * t * a + torch.sin(3 * t) * b + 0.05 * torch.randn(8, 300, generator=gen, dtype=torch.float64))
    directions, coordinates = pca_directions(thetas, thetas[-1])
    vectors, explained = _svd_truth(thetas, thetas[-1])
    for d, v in zip(directions.directions, vectors):
        assert _same_up_to_sign(d.numpy(), v, atol=1e-10)
    assert directions.description["kind"] == "pca"
    assert directions.description["explained_variance"] == pytest.approx(explained.tolist(), rel=1e-10)
    projected = np.stack([[float((theta - thetas[-1]) @ d) for d in directions.directions] for theta in thetas])
    assert np.allclose(coordinates, projected, rtol=0, atol=1e-10)  # the stored coordinates are the projections
    assert np.allclose(coordinates[-1], 0) and (coordinates[0] <= 0).all()  # origin at 0; the start on the left
    assert torch.equal(directions.origin, thetas[-1])
    gram = torch.stack(directions.directions) @ torch.stack(directions.directions).T
    assert torch.allclose(gram, torch.eye(2, dtype=torch.float64), atol=1e-12)


def test_pca_refuses_checkpoints_on_a_line_and_a_path_grid_covers_the_path():
    line = [torch.full((5,), float(i), dtype=torch.float64) for i in range(4)]
    with pytest.raises(ParameterError, match="do not span a plane"):
        pca_directions(line, line[-1])
    points = np.array([[-3.2, 0.4], [-1.0, -0.2], [0.0, 0.0], [0.5, 0.05]])
    x, y = path_grid(points, num=11)
    assert len(x) == len(y) == 11
    for axis, column in ((x, points[:, 0]), (y, points[:, 1])):
        span = column.max() - min(column.min(), 0)
        assert axis[0] <= column.min() - 0.2 * span + 1e-12 and axis[-1] >= column.max() + 0.2 * span - 1e-12


# -- the loss barrier ------------------------------------------------------------------------------------------------
def _direct_losses(model: nn.Module, theta_a: torch.Tensor, theta_b: torch.Tensor, alphas: np.ndarray,
                   X: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """The loss at (1 − α)·A + α·B, by functional_call with the parameters cut from the flat vector."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    out = []
    for alpha in alphas:
        theta = (1 - alpha) * theta_a + alpha * theta_b
        params = dict(zip(names, [part.view(shape) for part, shape in
                                  zip(theta.split([s.numel() for s in shapes]), shapes)]))
        out.append(float(F.cross_entropy(functional_call(model, params, (X,)), y)))
    return np.array(out)


def _trained(seed: int, X: torch.Tensor, y: torch.Tensor, steps: int = 300) -> nn.Module:
    """The conftest MLP fitted to (X, y) by full-batch gradient descent: a minimum, as mode connectivity studies."""
    model = make_mlp(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        optimizer.zero_grad()
        mean_ce(model(X), y).backward()
        optimizer.step()
    return model


def test_barrier_equals_a_direct_evaluation_of_the_path():
    X, y = make_data()
    models = [_trained(seed, X, y) for seed in (0, 1)]
    a, b = flat_parameters(models[0]), flat_parameters(models[1])
    grid = np.linspace(-0.5, 1.5, 17)  # α = 0 and 1 are grid points (step 0.125)
    result = evaluate_surface(models[0], mean_ce, (X, y), checkpoint_line(a, b), grid, dtype=torch.float64,
                              progress=False)
    alphas = grid[(grid >= 0) & (grid <= 1)]
    direct = _direct_losses(models[0], a, b, alphas, X, y)
    excess = direct - ((1 - alphas) * direct[0] + alphas * direct[-1])
    assert result.barrier == pytest.approx(excess.max(), abs=1e-12)
    assert result.barrier_alpha == pytest.approx(alphas[excess.argmax()])
    assert result.barrier > 0.01  # two minima found from different starts: a real bump between them
    # no α = 0 or 1 on the grid, or a cell in [0, 1] not computed: no barrier
    assert loss_barrier(np.linspace(-0.5, 1.5, 51), np.zeros(51)) is None
    partial = result.loss.copy()
    partial[8] = np.nan
    assert loss_barrier(grid, partial) is None
    assert loss_barrier(np.array([0.0, 0.5, 1.0]), np.array([1.0, 0.5, 2.0])) == (0.0, 0.0)  # below the chord


# -- command line, run grouping, compare -----------------------------------------------------------------------------
def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli_surface.add_parser(parser.add_subparsers(dest="command"))
    argv = join_grid_values(argv)
    with command_line_names():
        return cli_surface.run(parser.parse_args(argv), argv)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs from one start, as `landscape train --save-every` writes them: sgd_checkpoints/ beside the run file
    sgd.h5, and a folder sam/ (steps 2, 4, 6, 8 each)."""
    folder = tmp_path_factory.mktemp("paths")
    torch.manual_seed(0)
    start = nn.Sequential(nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 10))
    gen = torch.Generator().manual_seed(1)
    theta0 = flat_parameters(start).float()
    drift = torch.randn(2, theta0.numel(), generator=gen)
    for name, bend in (("sgd_checkpoints", 0.0), ("sam", 0.6)):
        for step in (2, 4, 6, 8):
            t = step / 8
            model = nn.Sequential(nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 10))
            theta = theta0 + 0.3 * t * drift[0] + bend * 0.3 * t * (1 - t) * drift[1]
            torch.nn.utils.vector_to_parameters(theta, model.parameters())
            save_checkpoint(folder / name / f"step_{step}.pt", model, step=step, model_spec="mlp",
                            model_kwargs={"sizes": SIZES})
    with store.RunWriter(folder / "sgd.h5", {"optimizer": "sgd"}) as writer:
        writer.append("run", {"step": 1, "loss": 1.0})
    return folder


def _run_cli(argv: list[str]) -> str:
    """The CLI's printed lines (a module fixture has no capsys)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert _cli(argv) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def pca_surface(runs):
    output = runs / "paths.h5"
    printed = _run_cli(["surface", str(runs / "sgd.h5"), str(runs / "sam"), *COMMON, "--directions", "pca",
                        "--grid", "-1:1:3", "-o", str(output)])
    return store.read_results(output), printed


@pytest.fixture(scope="module")
def line_surface(runs):
    output = runs / "line.h5"
    a, b = str(runs / "sam" / "step_2.pt"), str(runs / "sgd_checkpoints" / "step_8.pt")
    printed = _run_cli(["surface", a, b, *COMMON, "--directions", "line", "--grid", "-0.5:1.5:9", "-o", str(output)])
    return output, store.read_results(output)["step_2"].results["surface"], printed


def test_runs_are_grouped_by_folder_run_file_and_consecutive_files(runs):
    grouped = trajectory_runs([runs / "sgd.h5", runs / "sam"])
    assert [label for label, _ in grouped] == ["sgd.h5", "sam"]
    assert [[p.name for p in files] for _, files in grouped] == [[f"step_{s}.pt" for s in (2, 4, 6, 8)]] * 2
    files = sorted((runs / "sam").glob("*.pt"))
    grouped = trajectory_runs([*files, runs / "sgd_checkpoints"])
    assert [len(f) for _, f in grouped] == [4, 4]  # the loose files are one run, the folder another
    results = runs / "results.h5"
    with store.update_results(results):
        pass
    with pytest.raises(StoreError, match="holds no training run"):
        trajectory_runs([results])


def test_cli_pca_of_two_runs_matches_svd_and_direct_projection(runs, pca_surface):
    records, printed = pca_surface
    assert "explained variance: PC1" in printed
    record = records["step_8"]
    result = record.results["surface"]
    assert record.attrs["path"].endswith("sgd_checkpoints/step_8.pt")  # the origin: the first run's last checkpoint
    assert result.kind == "pca" and result.path.shape == (8, 2) and result.path_labels == ["sgd.h5", "sam"]
    assert result.path_runs == [0] * 4 + [1] * 4 and result.path_steps == [2, 4, 6, 8] * 2
    assert result.checkpoint_names[0] == "step_8" and len(result.checkpoints) == 8
    files = [runs / "sgd_checkpoints" / f"step_{s}.pt" for s in (2, 4, 6, 8)] + \
        [runs / "sam" / f"step_{s}.pt" for s in (2, 4, 6, 8)]
    thetas = [flat_parameters(load_checkpoint(f).model) for f in files]
    vectors, explained = _svd_truth(thetas, thetas[3])
    assert result.explained_variance == pytest.approx(explained.tolist(), rel=1e-8)
    direct = np.stack([[(theta - thetas[3]).numpy() @ v for v in vectors] for theta in thetas])
    signs = []
    for j in range(2):
        assert _same_up_to_sign(result.path[:, j], direct[:, j], atol=1e-9)
        signs.append(1.0 if np.allclose(result.path[:, j], direct[:, j], atol=1e-9) else -1.0)
    # the y axis (not given) covers the path; a cell is the loss at origin + x·v1 + y·v2, v from numpy's SVD
    assert result.y[0] < result.path[:, 1].min() and result.y[-1] > result.path[:, 1].max()
    X, labels = load_data("digits", subset=60, seed=0).batches
    model = load_checkpoint(files[3]).model.double()
    i, k = 2, len(result.y) // 3
    theta = torch.from_numpy(thetas[3].numpy() + result.x[i] * signs[0] * vectors[0]
                             + result.y[k] * signs[1] * vectors[1])
    expected = _direct_losses(model, theta, theta, np.array([0.0]), X.double(), labels)[0]
    assert result.loss[i, k] == pytest.approx(expected, abs=1e-10)


def test_cli_line_barrier_is_printed_and_shown_by_compare(runs, line_surface):
    output, stored, printed = line_surface
    assert f"loss barrier {stored.barrier:.4g}" in printed
    assert stored.barrier == loss_barrier(stored.x, stored.loss)[0]
    table = flatness_table(store.flatness_rows([output])).splitlines()
    assert "barrier" in table[0].split() and f"{stored.barrier:.4g}" in table[-1].split()
    a, b = str(runs / "sam" / "step_2.pt"), str(runs / "sgd_checkpoints" / "step_8.pt")
    other = str(runs / "x.h5")
    with pytest.raises(OptionError, match="--directions pca is 2-D"):
        _cli(["surface", str(runs / "sam"), *COMMON, "--directions", "pca", "--dims", "1", "-o", other])
    with pytest.raises(OptionError, match="at least two checkpoints per run"):
        _cli(["surface", a, str(runs / "sam"), *COMMON, "--directions", "pca", "-o", other])
    with pytest.raises(OptionError, match="--align .* needs --directions line"):
        _cli(["surface", a, *COMMON, "--align", "-o", other])


def test_a_surface_file_without_the_new_fields_still_reads(line_surface, tmp_path):
    """Files written before paths and barriers existed lack their attributes and datasets: they read as None."""
    import shutil

    import h5py

    old = tmp_path / "old.h5"
    shutil.copy(line_surface[0], old)
    with h5py.File(old, "r+") as handle:
        group = handle["checkpoints/step_2/surface"]
        for name in ("barrier", "barrier_alpha"):
            del group.attrs[name]
    result = store.read_results(old)["step_2"].results["surface"]
    assert result.barrier is None and result.path is None and result.explained_variance is None
    assert np.array_equal(result.loss, line_surface[1].loss)


# -- drawings --------------------------------------------------------------------------------------------------------
def test_draw_trajectory_and_barrier(pca_surface, line_surface, tmp_path):
    result = pca_surface[0]["step_8"].results["surface"]
    fig, ax = plt.subplots()
    lines = draw_trajectory(ax, result)
    assert [line.get_label() for line in lines] == ["sgd.h5", "sam"]
    for line, run in zip(lines, (0, 1)):
        assert np.allclose(np.column_stack(line.get_data()), result.path[np.array(result.path_runs) == run])
    share = 100 * result.explained_variance[0]
    assert ax.get_xlabel() == f"PC1 ({share:.1f} %)" and ax.get_ylabel().startswith("PC2 (")
    fig.savefig(tmp_path / "trajectory.png")
    plt.close(fig)

    line = line_surface[1]
    fig, ax = plt.subplots()
    ax.plot(line.x, line.loss)
    chord, bar, note = draw_barrier(ax, line)
    assert np.allclose(chord.get_ydata(), [line.loss[2], line.loss[6]])  # α = 0 and 1 on -0.5:1.5:9
    low, high = bar.get_ydata()
    assert high - low == pytest.approx(line.barrier) and bar.get_xdata()[0] == line.barrier_alpha
    assert f"{line.barrier:.3g}" in note.get_text()
    assert draw_barrier(ax, result) == [] and draw_trajectory(ax, line) == []
    plt.close(fig)
