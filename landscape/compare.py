"""Flatness measures of several checkpoints or training runs side by side, read from the toolkit's HDF5 files.

:func:`landscape.store.flatness_rows` turns each file into rows (:class:`~landscape.results.FlatnessRow`): one per
analysed checkpoint of a results file (``landscape analyze``) and one per training run file (``landscape train``: its
last curvature record). Each row carries the sharpness λmax, the trace with its standard error and per parameter, the
largest input-output Jacobian spectral norm, every stored sharpness and flatness measure with its standard error
(``landscape analyze --metrics sharpness``: worst- and average-case sharpness, adaptive or not, the Fisher-Rao norm,
relative flatness), the loss barrier of a line between two checkpoints (``landscape surface A B --directions line``,
before and after ``--align``), and the loss and accuracy; for a run also λmax·η/2, which is 1 at gradient descent's
edge of stability (λmax = 2/η). :func:`flatness_table` prints them, a column per sharpness measure that some row has.
Nothing is recomputed: a measure that was not recorded is None.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Callable, Mapping, Optional, Sequence

from landscape.errors import OptionError, option
from landscape.files import PathLike
from landscape.report import format_table
from landscape.results import FlatnessRow, Result, sharpness_labels, sharpness_measures, source_labels
from landscape.store import flatness_rows

__all__ = ["compare", "select_rows", "flatness_table", "sharpness_table", "measure_cell", "TABLE_HEADERS"]

#: The table's columns; a column per sharpness measure (its label, see :func:`~landscape.results.sharpness_labels`)
#: comes after |J|₂ max.
TABLE_HEADERS = ("source/name", "step", "λmax", "λmax·η/2", "trace ± se", "trace/n", "|J|₂ max", "train loss",
                 "train acc", "test loss", "test acc")
_BEFORE_SHARPNESS = TABLE_HEADERS.index("|J|₂ max") + 1
#: The loss-barrier columns (header, FlatnessRow field), after the sharpness measures, shown when some row has one.
BARRIER_HEADERS = (("barrier", "barrier"), ("barrier unaligned", "barrier_unaligned"))


# -- the table ---------------------------------------------------------------------------------------------------
def _number(value: Optional[float], digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def measure_cell(value: Optional[float], stderr: Optional[float], digits: int = 4) -> str:
    """``value ± se`` (the value alone without a finite standard error); "-" for a missing value."""
    if value is None:
        return "-"
    if stderr is None or not math.isfinite(stderr):
        return _number(value, digits)
    return f"{value:.{digits}g} ± {stderr:.2g}"


def flatness_table(rows: Sequence[FlatnessRow], markdown: bool = False) -> str:
    """An aligned text table (or a GitHub markdown table) with a line per row and a column per sharpness measure
    (``value ± se``) that some row has, then the loss barrier (and the one before alignment) when some row has one
    (a line between two checkpoints); "-" where a measure is missing."""
    labels = source_labels([row.source for row in rows])
    measures = sharpness_labels([row.sharpness for row in rows])
    barriers = [(header, name) for header, name in BARRIER_HEADERS
                if any(getattr(row, name) is not None for row in rows)]
    cells = []
    for row in rows:
        line = [f"{labels[row.source]}:{row.name}", "-" if row.step is None else str(row.step),
                _number(row.lambda_max), _number(row.sharpness_ratio, 3), measure_cell(row.trace, row.trace_stderr, 5),
                _number(row.trace_per_param), _number(row.jacobian_max), _number(row.train_loss),
                _number(row.train_accuracy), _number(row.test_loss), _number(row.test_accuracy)]
        line[_BEFORE_SHARPNESS:_BEFORE_SHARPNESS] = [
            *(measure_cell(*row.sharpness.get(label, (None, None))) for label in measures),
            *(_number(getattr(row, name)) for _, name in barriers)]
        cells.append(line)
    headers = list(TABLE_HEADERS)
    headers[_BEFORE_SHARPNESS:_BEFORE_SHARPNESS] = [*measures, *(header for header, _ in barriers)]
    return format_table(headers, cells, markdown=markdown)


def sharpness_table(results: Mapping[str, Mapping[str, Result]], markdown: bool = False) -> Optional[str]:
    """A table of the sharpness measures (``value ± se``) of each named checkpoint's ``results``, a column per
    measure; None when none has any (the closing table of ``landscape analyze --metrics sharpness``)."""
    measures = {name: sharpness_measures(list(held.values())) for name, held in results.items()}
    labels = sharpness_labels(list(measures.values()))
    if not labels:
        return None
    cells = [[name, *(measure_cell(*held.get(label, (None, None))) for label in labels)]
             for name, held in measures.items()]
    return format_table(("checkpoint", *labels), cells, markdown=markdown)


def select_rows(rows: Sequence[FlatnessRow], *, last: bool = False,
                checkpoints: Optional[Sequence[str]] = None) -> list[FlatnessRow]:
    """The rows whose name matches one of the glob patterns ``checkpoints`` (all when None; a run's row is named
    "run"), then, with ``last``, each file's row of the largest step (its last row where no step is recorded);
    OptionError when nothing is left."""
    chosen = [row for row in rows if checkpoints is None
              or any(fnmatch.fnmatchcase(row.name, pattern) for pattern in checkpoints)]
    if last:
        latest: dict[str, FlatnessRow] = {}
        for row in chosen:
            held = latest.get(row.source)
            if held is None or (row.step if row.step is not None else math.inf) >= (
                    held.step if held.step is not None else -math.inf):
                latest[row.source] = row
        chosen = [row for row in chosen if latest.get(row.source) is row]
    if not chosen:
        names = ", ".join(sorted({row.name for row in rows})) or "none"
        raise OptionError(f"no checkpoint matches {option('checkpoints', '--checkpoint')} "
                          f"{', '.join(checkpoints or [])}; the files hold: {names}")
    return chosen


def compare(paths: Sequence[PathLike], *, markdown: bool = False, figure: Optional[PathLike] = None,
            say: Callable[[str], None] = print, last: bool = False,
            checkpoints: Optional[Sequence[str]] = None) -> list[FlatnessRow]:
    """The flatness rows of the results and run files in ``paths`` (those :func:`select_rows` keeps with ``last``
    and ``checkpoints``): their table goes to ``say`` (``markdown``: as a GitHub table), then, when ``figure`` is
    given, they are drawn as bar panels into ``figure``.png and .pdf and ``say`` gets the line naming the files
    written."""
    from landscape.plot.compare import plot_flatness
    from landscape.plot.style import save

    rows = select_rows(flatness_rows(paths), last=last, checkpoints=checkpoints)
    say(flatness_table(rows, markdown=markdown))
    if figure is not None:
        written = save(plot_flatness(rows, None), figure)
        say("figure: " + ", ".join(str(path) for path in written))
    return rows
