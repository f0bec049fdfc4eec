"""`landscape compare`: a flatness table and figure over results and run files (the work is
:func:`landscape.compare.compare`)."""

from __future__ import annotations

import argparse
from typing import Sequence

DEFAULT_FIGURE = "compare"

COMPARE_EPILOG = """\
examples:
  landscape compare results.h5                       # every analysed checkpoint of one file
  landscape compare sgd.h5 sam.h5 --markdown         # two training runs: their last curvature records
  landscape compare results.h5 run.h5 --figure figs/flatness   # writes figs/flatness.png and .pdf
  landscape compare a.h5 b.h5 --last                 # each file's checkpoint of the largest step

A results file (landscape analyze) gives a row per checkpoint: λmax, the trace ± its standard error and trace/n,
the largest Jacobian spectral norm, a column "value ± se" per sharpness measure stored (analyze --metrics
sharpness: worst- and average-case sharpness, adaptive or not, at their ρ; Fisher-Rao norm; relative flatness), and
the loss and accuracy on the analysed split, and on the test split when analyze recorded it (it does when the data
has one, e.g. digits). A line surface's file (surface --directions line) adds its loss barrier. A run file
(landscape train) gives a row for its last curvature record, with λmax·η/2 too (η: the run's learning rate; 1 at gradient descent's
edge of stability). Nothing is recomputed: "-" marks what a file did not record."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """`landscape compare FILE... [--markdown] [--figure PATH | --no-figure]`."""
    p = sub.add_parser(
        "compare",
        help="flatness (λmax, trace, sharpness measures, Jacobian norm, accuracy) of several checkpoints or runs: a "
        "table and a figure",
        description="Read results files (landscape analyze) and run files (landscape train), print one table row per "
        "analysed checkpoint and per run (its last curvature record), and draw the flatness measures side by side "
        "as bar panels (PNG and PDF).",
        epilog=COMPARE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="results or run files (HDF5), in the order of the rows")
    p.add_argument("--markdown", action="store_true", help="print the table as a GitHub markdown table")
    figure = p.add_mutually_exclusive_group()
    figure.add_argument("--figure", default=DEFAULT_FIGURE, metavar="PATH", help="the figure's path without "
                        f"suffix: PATH.png and PATH.pdf are written (default: {DEFAULT_FIGURE}, in the current "
                        "folder)")
    figure.add_argument("--no-figure", action="store_true", help="print the table only")
    p.add_argument("--last", action="store_true", help="one row per file: its checkpoint of the largest step (a run "
                   "file gives one row anyway)")
    p.add_argument("--checkpoint", dest="checkpoints", action="append", metavar="PATTERN", help="only checkpoints "
                   "whose name matches PATTERN (a glob such as 'minimum_*' or 'step_1000'; a run's row is named run); "
                   "repeat for several")


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Print the table and draw the figure (unless --no-figure); argv is unused (nothing records a command)."""
    from landscape.compare import compare

    compare(args.files, markdown=args.markdown, figure=None if args.no_figure else args.figure, last=args.last,
            checkpoints=args.checkpoints)
    return 0
