"""The ``landscape`` command: thin argument parsing over the same functions a notebook calls."""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from typing import NoReturn, Optional, Sequence

from landscape import __version__, cli_compare, cli_plot, cli_surface, cli_train
from landscape.analysis import CURVATURES
from landscape.cli_inputs import add_input_arguments, load_inputs
from landscape.devices import check_device
from landscape.errors import LandscapeError
from landscape.linalg.trace import METHODS as TRACE_METHODS

DTYPES = cli_train.DTYPES


ANALYZE_EXAMPLE = """\
examples:
  landscape analyze model.pt --model mlp --data digits
  landscape analyze runs/ckpts/ --model mypkg.nets:resnet18 --model-kwargs '{"num_classes": 10}' \\
      --data train.npz --batch-size 512 --metrics eigs,trace --top-k 10 --dtype float64 -o results.h5
  landscape analyze "ckpt_*.pt" --model mlp --data digits --per-layer -o results.h5 --resume

CHECKPOINT may be a file, a folder (every checkpoint file in it) or a quoted glob; several are analysed in order of
their training step. State dicts need --model; checkpoints written by `landscape train` of a built-in model carry
their architecture. Nothing in a file runs code unless --trust-checkpoint: TorchScript files and torch.export programs
(.pt2) need it, and so do pickled objects and a model factory a checkpoint names instead of --model."""


def add_analyze_parser(sub: argparse._SubParsersAction) -> None:
    """`landscape analyze`: every option, with its default, in --help."""
    p = sub.add_parser(
        "analyze",
        help="Hessian eigenvalues, trace and spectral density of saved checkpoints, into an HDF5 file",
        description="Load each checkpoint, compute the Hessian of the mean loss over the data (matrix-free), and add "
        "its top eigenvalues (Lanczos), trace (Krylov-deflated Hutchinson) and spectral density (stochastic Lanczos "
        "quadrature) to an HDF5 results file, one group per checkpoint. Prints a summary table at the end.",
        epilog=ANALYZE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="checkpoint files, folders or globs")
    add_input_arguments(p, exact="the Hessian")
    p.add_argument("--metrics", default="eigs,trace,density", help="comma-separated subset of eigs,trace,density,"
                   "jacobian (default: eigs,trace,density); jacobian: per-sample input-output Jacobian norms and, for "
                   "plain feed-forward nets, the product of the layers' spectral norms (a Lipschitz upper bound)")
    p.add_argument("--curvature", default="hessian", choices=CURVATURES, help="the matrix whose eigenvalues, trace "
                   "and density are computed: the loss Hessian, the generalized Gauss-Newton matrix, the Fisher "
                   "(labels sampled from the model) or the empirical Fisher (the data's labels) (default: hessian)")
    p.add_argument("--jacobian-outputs", default="logits", choices=("logits", "probabilities"),
                   help="differentiate the logits or the softmax probabilities (default: logits)")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="number of top eigenvalues (default: 5)")
    p.add_argument("--tol", type=float, default=1e-6, help="relative residual at which Lanczos stops (default: 1e-6)")
    p.add_argument("--trace-matvecs", type=int, default=99, metavar="M", help="Hessian-vector products for the "
                   "trace (default: 99)")
    p.add_argument("--trace-method", default="krylov", choices=TRACE_METHODS, help="trace estimator (default: "
                   "krylov)")
    p.add_argument("--density-probes", type=int, default=10, metavar="P", help="SLQ probe vectors (default: 10)")
    p.add_argument("--density-steps", type=int, default=80, metavar="S", help="Lanczos steps per SLQ probe "
                   "(default: 80)")
    p.add_argument("--per-layer", action="store_true", help="repeat the metrics for each module's parameters")
    p.add_argument("--save-vectors", action="store_true", help="store the top eigenvectors too (k × parameters)")
    p.add_argument("--compile", action="store_true", help="run the Hessian-vector product through torch.compile "
                   "(forward-over-reverse): the first products pay seconds to a minute of compilation; worth it for "
                   "large models the built-in layerwise path does not cover, on GPU above all")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="precision of the curvature "
                   "(default: float32)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed for every random probe and --subset (default: 0)")
    p.add_argument("-o", "--output", default="results.h5", metavar="FILE", help="HDF5 results file; created, or "
                   "added to (default: results.h5)")
    p.add_argument("--resume", action="store_true", help="skip checkpoints whose results the output already holds")
    p.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")


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
    parser = Parser(
        prog="landscape",
        description="Loss-landscape analysis for PyTorch: Hessian eigenvalues, trace and spectral density of "
        "checkpoints, and training with flatness-seeking optimizers and curvature tracking.",
    )
    parser.add_argument("--version", action="version", version=f"landscape {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_analyze_parser(sub)
    cli_train.add_parser(sub)
    cli_surface.add_parser(sub)
    cli_compare.add_parser(sub)
    cli_plot.add_parser(sub)
    info = sub.add_parser("info", help="print what a results file holds",
                          description="Print a results file's versions, and each checkpoint's provenance and results.")
    info.add_argument("file", metavar="FILE", help="an HDF5 file written by landscape")
    info.add_argument("--markdown", action="store_true", help="print the summary table as markdown")
    demo = sub.add_parser(
        "demo",
        help="the whole toolkit in about a minute: train, track, analyse, compare and draw on digits",
        description="Train the digits MLP (64-128-128-10, tanh) from one initialisation with SGD, SAM and NSO while "
        "tracking its curvature; analyse the three minima (top eigenvalues, trace, spectral density, Jacobian "
        "norms, a 2-D filter-normalized loss surface through each); compare them; write the HDF5 files and every "
        "figure kind into --out; print the comparison table.",
    )
    demo.add_argument("--out", metavar="DIR", help="output folder (default: a new landscape-demo folder here)")
    demo.add_argument("--steps", type=int, default=1500, help="training steps per optimizer (default: 1500)")
    demo.add_argument("--track-every", type=int, default=100, help="curvature record every N steps (default: 100)")
    demo.add_argument("--grid", default="-1:1:21", help="surface grid per axis, start:stop:points (default: "
                      "-1:1:21)")
    demo.add_argument("--density-steps", type=int, default=60, help="Lanczos steps per SLQ probe (default: 60)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the initialisation and every draw (default: 0)")
    demo.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="precision (default: float32)")
    demo.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def run_demo_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from landscape.demo import DemoSettings, run_demo

    for name in ("steps", "track_every", "density_steps"):
        if getattr(args, name) < 1:
            raise LandscapeError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    settings = DemoSettings(steps=args.steps, track_every=args.track_every, grid=args.grid,
                            density_steps=args.density_steps, seed=args.seed, dtype=DTYPES[args.dtype],
                            device=args.device)
    table, _ = run_demo(Path(args.out) if args.out else None, settings, progress=False if args.quiet else None,
                        say=lambda line: print(line, file=sys.stderr))
    print(table)
    return 0


def run_analyze_command(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Analyse in this process, or, launched by torchrun, over every rank's shard (rank 0 writes and prints)."""
    from landscape.operators.distributed import run_launched

    return run_launched(lambda device, distributed: _analyze(args, argv, device, distributed=distributed),
                        args.device)


def _analyze(args: argparse.Namespace, argv: Sequence[str], device: Optional[str], *, distributed: bool) -> int:
    from landscape.analysis import AnalysisSettings, analyze
    from landscape.operators.distributed import is_writer
    from landscape.report import results_table

    settings = AnalysisSettings(
        metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()),
        top_k=args.top_k, tol=args.tol, trace_matvecs=args.trace_matvecs, trace_method=args.trace_method,
        density_probes=args.density_probes, density_steps=args.density_steps, per_layer=args.per_layer,
        dtype=DTYPES[args.dtype], device=device, seed=args.seed, save_vectors=args.save_vectors,
        curvature=args.curvature, jacobian_outputs=args.jacobian_outputs, compile=args.compile,
    )
    model_kwargs, data, loss = load_inputs(args)
    writer = not distributed or is_writer()
    say = None if args.quiet or not writer else (lambda line: print(line, file=sys.stderr))
    summaries = analyze(
        args.checkpoints, data=data, loss=loss, output=args.output, settings=settings, model_spec=args.model,
        model_kwargs=model_kwargs, trust=args.trust_checkpoint, resume=args.resume,
        command=" ".join(shlex.quote(a) for a in ["landscape", *argv]), progress=False if args.quiet else None,
        report=say, note=(lambda line: print(line, file=sys.stderr)) if writer else None, distributed=distributed,
    )
    if writer:
        if summaries:
            print(results_table(args.output, [s.name for s in summaries]))
        print(f"results: {args.output}")
    return 0


def run_info_command(args: argparse.Namespace) -> int:
    from landscape import store
    from landscape.report import describe, results_table

    print(describe(args.file))
    if store.read_results(args.file):
        print()
        print(results_table(args.file, markdown=args.markdown))
    return 0


GRID_VALUE = re.compile(r"^-\.?\d[^\s]*:")  # a grid value that starts with a minus, e.g. -1:1:51


def join_grid_values(argv: Sequence[str]) -> list[str]:
    """``--grid -1:1:51`` as ``--grid=-1:1:51``: argparse would read a value starting with "-" as an option."""
    joined: list[str] = []
    for token in argv:
        if joined and joined[-1] in ("--grid", "--grid-y") and GRID_VALUE.match(token):
            joined[-1] = f"{joined[-1]}={token}"
        else:
            joined.append(token)
    return joined


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = join_grid_values(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if getattr(args, "device", None) is not None:  # every command that takes --device: checked before any work
            args.device = check_device(args.device)
        if args.command == "analyze":
            return run_analyze_command(args, argv)
        commands = {"train": cli_train, "surface": cli_surface, "compare": cli_compare, "plot": cli_plot}
        if args.command in commands:
            return commands[args.command].run(args, argv)
        if args.command == "info":
            return run_info_command(args)
        return run_demo_command(args)
    except LandscapeError as err:
        print(f"landscape {args.command}: error: {err}", file=sys.stderr)
        return 2
