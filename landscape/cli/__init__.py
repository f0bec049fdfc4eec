"""The ``landscape`` command: a dispatch table of commands, each a module that parses its options and calls one job
function, the same a notebook calls (:mod:`landscape.cli.options` holds the options several commands share)."""

from __future__ import annotations

import argparse
import re
import sys
from typing import NoReturn, Optional, Sequence

from landscape._version import __version__
from landscape.cli import analyze, compare, demo, info, plot, surface, train
from landscape.cli.options import join_grid_values
from landscape.devices import check_device
from landscape.errors import LandscapeError, command_line_names

#: every command and its module, in the order of ``landscape --help``; each module has ``add_parser(sub)`` and
#: ``run(args, argv) -> int``
COMMANDS = {"analyze": analyze, "train": train, "surface": surface, "compare": compare, "plot": plot, "info": info,
            "demo": demo}

#: argparse's messages for a bad option value: an invalid choice, or a value its type (int, float) cannot parse (a
#: misspelt COMMAND, a positional, keeps the usage message, as unknown options do)
VALUE_ERROR = re.compile(r"^argument -[^:]*: invalid (choice: |[\w.]+ value: )")


class Parser(argparse.ArgumentParser):
    """An argument parser that reports a bad option value in one line rather than the usage, which helps little
    there (unknown options and missing arguments keep argparse's usage message)."""

    def error(self, message: str) -> NoReturn:
        """One line and exit code 2 for a bad value, e.g. ``landscape analyze: error: argument --dtype: invalid
        choice: 'float16' (choose from float32, float64); see landscape analyze --help``."""
        if VALUE_ERROR.match(message):
            message = re.sub(r"\(choose from (.*)\)$", lambda m: "(choose from " + m.group(1).replace("'", "") + ")",
                             message)
            self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    """The ``landscape`` parser with every command of :data:`COMMANDS`."""
    parser = Parser(
        prog="landscape",
        description="Loss-landscape analysis for PyTorch: Hessian eigenvalues, trace and spectral density of "
        "checkpoints, and training with flatness-seeking optimizers and curvature tracking.",
    )
    parser.add_argument("--version", action="version", version=f"landscape {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``landscape COMMAND ...`` (``argv``: default ``sys.argv[1:]``); the exit code: 0, or 2 with the help (no
    command) or one line on stderr (a toolkit error)."""
    argv = join_grid_values(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        with command_line_names():  # the library's messages name options by their flags
            if getattr(args, "device", None) is not None:  # every command that takes --device: checked before any work
                args.device = check_device(args.device)
            return COMMANDS[args.command].run(args, argv)
    except LandscapeError as err:
        print(f"landscape {args.command}: error: {err}", file=sys.stderr)
        return 2
