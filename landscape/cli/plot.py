"""`landscape plot`: paper figures (PNG and PDF) from the toolkit's HDF5 files; the drawing is in :mod:`landscape.plot`.

The plotting modules are imported only when a figure is drawn, so ``landscape --help`` does not load matplotlib.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from landscape.errors import OptionError, StoreError


@dataclass(frozen=True)
class Kind:
    """One figure kind: the function that draws it, what it reads, how many files it takes, the options it uses."""

    function: str  # "module:function" under landscape.plot
    reads: str
    single: bool  # exactly one file (else one or more)
    options: tuple[str, ...]  # of checkpoint, labels, view


KINDS = {
    "spectrum": Kind("spectrum:plot_spectrum", "results files with density", False, ("checkpoint", "labels")),
    "sharpening": Kind("sharpening:plot_sharpening", "run files", False, ("labels",)),
    "curvature": Kind("curvature:plot_curvature", "run files", False, ("labels",)),
    "surface": Kind("surface:plot_surface", "one results file with a surface", True, ("checkpoint", "view")),
    "compare": Kind("compare:plot_compare", "results and run files", False, ()),
    "sam": Kind("sam:plot_sam", "run files", False, ("labels",)),
    "peers": Kind("peers:plot_peers", "benchmark files from scripts/bench_peers.py", False, ()),
    "blocks": Kind("blocks:plot_blocks", "one results file analysed with --per-layer and density", True,
                   ("checkpoint",)),
}
VIEWS = ("auto", "1d", "contour", "3d")

PLOT_EPILOG = """\
kinds (FILE is an HDF5 file written by landscape train (a run file) or landscape analyze (a results file)):
  spectrum    the Hessian's spectral density on a log scale, top eigenvalues marked; results files with density
              (--checkpoint, repeatable, picks checkpoints; default: up to 5 spread over training, or with
              several files the minima of each, i.e. its checkpoints at its last step, overlaid)
  sharpening  λmax against the step with 2/η, and the training loss; run files
  curvature   λmax of the Hessian and GGN, the input-output Jacobian norms and the trace; run files trained with
              --track-also ggn --track-jacobian
  surface     the loss surface around a checkpoint (--view); one results file with a surface
  compare     flatness measures of several checkpoints and runs side by side, as bars; results and run files
  sam         the iterate along the top Hessian eigenvector (SAM's bouncing) and λmax; run files
  peers       error against wall time of landscape and PyHessian, hessian-eigenthings, curvlinops, one panel per
              task; benchmark files from scripts/bench_peers.py
  blocks      the spectral density of each parameter block (embedding, attention query/key/value/output, MLP,
              norm, head) side by side, λmax marked, coloured by kind; one results file analysed with --per-layer
              --metrics eigs,density (--checkpoint picks one; default: the last)
Without --kind it is guessed from the first FILE: a run file gives sharpening, a results file with a surface gives
surface, one with a spectral density gives spectrum, a benchmark file (with a /peers group) gives peers.

examples:
  landscape plot results.h5 -o figures/spectrum                  # --kind spectrum, guessed
  landscape plot results.h5 --kind spectrum --checkpoint step_0 --checkpoint step_5000
  landscape plot sgd_results.h5 sam_results.h5 --kind spectrum -o figures/minima   # one minimum per file
  landscape plot gd_0.01.h5 gd_0.02.h5 --kind sharpening --labels "η = 0.01" "η = 0.02" -o figures/eos
  landscape plot sgd.h5 sam.h5 --kind sam -o figures/sam
  landscape plot results.h5 --kind surface --view contour
  landscape plot results.h5 --kind blocks -o figures/blocks"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """`landscape plot FILE... [--kind KIND] [-o OUTPUT]` and the options of some kinds."""
    p = sub.add_parser(
        "plot",
        help="draw a paper figure (PNG and PDF) from run and results files",
        description="Draw one figure from the HDF5 files that landscape train and landscape analyze wrote, sized for "
        "a paper column and saved as OUTPUT.png and OUTPUT.pdf. Nothing is recomputed: a figure needs the "
        "records it draws, and the error names the option that makes them.",
        epilog=PLOT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="run or results files (surface and blocks take one)")
    p.add_argument("--kind", metavar="KIND", help=f"{', '.join(KINDS)} (default: guessed from the first FILE: "
                   "run file → sharpening; results file → surface if it has one, else spectrum)")
    p.add_argument("-o", "--output", metavar="OUTPUT", help="figure path without suffix; OUTPUT.png and OUTPUT.pdf "
                   "are written (default: <first FILE's stem>_<kind> in the current folder)")
    p.add_argument("--checkpoint", action="append", metavar="NAME", help="checkpoint of the results file; "
                   "spectrum: repeat for several (default: up to 5 spread over training); surface: the one to draw "
                   "(default: left to the surface figure); blocks: the one to draw (default: the last)")
    p.add_argument("--labels", nargs="+", metavar="LABEL", help="legend labels, one per FILE (spectrum: one per "
                   "line drawn) (default: the optimizer from the files' settings; spectrum: step N, or the file's "
                   "name for several files)")
    p.add_argument("--view", default="auto", metavar="VIEW", help=f"surface only: {', '.join(VIEWS)} (default: auto, "
                   "1d for a curve, contour and 3d side by side for a plane)")
    p.add_argument("--format", default="figure", choices=("figure", "html"), help="figure: OUTPUT.png and OUTPUT.pdf "
                   "(default); html: one interactive page OUTPUT.html of one results file, plotly.js inside (opens "
                   "offline): the 3-D surface with contours beneath and the path or barrier, the spectrum with the "
                   "top eigenvalues, whichever it holds (--checkpoint picks one; needs pip install \"landscape[html]\")")


def guess_kind(path: Path) -> str:
    """sharpening for a run file; surface or spectrum for a results file holding one (surface first); peers for a
    benchmark file of scripts/bench_peers.py."""
    from landscape import store

    def kind_in(handle: Any) -> Optional[str]:
        if "peers" in handle:
            return "peers"
        if "run" in handle:
            return "sharpening"
        groups = list(handle.get("checkpoints", {}).values())
        return next((kind for metric, kind in (("surface", "surface"), ("density", "spectrum"))
                     if any(_holds(group, metric) for group in groups)), None)

    kind = store.read_file(path, kind_in)  # retried while a training run appends to the file
    if kind is not None:
        return kind
    raise StoreError(f"cannot guess the figure for {path}: it is neither a run file nor a results file with a "
                     f"spectral density or a surface; choose one with --kind ({', '.join(KINDS)})")


def _holds(group: Any, metric: str) -> bool:
    """Whether a checkpoint group has a result named ``metric`` (or whose result type names it)."""
    return any(name == metric or metric in str(node.attrs.get("result_type", "")).lower()
               for name, node in group.items())


def _check_files(files: Sequence[str]) -> list[Path]:
    """The files as paths, each an existing file."""
    paths = [Path(f) for f in files]
    for path in paths:
        if not path.is_file():
            raise StoreError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    return paths


def _check_options(kind: str, args: argparse.Namespace, paths: list[Path]) -> None:
    """Refuse a wrong number of files, and options the kind does not use (rather than ignoring them)."""
    spec = KINDS[kind]
    if spec.single and len(paths) != 1:
        raise OptionError(f"--kind {kind} takes one file ({spec.reads}), got {len(paths)}")
    given = {"checkpoint": args.checkpoint is not None, "labels": args.labels is not None,
             "view": args.view != "auto"}
    for option, used in given.items():
        if used and option not in spec.options:
            raise OptionError(f"--{option} does not apply to --kind {kind}")
    if args.view not in VIEWS:
        raise OptionError(f"unknown --view {args.view!r}; choose from {', '.join(VIEWS)}")
    if kind in ("surface", "blocks") and args.checkpoint is not None and len(args.checkpoint) != 1:
        raise OptionError(f"--kind {kind} draws one checkpoint, got --checkpoint {len(args.checkpoint)} times")


def draw(kind: str, paths: list[Path], output: Path, args: argparse.Namespace) -> None:
    """Call the kind's plotting function (imported now: surface and compare live in their own modules)."""
    module, _, name = KINDS[kind].function.partition(":")
    function = getattr(importlib.import_module(f"landscape.plot.{module}"), name)
    if kind == "spectrum":
        function(paths, output, checkpoints=args.checkpoint, labels=args.labels)
    elif kind == "surface":
        function(paths[0], output, checkpoint=args.checkpoint[0] if args.checkpoint else None, view=args.view)
    elif kind == "blocks":
        function(paths[0], output, checkpoint=args.checkpoint[0] if args.checkpoint else None)
    elif kind in ("compare", "peers"):
        function(paths, output)
    else:
        function(paths, output, labels=args.labels)


def _written(output: Path) -> list[Path]:
    """The files :func:`landscape.plot.style.save` writes for ``output`` (a .png or .pdf suffix is dropped)."""
    base = output.with_suffix("") if output.suffix.lower() in (".png", ".pdf") else output
    return [base.with_name(f"{base.name}.{fmt}") for fmt in ("png", "pdf")]


def write_page(args: argparse.Namespace, paths: list[Path]) -> Path:
    """--format html: the interactive page of one results file (its surface and spectrum); options it has no use
    for are refused."""
    from landscape.plot.html import write_html

    if len(paths) != 1:
        raise OptionError(f"--format html takes one results file, got {len(paths)}")
    unused = [flag for flag, given in (("--kind", args.kind), ("--labels", args.labels),
                                       ("--view", args.view != "auto")) if given]
    if unused:
        raise OptionError(f"{', '.join(unused)} does not apply to --format html (the page draws what the file holds)")
    if args.checkpoint is not None and len(args.checkpoint) != 1:
        raise OptionError(f"--format html draws one checkpoint, got --checkpoint {len(args.checkpoint)} times")
    return write_html(paths[0], Path(args.output) if args.output else Path(f"{paths[0].stem}.html"),
                      checkpoint=args.checkpoint[0] if args.checkpoint else None)


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Draw the figure and print the paths written; argv is unused (the figure files record no command line)."""
    paths = _check_files(args.files)
    if args.format == "html":
        print(write_page(args, paths))
        return 0
    kind = args.kind if args.kind is not None else guess_kind(paths[0])
    if kind not in KINDS:
        raise OptionError(f"unknown --kind {kind!r}; choose from {', '.join(KINDS)}")
    _check_options(kind, args, paths)
    output = Path(args.output) if args.output else Path(f"{paths[0].stem}_{kind}")
    draw(kind, paths, output, args)
    for path in _written(output):
        print(path)
    return 0
