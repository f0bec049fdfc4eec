"""`landscape info`: what a results or run file holds (the work is :func:`landscape.report.info`)."""

from __future__ import annotations

import argparse
from typing import Sequence


def add_parser(sub: argparse._SubParsersAction) -> None:
    """`landscape info FILE [--markdown]`."""
    p = sub.add_parser("info", help="print what a results file holds",
                       description="Print a results file's versions, and each checkpoint's provenance and results.")
    p.add_argument("file", metavar="FILE", help="an HDF5 file written by landscape")
    p.add_argument("--markdown", action="store_true", help="print the summary table as markdown")


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Print the file's description and results table; argv is unused (nothing is written)."""
    from landscape.report import info

    print(info(args.file, markdown=args.markdown))
    return 0
