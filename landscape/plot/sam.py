"""SAM's bouncing across the valley along the sharpest direction, drawn from training run files.

:func:`plot_sam` reads the HDF5 files written by ``landscape train --track-every N`` (never recomputing anything)
and draws two panels over a shared step axis: the iterate's projection ⟨θ_t, v⟩ on the top Hessian eigenvector v
(``run/top_projection``, one value per step), and the sharpness λmax of the curvature records. Near a sharp valley
gradient descent and SAM oscillate along v from one wall to the other (Bartlett, Long and Bousquet 2023), which the
top panel shows as a zig-zag; several runs (e.g. SGD and SAM) are overlaid.

v is the eigenvector of the latest curvature record, so it changes at every record, and its sign may flip: the
projection is drawn as one piece per record interval, broken where v changes, and by default minus its local mean
θ̄_t = (θ_{t−1} + 2θ_t + θ_{t+1})/4 (within the piece): the bounce about the valley floor, ±a exactly for a 2-cycle
±a, while the floor's own drift along v (a straight line, or a slow curve) is removed. Centring each piece on its
whole mean instead would leave that drift in, so consecutive pieces would form a saw-tooth that jumps at every
record. Each run has its optimizer's colour and marker, and the λmax panel has the grey 2/η line of the other
figures for each run whose λmax comes within a factor 2 of it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from landscape import store
from landscape.errors import OptionError, StoreError, option
from landscape.files import PathLike
from landscape.plot.sharpening import (
    LAMBDA_LABEL,
    _step_formatter,
    draw_thresholds,
    label_thresholds,
    markevery,
    run_style_of,
)
from landscape.plot.style import COLUMN_WIDTH, legend_columns, new_figure, paper_style, run_labels, save

__all__ = ["SamRun", "load_sam_run", "plot_sam", "projection_pieces"]

PROJECTION_LABEL = "along top eigenvector\n" r"$\langle\theta_t, v_1\rangle$"
CENTERED_LABEL = "along top eigenvector\n" r"$\langle\theta_t - \bar\theta_t, v_1\rangle$"
STEP_LABEL = "step"


@dataclass(frozen=True)
class SamRun:
    """What the figure needs from one run file."""

    path: Path
    settings: dict[str, Any]
    steps: np.ndarray
    projection: np.ndarray
    curvature_steps: np.ndarray
    lambda_max: np.ndarray


def load_sam_run(path: PathLike) -> SamRun:
    """The per-step projections, the λmax records and the settings of a run file; :class:`StoreError` naming
    ``--track-every`` when the run has no projections or no curvature records (or is not a run file)."""
    path = Path(path)
    record = store.read_run(path)
    steps_table = record.tables.get("run", {})
    curvature = record.tables.get("run/curvature", {})
    if len(steps_table.get("top_projection", ())) == 0:
        raise StoreError(f"{path} has no run/top_projection (the iterate along the top Hessian eigenvector), which "
                         f"is recorded once curvature tracking has run; train with {option('track_every')} N (N > 0)")
    if len(curvature.get("lambda_max", ())) == 0:
        raise StoreError(f"{path} has no curvature records (no run/curvature/lambda_max); train with "
                         f"{option('track_every')} N (N > 0) to record them")
    try:
        settings = json.loads(record.attrs.get("settings") or "{}")
    except (TypeError, json.JSONDecodeError):
        raise StoreError(f"{path}: the run's 'settings' attribute is not valid JSON") from None
    # rows written before the first record hold no projection: top_projection is shorter than step by that many
    projection = np.asarray(steps_table["top_projection"], dtype=float)
    steps = np.asarray(steps_table["step"], dtype=float)[len(steps_table["step"]) - len(projection):]
    return SamRun(path, settings if isinstance(settings, dict) else {}, steps, projection,
                  np.asarray(curvature["step"], dtype=float), np.asarray(curvature["lambda_max"], dtype=float))


def projection_pieces(steps: np.ndarray, values: np.ndarray, record_steps: np.ndarray, *,
                      center: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` and ``values`` with a NaN inserted wherever the eigenvector changes, so a line breaks there; with
    ``center``, each value minus its local mean within its piece (the bounce about the valley floor, whatever v's
    sign; see :func:`about_local_mean`).

    The projection at step s uses the eigenvector of the latest record made before s (a record at step r is taken
    after the update of step r), so the pieces are the step intervals (r_k, r_{k+1}]."""
    piece = np.searchsorted(record_steps, steps, side="left")
    starts = np.flatnonzero(np.diff(piece)) + 1
    if center:
        values = np.concatenate([about_local_mean(part) for part in np.split(values, starts)])
    return np.insert(steps, starts, np.nan), np.insert(values, starts, np.nan)


def about_local_mean(values: np.ndarray) -> np.ndarray:
    """``values`` minus their local mean (x_{t−1} + 2x_t + x_{t+1})/4, continued straight to either end (from four
    values on; the mean of the two end values for fewer): a 2-cycle ±a about a straight line gives ±a exactly."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return np.zeros_like(values)
    floor = np.empty_like(values)
    floor[1:-1] = (values[:-2] + 2 * values[1:-1] + values[2:]) / 4
    if len(values) >= 4:
        floor[0], floor[-1] = 2 * floor[1] - floor[2], 2 * floor[-2] - floor[-3]
    else:
        floor[0], floor[-1] = (values[0] + values[1]) / 2, (values[-1] + values[-2]) / 2
    return values - floor


def _default_labels(runs: Sequence[SamRun]) -> list[str]:
    """``SAM (ρ = 0.05)``, ``GD``...; η is added when the runs' rates differ, the file name when labels repeat."""
    return run_labels(runs)


def plot_sam(runs: Union[PathLike, Sequence[PathLike]], output: Optional[PathLike], *,
             labels: Optional[Sequence[str]] = None, center: bool = True,
             window: Optional[tuple[float, float]] = None, title: Optional[str] = None, height: float = 3.4) -> Figure:
    """Draw the projection on the top eigenvector (top) and λmax (bottom) against the step for each run file; save
    to ``output`` (a path without suffix: ``output.png`` and ``output.pdf``; None writes nothing).

    Every run needs ``run/top_projection`` and curvature records (``--track-every N``). ``labels``: one per run
    (default: the optimizer and its ρ, e.g. ``SAM (ρ = 0.05)``). ``center``: draw the projection minus its local
    mean θ̄_t = (θ_{t−1} + 2θ_t + θ_{t+1})/4 within each record interval (False: the raw ⟨θ_t, v⟩, whose level
    jumps where v changes). ``window``: only the
    steps from ``window[0]`` to ``window[1]``, e.g. the last few dozen, where the per-step zig-zag that a long run
    draws as a solid band can be seen step by step. The run with the
    widest oscillation is drawn lowest, so a calmer run stays visible over it. Returns the figure (made without
    pyplot: nothing to close).
    """
    paths = [Path(p) for p in ([runs] if isinstance(runs, (str, os.PathLike)) else runs)]
    if not paths:
        raise OptionError("plot_sam needs at least one run file")
    if labels is not None and len(labels) != len(paths):
        raise OptionError(f"plot_sam got {len(labels)} labels for {len(paths)} run files; give one per run")
    loaded = [load_sam_run(p) for p in paths]
    labels = list(labels) if labels is not None else _default_labels(loaded)
    if window is not None and not window[0] < window[1]:
        raise OptionError(f"plot_sam: window must be (first step, last step) with first < last, got {window}")

    with paper_style():
        fig = new_figure(COLUMN_WIDTH, height)
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"hspace": 0.1, "height_ratios": [1.3, 1.0]})
        pieces = [_within(*projection_pieces(run.steps, run.projection, run.curvature_steps, center=center),
                          window) for run in loaded]
        spread = [float(np.nanstd(y)) if np.isfinite(y).any() else 0.0 for _, y in pieces]
        depth = {index: rank for rank, index in enumerate(np.argsort(spread)[::-1])}
        for i, (run, label, (x, y), style) in enumerate(zip(loaded, labels, pieces, run_style_of(loaded))):
            top.plot(x, y, color=style.color, linewidth=0.8, label=label, zorder=3 + depth[i],
                     rasterized=len(x) > 5000)  # dense per-step curves as an image inside the PDF
            records, sharpness = _within(run.curvature_steps, run.lambda_max, window)
            bottom.plot(records, sharpness, color=style.color, label=label, zorder=3 + depth[i], marker=style.marker,
                        markevery=markevery(len(records), i, len(loaded)))
        # 2/η only where a run comes within a factor 2 of it, so a far-away line does not flatten the λmax curves
        near = [_lr(run) for run in loaded if _lr(run) is not None and np.nanmax(run.lambda_max) * _lr(run) >= 1]
        thresholds = draw_thresholds(bottom, near)
        last = max(max(float(run.steps.max()), float(run.curvature_steps.max())) for run in loaded)
        top.set_xlim(window if window is not None else (0, last if last > 0 else 1))
        top.set_ylabel(CENTERED_LABEL if center else PROJECTION_LABEL)
        bottom.set_ylabel(LAMBDA_LABEL)
        bottom.set_xlabel(STEP_LABEL)
        bottom.set_ylim(0, bottom.get_ylim()[1] * 1.08)  # from zero, with room for the 2/η label above its line
        label_thresholds(bottom, thresholds)
        bottom.xaxis.set_major_formatter(FuncFormatter(_step_formatter))
        top.tick_params(labelbottom=False)
        handles = [Line2D([], [], color=s.color, marker=s.marker, label=label)
                   for s, label in zip(run_style_of(loaded), labels)]
        top.legend(handles=handles, labels=labels, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                   ncol=legend_columns(labels), borderaxespad=0.2, title=title)
        fig.align_ylabels([top, bottom])
        if output is not None:
            save(fig, output)
    return fig


def _lr(run: SamRun) -> Optional[float]:
    lr = run.settings.get("lr")
    return float(lr) if isinstance(lr, (int, float)) and lr > 0 else None


def _within(x: np.ndarray, y: np.ndarray, window: Optional[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """The points with ``x`` in ``window`` (all when None), with the NaN breaks between those points."""
    if window is None:
        return x, y
    inside = (x >= window[0]) & (x <= window[1])
    if not inside.any():
        return x[inside], y[inside]
    first, last = np.flatnonzero(inside)[[0, -1]]
    keep = np.zeros(len(x), dtype=bool)
    keep[first:last + 1] = inside[first:last + 1] | np.isnan(x[first:last + 1])
    return x[keep], y[keep]
