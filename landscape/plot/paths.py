"""Paths drawn over a stored surface (never recomputed): optimizer trajectories on the PCA plane and a line's loss
barrier.

- :func:`draw_trajectory`: every run's checkpoints on the plane of a ``--directions pca`` surface (Li et al. 2018,
  §7), joined in step order, over the contours already on the axes, with the explained variance on the axes
  ("PC1 (84.2 %)");
- :func:`draw_barrier`: on the curve of a ``--directions line`` surface, the chord between the ends A and B and the
  loss barrier (Frankle et al. 2020) as the gap between the curve and the chord where it is largest.

Both take a matplotlib Axes and the :class:`~landscape.results.SurfaceResult`, so they add to the figures of
:mod:`landscape.plot.surface`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib import patheffects

from landscape.plot.style import COLORS, optimizer_in, run_styles
from landscape.results import SurfaceResult

__all__ = ["draw_barrier", "draw_trajectory", "pca_axis_labels"]

#: a white rim under the paths, so they stand out on dark and light contours alike
_RIM = [patheffects.withStroke(linewidth=2.4, foreground="white")]


def pca_axis_labels(result: SurfaceResult) -> tuple[str, str]:
    """``("PC1 (84.2 %)", "PC2 (10.3 %)")``: the principal components with their explained variance."""
    shares = list(result.explained_variance or [])

    def label(i: int) -> str:
        return f"PC{i + 1}" + (f" ({100 * shares[i]:.1f} %)" if i < len(shares) else "")

    return label(0), label(1)


def draw_trajectory(ax: Any, result: SurfaceResult) -> list[Any]:
    """Each run's checkpoints of a pca surface as a line in step order (dots at the checkpoints, a larger dot at
    the run's start and a diamond at its end), labelled with the run in a legend when there are several, and the
    axes labelled with the explained variance. Returns the lines drawn, one per run; nothing is drawn (an empty
    list) for a surface without a stored path."""
    if result.path is None or not len(result.path):
        return []
    path = np.asarray(result.path, dtype=float)
    runs = np.asarray(result.path_runs if result.path_runs is not None else np.zeros(len(path), dtype=int))
    labels = list(result.path_labels or [])
    lines = []
    order = list(dict.fromkeys(runs.tolist()))
    names = [labels[run] if run < len(labels) else f"run {run + 1}" for run in order]
    styles = run_styles([optimizer_in(name) for name in names])  # SGD and SAM coloured as in every other figure
    for run, label, style in zip(order, names, styles):
        points = path[runs == run]
        color = style.color
        (line,) = ax.plot(points[:, 0], points[:, 1], color=color, linewidth=1.2, marker="o", markersize=2.2,
                          label=label, zorder=4, path_effects=_RIM)
        ax.plot(points[:1, 0], points[:1, 1], color=color, marker="o", markersize=5, markeredgecolor="white",
                markeredgewidth=0.6, linestyle="none", zorder=4.5)
        ax.plot(points[-1:, 0], points[-1:, 1], color=color, marker="D", markersize=4.5, markeredgecolor="white",
                markeredgewidth=0.6, linestyle="none", zorder=4.5)
        lines.append(line)
    xlabel, ylabel = pca_axis_labels(result)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(lines) > 1:
        ax.legend(handles=lines, loc="lower center", bbox_to_anchor=(0.5, 1.02), ncol=len(lines),
                  borderaxespad=0.2, fontsize=7)
    return lines


def draw_barrier(ax: Any, result: SurfaceResult) -> list[Any]:
    """On a line's loss curve: the chord from (0, L(A)) to (1, L(B)) (dashed) and the barrier, the largest excess
    of the loss over the chord at the grid points in [0, 1], as a vertical bar at its α with its value (and, after
    ``--align``, the barrier before aligning). Returns the artists drawn; nothing (an empty list) when the result
    holds no barrier."""
    if result.barrier is None or result.barrier_alpha is None:
        return []
    x, loss = np.asarray(result.x, dtype=float), np.asarray(result.loss, dtype=float)
    at_a, at_b = loss[np.abs(x).argmin()], loss[np.abs(x - 1.0).argmin()]
    alpha = float(result.barrier_alpha)
    chord_at = (1.0 - alpha) * at_a + alpha * at_b
    (chord,) = ax.plot([0.0, 1.0], [at_a, at_b], color="0.35", linestyle="--", linewidth=0.9, zorder=2,
                       label="chord A–B")
    (bar,) = ax.plot([alpha, alpha], [chord_at, chord_at + result.barrier], color=COLORS[3], linewidth=1.6,
                     solid_capstyle="butt", zorder=4, label="barrier")
    text = f"barrier {result.barrier:.3g}"
    if result.aligned and result.barrier_unaligned is not None:
        text += f"\n(unaligned {result.barrier_unaligned:.3g})"
    note = ax.annotate(text, (alpha, chord_at + result.barrier / 2), xytext=(4, 0), textcoords="offset points",
                       ha="left", va="center", fontsize=7, color=COLORS[3])
    return [chord, bar, note]
