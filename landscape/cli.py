"""The ``landscape`` command: thin argument parsing over the same functions a notebook calls."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import torch

from landscape import __version__
from landscape.errors import LandscapeError

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="landscape",
        description="Loss-landscape analysis for PyTorch: Hessian eigenvalues, trace and spectral density.",
    )
    parser.add_argument("--version", action="version", version=f"landscape {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="train a small MLP on scikit-learn's digits and print its Hessian's curvature",
        description="Train the digits MLP (64-128-128-10, tanh, 200 full-batch Adam steps), then print its top "
        "Hessian eigenvalues (Lanczos), smallest eigenvalue, trace (Krylov-deflated Hutchinson) and a "
        "summary of its spectral density (stochastic Lanczos quadrature).",
    )
    demo.add_argument("--top-k", type=int, default=5, help="number of top eigenvalues (default: 5)")
    demo.add_argument("--trace-matvecs", type=int, default=99, help="HVP budget of the trace (default: 99)")
    demo.add_argument("--probes", type=int, default=10, help="SLQ probe vectors (default: 10)")
    demo.add_argument("--steps", type=int, default=80, help="Lanczos steps per SLQ probe (default: 80)")
    demo.add_argument("--train-steps", type=int, default=200, help="full-batch Adam steps (default: 200)")
    demo.add_argument("--seed", type=int, default=0, help="seed for training and every random probe (default: 0)")
    demo.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="precision of the curvature")
    demo.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def run_demo_command(args: argparse.Namespace) -> int:
    from landscape.demo import format_report, run_demo

    for name in ("top_k", "trace_matvecs", "probes", "steps", "train_steps"):
        if getattr(args, name) < 1:
            raise LandscapeError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    report = run_demo(
        top_k=args.top_k,
        trace_matvecs=args.trace_matvecs,
        num_probes=args.probes,
        num_steps=args.steps,
        train_steps=args.train_steps,
        seed=args.seed,
        dtype=DTYPES[args.dtype],
        device=args.device,
        progress=False if args.quiet else None,
    )
    print(format_report(report))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return run_demo_command(args)
    except LandscapeError as err:
        print(f"landscape {args.command}: error: {err}", file=sys.stderr)
        return 2
