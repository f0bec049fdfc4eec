"""Loss surfaces drawn from the HDF5 files written by ``landscape surface`` (never recomputed).

:func:`plot_surface` draws a stored :class:`~landscape.results.SurfaceResult`:

- a 1-D surface (a random or eigenvector direction, or the line through two checkpoints) as the loss against the
  coordinate, with the accuracy on a twin axis and the checkpoints marked;
- a 2-D surface as filled contours of the loss on log-spaced levels with the checkpoints marked (``view="contour"``),
  as a 3-D surface of log₁₀ loss (``view="3d"``), or both side by side (``view="auto"``).

Cells not computed yet (NaN) are left blank, so a partial grid can be looked at while it is being computed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

from landscape import store
from landscape.errors import OptionError, StoreError
from landscape.files import PathLike
from landscape.plot.style import COLORS, COLUMN_WIDTH, new_figure, paper_style, save
from landscape.plot.paths import draw_barrier, draw_trajectory, pca_axis_labels
from landscape.results import SurfaceResult

__all__ = ["VIEWS", "axis_labels", "load_surface", "plot_surface"]

VIEWS = ("auto", "1d", "contour", "3d")
ORDINALS = ("top", "2nd")
CMAP = "viridis"
NUM_LEVELS = 24
MARKER = {"marker": "*", "markersize": 8, "color": "white", "markeredgecolor": "black", "markeredgewidth": 0.6,
          "linestyle": "none", "zorder": 5}


def load_surface(path: PathLike, checkpoint: Optional[str] = None) -> tuple[str, SurfaceResult]:
    """The checkpoint name and the surface stored for it in ``path`` (the only one when ``checkpoint`` is None)."""
    path = Path(path)
    surfaces = {name: record.results["surface"] for name, record in store.read_results(path).items()
                if isinstance(record.results.get("surface"), SurfaceResult)}
    if not surfaces:
        raise StoreError(f"{path} holds no loss surface (checkpoints/<name>/surface); compute one with "
                         f"`landscape surface CHECKPOINT --data SPEC -o {path}`")
    if checkpoint is None:
        if len(surfaces) > 1:
            raise OptionError(f"{path} holds surfaces for {len(surfaces)} checkpoints ({', '.join(surfaces)}); "
                              "choose one with checkpoint=")
        checkpoint = next(iter(surfaces))
    if checkpoint not in surfaces:
        raise StoreError(f"{path} has no surface for checkpoint {checkpoint!r}; it has: {', '.join(surfaces)}")
    result = surfaces[checkpoint]
    if not np.isfinite(result.loss).any():
        raise StoreError(f"the surface of {checkpoint} in {path} has no computed cell yet; run `landscape surface "
                         "... --resume` to compute it")
    return checkpoint, result


def _names(result: SurfaceResult, origin: str) -> list[str]:
    """Names of the checkpoints the directions pass through (A, B, C when not recorded)."""
    names = list(result.checkpoint_names or [])
    wanted = {"line": 2, "plane": 3}.get(result.kind, 1)
    return names if len(names) >= wanted else [origin, "B", "C"][:wanted]


def axis_labels(result: SurfaceResult, origin: str = "A") -> tuple[str, str]:
    """Labels of the x and y axes, naming the kind of direction ("filter-normalized direction 1", "top Hessian
    eigenvector (λ = 12.3)", "α (A → B)"); the y label is empty for a 1-D surface."""
    labels: list[str]
    if result.kind == "random":
        kind = {"filter": "filter-normalized", "layer": "layer-normalized"}.get(result.normalization or "", "random")
        labels = [f"{kind} direction {i}" for i in (1, 2)]
    elif result.kind == "eigen":
        values = list(result.eigenvalues or [])
        labels = [f"{ORDINALS[i]} Hessian eigenvector" + (f" (λ = {values[i]:.3g})" if i < len(values) else "")
                  for i in (0, 1)]
    elif result.kind == "pca":
        labels = list(pca_axis_labels(result))
    elif result.kind in ("line", "plane"):
        names = _names(result, origin)
        labels = [f"α ({names[0]} → {names[1]})", f"β ({names[0]} → {names[2]})" if len(names) > 2 else ""]
    else:
        labels = ["direction 1", "direction 2"]
    return labels[0], labels[1] if result.dims == 2 else ""


def _loss_label(result: SurfaceResult) -> str:
    return f"{result.loss_function} loss"


def plot_surface(path: PathLike, output: Optional[PathLike], *, checkpoint: Optional[str] = None,
                 view: str = "auto") -> Figure:
    """Draw the surface stored in ``path`` (for ``checkpoint``, or the only one) and save it to ``output`` (a path
    without suffix: ``output.png`` and ``output.pdf``; None writes nothing). Returns the figure.

    ``view``: ``"1d"`` for a 1-D surface (loss and accuracy against the coordinate); ``"contour"`` or ``"3d"`` for a
    2-D one; ``"auto"`` picks 1d, or contour and 3-D side by side.
    """
    if view not in VIEWS:
        raise OptionError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
    name, result = load_surface(path, checkpoint)
    if view == "1d" and result.dims != 1:
        raise OptionError(f"view '1d' needs a 1-D surface; {name}'s in {path} is 2-D: use 'contour' or '3d'")
    if view in ("contour", "3d") and result.dims != 2:
        raise OptionError(f"view {view!r} needs a 2-D surface; {name}'s in {path} is 1-D: use '1d'")
    with paper_style():
        if result.dims == 1:
            fig = new_figure(COLUMN_WIDTH, 2.4)
            _draw_curve(fig.add_subplot(), result, name)
        elif view == "auto":
            fig = new_figure(2 * COLUMN_WIDTH, 3.0)
            grid = fig.add_gridspec(1, 2, width_ratios=(1.0, 1.0), wspace=0.45)
            _draw_contour(fig, fig.add_subplot(grid[0]), result, name)
            _draw_3d(fig.add_subplot(grid[1], projection="3d"), result, name)
        elif view == "contour":
            fig = new_figure(COLUMN_WIDTH, 2.9)
            _draw_contour(fig, fig.add_subplot(), result, name)
        else:
            fig = new_figure(COLUMN_WIDTH, 3.0)
            _draw_3d(fig.add_subplot(projection="3d"), result, name)
        if output is not None:
            save(fig, output)
    return fig


def checkpoint_marks(result: SurfaceResult, name: str) -> list[tuple[tuple[float, float], str]]:
    """The checkpoints on the surface: ((x, y), name) for the origin, and for B and C of a line or plane."""
    names = _names(result, name)
    if result.kind == "line":
        return [((0.0, 0.0), names[0]), ((1.0, 0.0), names[1])]
    if result.kind == "plane":
        return [((0.0, 0.0), names[0]), ((1.0, 0.0), names[1]), ((0.0, 1.0), names[2])]
    return [((0.0, 0.0), names[0])]


def _draw_curve(ax: Any, result: SurfaceResult, name: str) -> None:
    """Loss against the coordinate (log scale when it spans more than a factor of 30), accuracy on a twin axis."""
    loss = np.where(np.isfinite(result.loss), result.loss, np.nan)
    ax.plot(result.x, loss, color=COLORS[0], label="loss", zorder=3)
    finite = loss[np.isfinite(loss)]
    if finite.min() > 0 and finite.max() / finite.min() > 30:
        ax.set_yscale("log")
    ax.set_xlabel(axis_labels(result, name)[0])
    ax.set_ylabel(_loss_label(result), color=COLORS[0])
    ax.set_xlim(result.x[0], result.x[-1])
    for (position, _), label in checkpoint_marks(result, name):
        if result.x[0] <= position <= result.x[-1]:
            ax.axvline(position, color="0.5", linestyle=":", linewidth=0.8, zorder=1)
            ax.text(position, 1.0, label, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=7, color="0.3")
    handles = ax.get_lines()[:1]
    if np.isfinite(result.accuracy).any():
        twin = ax.twinx()
        twin.spines["right"].set_visible(True)
        twin.plot(result.x, result.accuracy, color=COLORS[1], linestyle="--", label="accuracy", zorder=3)
        twin.set_ylim(0, 1.02)
        twin.set_ylabel("accuracy", color=COLORS[1])
        handles = handles + twin.get_lines()[:1]
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.06), ncol=2, borderaxespad=0.2)
    draw_barrier(ax, result)


def _levels(values: np.ndarray) -> tuple[np.ndarray, Normalize]:
    """Log-spaced levels over the computed cells (linear when some loss is not positive or the range is tiny)."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        high = low + max(abs(low), 1.0) * 1e-6
    if low > 0 and high / low > 1.5:
        return np.geomspace(low, high, NUM_LEVELS + 1), LogNorm(low, high)
    return np.linspace(low, high, NUM_LEVELS + 1), Normalize(low, high)


def _draw_contour(fig: Figure, ax: Any, result: SurfaceResult, name: str) -> None:
    """Filled contours of the loss on log-spaced levels, thin contour lines, the checkpoints as stars."""
    X, Y = np.meshgrid(result.x, result.y, indexing="ij")
    Z = np.ma.masked_invalid(result.loss)
    levels, norm = _levels(Z.compressed())
    filled = ax.contourf(X, Y, Z, levels=levels, norm=norm, cmap=CMAP)
    ax.contour(X, Y, Z, levels=levels[::3], colors="black", linewidths=0.3, alpha=0.5)
    for (px, py), label in checkpoint_marks(result, name):
        if result.x[0] <= px <= result.x[-1] and result.y[0] <= py <= result.y[-1]:
            ax.plot([px], [py], **MARKER)
            fx = (px - result.x[0]) / (result.x[-1] - result.x[0])
            fy = (py - result.y[0]) / (result.y[-1] - result.y[0])
            # centred above the star, shifted inwards near an edge so the name stays inside the axes
            ha = "left" if fx < 0.15 else "right" if fx > 0.85 else "center"
            ax.annotate(label, (px, py), xytext=({"left": 3, "right": -3, "center": 0}[ha], -6 if fy > 0.85 else 6),
                        textcoords="offset points", ha=ha, va="top" if fy > 0.85 else "bottom", fontsize=7,
                        color="white", fontweight="bold")
    xlabel, ylabel = axis_labels(result, name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_box_aspect(1)
    draw_trajectory(ax, result)
    bar = fig.colorbar(filled, ax=ax, fraction=0.05, pad=0.03)
    bar.set_label(_loss_label(result))
    if isinstance(norm, LogNorm):
        bar.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        bar.ax.yaxis.set_minor_locator(NullLocator())
    bar.ax.tick_params(labelsize=7)
    bar.outline.set_linewidth(0.4)


def _draw_3d(ax: Any, result: SurfaceResult, name: str) -> None:
    """log₁₀ loss as a 3-D surface (the loss itself when some value is not positive), checkpoints as stars."""
    X, Y = np.meshgrid(result.x, result.y, indexing="ij")
    finite = result.loss[np.isfinite(result.loss)]
    use_log = finite.min() > 0
    Z = np.where(np.isfinite(result.loss), result.loss, np.nan)
    Z = np.log10(Z) if use_log else Z
    ax.plot_surface(X, Y, Z, cmap=CMAP, linewidth=0, antialiased=False, rcount=len(result.x),
                    ccount=len(result.y), rasterized=True)
    for (px, py), _ in checkpoint_marks(result, name):
        i, j = np.abs(result.x - px).argmin(), np.abs(result.y - py).argmin()
        if np.isfinite(Z[i, j]) and np.isclose(result.x[i], px) and np.isclose(result.y[j], py):
            ax.plot([px], [py], [Z[i, j]], **MARKER)
    xlabel, ylabel = axis_labels(result, name)
    ax.set_xlabel(_two_lines(xlabel), labelpad=0, fontsize=7)
    ax.set_ylabel(_two_lines(ylabel), labelpad=0, fontsize=7)
    ax.set_zlabel(r"$\log_{10}$ loss" if use_log else "loss", labelpad=-1, fontsize=7)
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_major_locator(MaxNLocator(4))
    ax.tick_params(pad=-1, labelsize=6)
    ax.view_init(elev=35, azim=-55)


def _two_lines(label: str, width: int = 24) -> str:
    """A label longer than ``width`` broken before its parenthesis, else at its first space (narrow 3-D axes)."""
    if len(label) <= width:
        return label
    head, sep, tail = label.partition(" (")
    if not sep:
        head, sep, tail = label.partition(" ")
    return f"{head}\n{'(' if sep == ' (' else ''}{tail}" if sep else label
