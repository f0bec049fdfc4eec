"""The demo shows what the toolkit is for, and the figures tell runs apart.

The slow test runs the demo with its defaults and checks its run files against the theory it illustrates: under
full-batch gradient descent λmax rises from below 2/η to 2/η and hovers there (Cohen et al. 2021), SAM bounces across
the sharpest direction while gradient descent, below 2/η, does not (Bartlett, Long and Bousquet 2023), and the minima
differ in flatness. The fast tests check the figures on small run and results files written here: one colour per
optimizer in every figure kind, several results files overlaid in one spectrum, the trace band clipped at zero, the
mini-batch loss smoothed, and SAM's projection free of jumps at the curvature records.
"""

from __future__ import annotations

import argparse
import json

import matplotlib.colors as mcolors
import numpy as np
import pytest
import torch

from landscape import store
from landscape.cli import demo as cli_demo
from landscape.cli import main
from landscape.linalg import spectral_density
from landscape.linalg.operator import DenseOperator
from landscape.optim.registry import HYPERPARAMETERS
from landscape.plot import plot_curvature, plot_sam, plot_sharpening, plot_spectrum
from landscape.plot.curvature import trace_band
from landscape.plot.sam import projection_pieces
from landscape.plot.style import OPTIMIZER_STYLES, run_styles
from landscape.results import EigenResult

RECORD_EVERY = 10


# -- small files -------------------------------------------------------------------------------------------------
def _run_file(path, optimizer: str, *, lr: float = 0.1, lam=(1.0, 2.0, 3.0), batch_size=None, loss=None,
              trace=None, stderr=None, hyperparameters=None):
    """A run file as `landscape train` writes it: settings, one row per step, a curvature record every 10 steps."""
    settings = {"optimizer": optimizer, "lr": lr, "batch_size": batch_size,
                "hyperparameters": hyperparameters or {}}
    last = RECORD_EVERY * (len(lam) - 1)
    loss = np.linspace(1.0, 0.1, last) if loss is None else np.asarray(loss)
    with store.RunWriter(path, {"settings": json.dumps(settings)}) as writer:
        for step in range(1, last + 1):
            writer.append("run", {"step": step, "loss": loss[step - 1], "top_projection": 0.01 * (-1) ** step})
        for k, value in enumerate(lam):
            row = {"step": RECORD_EVERY * k, "lambda_max": value, "jacobian_mean": 1.0 + k, "jacobian_max": 2.0 + k}
            if trace is not None:
                row.update(trace=trace[k], trace_stderr=stderr[k])
            writer.append("run/curvature", row)
    return path


def _results_file(path, checkpoints: dict[str, tuple[int, list[float]]]):
    """A results file holding, per checkpoint, the SLQ density and top eigenvalues of a diagonal matrix with the
    given spectrum (so the true eigenvalues are known)."""
    with store.update_results(path) as handle:
        for name, (step, spectrum) in checkpoints.items():
            op = DenseOperator(torch.diag(torch.tensor(spectrum, dtype=torch.float64)))
            density = spectral_density(op, num_probes=2, num_steps=len(spectrum), seed=0, grid_points=200)
            top = np.sort(np.asarray(spectrum))[::-1][:2]
            eigen = EigenResult(values=top, residuals=np.zeros(2), converged=np.ones(2, dtype=bool), vectors=None,
                                method="dense", which="LA", num_matvecs=0, tol=0.0, seed=None, seconds=0.0)
            store.write_checkpoint(handle, name, {"density": density, "eigen": eigen},
                                   attrs={"step": step, "path": f"{path.stem}/{name}.pt"})
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phenomena")
    return {
        "sgd": _run_file(folder / "train_sgd.h5", "sgd", lam=(1.0, 2.0, 3.0, 4.0)),
        "sam": _run_file(folder / "train_sam.h5", "sam", lam=(1.0, 1.5, 2.0, 2.5), hyperparameters={"rho": 0.05}),
        "minibatch": _run_file(folder / "minibatch.h5", "sgd", batch_size=64, lam=(1.0, 1.1, 1.2, 1.3, 1.4, 1.5),
                               loss=0.5 + 0.2 * (-1.0) ** np.arange(50)),
        "trace": _run_file(folder / "trace.h5", "nso", lam=(1.0, 2.0, 3.0), trace=[1.0, 5.0, 10.0],
                           stderr=[3.0, 1.0, 20.0]),
        "minima": _results_file(folder / "minima.h5", {"minimum_sgd": (50, [6.0, 5.0, 1.0, 0.5, 0.1, 0.0]),
                                                        "minimum_sam": (50, [3.0, 2.5, 1.0, 0.5, 0.1, 0.0])}),
        "a": _results_file(folder / "a.h5", {"step_10": (10, [2.0, 1.0, 0.5, 0.2, 0.1, 0.0]),
                                             "step_50": (50, [8.0, 7.0, 1.0, 0.5, 0.1, 0.0])}),
        "b": _results_file(folder / "b.h5", {"step_50": (50, [4.0, 3.0, 1.0, 0.5, 0.1, 0.0])}),
    }


def _curves(ax):
    return [line for line in ax.lines if not line.get_label().startswith(("_", "2/η"))]


# -- one colour per optimizer ------------------------------------------------------------------------------------
def test_every_optimizer_has_its_own_colour_and_marker():
    assert set(OPTIMIZER_STYLES) == set(HYPERPARAMETERS)
    colors = [mcolors.to_hex(color) for color, _ in OPTIMIZER_STYLES.values()]
    markers = [marker for _, marker in OPTIMIZER_STYLES.values()]
    assert len(set(colors)) == len(colors) and len(set(markers)) == len(markers)
    # a second run of one optimizer, and runs of none, take colours no other run of the figure has
    styles = run_styles(["sam", "sam", None, "sgd"])
    assert len({s.color for s in styles}) == 4
    assert styles[0].color == OPTIMIZER_STYLES["sam"][0] and styles[3].color == OPTIMIZER_STYLES["sgd"][0]


def test_same_optimizer_same_colour_in_every_figure_kind(files):
    sharpening = plot_sharpening([files["sgd"], files["sam"]], None)
    sam = plot_sam([files["sam"], files["sgd"]], None)  # the other order: the colour follows the optimizer
    curvature = plot_curvature([files["sam"]], None)
    spectrum = plot_spectrum(files["minima"], None)

    def color_of(ax, prefix):
        (line,) = [line for line in _curves(ax) if line.get_label().startswith(prefix)]
        return mcolors.to_hex(line.get_color())

    sam_color, sgd_color = (mcolors.to_hex(OPTIMIZER_STYLES[name][0]) for name in ("sam", "sgd"))
    assert color_of(sharpening.axes[0], "SAM") == sam_color
    assert color_of(sam.axes[0], "SAM") == sam_color and color_of(sam.axes[1], "SAM") == sam_color
    assert color_of(curvature.axes[0], "SAM") == sam_color
    assert color_of(spectrum.axes[0], "minimum_sam") == sam_color
    assert color_of(sharpening.axes[0], "GD") == color_of(sam.axes[0], "GD") == sgd_color
    assert color_of(spectrum.axes[0], "minimum_sgd") == sgd_color
    # legends name the optimizer (full-batch sgd is gradient descent), and runs that coincide keep their markers
    legend = [t.get_text() for t in sharpening.axes[0].get_legend().get_texts()]
    assert legend == ["GD", "SAM (ρ = 0.05)"]
    assert [line.get_marker() for line in _curves(sharpening.axes[0])] == ["o", "s"]


def test_threshold_line_is_neutral_and_labelled_on_the_line(files):
    fig = plot_sharpening([files["sgd"], files["sam"]], None)  # both at η = 0.1: one line at 2/η = 20
    top = fig.axes[0]
    (threshold,) = [line for line in top.lines if line.get_label().startswith("2/η")]
    assert np.allclose(threshold.get_ydata(), 2 / 0.1)
    run_colors = {mcolors.to_hex(line.get_color()) for line in _curves(top)}
    assert mcolors.to_hex(threshold.get_color()) not in run_colors
    r, g, b = mcolors.to_rgb(threshold.get_color())
    assert r == g == b  # grey
    assert any(text.get_text() == "2/η = 20" for text in top.texts)


# -- several results files in one spectrum -----------------------------------------------------------------------
def test_spectrum_overlays_the_minima_of_several_files(files, tmp_path, capsys):
    fig = plot_spectrum([files["a"], files["b"]], None)
    (ax,) = fig.axes
    curves = _curves(ax)
    assert [line.get_label() for line in curves] == ["a", "b"]  # a's minimum only: its checkpoint at its last step
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    assert {"a", "b"} <= legend
    marks = [line for line in ax.lines if line.get_label() == "_eigenvalues"]
    assert [sorted(mark.get_xdata()) for mark in marks] == [[7.0, 8.0], [3.0, 4.0]]

    output = tmp_path / "minima"
    assert main(["plot", str(files["a"]), str(files["b"]), "--kind", "spectrum", "-o", str(output)]) == 0
    assert capsys.readouterr().out.split() == [f"{output}.png", f"{output}.pdf"]
    assert (tmp_path / "minima.png").stat().st_size > 1000


def test_spectrum_bandwidth_redraws_a_density_that_integrates_to_one(files):
    fig = plot_spectrum([files["a"], files["b"]], None, bandwidth=0.01)
    (ax,) = fig.axes
    assert "Gaussian width" in ax.get_ylabel()
    for curve, spectrum in zip(_curves(ax), ([8.0, 7.0, 1.0, 0.5, 0.1, 0.0], [4.0, 3.0, 1.0, 0.5, 0.1, 0.0])):
        x, y = np.asarray(curve.get_xdata()), np.asarray(curve.get_ydata())
        assert np.trapezoid(y, x) == pytest.approx(1.0, abs=1e-3)
        assert x[np.argmax(y)] == pytest.approx(min(spectrum, key=lambda v: abs(v - x[np.argmax(y)])), abs=0.1)


# -- the sharpening and curvature figures ------------------------------------------------------------------------
def test_trace_band_stops_at_zero_where_the_estimate_is_positive(files):
    lower, upper = trace_band(np.array([1.0, 5.0, -2.0]), np.array([3.0, 1.0, 1.0]))
    assert np.allclose(lower, [0.0, 4.0, -3.0]) and np.allclose(upper, [4.0, 6.0, -1.0])
    fig = plot_curvature([files["trace"]], None)
    (band,) = fig.axes[2].collections
    assert min(path.vertices[:, 1].min() for path in band.get_paths()) >= 0.0


def test_mini_batch_loss_is_smoothed_and_says_so(files):
    fig = plot_sharpening([files["minibatch"], files["sgd"]], None)
    bottom = fig.axes[1]
    assert "mean" in bottom.get_ylabel() and "mini-batch" in bottom.get_ylabel()
    (smoothed,) = [line for line in bottom.lines if line.get_label().startswith("SGD")]
    raw = store.read_run(files["minibatch"]).tables["run"]["loss"]  # 0.5 ± 0.2, alternating
    y = np.asarray(smoothed.get_ydata())
    # a centred mean of W >= 5 steps leaves at most 0.2 / W of the alternation, away from the ends
    assert np.all(np.abs(y[5:-5] - 0.5) <= 0.2 / 5 + 1e-12) and np.std(y) < 0.25 * np.std(raw)
    (full,) = [line for line in bottom.lines if line.get_label() == "GD"]
    assert np.allclose(full.get_ydata(), store.read_run(files["sgd"]).tables["run"]["loss"])  # full batch: as is


def test_sam_projection_has_no_jump_at_the_records():
    """A 2-cycle ±a on a valley floor drifting along v: centred, every point is ±a, across record boundaries too."""
    steps = np.arange(1.0, 61.0)
    a, drift = 0.01, 0.003
    values = a * (-1.0) ** steps + drift * steps
    x, y = projection_pieces(steps, values, np.arange(0.0, 61.0, RECORD_EVERY))
    assert np.isnan(y).sum() == 5  # six pieces
    assert np.allclose(np.abs(y[~np.isnan(y)]), a)


def test_cli_demo_defaults_are_the_demo_settings():
    from landscape.demo import DemoSettings

    parser = argparse.ArgumentParser()
    cli_demo.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo"])
    defaults = DemoSettings()
    for name in ("steps", "track_every", "grid", "density_steps", "seed"):
        assert getattr(args, name) == getattr(defaults, name), name


# -- the demo itself ---------------------------------------------------------------------------------------------
def _pieces_differences(run) -> np.ndarray:
    """The step-to-step changes of ⟨θ_t, v⟩ within each record interval (v changes at the records), as (step, Δ)."""
    steps = np.asarray(run.tables["run"]["step"], dtype=float)
    projection = np.asarray(run.tables["run"]["top_projection"], dtype=float)
    steps = steps[len(steps) - len(projection):]
    piece = np.searchsorted(np.asarray(run.tables["run/curvature"]["step"], dtype=float), steps, side="left")
    same = piece[1:] == piece[:-1]
    return np.column_stack([steps[1:][same], np.diff(projection)[same]])


@pytest.mark.slow
def test_demo_shows_sharpening_edge_of_stability_sam_bouncing_and_different_minima(tmp_path):
    from landscape.demo import DemoSettings, run_demo

    out = tmp_path / "demo"
    run_demo(out, DemoSettings(), progress=False, say=lambda line: None)
    runs = {name: store.read_run(out / f"train_{name}.h5") for name in ("sgd", "sam", "nso")}
    lam = {name: np.asarray(run.tables["run/curvature"]["lambda_max"], dtype=float) for name, run in runs.items()}

    # gradient descent: λmax starts well below 2/η, reaches it (within 10%) and hovers there (the last quarter)
    gd = json.loads(runs["sgd"].attrs["settings"])
    assert gd["optimizer"] == "sgd" and gd["batch_size"] is None
    edge = 2 / gd["lr"]
    assert lam["sgd"][0] < 0.5 * edge
    assert lam["sgd"].max() / edge >= 0.9
    tail = lam["sgd"][-len(lam["sgd"]) // 4:]
    assert np.all(np.abs(tail / edge - 1) < 0.1)

    # the optimizers' curves differ, and so do their minima's λmax (the sharpest about twice the flattest)
    for first, second in (("sgd", "sam"), ("sgd", "nso"), ("sam", "nso")):
        assert not np.allclose(lam[first], lam[second], rtol=0.05), (first, second)
    minima = store.read_results(out / "minima.h5")
    top = {name: float(np.max(record.results["eigen"].values)) for name, record in minima.items()}
    assert max(top.values()) / min(top.values()) > 1.5

    # SAM bounces across the top eigenvector (successive steps alternate in sign) while gradient descent, still
    # below 2/η, moves smoothly; compared over the same steps, from SAM's first bounces to GD's reaching 0.8·2/η
    record_steps = np.asarray(runs["sgd"].tables["run/curvature"]["step"])
    below = record_steps[np.argmax(lam["sgd"] >= 0.8 * edge)]
    window = {}
    for name in ("sgd", "sam"):
        steps, delta = _pieces_differences(runs[name]).T
        window[name] = delta[(steps > 60) & (steps < below)]
    alternating = np.mean(np.sign(window["sam"][1:]) != np.sign(window["sam"][:-1]))
    assert alternating > 0.8
    assert np.median(np.abs(window["sam"])) > 10 * np.median(np.abs(window["sgd"]))

    for figure in ("sharpening", "curvature", "sam", "spectrum", "surface", "compare"):
        assert (out / "figures" / f"{figure}.png").stat().st_size > 1000, figure
