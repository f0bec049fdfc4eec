"""The spectra of a model's parameter blocks side by side (Zhang et al. 2024, "Why Transformers Need Adam"), drawn
from a results file of ``landscape analyze --per-layer --metrics eigs,density``.

:func:`plot_blocks` draws one small panel per block, in the model's order (top to bottom, then in further columns
for a long model), against the eigenvalue on an x axis shared by every panel, symmetric-log so that blocks whose
curvatures differ by orders of magnitude share it (linear within ±``linthresh``, a tenth of the smallest block's
spectral radius). A panel shows the block's spectral density as stochastic Lanczos quadrature stored it (its nodes
and weights), smoothed in the symlog coordinate (a Gaussian of :data:`BANDWIDTH` of the axis; the stored density,
broadened on a linear scale, would be a single bump at this scale for the blocks with small eigenvalues), on a log
scale normalised to its peak (floored at :data:`FLOOR`): the weight of the spectrum at each order of magnitude, as
a histogram of log|λ| would show it. Each block's colour is its kind (embedding, query, key, value, output, MLP,
norm, head, ...); a vertical line marks its λmax, whose value is printed to the right of the panel (λmax is the top
eigenvalue of ``--metrics eigs``, else the largest Ritz value of the density's quadrature). The panels and labels
are laid out in inches from the lengths of the labels, so no text overlaps another.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.scale import SymmetricalLogTransform
from matplotlib.textpath import TextPath
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from landscape import store
from landscape.errors import StoreError, option
from landscape.files import PathLike
from landscape.plot.style import new_figure, paper_style, save
from landscape.results import DensityResult, EigenResult

__all__ = ["BlockSpectrum", "load_blocks", "plot_blocks"]

#: Colour per block kind (Okabe–Ito, then Tol's for the rarer kinds), in the legend's order.
KIND_COLORS = {"embedding": "#E69F00", "query": "#0072B2", "key": "#56B4E9", "value": "#009E73",
               "output": "#CC79A7", "attention": "#332288", "mlp": "#D55E00", "norm": "#999999", "head": "#000000",
               "other": "#DDCC77"}
FLOOR = 1e-4  # each panel's density is drawn no lower than this fraction of its peak
BANDWIDTH = 0.01  # the smoothing's standard deviation, as a fraction of the x axis (in the symlog coordinate)
POINTS = 600  # points along each panel's curve
MAX_ROWS = 24  # panels per column; a longer model gets more columns
ROW, PANEL, GAP = 0.26, 2.0, 0.3  # inches: a row's height, a panel's width, the space between columns
TOP, BOTTOM, PAD = 0.2, 0.42, 0.06  # inches: above the legend, below the panels, between a label and its panel
FONT = 7.0  # points: the labels and ticks
TICK_GAP = 0.4  # inches between the centres of two tick labels, at least
X_LABEL = "eigenvalue (symlog)"


@dataclass(frozen=True)
class BlockSpectrum:
    """What the figure needs of one block: its name and kind, its density and (when computed) top eigenvalues."""

    name: str
    kind: str
    density: DensityResult
    eigen: Optional[EigenResult]

    @property
    def lambda_max(self) -> float:
        """The top eigenvalue; without ``eigs``, the largest Ritz value of the density's quadrature."""
        if self.eigen is not None and len(self.eigen.values):
            return float(np.max(self.eigen.values))
        return float(np.nanmax(self.density.nodes))

    @property
    def radius(self) -> float:
        """The largest |eigenvalue| the block's results show."""
        return max(abs(self.lambda_max), float(np.nanmax(np.abs(self.density.nodes))))


def load_blocks(path: PathLike, *, checkpoint: Optional[str] = None) -> tuple[str, list[BlockSpectrum]]:
    """The named checkpoint (default: the last, by step, with per-block densities) and its blocks' spectra in the
    model's order. :class:`StoreError` when the file has no such checkpoint or it has no per-block density."""
    path = Path(path)
    with store.open_results(path) as handle:
        groups = handle.get("checkpoints", {})
        with_blocks = [name for name, group in groups.items()
                       if any("density" in node for node in group.get("layers", {}).values())]
        if checkpoint is not None and checkpoint not in groups:
            raise StoreError(f"{path} has no checkpoint {checkpoint!r}; it has {', '.join(groups) or 'none'}")
        if checkpoint is None and with_blocks:
            checkpoint = max(with_blocks, key=lambda n: (_step(groups[n]), n))
        if checkpoint is None or checkpoint not in with_blocks:
            where = f"checkpoint {checkpoint!r} of {path}" if checkpoint else f"no checkpoint of {path}"
            raise StoreError(f"{where} has no per-block spectral density; run landscape analyze with "
                             f"{option('per_layer')} {option('metrics')} eigs,density")
        blocks = []
        for name, node in groups[checkpoint]["layers"].items():
            if "density" not in node:
                continue
            attrs = store.get_attrs(node)
            eigen = store.read_result(node["eigen"]) if "eigen" in node else None
            blocks.append((attrs.get("order"), _natural(name), BlockSpectrum(
                name, str(attrs.get("kind", "other")), store.read_result(node["density"]),
                eigen if isinstance(eigen, EigenResult) else None)))
    blocks.sort(key=lambda b: (b[0] is None, b[0] if b[0] is not None else 0, b[1]))
    return checkpoint, [b[2] for b in blocks]


def _step(group: Any) -> int:
    step = store.get_attrs(group).get("step")
    return step if isinstance(step, int) else -1


def _natural(name: str) -> list[Any]:
    """``blocks.10`` after ``blocks.9``: digits compared as numbers."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name)]


def plot_blocks(path: PathLike, output: Optional[PathLike], *, checkpoint: Optional[str] = None) -> Figure:
    """Draw the spectra of one checkpoint's parameter blocks side by side; save to ``output`` (a path without
    suffix: ``output.png`` and ``output.pdf``; None writes nothing). Returns the figure (made without pyplot)."""
    name, blocks = load_blocks(path, checkpoint=checkpoint)
    columns = math.ceil(len(blocks) / MAX_ROWS)
    rows = math.ceil(len(blocks) / columns)
    labels = [b.name for b in blocks]
    values = [f"{b.lambda_max:.3g}" for b in blocks]
    label_width = max(_text_width(t) for t in labels) + PAD
    value_width = max(_text_width(t) for t in values + ["λmax"]) + PAD
    kinds = [k for k in KIND_COLORS if any(_kind(b) == k for b in blocks)]
    legend_columns = min(len(kinds), 5)
    legend_height = 0.17 * math.ceil(len(kinds) / legend_columns) + 0.12
    column_width = label_width + PANEL + value_width
    width = columns * column_width + (columns - 1) * GAP
    height = TOP + legend_height + 0.17 + rows * ROW + BOTTOM
    low, high, linthresh = _x_range(blocks)

    with paper_style({"xtick.labelsize": FONT}):
        fig = new_figure(width, height)
        for i, block in enumerate(blocks):
            column, row = divmod(i, rows)
            left = column * (column_width + GAP) + label_width
            bottom = height - TOP - legend_height - 0.17 - (row + 1) * ROW
            ax = fig.add_axes((left / width, (bottom + 0.1 * ROW) / height, PANEL / width, 0.8 * ROW / height))
            _panel(ax, block, (low, high, linthresh), values[i], last=row == rows - 1 or i == len(blocks) - 1)
            if row == 0:
                ax.text(1.0 + PAD / PANEL, 1.0 + 0.03 / (0.8 * ROW), "λmax", transform=ax.transAxes, ha="left",
                        va="bottom", fontsize=FONT)
        fig.legend(handles=[Patch(color=KIND_COLORS[k], label=k) for k in kinds], loc="upper center",
                   bbox_to_anchor=(0.5, 1 - TOP / height), ncol=legend_columns, fontsize=FONT, frameon=False,
                   title=f"{name}: spectrum of each parameter block", title_fontsize=FONT + 1)
        if output is not None:
            save(fig, output)
    return fig


def _kind(block: BlockSpectrum) -> str:
    return block.kind if block.kind in KIND_COLORS else "other"


def _panel(ax: Any, block: BlockSpectrum, x: tuple[float, float, float], value: str, *, last: bool) -> None:
    """One block: its density (log scale, normalised to its peak) over the shared symlog x axis, λmax marked."""
    low, high, linthresh = x
    color = KIND_COLORS[_kind(block)]
    grid, shown = _smoothed(block.density, low, high, linthresh)
    ax.fill_between(grid, FLOOR, shown, color=color, alpha=0.35, linewidth=0)
    ax.plot(grid, shown, color=color, linewidth=0.7)
    ax.axvline(block.lambda_max, color=color, linewidth=0.9, linestyle=(0, (2, 1)))
    ax.set_xscale("symlog", linthresh=linthresh)
    ax.set_xlim(low, high)
    ax.set_yscale("log")
    ax.set_ylim(FLOOR, 2.0)
    ax.yaxis.set_major_locator(NullLocator())
    ax.yaxis.set_minor_locator(NullLocator())
    for side in ("left", "top", "right"):
        ax.spines[side].set_visible(False)
    ax.xaxis.set_major_locator(FixedLocator(_ticks(low, high, linthresh)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(_tick_label))
    ax.tick_params(axis="x", labelbottom=last, length=2.0 if last else 1.5)
    if last:
        ax.set_xlabel(X_LABEL, fontsize=FONT)
    ax.text(-PAD / PANEL, 0.5, block.name, transform=ax.transAxes, ha="right", va="center", fontsize=FONT,
            color="black")
    ax.text(1.0 + PAD / PANEL, 0.5, value, transform=ax.transAxes, ha="left", va="center", fontsize=FONT,
            color="black")


def _smoothed(density: DensityResult, low: float, high: float, linthresh: float) -> tuple[np.ndarray, np.ndarray]:
    """The quadrature's spectral measure (mean over probes of Σ τ δ(θ)) smoothed by a Gaussian in the symlog
    coordinate of the axis, on a grid of eigenvalues from ``low`` to ``high``; normalised to its peak, floored."""
    transform = SymmetricalLogTransform(10, linthresh, 1.0)
    u_low, u_high = transform.transform(np.array([low, high]))
    u = np.linspace(u_low, u_high, POINTS)
    nodes, weights = np.asarray(density.nodes, dtype=float), np.asarray(density.weights, dtype=float)
    keep = np.isfinite(nodes) & (weights > 0)
    centres, mass = transform.transform(nodes[keep]), weights[keep] / nodes.shape[0]
    width = BANDWIDTH * (u_high - u_low)
    curve = (mass[None, :] * np.exp(-0.5 * ((u[:, None] - centres[None, :]) / width) ** 2)).sum(axis=1)
    peak = float(curve.max()) if curve.size and curve.max() > 0 else 1.0
    return transform.inverted().transform(u), np.maximum(curve / peak, FLOOR)


def _x_range(blocks: list[BlockSpectrum]) -> tuple[float, float, float]:
    """The shared x limits (every block's Ritz values and top eigenvalues, padded) and the symlog linear range."""
    low = min(min(float(np.nanmin(b.density.nodes)), b.lambda_max) for b in blocks)
    high = max(max(float(np.nanmax(b.density.nodes)), b.lambda_max) for b in blocks)
    radii = [b.radius for b in blocks if b.radius > 0]
    linthresh = 0.1 * min(radii) if radii else 1.0
    return min(1.5 * low, -linthresh), max(1.5 * high, linthresh), linthresh


def _ticks(low: float, high: float, linthresh: float) -> list[float]:
    """0 and powers of ten on either side, every few decades, each label :data:`TICK_GAP` inches or more from the
    next (so they never crowd)."""
    transform = SymmetricalLogTransform(10, linthresh, 1.0)
    u_low, u_high = transform.transform(np.array([low, high]))
    gap = TICK_GAP / PANEL * (u_high - u_low)  # the least distance between two ticks, in the symlog coordinate
    decade = float(np.diff(transform.transform(np.array([linthresh, 10 * linthresh])))[0])
    step = max(1, math.ceil(gap / decade))
    ticks = [0.0]
    for sign, end in ((1.0, high), (-1.0, -low)):
        if end <= linthresh:
            continue
        first, last = math.ceil(math.log10(linthresh)), math.floor(math.log10(end))
        ticks += [sign * 10.0 ** d for d in range(last, first - 1, -step)
                  if abs(float(transform.transform(np.array([10.0 ** d]))[0])) >= gap]
    return sorted(ticks)


def _tick_label(value: float, _position: Any) -> str:
    if value == 0:
        return "0"
    exponent = round(math.log10(abs(value)))
    return f"${'-' if value < 0 else ''}10^{{{exponent}}}$"


def _text_width(text: str, size: float = FONT) -> float:
    """The width of ``text`` in inches at ``size`` points (no renderer needed)."""
    return TextPath((0, 0), text, size=size).get_extents().width / 72.0
