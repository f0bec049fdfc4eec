"""Progressive sharpening and the edge of stability, drawn from training run files.

:func:`plot_sharpening` reads the HDF5 files written by ``landscape train`` (never recomputing anything) and draws
two panels over a shared step axis: the sharpness λmax of each run's curvature records with a grey dashed line at
2/η, labelled on the line (η from the run's stored settings), and the per-step training loss on a log scale; the
loss of a mini-batch run is drawn faintly and, over it, as a moving average (the axis label gives its window).
Each run has its optimizer's colour and marker (:func:`landscape.plot.style.run_styles`), so runs whose curves
coincide are still told apart.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from landscape import store
from landscape.errors import OptionError, StoreError, option
from landscape.files import PathLike
from landscape.plot.style import (
    COLUMN_WIDTH,
    NEUTRAL,
    RunStyle,
    legend_columns,
    new_figure,
    paper_style,
    run_labels,
    run_styles,
    save,
)

__all__ = ["SharpeningRun", "load_sharpening_run", "moving_average", "plot_sharpening", "stability_threshold"]

LAMBDA_LABEL = r"sharpness $\lambda_{\max}$"
LOSS_LABEL = "training loss"
STEP_LABEL = "step"
#: the moving average of mini-batch losses spans this fraction of the longest run (at least MIN_WINDOW steps)
SMOOTH_FRACTION = 0.02
MIN_WINDOW = 5
#: at most this many markers along a curve (every record when it has no more)
MAX_MARKERS = 24
THRESHOLD_STYLE = {"color": NEUTRAL, "linestyle": (0, (4, 2)), "linewidth": 0.8, "zorder": 2}


@dataclass(frozen=True)
class SharpeningRun:
    """What the figure needs from one run file."""

    path: Path
    settings: dict[str, Any]
    curvature_steps: np.ndarray
    lambda_max: np.ndarray
    loss_steps: np.ndarray
    loss: np.ndarray

    @property
    def lr(self) -> Optional[float]:
        lr = self.settings.get("lr")
        return float(lr) if isinstance(lr, (int, float)) and lr > 0 else None


def stability_threshold(lr: float) -> float:
    """2/η: the sharpness above which gradient descent with step η is unstable on a quadratic."""
    return 2.0 / lr


def load_sharpening_run(path: PathLike) -> SharpeningRun:
    """The λmax records, the per-step loss and the settings of a run file; :class:`StoreError` if it has no
    curvature records (a run trained with ``--track-every 0``) or is not a run file."""
    path = Path(path)
    record = store.read_run(path)
    curvature = record.tables.get("run/curvature", {})
    if "lambda_max" not in curvature or "step" not in curvature or len(curvature["lambda_max"]) == 0:
        raise StoreError(f"{path} has no curvature records (no run/curvature/lambda_max), so there is no λmax to "
                         f"plot; train with {option('track_every')} N (N > 0) to record it")
    try:
        settings = json.loads(record.attrs.get("settings") or "{}")
    except (TypeError, json.JSONDecodeError):
        raise StoreError(f"{path}: the run's 'settings' attribute is not valid JSON") from None
    if not isinstance(settings, dict):
        settings = {}
    steps_table = record.tables.get("run", {})
    loss_steps = np.asarray(steps_table.get("step", np.zeros(0)), dtype=float)
    loss = np.asarray(steps_table.get("loss", np.zeros(0)), dtype=float)
    return SharpeningRun(path, settings, np.asarray(curvature["step"], dtype=float),
                         np.asarray(curvature["lambda_max"], dtype=float), loss_steps, loss)


def _number(value: float) -> str:
    return f"{value:.4g}"


def _default_labels(runs: Sequence[Any]) -> list[str]:
    """``GD``, ``SAM (ρ = 0.05)``: the optimizer and its ρ or σ per run, with η when the runs' rates differ
    (``GD (η = 0.1)``), and the file name where two would read the same."""
    return run_labels(runs)


def run_style_of(runs: Sequence[Any]) -> list[RunStyle]:
    """Each run's colour and marker, by the optimizer its settings name (shared by the run-file figures)."""
    return run_styles([run.settings.get("optimizer") for run in runs])


def is_mini_batch(settings: dict[str, Any]) -> bool:
    """Whether a run trained on mini-batches (its per-step loss is then a noisy sample of the training loss)."""
    return isinstance(settings.get("batch_size"), int)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """The centred mean of ``window`` steps around each value (fewer at the ends, where the window is cut)."""
    values = np.asarray(values, dtype=float)
    if window <= 1 or len(values) < 2:
        return values.copy()
    half = window // 2
    total = np.concatenate([[0.0], np.cumsum(values)])
    index = np.arange(len(values))
    low, high = np.maximum(index - half, 0), np.minimum(index + window - half, len(values))
    return (total[high] - total[low]) / (high - low)


def markevery(count: int, offset: int = 0, parts: int = 1) -> Any:
    """Markers on every point of a short curve, else on about :data:`MAX_MARKERS`; ``offset`` of ``parts`` shifts
    them so the markers of curves that coincide fall side by side instead of on top of each other."""
    if count <= MAX_MARKERS:
        return None
    every = -(-count // MAX_MARKERS)
    return (offset * every // max(parts, 1), every)


def draw_thresholds(ax: Any, lrs: Sequence[Optional[float]],
                    style: Mapping[str, Any] = THRESHOLD_STYLE) -> list[float]:
    """A grey line at 2/η for each distinct η (dashed unless ``style`` says otherwise), labelled "2/η = 10" by
    :func:`label_thresholds` once the axis limits are set; returns the thresholds drawn."""
    thresholds = list(dict.fromkeys(stability_threshold(lr) for lr in lrs if lr is not None))
    for threshold in thresholds:
        ax.axhline(threshold, label=f"2/η = {_number(threshold)}", **style)
    return thresholds


def label_thresholds(ax: Any, thresholds: Sequence[float]) -> None:
    """Write "2/η = 10" on each 2/η line near its left end (where a run is still far below it, clear of a panel
    letter): above the line, or below it when the line runs along the top of the axes."""
    to_axes = ax.transAxes.inverted()
    for threshold in thresholds:
        height = to_axes.transform(ax.transData.transform((0.0, threshold)))[1]
        below = height > 0.88
        ax.annotate(f"2/η = {_number(threshold)}", (0.1, threshold), xycoords=("axes fraction", "data"),
                    xytext=(0, -1.5 if below else 1.5), textcoords="offset points", ha="left",
                    va="top" if below else "bottom", fontsize=6.5, color=NEUTRAL)


def _step_formatter(value: float, _position: Any) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def plot_sharpening(runs: Sequence[PathLike], output: Optional[PathLike], *, labels: Optional[Sequence[str]] = None,
                    title: Optional[str] = None, height: float = 3.6) -> Figure:
    """Draw λmax (top) and the training loss (bottom) against the step for each run file; save to ``output``.

    The top panel has one line per run in its optimizer's colour and marker, and a grey dashed line at 2/η, labelled
    on the line, for each step size η among the runs' stored settings (the base rate; a schedule is not followed).
    Its y scale is linear unless the values span more than a factor of 30. The bottom panel shows the loss of every
    training step on a log scale; a mini-batch run's is drawn faintly with its moving average over it (the window is
    :data:`SMOOTH_FRACTION` of the longest run, at least :data:`MIN_WINDOW` steps, and the axis label says so).
    ``labels`` default to the optimizer and its ρ or σ, with η when the runs' rates differ (``SAM (ρ = 0.05)``,
    ``GD (η = 0.1)``).
    ``output`` is a path without suffix: ``output.png`` and ``output.pdf`` are written (None: nothing is written).
    Returns the figure (made without pyplot: nothing to close).
    """
    paths = [Path(p) for p in ([runs] if isinstance(runs, (str, os.PathLike)) else runs)]
    if not paths:
        raise OptionError("plot_sharpening needs at least one run file")
    if labels is not None and len(labels) != len(paths):
        raise OptionError(f"plot_sharpening got {len(labels)} labels for {len(paths)} run files; give one per run")
    loaded = [load_sharpening_run(p) for p in paths]
    labels = list(labels) if labels is not None else _default_labels(loaded)

    styles = run_style_of(loaded)
    smoothed = [is_mini_batch(run.settings) for run in loaded]
    longest = max(len(run.loss) for run in loaded)
    window = max(MIN_WINDOW, round(SMOOTH_FRACTION * longest))

    with paper_style():
        fig = new_figure(COLUMN_WIDTH, height)
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"hspace": 0.1, "height_ratios": [1.2, 1.0]})
        handles, values = [], []
        for i, (run, label, style) in enumerate(zip(loaded, labels, styles)):
            (line,) = top.plot(run.curvature_steps, run.lambda_max, color=style.color, marker=style.marker,
                               markevery=markevery(len(run.lambda_max), i, len(loaded)), label=label, zorder=3)
            handles.append(line)
            values.extend(run.lambda_max[np.isfinite(run.lambda_max)].tolist())
            keep = np.isfinite(run.loss) & (run.loss > 0)
            steps, loss = run.loss_steps[keep], run.loss[keep]
            dense = len(steps) > 5000  # dense per-step curves as an image inside the PDF
            if smoothed[i]:
                bottom.plot(steps, loss, color=style.color, linewidth=0.4, alpha=0.2, rasterized=dense, zorder=2)
                loss = moving_average(loss, window)
            bottom.plot(steps, loss, color=style.color, linewidth=0.8, label=label, marker=style.marker,
                        markersize=2.5, markevery=markevery(len(steps), i, len(loaded)), rasterized=dense, zorder=3)
        thresholds = draw_thresholds(top, [run.lr for run in loaded])
        _scale_sharpness(top, values + thresholds)
        label_thresholds(top, thresholds)
        log_axis(bottom)
        last = max([run.curvature_steps.max() for run in loaded] + [run.loss_steps.max(initial=0) for run in loaded])
        top.set_xlim(0, last if last > 0 else 1)
        top.set_ylabel(LAMBDA_LABEL)
        bottom.set_ylabel(loss_label(smoothed, window))
        bottom.set_xlabel(STEP_LABEL)
        bottom.xaxis.set_major_formatter(FuncFormatter(_step_formatter))
        top.tick_params(labelbottom=False)
        top.legend(handles=handles, labels=labels, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                   ncol=legend_columns(labels), borderaxespad=0.2, title=title)
        fig.align_ylabels([top, bottom])
        if output is not None:
            save(fig, output)
    return fig


def log_axis(ax: Any, axis: str = "y") -> None:
    """A log scale whose labels read as plain numbers (0.05, 0.1, 0.2) and, over less than two decades, also
    mark 2× and 5× each power of ten, so a short range still has several labelled ticks."""
    getattr(ax, f"set_{axis}scale")("log")
    low, high = getattr(ax, f"get_{axis}lim")()
    target = getattr(ax, f"{axis}axis")
    if high / low < 100:
        target.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        target.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        target.set_minor_formatter(NullFormatter())


def loss_label(smoothed: Sequence[bool], window: int) -> str:
    """The loss axis' label, saying which curves are a moving average of mini-batch losses and over how many steps."""
    if all(smoothed):
        return f"{LOSS_LABEL}\n(mini-batch, {window}-step mean)"
    if any(smoothed):
        return f"{LOSS_LABEL}\n(mini-batch runs: {window}-step mean)"
    return LOSS_LABEL


def _scale_sharpness(ax: Any, values: list[float]) -> None:
    """Linear from 0 unless the values span more than a factor of 30 (then log)."""
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    if positive and max(positive) / min(positive) > 30:
        ax.set_yscale("log")
        ax.set_ylim(min(positive) / 1.3, max(positive) * 1.3)
    elif values:
        low = min(0.0, min(values))
        ax.set_ylim(low, max(values) * 1.12 if max(values) > 0 else 1.0)  # room for the 2/η label above its line
