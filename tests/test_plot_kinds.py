"""The spectrum and SAM figures, and `landscape plot` dispatching to every figure kind, from small HDF5 fixtures."""

from __future__ import annotations

import argparse
import shutil
import types

import h5py
import matplotlib.colors as mcolors
import numpy as np
import pytest

from landscape import store
from landscape.cli import plot as cli_plot
from landscape.cli import main
from landscape.errors import OptionError, StoreError
from landscape.plot import plot_sam, plot_spectrum
from landscape.plot.sam import projection_pieces
from landscape.plot.spectrum import FLOOR, _spread
from landscape.plot.style import COLUMN_WIDTH

MLP = ["--model", "mlp", "--model-kwargs", '{"sizes": [64, 8, 10]}', "--data", "digits", "--subset", "200"]


def _train(path, *extra: str) -> None:
    assert main(["train", *MLP, "--lr", "0.2", "--steps", "40", "--track-trace-matvecs", "0", *extra, "--quiet",
                 "-o", str(path)]) == 0


def _analyze(checkpoints, output, metrics: str) -> None:
    assert main(["analyze", str(checkpoints), "--data", "digits", "--subset", "200", "--metrics", metrics,
                 "--top-k", "3", "--density-steps", "20", "--density-probes", "2", "--quiet", "-o", str(output)]) == 0


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kinds")
    paths = {name: folder / f"{name}.h5" for name in ("sgd", "sam", "untracked", "results", "eigs_only")}
    _train(paths["sgd"], "--track-every", "10", "--save-every", "20")
    _train(paths["sam"], "--optimizer", "sam", "--track-every", "10", "--track-also", "ggn", "--track-jacobian")
    _train(paths["untracked"], "--track-every", "0")
    _analyze(folder / "sgd_checkpoints", paths["results"], "eigs,density")
    _analyze(folder / "sgd_checkpoints", paths["eigs_only"], "eigs")
    return paths


def _assert_written(base) -> None:
    for suffix, magic in ((".png", b"\x89PNG"), (".pdf", b"%PDF")):
        written = base.with_name(base.name + suffix)
        assert written.is_file() and written.stat().st_size > 1000
        assert written.read_bytes()[:4] == magic


# -- spectrum ----------------------------------------------------------------------------------------------------
def test_spectrum_draws_each_checkpoint_on_a_log_scale_with_its_top_eigenvalues(files, tmp_path):
    output = tmp_path / "figs" / "spectrum"
    fig = plot_spectrum(files["results"], output)
    _assert_written(output)

    (ax,) = fig.axes
    assert fig.get_size_inches()[0] == pytest.approx(COLUMN_WIDTH)
    assert ax.get_xlabel() == "eigenvalue" and ax.get_ylabel() == "density (log scale)"
    assert ax.get_yscale() == "log"
    records = store.read_results(files["results"])
    assert list(records) == ["step_20", "step_40"]
    curves = [line for line in ax.lines if line.get_label().startswith("step")]
    marks = [line for line in ax.lines if line.get_label() == "_eigenvalues"]
    assert [line.get_label() for line in curves] == ["step 20", "step 40"]
    peak = max(r.results["density"].density.max() for r in records.values())
    for curve, mark, record in zip(curves, marks, records.values()):
        density = record.results["density"]
        assert np.allclose(curve.get_xdata(), density.grid)
        assert np.allclose(curve.get_ydata(), np.maximum(density.density, FLOOR * peak))
        assert np.allclose(mark.get_xdata(), record.results["eigen"].values)
        assert mcolors.same_color(mark.get_color(), curve.get_color())
    assert ax.get_ylim()[0] == pytest.approx(FLOOR * peak)
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"step 20", "step 40", "top eigenvalues"}


def test_spectrum_named_checkpoints_and_labels(files):
    fig = plot_spectrum(files["results"], None, checkpoints=["step_40"], labels=["end of training"])
    (curve,) = [line for line in fig.axes[0].lines if not line.get_label().startswith("_")]
    assert curve.get_label() == "end of training"
    with pytest.raises(StoreError, match="no checkpoint 'step_99'.*step_20, step_40"):
        plot_spectrum(files["results"], None, checkpoints=["step_99"])
    with pytest.raises(OptionError, match="labels"):
        plot_spectrum(files["results"], None, labels=["a"])


def test_spectrum_without_density_names_the_option(files, tmp_path):
    with pytest.raises(StoreError, match="run landscape analyze with metrics density"):
        plot_spectrum(files["eigs_only"], tmp_path / "fig")
    with pytest.raises(StoreError, match="'step_20'.* with metrics density"):
        plot_spectrum(files["eigs_only"], None, checkpoints=["step_20"])
    assert not (tmp_path / "fig.png").exists()


def test_default_checkpoints_spread_from_first_to_last():
    names = [f"c{i}" for i in range(11)]
    assert _spread(names, 5) == ["c0", "c2", "c5", "c8", "c10"]
    assert _spread(names[:3], 5) == names[:3]


# -- sam ---------------------------------------------------------------------------------------------------------
def test_projection_pieces_break_where_the_eigenvector_changes():
    steps = np.arange(1.0, 9.0)  # records at 0, 4, 8: steps 1-4 use the vector of record 0, steps 5-8 that of 4
    values = np.array([1.0, 3.0, 1.0, 3.0, 10.0, 12.0, 10.0, 12.0])
    x, y = projection_pieces(steps, values, np.array([0.0, 4.0, 8.0]), center=False)
    assert np.isnan(x[4]) and np.isnan(y[4]) and np.array_equal(x[:4], steps[:4])
    _, centered = projection_pieces(steps, values, np.array([0.0, 4.0, 8.0]))
    assert np.allclose(centered[~np.isnan(centered)], [-1, 1, -1, 1, -1, 1, -1, 1])


def test_sam_figure_overlays_runs_in_two_labelled_panels(files, tmp_path):
    output = tmp_path / "sam"
    fig = plot_sam([files["sgd"], files["sam"]], output)
    _assert_written(output)

    assert len(fig.axes) == 2
    top, bottom = fig.axes
    assert "eigenvector" in top.get_ylabel() and "lambda" in bottom.get_ylabel()
    assert bottom.get_xlabel() == "step" and top.get_xlabel() == ""
    assert [line.get_label() for line in top.lines] == ["GD", "SAM (ρ = 0.05)"]  # full batch: gradient descent
    for path, projection, sharpness in zip((files["sgd"], files["sam"]), top.lines, bottom.lines):
        run = store.read_run(path)
        y = np.asarray(projection.get_ydata(), dtype=float)
        assert np.isnan(y).sum() == 3  # records at 0, 10, 20, 30, 40: four pieces over steps 1-40
        raw = np.asarray(run.tables["run"]["top_projection"], dtype=float)
        inner = raw[1:-1] - (raw[:-2] + 2 * raw[1:-1] + raw[2:]) / 4  # about the local mean
        assert np.allclose(y[~np.isnan(y)][2:9], inner[1:8])  # steps 3-9, inside the first piece (steps 1-10)
        assert np.allclose(sharpness.get_ydata(), run.tables["run/curvature"]["lambda_max"])
        assert mcolors.same_color(projection.get_color(), sharpness.get_color())

    raw = plot_sam(files["sam"], None, labels=["sam"], center=False)
    y = np.asarray(raw.axes[0].lines[0].get_ydata(), dtype=float)
    assert np.allclose(y[~np.isnan(y)], store.read_run(files["sam"]).tables["run"]["top_projection"])


def test_sam_window_zooms_both_panels(files):
    fig = plot_sam([files["sam"]], None, window=(15, 30))
    top, bottom = fig.axes
    assert top.get_xlim() == (15, 30)
    x = np.asarray(top.lines[0].get_xdata(), dtype=float)
    assert x[~np.isnan(x)].min() == 15 and x[~np.isnan(x)].max() == 30 and np.isnan(x).sum() == 1
    assert list(bottom.lines[0].get_xdata()) == [20, 30]
    with pytest.raises(OptionError, match="window"):
        plot_sam([files["sam"]], None, window=(30, 15))


def test_sam_without_projection_names_the_option(files):
    with pytest.raises(StoreError, match="top_projection.*train with track_every N"):
        plot_sam([files["sam"], files["untracked"]], None)
    with pytest.raises(OptionError, match="labels"):
        plot_sam([files["sam"]], None, labels=["a", "b"])


# -- landscape plot ----------------------------------------------------------------------------------------------
def _plot(argv, capsys) -> list[str]:
    parser = argparse.ArgumentParser()
    cli_plot.add_parser(parser.add_subparsers(dest="command"))
    assert cli_plot.run(parser.parse_args(["plot", *argv]), ["plot", *argv]) == 0
    return capsys.readouterr().out.split()


@pytest.mark.parametrize("kind, names, extra", [
    ("spectrum", ["results"], ["--checkpoint", "step_20", "--checkpoint", "step_40"]),
    ("sharpening", ["sgd", "sam"], ["--labels", "SGD", "SAM"]),
    ("curvature", ["sam"], []),
    ("sam", ["sgd", "sam"], []),
])
def test_cli_draws_each_kind(files, tmp_path, capsys, kind, names, extra):
    output = tmp_path / kind
    printed = _plot([*(str(files[n]) for n in names), "--kind", kind, "-o", str(output), *extra], capsys)
    assert printed == [str(output) + ".png", str(output) + ".pdf"]
    _assert_written(output)


def test_cli_guesses_the_kind_and_names_the_output(files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _plot([str(files["results"])], capsys) == ["results_spectrum.png", "results_spectrum.pdf"]
    assert _plot([str(files["sgd"])], capsys) == ["sgd_sharpening.png", "sgd_sharpening.pdf"]
    _assert_written(tmp_path / "results_spectrum")
    surface = tmp_path / "with_surface.h5"
    shutil.copyfile(files["results"], surface)
    with h5py.File(surface, "a") as handle:
        handle["checkpoints/step_40"].create_group("surface").attrs["result_type"] = "SurfaceResult"
    assert cli_plot.guess_kind(surface) == "surface"
    with pytest.raises(StoreError, match="cannot guess.*--kind"):
        cli_plot.guess_kind(files["eigs_only"])


def test_cli_dispatches_surface_and_compare_lazily(files, tmp_path, capsys, monkeypatch):
    calls = []
    for name, function in (("surface", "plot_surface"), ("compare", "plot_compare")):
        module = types.ModuleType(f"landscape.plot.{name}")
        setattr(module, function, lambda *args, _name=name, **kwargs: calls.append((_name, args, kwargs)))
        monkeypatch.setitem(__import__("sys").modules, f"landscape.plot.{name}", module)
    _plot([str(files["results"]), "--kind", "surface", "--checkpoint", "step_40", "--view", "contour", "-o",
           str(tmp_path / "s")], capsys)
    _plot([str(files["results"]), str(files["sam"]), "--kind", "compare", "-o", str(tmp_path / "c")], capsys)
    assert calls == [("surface", (files["results"], tmp_path / "s"), {"checkpoint": "step_40", "view": "contour"}),
                     ("compare", ([files["results"], files["sam"]], tmp_path / "c"), {})]


@pytest.mark.parametrize("argv, error, match", [
    (["{sgd}", "--kind", "histogram"], OptionError, "unknown --kind 'histogram'"),
    (["{results}", "{results}", "--kind", "blocks"], OptionError, "blocks takes one file"),
    (["{results}", "{results}", "--kind", "surface"], OptionError, "surface takes one file"),
    (["{sgd}", "{tmp}/missing.h5"], StoreError, "missing.h5 does not exist"),
    (["{sgd}", "--kind", "sam", "--view", "3d"], OptionError, "--view does not apply to --kind sam"),
    (["{sgd}", "--kind", "sharpening", "--checkpoint", "step_20"], OptionError, "--checkpoint does not apply"),
    (["{results}", "--kind", "surface", "--view", "4d"], OptionError, "unknown --view '4d'"),
    (["{untracked}", "--kind", "sam"], StoreError, "top_projection"),
    (["{results}", "--kind", "sharpening"], StoreError, "no training run"),
])
def test_cli_errors_are_one_line_toolkit_errors(files, tmp_path, capsys, argv, error, match):
    argv = [a.format(tmp=tmp_path, **{k: str(v) for k, v in files.items()}) for a in argv]
    with pytest.raises(error, match=match) as caught:
        _plot([*argv, "-o", str(tmp_path / "fig")], capsys)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "fig.png").exists()
