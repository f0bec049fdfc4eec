"""Progress on long work: a tqdm bar in a terminal; plain lines in a log, where a terminal's bar would be lost (stderr
not a terminal: a batch job, a pipe), when the caller asks for them; silent otherwise.

Who asks: ``enabled=True``, or the command line, which runs its commands inside :func:`log_lines` so that
``landscape analyze ... 2> log.txt`` shows how far it got; a plain library call (``enabled=None``) prints nothing
outside a terminal, so that tests and notebooks stay quiet. ``enabled=False`` (``--quiet``) is silent everywhere.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Union

from tqdm.auto import tqdm

#: a progress line at every tenth of the work, or after this many seconds without one, whichever comes first; but
#: none within a second of the last, so that work of a few seconds logs a few lines, not ten
LINE_FRACTION, LINE_SECONDS, LINE_GAP = 0.1, 10.0, 1.0

_lines_outside_terminal = False  # set by log_lines(): what enabled=None means when stderr is not a terminal


@contextmanager
def log_lines() -> Iterator[None]:
    """Within it, ``enabled=None`` prints plain progress lines when stderr is not a terminal (the command line's
    default; a library call outside it stays silent there)."""
    global _lines_outside_terminal
    before, _lines_outside_terminal = _lines_outside_terminal, True
    try:
        yield
    finally:
        _lines_outside_terminal = before


class ProgressLines:
    """The part of tqdm's interface the toolkit uses (``update``, ``set_postfix``, ``close``, ``with``), writing
    ``desc: n/total unit (p%) t s`` to stderr at every ``fraction`` of ``total`` or after ``seconds`` without a line
    (only the latter when ``total`` is unknown), never within ``gap`` seconds of the last, and a final line with
    ``done`` (``stopped`` while an exception is raised) when closed."""

    def __init__(self, total: Optional[int], desc: str, unit: str = "matvec", *, fraction: float = LINE_FRACTION,
                 seconds: float = LINE_SECONDS, gap: float = LINE_GAP,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.fraction, self.seconds, self.gap, self.clock = fraction, seconds, gap, clock
        self.start = self.last = clock()
        self.next_mark = self._mark_after(0)
        self.postfix = ""
        self.closed = False

    def _mark_after(self, n: int) -> float:
        """The next count at a whole multiple of ``fraction`` of the total beyond ``n`` (never, without a total)."""
        if not self.total:
            return float("inf")
        step = self.total * self.fraction
        return (int(n // step) + 1) * step

    def line(self) -> str:
        """Where the work stands, e.g. ``lanczos top-5: 40/100 matvec (40%) 12.3 s, residual=1.2e-03``."""
        count = f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)" if self.total \
            else f"{self.n} {self.unit}"
        return f"{self.desc}: {count} {self.clock() - self.start:.1f} s{self.postfix}"

    def _write(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)
        self.last = self.clock()

    def update(self, n: Union[int, float] = 1) -> None:
        """Count ``n`` more units; a line when a tenth of the total is passed or the last line is ``seconds`` old, and
        the last is at least ``gap`` old (none at the total itself: :meth:`close` writes that)."""
        self.n += int(n)
        if self.total and self.n >= self.total:
            return
        waited = self.clock() - self.last
        if waited >= self.gap and (self.n >= self.next_mark or waited >= self.seconds):
            self.next_mark = self._mark_after(self.n)
            self._write(self.line())

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the time on the next line, as tqdm shows them after its bar."""
        self.postfix = ", " + ", ".join(f"{key}={value}" for key, value in values.items()) if values else ""

    def close(self, *, stopped: Optional[bool] = None) -> None:
        """The final line, once (none for no work at all); ``stopped``: default, whether an exception is being
        raised (a ``finally:`` that closes the bar)."""
        if self.closed:
            return
        self.closed = True
        if self.total == 0 and self.n == 0:
            return
        if stopped is None:
            stopped = sys.exc_info()[0] is not None
        self._write(f"{self.line()}, {'stopped' if stopped else 'done'}")

    def __enter__(self) -> "ProgressLines":
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        self.close(stopped=kind is not None)


def _notebook() -> bool:
    """Whether tqdm.auto chose its notebook widget (a Jupyter kernel, whose stderr is not a terminal)."""
    return any(cls.__module__ == "tqdm.notebook" for cls in tqdm.__mro__)


def progress_bar(total: Optional[int], desc: str, enabled: Optional[bool] = None,
                 unit: str = "matvec") -> Union[tqdm, ProgressLines]:
    """A tqdm bar when stderr is a terminal; otherwise :class:`ProgressLines` when ``enabled=True`` or, for
    ``enabled=None``, inside :func:`log_lines` (the command line), else a disabled bar. ``enabled=False``: silent."""
    terminal = sys.stderr.isatty()
    if enabled is False or (enabled is None and not terminal and not _lines_outside_terminal):
        return tqdm(total=total, desc=desc, unit=unit, disable=True)
    if terminal or (enabled and _notebook()):
        return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
    return ProgressLines(total, desc, unit)
