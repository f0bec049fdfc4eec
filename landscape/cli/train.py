"""`landscape train`: argument parsing for training with curvature tracking (the work is
:func:`landscape.train.train`)."""

from __future__ import annotations

import argparse
import json
from typing import Any, Optional, Sequence

from landscape.cli.options import DTYPES, add_precision_arguments, command_line
from landscape.distributed import Runtime, run_launched
from landscape.errors import OptionError
from landscape.optim.registry import HYPERPARAMETERS, OPTIMIZER_NAMES

TRAIN_EPILOG = """\
optimizer hyperparameters (--hparam NAME=VALUE, repeatable), with their defaults:
""" + "\n".join(f"  {name:9s} " + (", ".join(f"{k}={'lr' if v is None else v}" for k, v in hp.items()) or "(lr only)")
                for name, hp in HYPERPARAMETERS.items()) + """

examples:
  landscape train --model chebyshev --data chebyshev --loss squared --lr 0.2 --steps 5000 --track-every 100 -o eos.h5
  landscape train --model mlp --data digits --optimizer sam --hparam rho=0.05 --lr 0.1 --batch-size 128 \\
      --steps 3000 --track-every 50 --save-every 500 -o sam.h5
  landscape train ... -o sam.h5 --resume        # continue a killed run from its last checkpoint, exactly

The run file holds /run (step, loss, lr, grad_evals per step) and /run/curvature (lambda_max, eigenvalues, trace,
trace_stderr, train/test loss and accuracy, grad_norm, matvecs per record), appended and flushed as they come.
Checkpoints go to <output>_checkpoints/step_<N>.pt; `landscape analyze` reads them without --model when it is a
built-in model (name your own package.module:factory again with --model: a file alone never imports code).

Several processes: `torchrun --nproc-per-node N -m landscape train ...` trains data-parallel (each process takes its
part of every batch; gradients are averaged across processes, so the steps are those of one process) and tracks the
curvature over every process's shard of the data; rank 0 writes the run file and the checkpoints."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """`landscape train`: every option, with its default, in --help; the optimizers' hyperparameters below."""
    p = sub.add_parser(
        "train",
        help="train a model and record its curvature as it goes (progressive sharpening, edge of stability)",
        description="Train with any of the toolkit's optimizers (full-batch gradient descent by default) and, every "
        "--track-every steps, record λmax (Lanczos warm-started from the previous top eigenvector), the trace "
        "(Hutch++), train and test loss and accuracy, and the gradient norm into an HDF5 run file.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, metavar="SPEC", help="mlp, cnn, chebyshev, resnet18, gpt, or "
                   "package.module:factory")
    p.add_argument("--model-kwargs", metavar="JSON", help="keyword arguments for the model factory, as JSON")
    p.add_argument("--data", required=True, metavar="SPEC", help="digits, chebyshev, teacher, a .npz/.pt/.h5 file, "
                   "token data (.npy sequences, a .bin/.npy token stream with --seq-len) or package.module:function "
                   "(its train split trains, its test split, when there is one, is evaluated)")
    p.add_argument("--subset", type=int, metavar="N", help="train on a seeded random subset of N samples (token "
                   "sequences)")
    p.add_argument("--seq-len", type=int, metavar="T", help="tokens per sequence: cuts a token stream (.bin, 1-D "
                   ".npy) into non-overlapping windows of T tokens (required for a stream)")
    p.add_argument("--loss", metavar="SPEC", help="cross-entropy, mse, squared, next-token or "
                   "package.module:function (default: cross-entropy for integer labels, mse for real targets, "
                   "next-token for token data)")
    p.add_argument("--optimizer", default="sgd", choices=OPTIMIZER_NAMES, help="optimizer (default: sgd)")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate (default: 0.1)")
    p.add_argument("--hparam", action="append", default=[], metavar="NAME=VALUE",
                   help="an optimizer hyperparameter, e.g. rho=0.05 (see the list below)")
    p.add_argument("--schedule", default="constant", choices=("constant", "cosine", "linear"),
                   help="learning-rate schedule after warm-up (default: constant)")
    p.add_argument("--warmup", type=int, default=0, help="linear warm-up steps (default: 0)")
    p.add_argument("--steps", type=int, default=1000, help="training steps (default: 1000)")
    p.add_argument("--batch-size", type=int, metavar="N", help="mini-batch size (default: the whole training set, "
                   "i.e. full-batch gradient descent)")
    p.add_argument("--track-every", type=int, default=50, metavar="N", help="record curvature every N steps, and "
                   "at step 0; 0 turns tracking off (default: 50)")
    p.add_argument("--track-top-k", type=int, default=1, metavar="K", help="eigenvalues per record (default: 1)")
    p.add_argument("--track-tol", type=float, default=1e-4, help="Lanczos relative residual; λmax's error is about "
                   "its square over the spectral gap (default: 1e-4)")
    p.add_argument("--track-trace-matvecs", type=int, default=12, metavar="M", help="Hutch++ products per record "
                   "(its standard error is recorded too); 0 turns the trace off (default: 12)")
    p.add_argument("--curvature", default="hessian", choices=("hessian", "ggn", "fisher", "empirical-fisher"),
                   help="the matrix whose λmax and trace are recorded (default: hessian)")
    p.add_argument("--track-also", default="", metavar="NAMES", help="comma-separated other matrices whose λmax is "
                   "recorded too, as lambda_max_<name> (e.g. ggn)")
    p.add_argument("--track-jacobian", action="store_true", help="record the mean and max input-output Jacobian "
                   "norms over the training data (jacobian_mean, jacobian_max: spectral; jacobian_frobenius_mean)")
    p.add_argument("--compile", action="store_true", help="run the tracker's Hessian-vector products through "
                   "torch.compile (compiled once per run, on the first record)")
    p.add_argument("--save-every", type=int, default=0, metavar="N", help="checkpoint every N steps (default: only "
                   "at the end)")
    p.add_argument("--target-loss", type=float, help="stop once a record's train loss is at most this")
    p.add_argument("--target-accuracy", type=float, help="stop once a record's train accuracy is at least this")
    add_precision_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, the data order and every "
                   "random draw (default: 0)")
    p.add_argument("-o", "--output", default="run.h5", metavar="FILE", help="HDF5 run file (default: run.h5)")
    p.add_argument("--checkpoint-dir", metavar="DIR", help="where checkpoints go (default: <output>_checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint "
                   "(from step 0, replacing its records, when it stopped before its first checkpoint)")
    p.add_argument("--trust-checkpoint", action="store_true", help="with --resume: allow a checkpoint that needs "
                   "code to load (a pickle the safe weights-only loader refuses); only for files you trust "
                   "(landscape train's own checkpoints never need it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")


def parse_hparams(items: Sequence[str]) -> dict[str, Any]:
    """``["rho=0.05", "adaptive=true"]`` → ``{"rho": 0.05, "adaptive": True}``; values are parsed as JSON if they can
    be, else kept as strings."""
    parsed = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise OptionError(f"--hparam takes NAME=VALUE, got {item!r}")
        try:
            parsed[name] = json.loads(text.lower() if text.lower() in ("true", "false") else text)
        except json.JSONDecodeError:
            parsed[name] = text
    return parsed


def closing_line(step: int, steps: int, stop_reason: str, seconds: float) -> str:
    """How a run ended, e.g. ``stopped at step 400 of 400 in 12.3 s``, or with its reason when that is not the
    step count: ``stopped at step 120 of 500 (train loss 0.29 <= target 0.3) in 4.1 s``."""
    reason = "" if stop_reason == f"reached {steps} steps" else f" ({stop_reason})"
    return f"stopped at step {step} of {steps}{reason} in {seconds:.1f} s"


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Train in this process, or, launched by torchrun, data-parallel on every rank (rank 0 writes and prints)."""
    return run_launched(lambda device, runtime: _train(args, argv, device, runtime=runtime), args.device)


def _train(args: argparse.Namespace, argv: Sequence[str], device: Optional[str], *, runtime: Runtime) -> int:
    """One process's part: the settings the options give, :func:`landscape.train.train`, and how the run ended
    (printed by the writing process)."""
    from landscape.checkpoints import parse_model_kwargs
    from landscape.tracking import TrackerSettings
    from landscape.train import TrainSettings, train

    settings = TrainSettings(
        optimizer=args.optimizer, lr=args.lr, hyperparameters=parse_hparams(args.hparam), steps=args.steps,
        batch_size=args.batch_size, schedule=args.schedule, warmup=args.warmup, track_every=args.track_every,
        tracker=TrackerSettings(top_k=args.track_top_k, tol=args.track_tol, trace_matvecs=args.track_trace_matvecs,
                                curvature=args.curvature, jacobian=args.track_jacobian, compile=args.compile,
                                also_lambda_max=tuple(k.strip() for k in args.track_also.split(",") if k.strip())),
        save_every=args.save_every, target_loss=args.target_loss, target_accuracy=args.target_accuracy,
        seed=args.seed,
    )
    result = train(args.model, args.data, settings, output=args.output,
                   model_kwargs=parse_model_kwargs(args.model_kwargs), loss_spec=args.loss, subset=args.subset,
                   seq_len=args.seq_len,
                   checkpoint_dir=args.checkpoint_dir, dtype=DTYPES[args.dtype], device=device, resume=args.resume,
                   trust=args.trust_checkpoint, command=command_line(argv), progress=False if args.quiet else None,
                   runtime=runtime)
    if runtime.is_writer:
        print(closing_line(result.steps, args.steps, result.stop_reason, result.seconds))
        print(f"run: {args.output}\ncheckpoint: {result.checkpoint}")
    return 0
