"""Accuracy against time of landscape and the peer libraries, drawn from the HDF5 files of scripts/bench_peers.py.

:func:`plot_peers` reads the ``/peers`` group (one dataset per column, one row per timed call; never recomputing
anything), averages the seeds of each method, and draws one log-log panel per task: the error against the wall time,
one colour and marker per library, landscape's rows larger and outlined so they stand out. Rows without an error
(no reference, or a call that failed) are left out. With several files, each file gets its own marker and the
library its colour.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import h5py
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from landscape import store
from landscape.errors import OptionError, StoreError, option
from landscape.files import PathLike
from landscape.plot.sharpening import log_axis
from landscape.plot.style import COLORS, COLUMN_WIDTH, new_figure, paper_style, save

__all__ = ["PeerPoint", "load_peer_points", "plot_peers"]

OURS = "landscape"
TASK_TITLES = {"top1": "top-1 eigenvalue", "top5": "top-5 eigenvalues", "trace": "trace", "density": "spectral density"}
LIBRARY_ORDER = (OURS, "pyhessian", "hessian-eigenthings", "curvlinops")
LIBRARY_MARKERS = ("*", "o", "s", "^", "D", "v")
FILE_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
#: errors are drawn no lower than this (an exact answer would have no place on a log axis)
ERROR_FLOOR = 1e-16
TEXT_WIDTH = 7.0


@dataclass(frozen=True)
class PeerPoint:
    """One method on one workload and dtype, averaged over its seeds."""

    source: int  # index of the file
    workload: str
    dtype: str
    task: str
    library: str
    method: str
    settings: str
    seconds: float
    error: float


def _column(group: h5py.Group, name: str, path: Path) -> np.ndarray:
    if name not in group:
        raise StoreError(f"{path}: /peers has no column {name!r}; write the file with scripts/bench_peers.py")
    dataset = group[name]
    return np.asarray(dataset.asstr()[()] if h5py.check_string_dtype(dataset.dtype) else dataset[()])


def load_peer_points(paths: Sequence[PathLike]) -> list[PeerPoint]:
    """The seed-averaged (seconds, error) of every method with a finite error in the files' ``/peers`` groups;
    :class:`StoreError` naming the file when one has no ``/peers`` group."""
    points = []
    for index, path in enumerate(Path(p) for p in paths):
        with store.open_results(path) as handle:
            if "peers" not in handle:
                raise StoreError(f"{path} has no /peers group: it is not a benchmark file of scripts/bench_peers.py")
            group = handle["peers"]
            keys = ("workload", "dtype", "task", "library", "method", "settings")
            columns = {name: _column(group, name, path) for name in (*keys, "seconds", "error")}
        runs: dict[tuple, list[tuple[float, float]]] = {}
        for i in range(len(columns["task"])):
            seconds, error = float(columns["seconds"][i]), float(columns["error"][i])
            if math.isfinite(seconds) and math.isfinite(error):
                runs.setdefault(tuple(str(columns[k][i]) for k in keys), []).append((seconds, error))
        for key, values in runs.items():
            seconds, error = np.mean(values, axis=0)
            points.append(PeerPoint(index, *key, seconds=float(seconds), error=float(error)))
    return points


def plot_peers(paths: Union[PathLike, Sequence[PathLike]], output: Optional[PathLike], *,
               labels: Optional[Sequence[str]] = None) -> Figure:
    """One panel per task present: error (log) against seconds (log), a colour per library, ours highlighted.

    ``output`` is a path without suffix: ``output.png`` and ``output.pdf`` are written (None: nothing is written).
    ``labels`` name the files in the legend (default: their stems). Returns the figure (made without pyplot).
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if labels is not None and len(labels) != len(paths):
        raise OptionError(f"{option('labels')} needs one label per file: got {len(labels)} labels for "
                          f"{len(paths)} files")
    names = list(labels) if labels is not None else [Path(p).stem for p in paths]
    points = load_peer_points(paths)
    tasks = [t for t in TASK_TITLES if any(p.task == t for p in points)]
    tasks += sorted({p.task for p in points} - set(tasks))
    if not tasks:
        raise StoreError(f"nothing to plot: no row of {', '.join(str(p) for p in paths)} has both a time and an "
                         "error (the workloads had no reference, or every call failed)")
    libraries = [lib for lib in LIBRARY_ORDER if any(p.library == lib for p in points)]
    libraries += sorted({p.library for p in points} - set(libraries))
    colors = {lib: COLORS[i % len(COLORS)] for i, lib in enumerate(libraries)}
    several = len(paths) > 1
    with paper_style():
        columns = min(len(tasks), 2)
        rows = math.ceil(len(tasks) / columns)
        height = 2.3 * rows + 0.4
        fig = new_figure(COLUMN_WIDTH if columns == 1 else TEXT_WIDTH, height)
        # the panels' titles just below the legend (which sits above the figure's top edge), with no empty band
        axes = fig.subplots(rows, columns, squeeze=False, gridspec_kw={"hspace": 0.5, "wspace": 0.3,
                                                                       "top": 1 - 0.22 / height}).ravel()
        for ax, task in zip(axes, tasks):
            _panel(ax, [p for p in points if p.task == task], task, colors, several)
        for ax in axes[len(tasks):]:
            ax.set_visible(False)
        _legend(fig, libraries, colors, names if several else [])
        if output is not None:
            save(fig, output)
    return fig


def _marker(point: PeerPoint, libraries: Sequence[str], several: bool) -> str:
    if several:
        return FILE_MARKERS[point.source % len(FILE_MARKERS)]
    return LIBRARY_MARKERS[list(libraries).index(point.library) % len(LIBRARY_MARKERS)]


def _panel(ax: Any, points: Sequence[PeerPoint], task: str, colors: dict[str, str], several: bool) -> None:
    """The task's points on log axes; ours drawn last, larger and outlined."""
    libraries = list(colors)
    for point in sorted(points, key=lambda p: p.library == OURS):
        ours = point.library == OURS
        ax.plot(point.seconds, max(point.error, ERROR_FLOOR), linestyle="none",
                marker=_marker(point, libraries, several), color=colors[point.library],
                markersize=7 if ours else 4, markeredgecolor="black" if ours else colors[point.library],
                markeredgewidth=0.6 if ours else 0.0, alpha=1.0 if ours else 0.8, zorder=3 if ours else 2)
    log_axis(ax, "x")
    log_axis(ax, "y")
    ax.set_title(TASK_TITLES.get(task, task))
    ax.set_xlabel("wall time (s)")
    error_kinds = {"top1": "max rel. error", "top5": "max rel. error", "trace": "mean abs rel. error",
                   "density": "1-Wasserstein distance"}
    ax.set_ylabel(error_kinds.get(task, "error"))


def _legend(fig: Figure, libraries: Sequence[str], colors: dict[str, str], files: Sequence[str]) -> None:
    """The libraries by colour (and marker, with one file), then the files by marker, above the panels."""
    handles = [Line2D([], [], linestyle="none", color=colors[lib], label=lib,
                      marker="o" if files else LIBRARY_MARKERS[i % len(LIBRARY_MARKERS)],
                      markeredgecolor="black" if lib == OURS else colors[lib], markersize=6 if lib == OURS else 4)
               for i, lib in enumerate(libraries)]
    handles += [Line2D([], [], linestyle="none", color="0.4", marker=FILE_MARKERS[i % len(FILE_MARKERS)], label=name)
                for i, name in enumerate(files)]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(handles), 4),
               borderaxespad=0.0, handlelength=1.0)
