"""The options several commands share: the model, the data and the loss of the commands that load checkpoints,
--dtype and --device, --threads, grid values that start with a minus, and the command line recorded in the files
written."""

from __future__ import annotations

import argparse
import os
import re
import shlex
from typing import Any, Optional, Sequence

import torch

from landscape.data import LoadedData
from landscape.errors import OptionError

#: the precisions --dtype offers
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def add_input_arguments(p: argparse.ArgumentParser, *, exact: str) -> None:
    """--model, --model-kwargs, --data, --split, --subset, --batch-size, --seq-len, --loss and --trust-checkpoint.

    ``exact`` names what is exact under any batching (e.g. "the Hessian"), for --batch-size's help.
    """
    p.add_argument("--model", metavar="SPEC", help="architecture for state dicts: a built-in name (mlp, cnn, "
                   "chebyshev, resnet18, gpt) or package.module:factory (default: what the checkpoint records; a "
                   "save_pretrained folder's config.json)")
    p.add_argument("--model-kwargs", metavar="JSON", help="keyword arguments for the model factory, as a JSON "
                   "object, e.g. '{\"sizes\": [64, 128, 10]}' (default: what the checkpoint records, else none)")
    p.add_argument("--data", required=True, metavar="SPEC", help="a built-in data set (digits, chebyshev, teacher), "
                   "a .npz/.pt/.h5 file with X and y, token data (integer sequences (N, T) in .npy, or X in a .npz "
                   "without y; a token stream: .bin of uint16 tokens or a 1-D .npy, with --seq-len), or "
                   "package.module:callable returning (X, y), a Dataset or a DataLoader")
    p.add_argument("--split", default="train", help="which split of the data: train, test or all (default: train)")
    p.add_argument("--subset", type=int, metavar="N", help="a random subset of N samples (token sequences), chosen "
                   "with --seed (default: every sample)")
    p.add_argument("--batch-size", type=int, metavar="N", help=f"samples per batch; {exact} is exact for any "
                   "batching; token files (.npy, .bin) are then read from disk batch by batch (default: the whole data "
                   "set in one batch; 16 sequences, read from disk, for a token stream)")
    p.add_argument("--seq-len", type=int, metavar="T", help="tokens per sequence: cuts a token stream (.bin, 1-D "
                   ".npy) into non-overlapping windows of T tokens (required for a stream)")
    p.add_argument("--loss", metavar="SPEC", help="cross-entropy, mse, squared (Cohen et al.'s ½‖out − onehot‖²), "
                   "next-token (a language model's mean cross-entropy of every next-token prediction), or "
                   "package.module:callable taking (model, batch) (default: cross-entropy for integer labels, "
                   "mse for real targets, next-token for token data)")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow checkpoints that run code from the file: "
                   "pickled objects, TorchScript and torch.export programs, a model factory the file names that "
                   "is not a built-in model (without --model), and a Hugging Face config whose auto_map names code "
                   "of its own; only for files you trust (default: nothing in a file runs)")


def load_inputs(args: argparse.Namespace) -> tuple[Optional[dict], LoadedData, Any]:
    """The parsed model kwargs (None when not given), the data and the loss the options name."""
    from landscape.checkpoints import parse_model_kwargs
    from landscape.data import load_data
    from landscape.losses import resolve_loss

    model_kwargs = parse_model_kwargs(args.model_kwargs) if args.model_kwargs is not None else None
    data = load_data(args.data, split=args.split, batch_size=args.batch_size, subset=args.subset, seed=args.seed,
                     seq_len=args.seq_len)
    return model_kwargs, data, resolve_loss(args.loss, data.task)


def load_test_split(args: argparse.Namespace) -> Optional[LoadedData]:
    """The test split of ``--data`` when the analysed split is train and the data has one (a built-in set with a test
    split, a file with X_test), batched as the options say; None otherwise or with --no-test."""
    from landscape.data import load_data
    from landscape.errors import DataError

    if args.split != "train" or getattr(args, "no_test", False):
        return None
    try:
        return load_data(args.data, split="test", batch_size=args.batch_size, seed=args.seed, seq_len=args.seq_len)
    except (DataError, OptionError):  # no test split: nothing to add
        return None


def add_precision_arguments(p: argparse.ArgumentParser, *, dtype_help: str = "precision") -> None:
    """--dtype (a key of :data:`DTYPES`, default float32; ``dtype_help`` says what it sets) and --device (checked by
    :func:`landscape.cli.main` before any work)."""
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help=f"{dtype_help} (default: float32)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    """--threads N: torch's CPU threads for the command (:func:`choose_threads` without it)."""
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch's operations (default: torch's "
                   "own count, capped by the cores this process may use and by those other processes leave idle: "
                   "threads that wait on each other on a busy core run many times slower than one thread; "
                   "OMP_NUM_THREADS, when set, decides instead)")


def idle_cores(cores: int) -> float:
    """How many of this process's ``cores`` other processes leave idle: the machine's busy share — the larger of
    the 1-minute load average and the processes runnable right now (``/proc/loadavg``, this one excluded) over its
    CPU count — taken from ``cores``; all of them where the system does not say."""
    machine = os.cpu_count() or cores
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on this system
        return float(cores)
    try:
        with open("/proc/loadavg") as handle:
            busy = max(busy, int(handle.read().split()[3].split("/")[0]) - 1)
    except (OSError, ValueError, IndexError):
        pass
    return cores * max(0.0, 1.0 - busy / machine)


def choose_threads(requested: Optional[int]) -> int:
    """The intra-op thread count for a command: ``requested`` (--threads), else torch's own count when
    OMP_NUM_THREADS sets it, else torch's count capped by the cores this process may use
    (``os.sched_getaffinity``) and by those left idle (:func:`idle_cores`), at least 1.

    Why cap: torch's OpenMP threads meet at a barrier after every operation, so on a core another process also
    wants, each small operation waits for a descheduled thread (on 2 busy cores, the digits MLP's analysis ran 7-12x
    slower with 2 threads than with 1, where the lost CPU share explains 3-6x); the wait policy that would soften
    this (OMP_WAIT_POLICY=PASSIVE) is read when torch loads, before any command line is parsed.
    """
    if requested is not None:
        if requested < 1:
            raise OptionError(f"--threads must be a positive integer, got {requested}")
        return requested
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(torch.get_num_threads(), cores, round(idle_cores(cores))))


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


def command_line(argv: Sequence[str]) -> str:
    """The command as a shell would take it back, e.g. ``landscape analyze 'my model.pt' --data digits``: what the
    files a command writes record as their ``command``."""
    return " ".join(shlex.quote(a) for a in ["landscape", *argv])
