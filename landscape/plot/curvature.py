"""Sharpness and the input-output Jacobian over training, drawn from training run files.

:func:`plot_curvature` reads the HDF5 files written by ``landscape train`` (never recomputing anything) and draws
panels over a shared step axis:

(a) λmax of the loss Hessian (solid) and of the generalized Gauss-Newton matrix (dashed, same colour; runs trained
    with ``--track-also ggn``), with 2/η dotted in grey and labelled on the line;
(b) the spectral norm ‖∂f(x)/∂x‖₂ of the input-output Jacobian: its mean (solid) and max (dashed) over the training
    samples (runs trained with ``--track-jacobian``);
(c) the Hessian trace with its Hutch++ standard error, only when some run recorded it (``--track-trace-matvecs`` > 0);
    the band's lower edge stops at zero where the estimate is positive (its Gaussian ± s.e. would otherwise suggest
    a negative trace that a near-minimum's Hessian, and any GGN or Fisher, cannot have).

Each run has its optimizer's colour and marker (:func:`landscape.plot.style.run_styles`), as in the other figures.

Progressive sharpening (MacDonald, Valmadre and Lucey 2023) ties the Gauss-Newton part of the Hessian to the layer
Jacobians, so (a) and (b) rise together during sharpening; at the edge of stability λmax is capped at 2/η and the two
may part.
"""

from __future__ import annotations

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
    THRESHOLD_STYLE,
    _default_labels,
    _scale_sharpness,
    _step_formatter,
    draw_thresholds,
    label_thresholds,
    load_sharpening_run,
    markevery,
    run_style_of,
)
from landscape.plot.style import COLUMN_WIDTH, legend_columns, new_figure, paper_style, save

__all__ = ["CurvatureRun", "load_curvature_run", "plot_curvature", "trace_band"]

STEP_LABEL = "step"
LAMBDA_LABEL = r"top eigenvalue $\lambda_{\max}$"
JACOBIAN_LABEL = "input-output Jacobian\n" r"$\|\partial f(x)/\partial x\|_2$ over train set"
TRACE_LABEL = "trace of the {matrix}"
MATRIX_NAMES = {"hessian": "Hessian", "ggn": "GGN", "fisher": "Fisher", "empirical-fisher": "empirical Fisher"}

#: column -> the training option that records it (named in the error when a run lacks the column): its Python
#: name, its command-line flag and the value it needs
OPTIONS = {
    "lambda_max": ("track_every", "--track-every", " N (N > 0)"),
    "lambda_max_ggn": ("also_lambda_max", "--track-also", " ggn"),
    "jacobian_mean": ("jacobian", "--track-jacobian", ""),
    "jacobian_max": ("jacobian", "--track-jacobian", ""),
}

DASHED = "--"
DOTTED = ":"
#: the 2/η line: grey like the sharpening figure's, dotted here (dashes are the GGN's)
THRESHOLD = {**THRESHOLD_STYLE, "linestyle": DOTTED, "linewidth": 0.9}
UNDERLAY = {"linewidth": 2.4, "alpha": 0.35, "solid_capstyle": "butt"}


@dataclass(frozen=True)
class CurvatureRun:
    """What the figure needs from one run file (columns of its ``run/curvature`` table; None when not recorded)."""

    path: Path
    settings: dict[str, Any]
    steps: np.ndarray
    lambda_max: np.ndarray
    lambda_max_ggn: Optional[np.ndarray]
    jacobian_mean: np.ndarray
    jacobian_max: np.ndarray
    trace: Optional[np.ndarray]
    trace_stderr: Optional[np.ndarray]

    @property
    def lr(self) -> Optional[float]:
        lr = self.settings.get("lr")
        return float(lr) if isinstance(lr, (int, float)) and lr > 0 else None

    @property
    def matrix(self) -> str:
        """The matrix of ``lambda_max`` and ``trace`` (the tracker's ``curvature`` setting; the Hessian by default)."""
        tracker = self.settings.get("tracker")
        kind = tracker.get("curvature", "hessian") if isinstance(tracker, dict) else "hessian"
        return MATRIX_NAMES.get(kind, str(kind))


def _missing(path: Path, column: str) -> StoreError:
    name, flag, value = OPTIONS[column]
    return StoreError(f"{path} has no run/curvature/{column} records, which the curvature figure needs; train with "
                      f"{option(name, flag)}{value} to record it")


def load_curvature_run(path: PathLike, *, require_ggn: bool = False) -> CurvatureRun:
    """The curvature records and settings of a run file; :class:`StoreError` naming the missing column and the
    training option that records it if the run lacks λmax or the Jacobian norms (or the GGN λmax when
    ``require_ggn``)."""
    path = Path(path)
    base = load_sharpening_run(path)  # StoreError if not a run file or no λmax records (names --track-every)
    curvature = store.read_run(path).tables["run/curvature"]
    needed = ["jacobian_mean", "jacobian_max"] + (["lambda_max_ggn"] if require_ggn else [])
    for column in needed:
        if column not in curvature or len(curvature[column]) == 0:
            raise _missing(path, column)

    def column(name: str) -> Optional[np.ndarray]:
        values = curvature.get(name)
        return None if values is None or len(values) == 0 else np.asarray(values, dtype=float)

    return CurvatureRun(path, base.settings, base.curvature_steps, base.lambda_max, column("lambda_max_ggn"),
                        column("jacobian_mean"), column("jacobian_max"), column("trace"), column("trace_stderr"))


def plot_curvature(runs: Union[PathLike, Sequence[PathLike]], output: Optional[PathLike], *,
                   labels: Optional[Sequence[str]] = None, title: Optional[str] = None,
                   ggn: Optional[bool] = None) -> Figure:
    """Draw λmax (Hessian and GGN), the Jacobian norms and, when recorded, the trace against the step; save to
    ``output`` (a path without suffix: ``output.png`` and ``output.pdf``; None writes nothing).

    ``ggn``: None draws the GGN λmax of the runs that recorded it; True requires it of every run (StoreError naming
    ``--track-also ggn`` otherwise); False leaves it out. Every run needs λmax and the Jacobian norms
    (``--track-every``, ``--track-jacobian``). The y scales are linear unless the values span more than a factor of
    30 (then log). Returns the figure (made without pyplot: nothing to close).
    """
    paths = [Path(p) for p in ([runs] if isinstance(runs, (str, os.PathLike)) else runs)]
    if not paths:
        raise OptionError("plot_curvature needs at least one run file")
    if labels is not None and len(labels) != len(paths):
        raise OptionError(f"plot_curvature got {len(labels)} labels for {len(paths)} run files; give one per run")
    loaded = [load_curvature_run(p, require_ggn=bool(ggn)) for p in paths]
    labels = list(labels) if labels is not None else _default_labels(loaded)  # type: ignore[arg-type]
    show_ggn = ggn is not False and any(run.lambda_max_ggn is not None for run in loaded)
    show_trace = any(run.trace is not None for run in loaded)
    matrices = {run.matrix for run in loaded}
    matrix = matrices.pop() if len(matrices) == 1 else "tracked matrix"

    with paper_style():
        rows = 3 if show_trace else 2
        fig = new_figure(COLUMN_WIDTH, 1.55 * rows + 0.75)
        axes = fig.subplots(rows, 1, sharex=True, gridspec_kw={"hspace": 0.12})
        sharp, jac = axes[0], axes[1]
        run_handles, lam_values, jac_values, trace_values = [], [], [], []
        for i, (run, label, style) in enumerate(zip(loaded, labels, run_style_of(loaded))):
            color, every = style.color, markevery(len(run.steps), i, len(loaded))
            marks = {"marker": style.marker, "markevery": every}
            with_ggn = show_ggn and run.lambda_max_ggn is not None
            # under a GGN curve the Hessian's is a wide pale band, so the dashes stay visible where the two agree
            sharp.plot(run.steps, run.lambda_max, color=color, label=f"{label}: {run.matrix}", zorder=3,
                       **(UNDERLAY if with_ggn else marks))
            run_handles.append(Line2D([], [], color=color, marker=style.marker, label=label))
            lam_values.extend(run.lambda_max[np.isfinite(run.lambda_max)].tolist())
            if with_ggn:
                sharp.plot(run.steps, run.lambda_max_ggn, color=color, linestyle=DASHED, linewidth=0.9,
                           label=f"{label}: GGN", zorder=4, **marks)
                lam_values.extend(run.lambda_max_ggn[np.isfinite(run.lambda_max_ggn)].tolist())
            jac.plot(run.steps, run.jacobian_mean, color=color, label=f"{label}: mean", zorder=3, **marks)
            jac.plot(run.steps, run.jacobian_max, color=color, linestyle=DASHED, linewidth=0.9,
                     label=f"{label}: max", zorder=3)
            jac_values.extend(v for v in (*run.jacobian_mean, *run.jacobian_max) if np.isfinite(v))
            if show_trace and run.trace is not None:
                tr = axes[2]
                tr.plot(run.steps, run.trace, color=color, label=label, zorder=3, **marks)
                if run.trace_stderr is not None:
                    tr.fill_between(run.steps, *trace_band(run.trace, run.trace_stderr), color=color, alpha=0.25,
                                    linewidth=0)
                trace_values.extend(run.trace[np.isfinite(run.trace)].tolist())
        thresholds = draw_thresholds(sharp, [run.lr for run in loaded], THRESHOLD)

        _scale_sharpness(sharp, lam_values + thresholds)
        label_thresholds(sharp, thresholds)
        _scale_positive(jac, jac_values)
        sharp.set_ylabel(LAMBDA_LABEL)
        jac.set_ylabel(JACOBIAN_LABEL)
        if show_trace:
            _scale_positive(axes[2], trace_values)
            axes[2].set_ylabel(TRACE_LABEL.format(matrix=matrix))
        last = max(float(run.steps.max()) for run in loaded)
        sharp.set_xlim(0, last if last > 0 else 1)
        axes[-1].set_xlabel(STEP_LABEL)
        axes[-1].xaxis.set_major_formatter(FuncFormatter(_step_formatter))
        for letter, ax in zip("abc", axes):
            ax.text(0.01, 0.98, f"({letter})", transform=ax.transAxes, ha="left", va="top", fontweight="bold")
            if ax is not axes[-1]:
                ax.tick_params(labelbottom=False)

        key = dict(color="0.3")
        keys = [Line2D([], [], linestyle="-", label=matrix, **key, **(UNDERLAY if show_ggn else {}))]
        if show_ggn:
            keys.append(Line2D([], [], linestyle=DASHED, linewidth=0.9, label="GGN", **key))
        keys.append(Line2D([], [], label="2/η", **THRESHOLD))
        sharp.add_artist(sharp.legend(handles=keys, loc="best", ncol=len(keys)))  # kept by the next legend
        jac.legend(handles=[Line2D([], [], linestyle="-", label="mean", **key),
                            Line2D([], [], linestyle=DASHED, linewidth=0.9, label="max", **key)],
                   loc="best", ncol=2)
        sharp.legend(handles=run_handles, labels=labels, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                     ncol=legend_columns(labels), borderaxespad=0.2, title=title)
        fig.align_ylabels(list(axes))
        if output is not None:
            save(fig, output)
    return fig


def trace_band(trace: np.ndarray, stderr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lower and upper edges of the trace's ± one standard error band, the lower one stopping at zero where the
    estimate itself is positive."""
    trace, stderr = np.asarray(trace, dtype=float), np.asarray(stderr, dtype=float)
    lower = trace - stderr
    return np.where(trace > 0, np.maximum(lower, 0.0), lower), trace + stderr


def _scale_positive(ax: Any, values: list[float]) -> None:
    """Log when the positive values span more than a factor of 30, else linear from 0 with headroom for the key and
    the panel letter."""
    positive = [v for v in values if v > 0 and np.isfinite(v)]
    if positive and max(positive) / min(positive) > 30:
        ax.set_yscale("log")
        ax.set_ylim(min(positive) / 1.5, max(positive) * 1.5)
    elif values:
        top = max(values)
        ax.set_ylim(min(0.0, min(values)), top * 1.22 if top > 0 else 1.0)
