"""Flatness measures of several checkpoints or training runs side by side, read from the toolkit's HDF5 files.

:func:`landscape.store.flatness_rows` turns each file into rows (:class:`~landscape.results.FlatnessRow`): one per
analysed checkpoint of a results file (``landscape analyze``) and one per training run file (``landscape train``: its
last curvature record). Each row carries the sharpness λmax, the trace with its standard error and per parameter, the
largest input-output Jacobian spectral norm, and the loss and accuracy; for a run also λmax·η/2, which is 1 at
gradient descent's edge of stability (λmax = 2/η). :func:`flatness_table` prints them. Nothing is recomputed: a
measure that was not recorded is None.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

from landscape.files import PathLike
from landscape.report import format_table
from landscape.results import FlatnessRow, source_labels
from landscape.store import flatness_rows

__all__ = ["compare", "flatness_table", "TABLE_HEADERS"]

TABLE_HEADERS = ("source/name", "step", "λmax", "λmax·η/2", "trace ± se", "trace/n", "|J|₂ max", "train loss",
                 "train acc", "test loss", "test acc")


# -- the table ---------------------------------------------------------------------------------------------------
def _number(value: Optional[float], digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _trace_cell(row: FlatnessRow) -> str:
    if row.trace is None:
        return "-"
    if row.trace_stderr is None or not math.isfinite(row.trace_stderr):
        return _number(row.trace, 5)
    return f"{row.trace:.5g} ± {row.trace_stderr:.2g}"


def flatness_table(rows: Sequence[FlatnessRow], markdown: bool = False) -> str:
    """An aligned text table (or a GitHub markdown table) with a line per row; "-" where a measure is missing."""
    labels = source_labels([row.source for row in rows])
    cells = [[f"{labels[row.source]}:{row.name}", "-" if row.step is None else str(row.step),
              _number(row.lambda_max), _number(row.sharpness_ratio, 3), _trace_cell(row),
              _number(row.trace_per_param), _number(row.jacobian_max), _number(row.train_loss),
              _number(row.train_accuracy), _number(row.test_loss), _number(row.test_accuracy)]
             for row in rows]
    return format_table(TABLE_HEADERS, cells, markdown=markdown)


def compare(paths: Sequence[PathLike], *, markdown: bool = False, figure: Optional[PathLike] = None,
            say: Callable[[str], None] = print) -> list[FlatnessRow]:
    """The flatness rows of the results and run files in ``paths``: their table goes to ``say`` (``markdown``: as a
    GitHub table), then, when ``figure`` is given, they are drawn as bar panels into ``figure``.png and .pdf and
    ``say`` gets the line naming the files written."""
    from landscape.plot.compare import plot_flatness
    from landscape.plot.style import save

    rows = flatness_rows(paths)
    say(flatness_table(rows, markdown=markdown))
    if figure is not None:
        written = save(plot_flatness(rows, None), figure)
        say("figure: " + ", ".join(str(path) for path in written))
    return rows
