"""The Hessian's spectral density at one or more checkpoints, drawn from a results file.

:func:`plot_spectrum` reads the stochastic Lanczos quadrature densities that ``landscape analyze --metrics density``
stored (never recomputing anything) and draws them on a log y scale against the eigenvalue, one line per checkpoint,
with the top eigenvalues of ``--metrics eigs`` marked as triangles along the top edge in the checkpoint's colour.
Several results files are overlaid: each brings its minima (its checkpoints at its last step), so the minima of
runs analysed separately share one figure. A checkpoint or file that names an optimizer (``minimum_sam``,
``sam_results.h5``) is drawn in that optimizer's colour, as in every other figure kind
(:func:`landscape.plot.style.run_styles`); each checkpoint's top eigenvalues have their own row of triangles, so
checkpoints whose densities coincide are still told apart.
The log scale shows the bulk near zero and the few outliers to its right on one figure (Ghorbani, Krishnan and Xiao
2019); the density is floored at :data:`FLOOR` times its maximum so the Gaussian tails, which reach exact zeros, stay
drawable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from landscape import store
from landscape.errors import OptionError, StoreError, option
from landscape.files import PathLike
from landscape.plot.style import COLORS, COLUMN_WIDTH, new_figure, optimizer_in, paper_style, run_styles, save
from landscape.results import DensityResult, EigenResult

__all__ = ["SpectrumCheckpoint", "load_spectra", "plot_spectrum"]

X_LABEL = "eigenvalue"
Y_LABEL = "density (log scale)"
#: the density is drawn no lower than this fraction of its largest value (the log scale's floor)
FLOOR = 1e-8
#: checkpoints drawn when none are named: at most this many, spread evenly from the first to the last
DEFAULT_COUNT = 5
EIGEN_METRIC = "eigen"
MARKER_ROW = 0.055  # axes fraction between the rows of eigenvalue markers of successive checkpoints


@dataclass(frozen=True)
class SpectrumCheckpoint:
    """What the figure needs from one checkpoint of a results file (``eigen`` is None when not computed)."""

    name: str
    step: Optional[int]
    density: DensityResult
    eigen: Optional[EigenResult]
    path: Optional[Path] = None


def _read_group(handle: Any, name: str, metric: str) -> Optional[Any]:
    """One result of one checkpoint (None when absent), read alone: other result types need not be registered."""
    group = handle["checkpoints"][name]
    if metric not in group or "result_type" not in group[metric].attrs:
        return None
    return store.read_result(group[metric])


def load_spectra(path: PathLike, *, checkpoints: Optional[Sequence[str]] = None,
                 metric_group: str = "density", last: bool = False) -> list[SpectrumCheckpoint]:
    """The density (result ``metric_group``) and top eigenvalues of the named checkpoints of a results file, in
    the order given; with ``checkpoints=None``, every checkpoint that has a density, thinned to at most
    :data:`DEFAULT_COUNT` spread evenly over training, or with ``last`` only the minima: those at the largest step
    (or, when none has a step, all of them). Only these results are read, so the file may hold results of other
    kinds. :class:`StoreError` when no (named) checkpoint has the density or a name is not in the file."""
    path = Path(path)
    with store.open_results(path) as handle:
        names = list(handle.get("checkpoints", {}))
        steps = {name: store.get_attrs(handle["checkpoints"][name]).get("step") for name in names}
        with_density = [n for n in names if metric_group in handle["checkpoints"][n]]
        with_density.sort(key=lambda n: (steps[n] is None, steps[n] if steps[n] is not None else 0, n))
        if checkpoints is None and last:
            final = max((steps[n] for n in with_density if steps[n] is not None), default=None)
            chosen = [n for n in with_density if steps[n] == final]
        elif checkpoints is None:
            chosen = _spread(with_density, DEFAULT_COUNT)
        else:
            chosen = list(checkpoints)
            for name in chosen:
                if name not in names:
                    raise StoreError(f"{path} has no checkpoint {name!r}; it has {', '.join(names) or 'none'}")
                if name not in with_density:
                    raise StoreError(f"checkpoint {name!r} of {path} has no {metric_group} result; run landscape "
                                     f"analyze with {option('metrics')} density")
        if not chosen:
            raise StoreError(f"no checkpoint of {path} has a {metric_group} result (a spectral density); run "
                             f"landscape analyze with {option('metrics')} density")
        loaded = []
        for name in chosen:
            density = _read_group(handle, name, metric_group)
            if not isinstance(density, DensityResult):
                raise StoreError(f"{metric_group} of checkpoint {name!r} in {path} is not a spectral density "
                                 f"(it holds a {type(density).__name__})")
            eigen = _read_group(handle, name, EIGEN_METRIC)
            loaded.append(SpectrumCheckpoint(name, steps[name], density,
                                             eigen if isinstance(eigen, EigenResult) else None, path))
    return loaded


def _spread(items: list[str], count: int) -> list[str]:
    """At most ``count`` of ``items``, evenly spaced, always keeping the first and the last."""
    if len(items) <= count:
        return items
    return [items[i] for i in np.unique(np.round(np.linspace(0, len(items) - 1, count)).astype(int))]


def checkpoint_labels(loaded: Sequence[SpectrumCheckpoint], several: bool = False) -> list[str]:
    """``step 500`` per checkpoint; its name where there is no step or two checkpoints share one. With
    ``several`` files, the file's name, followed by the checkpoint's where the file brings more than one."""
    if several:
        per_file = {c.path: sum(d.path == c.path for d in loaded) for c in loaded}
        stems = [c.path.stem if c.path is not None else "" for c in loaded]
        return [stem if per_file[c.path] == 1 and stems.count(stem) == 1 else f"{stem}: {label}"
                for c, stem, label in zip(loaded, stems, checkpoint_labels(loaded))]
    steps = [c.step for c in loaded]
    return [f"step {c.step}" if c.step is not None and steps.count(c.step) == 1 else c.name for c in loaded]


def plot_spectrum(paths: Union[PathLike, Sequence[PathLike]], output: Optional[PathLike], *,
                  checkpoints: Optional[Sequence[str]] = None, metric_group: str = "density",
                  labels: Optional[Sequence[str]] = None, title: Optional[str] = None, height: float = 2.6,
                  bandwidth: Optional[float] = None) -> Figure:
    """Draw the spectral density of each checkpoint on a log scale, top eigenvalues marked; save to ``output``.

    ``paths``: one results file, or several to overlay; ``checkpoints``: names in the results file (in each of
    them); by default up to :data:`DEFAULT_COUNT` of one file's checkpoints with a density, spread over training, or
    with several files the minima of each (its checkpoints at its last step). ``metric_group``: the name of the
    density result in each checkpoint; ``labels``: one legend entry per line drawn (default ``step N`` for one file,
    the file's name for several). ``bandwidth``: None draws each density as stored (its Gaussian broadening is
    narrow, so outliers are spikes at the Ritz values); a number redraws it from the stored quadrature (nodes and
    weights) with Gaussians of that width, as a fraction of the eigenvalues' range (:func:`broadened`), and the y
    label gives the width. ``output`` is a path without suffix: ``output.png`` and ``output.pdf`` are written (None
    writes nothing). Returns the figure (made without pyplot: nothing to close).
    """
    if bandwidth is not None and not 0 < bandwidth < 1:
        raise OptionError(f"plot_spectrum: bandwidth is a fraction of the eigenvalues' range, between 0 and 1; got "
                          f"{bandwidth}")
    files = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    if not files:
        raise OptionError("plot_spectrum needs at least one results file")
    several = len(files) > 1
    loaded = [c for path in files
              for c in load_spectra(path, checkpoints=checkpoints, metric_group=metric_group, last=several)]
    if len(loaded) > len(COLORS):
        raise OptionError(f"plot_spectrum draws at most {len(COLORS)} checkpoints on one figure, got {len(loaded)}; "
                          f"name fewer with {option('checkpoints', '--checkpoint')}")
    if labels is not None and len(labels) != len(loaded):
        raise OptionError(f"plot_spectrum got {len(labels)} labels for {len(loaded)} checkpoints; give one each")
    labels = list(labels) if labels is not None else checkpoint_labels(loaded, several)
    styles = run_styles([optimizer_in(c.name, label, c.path.stem if c.path else None)
                         for c, label in zip(loaded, labels)])
    width = None
    if bandwidth is not None:
        nodes = np.concatenate([np.ravel(c.density.nodes) for c in loaded])
        nodes = nodes[np.isfinite(nodes)]
        width = bandwidth * max(float(np.ptp(nodes)) if nodes.size else 1.0, 1e-12)
    curves = [(c.density.grid, c.density.density) if width is None else broadened(c.density, width) for c in loaded]
    peak = max(float(np.nanmax(density)) for _, density in curves)
    floor = FLOOR * peak if peak > 0 else FLOOR

    with paper_style():
        fig = new_figure(COLUMN_WIDTH, height)
        ax = fig.subplots()
        handles: list[Any] = []
        low, high = np.inf, -np.inf
        for i, (checkpoint, label, style, (grid, density)) in enumerate(zip(loaded, labels, styles, curves)):
            density = np.maximum(density, floor)
            (line,) = ax.plot(grid, density, color=style.color, linewidth=0.8, label=label, zorder=3 + len(loaded) - i)
            handles.append(line)
            low, high = min(low, float(grid.min())), max(high, float(grid.max()))
            if checkpoint.eigen is not None and len(checkpoint.eigen.values):
                values = np.asarray(checkpoint.eigen.values, dtype=float)
                _mark_eigenvalues(ax, values, style.color, row=i)
                low, high = min(low, float(values.min())), max(high, float(values.max()))
        ax.set_yscale("log")
        ax.set_ylim(floor, peak * 10 ** (0.15 * np.log10(peak / floor)))  # headroom above the peak for the markers
        pad = 0.03 * (high - low) if high > low else 1.0
        ax.set_xlim(low - pad, high + pad)
        ax.set_xlabel(X_LABEL)
        ax.set_ylabel(Y_LABEL if width is None else f"{Y_LABEL[:-1]};\nGaussian width {width:.2g})")
        if any(c.eigen is not None for c in loaded):
            handles.append(Line2D([], [], color="0.3", marker="v", linestyle="none", label="top eigenvalues"))
        ncol = len(handles) if len(handles) <= 3 else min(-(-len(handles) // 2), 3)
        ordered = _row_major(handles, ncol)
        ax.legend(handles=ordered, labels=[h.get_label() for h in ordered], loc="lower center",
                  bbox_to_anchor=(0.5, 1.0), ncol=ncol, borderaxespad=0.2, title=title)
        if output is not None:
            save(fig, output)
    return fig


def broadened(density: DensityResult, width: float, points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """The quadrature's spectral measure (mean over probes of Σ τ δ(λ − θ)) broadened by Gaussians of standard
    deviation ``width``, on ``points`` eigenvalues spanning the nodes ± 4 widths: a density that integrates to 1."""
    nodes, weights = np.asarray(density.nodes, dtype=float), np.asarray(density.weights, dtype=float)
    keep = np.isfinite(nodes) & (weights > 0)
    centres, mass = nodes[keep], weights[keep] / nodes.shape[0]
    grid = np.linspace(centres.min() - 4 * width, centres.max() + 4 * width, points)
    curve = np.zeros(points)
    for start in range(0, len(centres), 256):  # bounded memory: points × 256 at a time
        part = slice(start, start + 256)
        curve += (mass[part] * np.exp(-0.5 * ((grid[:, None] - centres[part]) / width) ** 2)).sum(axis=1)
    return grid, curve / (width * np.sqrt(2 * np.pi))


def _mark_eigenvalues(ax: Any, values: np.ndarray, color: str, *, row: int) -> None:
    """Triangles pointing down at ``values`` along the top edge, one row per checkpoint (so rows never overlap)."""
    y = np.full(len(values), 0.97 - MARKER_ROW * row)
    ax.plot(values, y, transform=ax.get_xaxis_transform(), linestyle="none", marker="v", markersize=3.5,
            markeredgewidth=0, color=color, clip_on=False, zorder=4, label="_eigenvalues")


def _row_major(handles: list[Any], ncol: int) -> list[Any]:
    """``handles`` reordered so a legend (which fills column by column) reads in their order along its rows."""
    return [handles[i] for col in range(ncol) for i in range(col, len(handles), ncol)]
