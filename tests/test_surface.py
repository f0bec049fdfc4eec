"""Loss surfaces: directions (filter-normalized, Hessian eigenvectors, checkpoints), grids, resume, CLI and figure."""

from __future__ import annotations

import argparse
import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import vector_to_parameters

from conftest import make_data, make_mlp, mean_ce
from reference import dense_hessian
from landscape import store
from landscape.cli import surface as cli_surface
from landscape.cli import join_grid_values
from landscape.checkpoints import save_checkpoint
from landscape.errors import OptionError, StoreError, command_line_names
from landscape.losses import loss_name
from landscape.plot import plot_surface
from landscape.results import SurfaceResult
from landscape.surface import (
    checkpoint_line,
    checkpoint_plane,
    eigen_directions,
    evaluate_surface,
    flat_parameters,
    parse_grid,
    random_direction,
)

SIZES = [64, 6, 10]


def _parts(model: nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """A flat vector cut into the model's parameter shapes."""
    out, start = {}, 0
    for name, p in model.named_parameters():
        out[name] = flat[start:start + p.numel()].view(p.shape)
        start += p.numel()
    return out


def _direct(model: nn.Module, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Loss and accuracy with the parameters set to ``theta`` on a copy of the model, the plain way."""
    clone = copy.deepcopy(model)
    vector_to_parameters(theta.to(X.dtype), clone.parameters())
    with torch.no_grad():
        out = clone(X)
    return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).double().mean())


# -- directions --------------------------------------------------------------------------------------------------
def test_filter_normalized_direction_has_the_parameters_norm_slice_by_slice():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 2), nn.Tanh(), nn.Flatten(), nn.Linear(27, 4)).double()
    theta = _parts(model, flat_parameters(model))
    directions = random_direction(model, seed=3, dims=2, normalization="filter", biases="zero")
    assert directions.dims == 2 and directions.description["normalization"] == "filter"
    assert not torch.allclose(directions.directions[0], directions.directions[1])
    for direction in directions.directions:
        for name, d in _parts(model, direction).items():
            if d.ndim >= 2:  # each filter (slice along dim 0) has the norm of the same filter of θ
                assert torch.allclose(d.flatten(1).norm(dim=1), theta[name].flatten(1).norm(dim=1), rtol=1e-9)
            else:
                assert torch.all(d == 0)
    kept = random_direction(model, seed=3, dims=1, biases="keep")
    assert torch.equal(kept.directions[0], random_direction(model, seed=3, dims=1, biases="keep").directions[0])
    for name, d in _parts(model, kept.directions[0]).items():
        if d.ndim == 1:  # kept biases are scaled as a whole to the bias's norm
            assert torch.all(d != 0) and torch.isclose(d.norm(), theta[name].norm(), rtol=1e-9)
    layer = random_direction(model, seed=3, dims=1, normalization="layer")
    for name, d in _parts(model, layer.directions[0]).items():
        if d.ndim >= 2:
            assert torch.isclose(d.norm(), theta[name].norm(), rtol=1e-9)
    raw = random_direction(model, seed=3, dims=1, normalization="none", biases="keep").directions[0]
    assert torch.equal(raw, torch.randn(raw.numel(), generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    with pytest.raises(OptionError, match="^normalization must be one of"):  # the Python name, not --normalization
        random_direction(model, normalization="unit")


def test_eigen_directions_are_orthonormal_hessian_eigenvectors():
    model, (X, y) = make_mlp(), make_data()
    values, vectors = torch.linalg.eigh(dense_hessian(model, X, y))
    directions = eigen_directions(model, mean_ce, (X, y), 2, dtype=torch.float64, seed=0, tol=1e-10)
    V = torch.stack(directions.directions)
    assert torch.allclose(V @ V.T, torch.eye(2, dtype=torch.float64), atol=1e-8)
    for i, v in enumerate(V):  # largest first, equal to eigh's up to sign
        assert abs(float(v @ vectors[:, -1 - i])) == pytest.approx(1.0, abs=1e-7)
    assert directions.description["eigenvalues"] == pytest.approx(values[-2:].flip(0).tolist(), rel=1e-8)
    assert torch.equal(directions.origin, flat_parameters(model))


def test_line_and_plane_pass_through_the_checkpoints():
    (X, y), models = make_data(), [make_mlp(seed) for seed in (0, 1, 2)]
    thetas = [flat_parameters(m) for m in models]
    before = copy.deepcopy(models[0].state_dict())
    line = evaluate_surface(models[0], mean_ce, (X, y), checkpoint_line(*thetas[:2]), np.array([0.0, 0.5, 1.0]),
                            dtype=torch.float64, progress=False)
    for cell, theta in ((0, thetas[0]), (2, thetas[1])):
        loss, accuracy = _direct(models[0], theta, X, y)
        assert abs(line.loss[cell] - loss) < 1e-10 and line.accuracy[cell] == pytest.approx(accuracy)
    assert line.kind == "line" and line.dims == 1 and line.y.size == 0
    plane = evaluate_surface(models[0], mean_ce, (X, y), checkpoint_plane(*thetas), np.array([0.0, 1.0]),
                             np.array([0.0, 1.0]), dtype=torch.float64, progress=False)
    for cell, theta in (((0, 0), thetas[0]), ((1, 0), thetas[1]), ((0, 1), thetas[2])):
        assert abs(plane.loss[cell] - _direct(models[0], theta, X, y)[0]) < 1e-10
    assert all(torch.equal(before[k], v) for k, v in models[0].state_dict().items())  # the model is untouched


def test_grid_equals_direct_evaluation_for_any_batching():
    model, (X, y) = make_mlp(), make_data(n=40)
    directions = random_direction(model, seed=1)
    x, yy = np.linspace(-1, 1, 5), np.linspace(-0.5, 0.5, 4)
    grid = evaluate_surface(model, mean_ce, (X, y), directions, x, yy, dtype=torch.float64, progress=False)
    assert grid.loss.shape == (5, 4) and np.isfinite(grid.loss).all() and grid.grid == "-1:1:5"
    d1, d2 = directions.directions
    for i, j in ((0, 0), (2, 1), (4, 3), (1, 2)):
        loss, accuracy = _direct(model, directions.origin + x[i] * d1 + yy[j] * d2, X, y)
        assert abs(grid.loss[i, j] - loss) < 1e-10 and grid.accuracy[i, j] == pytest.approx(accuracy)
    batches = list(zip(X.split(16), y.split(16)))  # 16, 16, 8: exact size weighting
    for kwargs in ({"vectorize": True}, {}):
        other = evaluate_surface(model, mean_ce, batches, directions, x, yy, dtype=torch.float64, progress=False,
                                 **kwargs)
        assert np.allclose(other.loss, grid.loss, rtol=0, atol=1e-12)
        assert np.allclose(other.accuracy, grid.accuracy)


def test_resume_computes_only_the_nan_cells():
    model, (X, y) = make_mlp(), make_data()
    directions = random_direction(model, seed=2)
    x = np.linspace(-1, 1, 4)
    full = evaluate_surface(model, mean_ce, (X, y), directions, x, x, dtype=torch.float64, progress=False)
    loss = np.full_like(full.loss, -1.0)  # a marker: kept cells must stay exactly as they are
    todo = [(0, 1), (2, 0), (2, 3)]
    for cell in todo:
        loss[cell] = np.nan
    partial = dataclasses.replace(full, loss=loss)
    calls, rows = [], []

    def counting_loss(outputs, targets):
        calls.append(1)
        return F.cross_entropy(outputs, targets)

    resumed = evaluate_surface(model, counting_loss, (X, y), directions, x, x, dtype=torch.float64, progress=False,
                               existing=dataclasses.replace(partial, loss_function=loss_name(counting_loss)),
                               on_row=lambda r: rows.append(r.missing))
    assert len(calls) == len(todo) and rows == [2, 0]  # two rows had NaN cells; one call per cell
    for cell in np.ndindex(loss.shape):
        expected = full.loss[cell] if cell in todo else -1.0
        assert resumed.loss[cell] == pytest.approx(expected, abs=1e-12)
    with pytest.raises(OptionError, match="grid"):
        evaluate_surface(model, mean_ce, (X, y), directions, x[:3], x, dtype=torch.float64, existing=partial)
    with pytest.raises(OptionError, match="seed"):
        evaluate_surface(model, mean_ce, (X, y), random_direction(model, seed=5), x, x, dtype=torch.float64,
                         existing=partial)


def test_parse_grid():
    assert np.allclose(parse_grid("-1:1:5"), [-1, -0.5, 0, 0.5, 1])
    for bad in ("-1:1", "1:-1:5", "a:1:5", "0:1:1", "0:1:2.5", "0:inf:3"):
        with pytest.raises(OptionError, match="^grid takes START:STOP:NUM"):
            parse_grid(bad)
    with pytest.raises(OptionError, match="--grid-y"):
        parse_grid("0:1", "--grid-y")


# -- command line and figure ---------------------------------------------------------------------------------------
def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli_surface.add_parser(parser.add_subparsers(dest="command"))
    argv = join_grid_values(argv)  # as landscape.cli.main does: "--grid -1:1:5" is a value, not an option
    with command_line_names():  # as landscape.cli.main does: the library's messages name options by their flags
        return cli_surface.run(parser.parse_args(argv), argv)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("surface")
    paths = []
    for step in (0, 1, 2):
        torch.manual_seed(step)
        model = nn.Sequential(nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 10))
        paths.append(str(save_checkpoint(folder / f"step_{step}.pt", model, step=step, model_spec="mlp",
                                         model_kwargs={"sizes": SIZES}).path))
    return folder, paths


COMMON = ["--data", "digits", "--subset", "100", "--quiet"]


@pytest.fixture(scope="module")
def surface_file(checkpoints):
    folder, paths = checkpoints
    output = folder / "surface.h5"
    assert _cli(["surface", paths[0], *COMMON, "--grid", "-1:1:5", "--grid-y", "-1:1:4", "-o", str(output)]) == 0
    return output


def test_cli_writes_the_grid_and_resume_completes_a_killed_run(checkpoints, surface_file, monkeypatch, capsys):
    folder, paths = checkpoints
    complete = store.read_results(surface_file)["step_0"].results["surface"]
    assert isinstance(complete, SurfaceResult) and complete.missing == 0 and complete.loss.shape == (5, 4)
    assert complete.normalization == "filter" and complete.sha256 and "digits" in complete.data
    assert "landscape surface" in complete.command and complete.checkpoint_names == ["step_0"]

    killed = folder / "killed.h5"
    argv = ["surface", paths[0], *COMMON, "--grid", "-1:1:5", "--grid-y", "-1:1:4", "-o", str(killed)]
    import landscape.surface  # the job's module: run_surface calls evaluate_surface there

    real = landscape.surface.evaluate_surface

    def killed_after_two_rows(*args, on_row, **kwargs):
        def row(result):
            on_row(result)
            if result.missing <= result.loss.size - 8:
                raise KeyboardInterrupt
        return real(*args, on_row=row, **kwargs)

    monkeypatch.setattr(landscape.surface, "evaluate_surface", killed_after_two_rows)
    with pytest.raises(KeyboardInterrupt):
        _cli(argv)
    monkeypatch.undo()
    partial = store.read_results(killed)["step_0"].results["surface"]
    assert partial.missing == 12 and np.array_equal(partial.loss[:2], complete.loss[:2])
    with pytest.raises(StoreError, match="--resume"):
        _cli(argv)
    capsys.readouterr()
    assert _cli(argv + ["--resume"]) == 0
    assert str(killed) in capsys.readouterr().out
    resumed = store.read_results(killed)["step_0"].results["surface"]
    assert resumed.missing == 0 and np.array_equal(resumed.loss, complete.loss)
    with pytest.raises(OptionError, match="normalization"):
        _cli(argv + ["--resume", "--normalization", "layer"])


def test_cli_errors(checkpoints, tmp_path):
    _, paths = checkpoints
    out = ["-o", str(tmp_path / "x.h5")]
    with pytest.raises(OptionError, match="--directions line takes two checkpoints"):
        _cli(["surface", paths[0], *COMMON, "--directions", "line", *out])
    with pytest.raises(OptionError, match="--directions random takes one checkpoint"):
        _cli(["surface", *paths[:2], *COMMON, *out])
    with pytest.raises(OptionError, match="--directions plane takes three checkpoints"):
        _cli(["surface", *paths[:2], *COMMON, "--directions", "plane", *out])
    with pytest.raises(OptionError, match="plane is 2-D"):
        _cli(["surface", *paths, *COMMON, "--directions", "plane", "--dims", "1", *out])
    with pytest.raises(OptionError, match="--grid takes START:STOP:NUM"):
        _cli(["surface", paths[0], *COMMON, "--grid", "1:-1:5", *out])
    with pytest.raises(OptionError, match="--grid-y"):
        _cli(["surface", paths[0], *COMMON, "--grid-y", "-1:1", *out])
    assert not (tmp_path / "x.h5").exists()


def test_plot_surface_contour_and_3d(surface_file, tmp_path):
    base = tmp_path / "figs" / "surface"
    fig = plot_surface(surface_file, base)
    for suffix, magic in ((".png", b"\x89PNG"), (".pdf", b"%PDF")):
        written = base.with_suffix(suffix)
        assert written.read_bytes()[:4] == magic and written.stat().st_size > 5000
    contour, colorbar, surface3d = fig.axes
    assert contour.get_xlabel() == "filter-normalized direction 1"
    assert contour.get_ylabel() == "filter-normalized direction 2"
    assert colorbar.get_ylabel() == "cross-entropy loss"
    assert surface3d.name == "3d" and "log" in surface3d.get_zlabel()
    assert surface3d.get_xlabel().replace("\n", " ") == "filter-normalized direction 1"
    assert len(plot_surface(surface_file, None, view="contour").axes) == 2
    assert [ax.name for ax in plot_surface(surface_file, None, view="3d").axes] == ["3d"]
    with pytest.raises(OptionError, match="'1d' needs a 1-D surface"):
        plot_surface(surface_file, None, view="1d")
    with pytest.raises(OptionError, match="view must be one of"):
        plot_surface(surface_file, None, view="side")


def test_line_through_checkpoints_drawn_as_a_curve(checkpoints, tmp_path):
    _, paths = checkpoints
    output = tmp_path / "line.h5"
    assert _cli(["surface", *paths[:2], *COMMON, "--directions", "line", "--grid", "-0.5:1.5:9",
                 "-o", str(output)]) == 0
    stored = store.read_results(output)["step_0"].results["surface"]
    assert stored.kind == "line" and stored.loss.shape == (9,)
    fig = plot_surface(output, tmp_path / "line")
    assert (tmp_path / "line.png").stat().st_size > 5000 and (tmp_path / "line.pdf").stat().st_size > 5000
    ax, twin = fig.axes
    assert ax.get_xlabel() == "α (step_0 → step_1)" and ax.get_ylabel() == "cross-entropy loss"
    assert twin.get_ylabel() == "accuracy"
    assert np.allclose(ax.lines[0].get_ydata(), stored.loss) and np.allclose(twin.lines[0].get_ydata(),
                                                                             stored.accuracy)
    assert {"step_0", "step_1"} <= {t.get_text() for t in ax.texts}  # (and the barrier's note, see test_pca_paths)
    with pytest.raises(OptionError, match="needs a 2-D surface"):
        plot_surface(output, None, view="contour")


def test_plot_refuses_files_without_a_surface(tmp_path):
    empty = tmp_path / "empty.h5"
    with store.update_results(empty):
        pass
    with pytest.raises(StoreError, match="no loss surface"):
        plot_surface(empty, None)
