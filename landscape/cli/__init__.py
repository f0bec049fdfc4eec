"""The ``landscape`` command: a dispatch table of commands, each a module that parses its options and calls one job
function, the same a notebook calls (:mod:`landscape.cli.options` holds the options several commands share)."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from typing import Any, Mapping, NoReturn, Optional, Sequence

import torch

from landscape._version import __version__
from landscape.cli import analyze, compare, demo, info, plot, surface, train
from landscape.cli.options import add_threads_argument, choose_threads, join_grid_values
from landscape.devices import check_device
from landscape.errors import LandscapeError, command_line_names
from landscape.progress import log_lines

#: every command and its module, in the order of ``landscape --help``; each module has ``add_parser(sub)`` and
#: ``run(args, argv) -> int``
COMMANDS = {"analyze": analyze, "train": train, "surface": surface, "compare": compare, "plot": plot, "info": info,
            "demo": demo}

#: other names a command answers to, shown beside it in ``landscape --help``
ALIASES = {"analyze": ("analyse",)}

#: the commands that compute with torch, and so take --threads
THREADED = ("analyze", "train", "surface", "demo")

#: argparse's messages for a bad option value: an invalid choice, or a value its type (int, float) cannot parse (a
#: misspelt COMMAND, a positional, gets the usage and the nearest command, as unknown options get the nearest option)
VALUE_ERROR = re.compile(r"^argument -[^:]*: invalid (choice: |[\w.]+ value: )")

#: argparse's message for a command that is not one
INVALID_COMMAND = re.compile(r"^argument COMMAND: invalid choice: '(.*?)'")

#: a token that is a negative number (a value), not an option
NEGATIVE_NUMBER = re.compile(r"^-\.?\d")


def unknown_option(parser: argparse.ArgumentParser, tokens: Sequence[str]) -> Optional[str]:
    """The first of ``tokens`` that looks like an option ``parser`` does not have (its name, without ``=value``),
    or None; an unambiguous prefix of a long option, as argparse takes it, and a short option with its value
    attached (``-ofile``) are known. A parser with commands stops at the first positional (the command's own
    arguments follow)."""
    known = [s for action in parser._actions for s in action.option_strings]
    commands = any(isinstance(action, argparse._SubParsersAction) for action in parser._actions)
    for token in tokens:
        if token == "--":
            return None
        if not token.startswith("-") or token == "-" or NEGATIVE_NUMBER.match(token):
            if commands:
                return None
            continue
        name = token.split("=", 1)[0] if token.startswith("--") else token
        if name in known or token[:2] in known and not token.startswith("--"):
            continue
        if token.startswith("--") and any(s.startswith(name) for s in known):
            continue
        return name
    return None


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are short and name the fix: a bad option value in one line; a misspelt
    option or command with the nearest one (``did you mean --top-k?``); every other error after a one-line usage
    (--help shows every option)."""

    #: the arguments of the latest parse: a misspelt option among them is reported before what it caused
    given: Sequence[str] = ()

    def parse_known_args(self, args: Optional[Sequence[str]] = None,  # type: ignore[override]
                         namespace: Optional[argparse.Namespace] = None) -> tuple[argparse.Namespace, list[str]]:
        """As argparse, but an argument nobody takes is an error here, in the parser whose arguments it is among
        (a command's, so its usage and options are the ones shown), not later in ``landscape``'s."""
        self.given = list(sys.argv[1:] if args is None else args)
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def format_usage(self) -> str:
        """The usage of an error: the command and what it requires, e.g. ``usage: landscape analyze [options]
        --data SPEC CHECKPOINT [CHECKPOINT ...]``."""
        formatter = self._get_formatter()
        formatter.add_usage(None, [a for a in self._actions if a.required or not a.option_strings], [], prefix="")
        required = formatter.format_help().strip()[len(self.prog):]
        return f"usage: {self.prog} [options]{required}\n"

    def error(self, message: str) -> NoReturn:
        """Exit code 2 and one line for a bad value, e.g. ``landscape analyze: error: argument --dtype: invalid
        choice: 'float16' (choose from float32, float64); see landscape analyze --help``; else the usage and a line:
        a misspelt option (``unrecognized arguments: --topk 3; did you mean --top-k?``), even when it left a required
        option out, or a misspelt command (``unknown command 'anlyze'; did you mean analyze?``)."""
        if VALUE_ERROR.match(message):
            message = re.sub(r"\(choose from (.*)\)$", lambda m: "(choose from " + m.group(1).replace("'", "") + ")",
                             message)
            self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")
        command = INVALID_COMMAND.match(message)
        unknown = None if command else unknown_option(self, self.given)
        if command:
            names = {**{name: name for name in COMMANDS},
                     **{alias: name for name, aliases in ALIASES.items() for alias in aliases}}
            message = f"unknown command {command.group(1)!r}{nearest(command.group(1), names)} (commands: " \
                      f"{', '.join(COMMANDS)})"
        elif unknown is not None:
            options = {s: s for action in self._actions for s in action.option_strings
                       if s.startswith("--") or not unknown.startswith("--")}
            listed = message.partition("unrecognized arguments: ")[2] or unknown  # else it left a required one out
            message = f"unrecognized arguments: {listed}{nearest(unknown, options) or f'; see {self.prog} --help'}"
        self.exit(2, f"{self.format_usage()}{self.prog}: error: {message}\n")


def nearest(name: str, candidates: Mapping[str, str]) -> str:
    """``"; did you mean X?"``, X what ``candidates`` shows for the one closest to a misspelt ``name`` (difflib; an
    option is compared without its leading dashes, which every option shares), or ``""``."""
    match = difflib.get_close_matches(name.lstrip("-"), [c.lstrip("-") for c in candidates], n=1, cutoff=0.6)
    return f"; did you mean {next(v for c, v in candidates.items() if c.lstrip('-') == match[0])}?" if match else ""


class Commands(argparse._SubParsersAction):
    """The commands: each under its name and its :data:`ALIASES`; ``args.command`` is always the name (a key of
    :data:`COMMANDS`), whichever was typed."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        """The command's parser, answering to its aliases too."""
        kwargs.setdefault("aliases", ALIASES.get(name, ()))
        return super().add_parser(name, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        """Parse the command's arguments under its name."""
        name = next((n for n, aliases in ALIASES.items() if values[0] in aliases), values[0])
        super().__call__(parser, namespace, [name, *values[1:]], option_string)


def build_parser() -> argparse.ArgumentParser:
    """The ``landscape`` parser with every command of :data:`COMMANDS`."""
    parser = Parser(
        prog="landscape",
        description="Loss-landscape analysis for PyTorch: Hessian eigenvalues, trace and spectral density of "
        "checkpoints, and training with flatness-seeking optimizers and curvature tracking.",
    )
    parser.add_argument("--version", action="version", version=f"landscape {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", action=Commands)
    for name, module in COMMANDS.items():
        module.add_parser(sub)
        if name in THREADED:
            add_threads_argument(sub.choices[name])
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``landscape COMMAND ...`` (``argv``: default ``sys.argv[1:]``); the exit code: 0, or 2 with the help (no
    command) or one line on stderr (a toolkit error).

    Progress shows as a bar in a terminal and as plain lines when stderr is a file or a pipe (``--quiet``: none);
    a computing command runs on :func:`~landscape.cli.options.choose_threads` threads (torch's count is restored
    afterwards, for a caller in the same process).
    """
    argv = join_grid_values(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    threads = torch.get_num_threads()
    try:
        with command_line_names(), log_lines():  # messages name options by their flags; progress lines in a log
            if args.command in THREADED:
                torch.set_num_threads(choose_threads(args.threads))
            if getattr(args, "device", None) is not None:  # every command that takes --device: checked before any work
                args.device = check_device(args.device)
            return COMMANDS[args.command].run(args, argv)
    except LandscapeError as err:
        print(f"landscape {args.command}: error: {err}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)
