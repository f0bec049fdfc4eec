"""Progressive sharpening and the edge of stability, drawn from training run files.

:func:`plot_sharpening` reads the HDF5 files written by ``landscape train`` (never recomputing anything) and draws
two panels over a shared step axis: the sharpness λmax of each run's curvature records with a dashed line at 2/η
in the run's colour (η from the run's stored settings), and the per-step training loss on a log scale.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from landscape import store
from landscape.errors import OptionError, StoreError, option
from landscape.files import PathLike
from landscape.plot.style import COLORS, COLUMN_WIDTH, new_figure, paper_style, save

__all__ = ["SharpeningRun", "load_sharpening_run", "plot_sharpening", "stability_threshold"]

LAMBDA_LABEL = r"sharpness $\lambda_{\max}$"
LOSS_LABEL = "training loss"
STEP_LABEL = "step"


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


def _default_labels(runs: Sequence[SharpeningRun]) -> list[str]:
    """``η = 0.1`` per run; the file name is added where two runs share η (or a run has none)."""
    lrs = [run.lr for run in runs]
    labels = []
    for run, lr in zip(runs, lrs):
        if lr is None:
            labels.append(run.path.stem)
        elif lrs.count(lr) > 1:
            labels.append(f"{run.path.stem} (η = {_number(lr)})")
        else:
            labels.append(f"η = {_number(lr)}")
    return labels


def _step_formatter(value: float, _position: Any) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def plot_sharpening(runs: Sequence[PathLike], output: Optional[PathLike], *, labels: Optional[Sequence[str]] = None,
                    title: Optional[str] = None, height: float = 3.6) -> Figure:
    """Draw λmax (top) and the training loss (bottom) against the step for each run file; save to ``output``.

    The top panel has one solid line per run and a dashed line at 2/η in the same colour for every run whose stored
    settings have a learning rate η (the base rate; a schedule is not followed), or one grey line when all runs share
    η. Its y scale is linear unless the
    values span more than a factor of 30. The bottom panel shows the loss of every training step on a log scale.
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

    with paper_style():
        fig = new_figure(COLUMN_WIDTH, height)
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"hspace": 0.1, "height_ratios": [1.2, 1.0]})
        run_handles, threshold_handles, values = [], [], []
        for i, (run, label) in enumerate(zip(loaded, labels)):
            color = COLORS[i % len(COLORS)]
            (line,) = top.plot(run.curvature_steps, run.lambda_max, color=color, label=label, zorder=3)
            run_handles.append(line)
            values.extend(run.lambda_max[np.isfinite(run.lambda_max)].tolist())
            shared = len({r.lr for r in loaded}) == 1  # one step size for all: one grey 2/η line, drawn once
            if run.lr is not None and not (shared and i > 0):
                threshold = stability_threshold(run.lr)
                dashed = top.axhline(threshold, color="0.4" if shared else color, linestyle=(0, (4, 2)),
                                     linewidth=0.8, alpha=0.9, label=f"2/η = {_number(threshold)}", zorder=2)
                threshold_handles.append(dashed)
                values.append(threshold)
            keep = np.isfinite(run.loss) & (run.loss > 0)
            bottom.plot(run.loss_steps[keep], run.loss[keep], color=color, linewidth=0.7, label=label,
                        rasterized=int(keep.sum()) > 5000)  # dense per-step curves as an image inside the PDF
        _scale_sharpness(top, values)
        bottom.set_yscale("log")
        last = max([run.curvature_steps.max() for run in loaded] + [run.loss_steps.max(initial=0) for run in loaded])
        top.set_xlim(0, last if last > 0 else 1)
        top.set_ylabel(LAMBDA_LABEL)
        bottom.set_ylabel(LOSS_LABEL)
        bottom.set_xlabel(STEP_LABEL)
        bottom.xaxis.set_major_formatter(FuncFormatter(_step_formatter))
        top.tick_params(labelbottom=False)
        if title:
            top.set_title(title)
        _legend(top, run_handles, threshold_handles)
        fig.align_ylabels([top, bottom])
        if output is not None:
            save(fig, output)
    return fig


def _legend(ax: Any, runs: list[Any], thresholds: list[Any]) -> None:
    """Above the panel, one column per run: "η = 0.1" over "2/η = 20" (matplotlib fills legends column by column).

    Outside the axes it never hides a curve or a dashed line; past four runs it goes inside, in two columns."""
    if len(thresholds) == 1 and len(runs) <= 4:
        handles = runs + thresholds
        ax.legend(handles=handles, labels=[h.get_label() for h in handles], ncol=len(handles), loc="lower center",
                  bbox_to_anchor=(0.5, 1.0), borderaxespad=0.2)
    elif len(thresholds) == len(runs) and len(runs) <= 4:
        handles = [h for pair in zip(runs, thresholds) for h in pair]
        ax.legend(handles=handles, labels=[h.get_label() for h in handles], ncol=len(runs), loc="lower center",
                  bbox_to_anchor=(0.5, 1.0), borderaxespad=0.2)
    else:
        handles = runs + thresholds
        ax.legend(handles=handles, labels=[h.get_label() for h in handles], ncol=2 if thresholds else 1, loc="best")


def _scale_sharpness(ax: Any, values: list[float]) -> None:
    """Linear from 0 unless the values span more than a factor of 30 (then log)."""
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    if positive and max(positive) / min(positive) > 30:
        ax.set_yscale("log")
        ax.set_ylim(min(positive) / 1.3, max(positive) * 1.3)
    elif values:
        low = min(0.0, min(values))
        ax.set_ylim(low, max(values) * 1.1 if max(values) > 0 else 1.0)
