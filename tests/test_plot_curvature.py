"""The curvature figure: λmax (Hessian, GGN) and the Jacobian norms drawn from `landscape train` run files only."""

from __future__ import annotations

import matplotlib.colors as mcolors
import numpy as np
import pytest

from landscape.cli import main
from landscape.errors import OptionError, StoreError
from landscape.plot import plot_curvature
from landscape.plot.style import COLUMN_WIDTH
from landscape.store import read_run


def _train(path, *extra: str) -> None:
    code = main(["train", "--model", "chebyshev", "--data", "chebyshev", "--loss", "squared", "--lr", "0.2",
                 "--steps", "100", "--track-every", "20", "--track-trace-matvecs", "0", *extra, "--quiet",
                 "-o", str(path)])
    assert code == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("curvature")
    paths = {"full": folder / "full.h5", "trace": folder / "trace.h5", "bare": folder / "bare.h5",
             "no_ggn": folder / "no_ggn.h5"}
    _train(paths["full"], "--track-also", "ggn", "--track-jacobian")
    _train(paths["trace"], "--track-also", "ggn", "--track-jacobian", "--track-trace-matvecs", "3")
    _train(paths["bare"])
    _train(paths["no_ggn"], "--track-jacobian")
    return paths


def _labelled(ax, prefix):
    return [line for line in ax.lines if line.get_label().startswith(prefix)]


def test_figure_has_labelled_panels_from_the_stored_records(runs, tmp_path):
    output = tmp_path / "figs" / "curv"
    fig = plot_curvature([runs["full"]], output, labels=["toy"], title="Chebyshev")

    for suffix, magic in ((".png", b"\x89PNG"), (".pdf", b"%PDF")):
        written = output.with_suffix(suffix)
        assert written.is_file() and written.stat().st_size > 1000
        assert written.read_bytes()[:4] == magic

    assert len(fig.axes) == 2  # no trace recorded: no trace panel
    sharp, jac = fig.axes
    assert fig.get_size_inches()[0] == pytest.approx(COLUMN_WIDTH)
    assert "lambda" in sharp.get_ylabel()
    assert "Jacobian" in jac.get_ylabel()
    assert jac.get_xlabel().startswith("step") and sharp.get_xlabel() == ""

    curvature = read_run(runs["full"]).tables["run/curvature"]
    (hessian,) = _labelled(sharp, "toy: Hessian")
    (ggn,) = _labelled(sharp, "toy: GGN")
    (threshold,) = _labelled(sharp, "2/η")
    assert np.allclose(hessian.get_ydata(), curvature["lambda_max"])
    assert np.allclose(ggn.get_ydata(), curvature["lambda_max_ggn"])
    assert ggn.get_linestyle() == "--" and mcolors.same_color(ggn.get_color(), hessian.get_color())
    assert threshold.get_label() == "2/η = 10" and np.allclose(threshold.get_ydata(), 10.0)
    assert threshold.get_linestyle() == ":"
    (mean,) = _labelled(jac, "toy: mean")
    (largest,) = _labelled(jac, "toy: max")
    assert np.allclose(mean.get_ydata(), curvature["jacobian_mean"])
    assert np.allclose(largest.get_ydata(), curvature["jacobian_max"])
    assert mean.get_linestyle() == "-" and largest.get_linestyle() == "--"

    legends = [child for child in sharp.get_children() if isinstance(child, type(sharp.get_legend()))]
    texts = {text.get_text() for legend in legends for text in legend.get_texts()}
    assert {"toy", "Hessian", "GGN", "2/η"} <= texts
    assert sharp.get_legend().get_title().get_text() == "Chebyshev"
    assert {t.get_text() for t in jac.get_legend().get_texts()} == {"mean", "max"}


def test_trace_panel_when_a_run_recorded_it(runs):
    fig = plot_curvature([runs["full"], runs["trace"]], None, labels=["a", "b"])
    assert len(fig.axes) == 3
    assert "trace" in fig.axes[2].get_ylabel()
    assert fig.axes[2].get_xlabel().startswith("step") and fig.axes[1].get_xlabel() == ""
    assert np.allclose(fig.axes[2].lines[0].get_ydata(), read_run(runs["trace"]).tables["run/curvature"]["trace"])


def test_ggn_is_drawn_when_recorded_and_required_on_request(runs):
    fig = plot_curvature([runs["no_ggn"]], None, labels=["x"])  # GGN optional by default
    assert not _labelled(fig.axes[0], "x: GGN") and _labelled(fig.axes[0], "x: Hessian")
    with pytest.raises(StoreError, match="lambda_max_ggn.*train with also_lambda_max ggn"):
        plot_curvature([runs["no_ggn"]], None, ggn=True)


def test_missing_jacobian_columns_and_bad_arguments_are_clear_errors(runs, tmp_path):
    with pytest.raises(StoreError, match="jacobian_mean.*train with jacobian to record"):
        plot_curvature([runs["full"], runs["bare"]], tmp_path / "fig")
    assert not (tmp_path / "fig.png").exists()
    with pytest.raises(OptionError, match="labels"):
        plot_curvature([runs["full"]], None, labels=["a", "b"])
    with pytest.raises(OptionError):
        plot_curvature([], None)
