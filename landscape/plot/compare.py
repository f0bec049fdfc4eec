"""Flatness of several checkpoints or runs side by side, drawn from results and run files.

:func:`plot_compare` reads the rows of :func:`landscape.store.flatness_rows` (never recomputing anything) and draws
bar panels sharing one vertical axis of checkpoints and runs: the sharpness λmax, the trace per parameter with its
standard error, one panel per stored sharpness or flatness measure (worst- and average-case sharpness, adaptive or
not, the Fisher-Rao norm, relative flatness) with its standard error where it has one, the largest input-output
Jacobian spectral norm over the training samples, and the test accuracy. A panel is left out when no row has its
measure; a row without it reads "n/a" in that panel. More than four panels wrap into lines of
:data:`PANELS_PER_LINE`. Bars of the same file share a colour (a single file's rows each take their optimizer's
colour, as in every figure); the files are named once in a legend above the panels, or, when each file gives a
single row, on the vertical axis itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from landscape.errors import StoreError, option
from landscape.files import PathLike
from landscape.plot.style import COLORS, COLUMN_WIDTH, new_figure, optimizer_in, paper_style, run_styles, save
from landscape.results import RUN_NAME, FlatnessRow, sharpness_labels, source_labels
from landscape.store import flatness_rows

__all__ = ["plot_compare", "plot_flatness", "PANELS", "PANELS_PER_LINE", "MAX_PANELS_IN_ONE_LINE"]

#: Width of a two-column (full text) figure, used when three or four panels would crowd a single column.
TEXT_WIDTH = 7.0
#: Above this many bars per panel, the values are not written next to the bars (they would overlap).
MAX_VALUE_LABELS = 14
VALUE_FONTSIZE = 6
MISSING = "n/a"
#: Up to this many panels stand side by side; more wrap into lines of :data:`PANELS_PER_LINE` (each panel then
#: about 2 in wide, room for its two-line axis label).
MAX_PANELS_IN_ONE_LINE = 4
PANELS_PER_LINE = 3
#: Height (inches) of a line of panels above the bars: the x tick labels and a two-line axis label.
LABEL_ROOM = 0.58
#: The axis label of each sharpness measure, by its kind as its label spells it (see SharpnessResult.label).
MEASURE_NAMES = {"worst": "worst-case sharpness", "average": "average-case sharpness",
                 "fisher-rao": "Fisher-Rao norm", "relative-flatness": "relative flatness"}


@dataclass(frozen=True)
class Panel:
    """One bar panel: the row attribute it shows, its axis label, the attribute of its standard error, and the top of
    its natural scale when it has one (accuracy: 1), which the axis then always spans. A panel of a sharpness
    measure (``measure``) shows ``row.sharpness[field]``, the measure labelled ``field``, with its standard error."""

    field: str
    label: str
    error: Optional[str] = None
    full_scale: Optional[float] = None
    measure: bool = False

    @classmethod
    def of_measure(cls, label: str, with_error: bool) -> "Panel":
        """The panel of the sharpness measure ``label`` (``worst-adaptive ρ=0.05 m=128``): its name, and below
        whether it is adaptive, its ρ and m, and "± s.e." when some row has a standard error."""
        kind, _, details = label.partition(" ")
        adaptive = kind.endswith("-adaptive")
        kind = kind.removesuffix("-adaptive")
        below = " ".join(part for part in ("adaptive" if adaptive else "", details, "± s.e." if with_error else "")
                         if part)
        return cls(label, MEASURE_NAMES.get(kind, kind) + (f"\n{below}" if below else ""), measure=True)

    def value(self, row: FlatnessRow) -> tuple[Optional[float], Optional[float]]:
        """The row's value and standard error in this panel (None where it has none)."""
        if self.measure:
            return row.sharpness.get(self.field, (None, None))
        return getattr(row, self.field), None if self.error is None else getattr(row, self.error)


PANELS = (
    Panel("lambda_max", r"sharpness $\lambda_{\max}$"),
    Panel("trace_per_param", "trace per parameter\n" r"tr$(H)/n$ ± s.e.", "trace_per_param_stderr"),
    Panel("jacobian_max", "input-output Jacobian\n" r"max$_x\,\|\partial f/\partial x\|_2$"),
    Panel("test_accuracy", "test accuracy", full_scale=1.0),
)
#: The sharpness panels go after the curvature panels (λmax, trace) and before the Jacobian and accuracy panels.
_BEFORE_MEASURES = 2


def plot_compare(paths: Sequence[PathLike], output: Optional[PathLike]) -> Figure:
    """Read the flatness rows of the results and run files in ``paths`` and draw them (see :func:`plot_flatness`)."""
    return plot_flatness(flatness_rows(paths), output)


def plot_flatness(rows: Sequence[FlatnessRow], output: Optional[PathLike]) -> Figure:
    """One horizontal-bar panel per measure that some row has, the rows top to bottom in the order given.

    ``output`` is a path without suffix: ``output.png`` and ``output.pdf`` are written (None: nothing is written).
    :class:`StoreError` when no row has any of the measures. Returns the figure (made without pyplot).
    """
    panels = _panels(rows)
    if not panels:
        raise StoreError("nothing to plot: no checkpoint or run has λmax, the trace, a sharpness measure, the "
                         f"Jacobian norm or a test accuracy (analyze with {option('metrics')} "
                         f"eigs,trace,sharpness,jacobian, or train with {option('track_every')} N)")
    sources = list(dict.fromkeys(row.source for row in rows))
    colors = {source: COLORS[i % len(COLORS)] for i, source in enumerate(sources)}
    if len(sources) == 1:  # one file: a colour per row, the optimizer's where its name tells it (as in every figure)
        row_colors = [style.color for style in run_styles([optimizer_in(row.name, Path(row.source).stem)
                                                              for row in rows])]
    else:
        row_colors = [colors[row.source] for row in rows]
    with paper_style():
        width = COLUMN_WIDTH if len(panels) <= 2 else TEXT_WIDTH
        columns = len(panels) if len(panels) <= MAX_PANELS_IN_ONE_LINE else PANELS_PER_LINE
        lines = math.ceil(len(panels) / columns)
        bars = 0.17 * len(rows)  # the height of one panel's bars
        fig = new_figure(width, 0.75 + bars + (lines - 1) * (bars + LABEL_ROOM + 0.05))
        grid = fig.subplots(lines, columns, sharey=True, squeeze=False,
                            gridspec_kw={"wspace": 0.3, "hspace": LABEL_ROOM / max(bars, 0.1)})
        axes = list(grid.flat)
        for ax in axes[len(panels):]:  # the last line's empty places
            fig.delaxes(ax)
        for ax, panel in zip(axes, panels):
            _bar_panel(ax, rows, panel, row_colors)
        files = _file_labels(rows)
        one_row_per_file = len(files) == len(rows)
        axes[0].set_yticks(range(len(rows)), [_row_label(row, files, one_row_per_file) for row in rows])
        axes[0].set_ylim(len(rows) - 0.5, -0.5)  # the first row on top, as in the table
        if not one_row_per_file and len(sources) > 1:  # one file's rows have their own colours: no file legend
            _legend(fig, files, colors)
        if output is not None:
            save(fig, output)
    return fig


def _panels(rows: Sequence[FlatnessRow]) -> list[Panel]:
    """The panels of the measures some row has: λmax and the trace, one per sharpness measure, the Jacobian norm and
    the test accuracy."""
    measures = [Panel.of_measure(label, any(row.sharpness.get(label, (None, None))[1] is not None for row in rows))
                for label in sharpness_labels([row.sharpness for row in rows])]
    panels = [*PANELS[:_BEFORE_MEASURES], *measures, *PANELS[_BEFORE_MEASURES:]]
    return [panel for panel in panels if any(panel.value(row)[0] is not None for row in rows)]


def _file_labels(rows: Sequence[FlatnessRow]) -> dict[str, str]:
    """Each file's short name, with the run's η where the file holds a run."""
    names = source_labels([row.source for row in rows])
    lrs = {row.source: row.lr for row in rows if row.lr is not None}
    return {s: name + (f" (η = {lrs[s]:.4g})" if s in lrs else "") for s, name in names.items()}


def _row_label(row: FlatnessRow, files: dict[str, str], with_file: bool) -> str:
    """The file's label (with the checkpoint's name) when it names the row, else the name within the file (the file
    then shows through the colour): the checkpoint's name, or "run, step N" for a run's last record."""
    if with_file:
        return files[row.source] if row.name == RUN_NAME else f"{files[row.source]}: {row.name}"
    return f"run, step {row.step}" if row.name == RUN_NAME else row.name


def _bar_panel(ax: Any, rows: Sequence[FlatnessRow], panel: Panel, colors: list[str]) -> None:
    """The bars (error bars where the panel has them), the values next to them, "n/a" where a row lacks it."""
    values, errors = (list(column) for column in zip(*(panel.value(row) for row in rows)))
    for i, (value, error, color) in enumerate(zip(values, errors, colors)):
        if value is None or not math.isfinite(value):
            ax.text(0, i, f" {MISSING if value is None else value}", va="center", ha="left",
                    fontsize=VALUE_FONTSIZE, color="0.45")
            continue
        xerr = error if error is not None and math.isfinite(error) else None
        ax.barh(i, value, height=0.7, color=color, xerr=xerr, error_kw={"elinewidth": 0.7, "capsize": 1.5,
                                                                          "capthick": 0.7, "ecolor": "0.2"})
        if len(rows) <= MAX_VALUE_LABELS:
            _value_label(ax, i, value, xerr or 0.0)
    ax.set_xlabel(panel.label)
    ax.axvline(0, color="0.2", linewidth=0.6)
    _limits(ax, values, errors, panel.full_scale, room=1.4 if len(rows) <= MAX_VALUE_LABELS else 1.05)
    ax.tick_params(axis="y", length=0)
    ax.spines["left"].set_visible(False)


def _value_label(ax: Any, i: int, value: float, error: float) -> None:
    """The value just past the bar's end (past its error bar), on the side the bar points to."""
    end = value + error if value >= 0 else value - error
    ax.annotate(f"{value:#.3g}", (end, i), xytext=(3 if value >= 0 else -3, 0), textcoords="offset points",
                va="center", ha="left" if value >= 0 else "right", fontsize=VALUE_FONTSIZE)


def _limits(ax: Any, values: list[Optional[float]], errors: list[Optional[float]],
            full_scale: Optional[float], room: float) -> None:
    """From 0 (or the most negative bar) to the longest bar or the full scale, times ``room`` (space for the value
    labels); three ticks at most, so neighbouring panels' tick labels never meet."""
    drawn = [(v, e or 0.0) for v, e in zip(values, errors) if v is not None and math.isfinite(v)]
    low = min([v - e for v, e in drawn if v < 0], default=0.0)
    high = max([abs(v) + e for v, e in drawn] + [full_scale or 0.0]) or 1.0
    ax.xaxis.set_major_locator(MaxNLocator(nbins=3, steps=[1, 2, 2.5, 5, 10]))
    if full_scale is not None:
        ax.set_xticks([0, full_scale / 2, full_scale])
    ax.set_xlim(low * room, high * room)


def _legend(fig: Figure, files: dict[str, str], colors: dict[str, str]) -> None:
    """One patch per file, above the panels."""
    handles = [Patch(color=colors[s], label=label) for s, label in files.items()]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.9), ncol=min(len(handles), 4),
               borderaxespad=0.0, handlelength=1.0)
