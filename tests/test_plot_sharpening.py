"""The sharpening figure: drawn from `landscape train` run files only, two labelled panels, 2/η lines, PNG + PDF."""

from __future__ import annotations

import matplotlib.colors as mcolors
import numpy as np
import pytest

from landscape.cli import main
from landscape.errors import OptionError, StoreError
from landscape.plot import plot_sharpening, save
from landscape.plot.style import COLUMN_WIDTH, NEUTRAL, new_figure, paper_style
from landscape.store import read_run


def _train(path, lr: float, steps: int = 200, track_every: int = 20) -> None:
    code = main(["train", "--model", "chebyshev", "--data", "chebyshev", "--loss", "squared", "--lr", str(lr),
                 "--steps", str(steps), "--track-every", str(track_every), "--track-trace-matvecs", "0", "--quiet",
                 "-o", str(path)])
    assert code == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eos")
    paths = [folder / "lr0.2.h5", folder / "lr0.1.h5"]
    for path, lr in zip(paths, (0.2, 0.1)):
        _train(path, lr)
    return paths


def test_figure_has_two_labelled_panels_and_threshold_lines(runs, tmp_path):
    output = tmp_path / "figs" / "eos"
    fig = plot_sharpening(runs, output)

    for suffix, magic in ((".png", b"\x89PNG"), (".pdf", b"%PDF")):
        written = output.with_suffix(suffix)
        assert written.is_file() and written.stat().st_size > 1000
        assert written.read_bytes()[:4] == magic

    assert len(fig.axes) == 2
    top, bottom = fig.axes
    assert bottom.get_xlabel() == "step"
    assert "lambda" in top.get_ylabel()
    assert bottom.get_ylabel() == "training loss"
    assert bottom.get_yscale() == "log"
    assert fig.get_size_inches()[0] == pytest.approx(COLUMN_WIDTH)

    run_lines = [line for line in top.lines if line.get_label().startswith("GD")]
    thresholds = [line for line in top.lines if line.get_label().startswith("2/η")]
    # the legend names the optimizer (full-batch sgd: gradient descent) and η, which the two runs do not share
    assert [line.get_label() for line in run_lines] == ["GD (η = 0.2)", "GD (η = 0.1)"]
    assert [line.get_label() for line in thresholds] == ["2/η = 10", "2/η = 20"]
    assert not mcolors.same_color(run_lines[0].get_color(), run_lines[1].get_color())
    for threshold, value in zip(thresholds, (10.0, 20.0)):
        assert np.allclose(threshold.get_ydata(), value)
        assert threshold.get_linestyle() == "--"
        assert mcolors.same_color(threshold.get_color(), NEUTRAL)  # grey, whichever run it belongs to
    assert {text.get_text() for text in top.texts} == {"2/η = 10", "2/η = 20"}  # each labelled on its line
    legend = [text.get_text() for text in top.get_legend().get_texts()]
    assert legend == ["GD (η = 0.2)", "GD (η = 0.1)"]

    # the curves are the stored records, not recomputed
    stored = read_run(runs[0]).tables
    assert np.allclose(run_lines[0].get_ydata(), stored["run/curvature"]["lambda_max"])
    assert np.allclose(bottom.lines[0].get_ydata(), stored["run"]["loss"])


def test_custom_labels_and_label_count(runs, tmp_path):
    fig = plot_sharpening(runs, None, labels=["fast", "slow"])
    assert [line.get_label() for line in fig.axes[0].lines if not line.get_label().startswith("2/η")] == \
        ["fast", "slow"]
    assert not list(tmp_path.iterdir())  # output None writes nothing
    with pytest.raises(OptionError, match="labels"):
        plot_sharpening(runs, tmp_path / "x", labels=["only one"])
    with pytest.raises(OptionError):
        plot_sharpening([], tmp_path / "x")


def test_run_without_curvature_records_is_a_clear_error(tmp_path):
    path = tmp_path / "untracked.h5"
    _train(path, 0.2, steps=5, track_every=0)
    with pytest.raises(StoreError, match="no curvature records.*train with track_every N"):
        plot_sharpening([path], tmp_path / "fig")
    with pytest.raises(StoreError, match="does not exist"):
        plot_sharpening([tmp_path / "missing.h5"], tmp_path / "fig")
    assert not (tmp_path / "fig.png").exists()


def test_save_writes_png_and_pdf_and_drops_a_given_suffix(tmp_path):
    with paper_style():
        fig = new_figure()
        fig.subplots().plot([0, 1], [1, 0])
    written = save(fig, tmp_path / "a" / "b" / "curve_0.05.png")
    assert [p.name for p in written] == ["curve_0.05.png", "curve_0.05.pdf"]
    assert all(p.stat().st_size > 0 for p in written)
