"""`landscape surface`: argument parsing for loss surfaces (the work is in :mod:`landscape.surface`)."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from landscape import store
from landscape.cli_inputs import add_input_arguments, load_inputs
from landscape.cli_train import DTYPES
from landscape.errors import CheckpointError, OptionError, StoreError
from landscape.surface import (
    check_grid_size,
    checkpoint_line,
    checkpoint_plane,
    eigen_directions,
    evaluate_surface,
    flat_parameters,
    parse_grid,
    random_direction,
)

#: how many checkpoints each kind of direction takes
CHECKPOINTS_NEEDED = {"random": 1, "eigen": 1, "line": 2, "plane": 3}
DEFAULT_GRIDS = {"random": "-1:1:51", "eigen": "-1:1:51", "line": "-0.5:1.5:51", "plane": "-0.5:1.5:51"}

SURFACE_EPILOG = """\
directions:
  random  Gaussian directions at CHECKPOINT, normalized by --normalization (Li et al. 2018: filter)
  eigen   the top Hessian eigenvectors at CHECKPOINT (Lanczos, unit length)
  line    the line through CHECKPOINT (α = 0) and CHECKPOINT2 (α = 1); 1-D
  plane   the plane through CHECKPOINT (0, 0), CHECKPOINT2 (1, 0) and CHECKPOINT3 (0, 1); 2-D

examples:
  landscape surface run_checkpoints/step_400.pt --data digits -o surface.h5
  landscape surface model.pt --model mlp --data digits --directions eigen --grid -0.5:0.5:41 -o eig.h5
  landscape surface init.pt final.pt --model mlp --data digits --directions line -o line.h5
  landscape surface a.pt b.pt c.pt --model mlp --data digits --directions plane --grid -0.5:1.5:41 -o plane.h5
  landscape surface ... -o surface.h5 --resume     # continue a killed grid: only its NaN cells are computed

The grid goes to checkpoints/<name>/surface of the output (x, y, loss, accuracy; NaN = not computed yet), written
after every row, each write atomic. Draw it with landscape.plot.plot_surface."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "surface",
        help="loss and accuracy on a line or plane through parameter space (random, eigenvector or checkpoint "
        "directions), into an HDF5 file",
        description="Evaluate the mean loss and accuracy over the data at θ + a·d1 (+ b·d2) for every point of a "
        "grid, the model untouched, with d filter-normalized random directions (Li et al. 2018), top Hessian "
        "eigenvectors, or the differences between two or three checkpoints.",
        epilog=SURFACE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="the origin; line and plane take the "
                   "second and third points after it")
    add_input_arguments(p, exact="the loss")
    p.add_argument("--directions", default="random", choices=tuple(CHECKPOINTS_NEEDED),
                   help="how the directions are made (default: random; see below)")
    p.add_argument("--normalization", default="filter", choices=("filter", "layer", "none"),
                   help="scaling of random directions: each filter (slice along dim 0) or each layer to the norm of "
                   "the same part of θ, or none (default: filter)")
    p.add_argument("--biases", default="zero", choices=("zero", "keep"), help="1-D tensors (biases, norm scales) "
                   "in random directions: zeroed, or kept and scaled to θ's norm (default: zero)")
    p.add_argument("--grid", metavar="START:STOP:NUM", help="points along direction 1 (default: -1:1:51 for random "
                   "and eigen, -0.5:1.5:51 for line and plane)")
    p.add_argument("--grid-y", metavar="START:STOP:NUM", help="points along direction 2 (default: as --grid)")
    p.add_argument("--dims", type=int, choices=(1, 2), help="1 (a curve) or 2 (a surface) (default: 1 for line, 2 "
                   "otherwise)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="precision (default: float32)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random directions, the Lanczos start and "
                   "--subset (default: 0)")
    p.add_argument("-o", "--output", default="surface.h5", metavar="FILE", help="HDF5 results file; created, or "
                   "added to (default: surface.h5)")
    p.add_argument("--resume", action="store_true", help="continue the surface stored in --output: compute only "
                   "its NaN cells")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _dims(args: argparse.Namespace) -> int:
    """The surface's dimension, checked against the kind of directions."""
    kind = args.directions
    dims = args.dims if args.dims is not None else (1 if kind == "line" else 2)
    if kind == "line" and dims != 1:
        raise OptionError("--directions line is 1-D; for a surface through checkpoints use --directions plane with "
                          "three checkpoints")
    if kind == "plane" and dims != 2:
        raise OptionError("--directions plane is 2-D; for a curve between two checkpoints use --directions line")
    if dims == 1 and args.grid_y is not None:
        raise OptionError("--grid-y needs a 2-D surface (--dims 2)")
    return dims


def _grids(args: argparse.Namespace, dims: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
    text = args.grid if args.grid is not None else DEFAULT_GRIDS[args.directions]
    x = parse_grid(text, "--grid")
    y = None if dims == 1 else parse_grid(args.grid_y if args.grid_y is not None else text, "--grid-y")
    check_grid_size(x, y, "--grid" if args.grid_y is None else "--grid and --grid-y")
    return x, y


def _check_count(args: argparse.Namespace) -> None:
    needed = CHECKPOINTS_NEEDED[args.directions]
    if len(args.checkpoints) != needed:
        points = {1: "one checkpoint (the origin)", 2: "two checkpoints (A, then B)",
                  3: "three checkpoints (A, B, then C)"}[needed]
        raise OptionError(f"--directions {args.directions} takes {points}, got {len(args.checkpoints)}")


def _check_same_architecture(first: Any, other: Any) -> None:
    shapes = [(name, tuple(p.shape)) for name, p in first.model.named_parameters() if p.requires_grad]
    others = [(name, tuple(p.shape)) for name, p in other.model.named_parameters() if p.requires_grad]
    if shapes != others:
        raise CheckpointError(f"{other.info.path} has other parameters than {first.info.path}; a line or plane needs "
                              "checkpoints of one architecture")


def _directions(args: argparse.Namespace, checkpoints: list, loss: Any, data: Any, dims: int, dtype: Any) -> Any:
    model = checkpoints[0].model
    if args.directions == "random":
        return random_direction(model, seed=args.seed, dims=dims, normalization=args.normalization,
                                biases=args.biases)
    if args.directions == "eigen":
        return eigen_directions(model, loss, data.batches, dims, dtype=dtype, device=args.device, seed=args.seed,
                                progress=False if args.quiet else None)
    thetas = [flat_parameters(c.model) for c in checkpoints]
    return checkpoint_line(*thetas) if args.directions == "line" else checkpoint_plane(*thetas)


def _stored(output: Path, path: str) -> tuple[Optional[str], Any]:
    """The group name and surface the output already holds for the checkpoint at ``path`` (None, None if none)."""
    if not output.exists():
        return None, None
    for name, record in store.read_results(output).items():
        if record.attrs.get("path") == path and "surface" in record.results:
            return name, record.results["surface"]
    return None, None


def _checkpoint_attrs(checkpoint: Any) -> dict[str, Any]:
    """The origin checkpoint's provenance (what `landscape analyze` records of the file, nothing of the analysis)."""
    info, model = checkpoint.info, checkpoint.model
    return {"path": info.path, "format": info.format, "size": info.size, "sha256": info.sha256, "step": info.step,
            "model_spec": checkpoint.model_spec, "model_kwargs": dict(checkpoint.model_kwargs),
            "num_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from landscape.analysis import check_pairing
    from landscape.checkpoints import load_checkpoint

    _check_count(args)
    dims = _dims(args)
    x, y = _grids(args, dims)
    output = store.check_writable(args.output)
    model_kwargs, data, loss = load_inputs(args)
    checkpoints = [load_checkpoint(p, model_spec=args.model, model_kwargs=model_kwargs, trust=args.trust_checkpoint)
                   for p in args.checkpoints]
    check_pairing(checkpoints[0], loss, data)
    for other in checkpoints[1:]:
        _check_same_architecture(checkpoints[0], other)
    origin = checkpoints[0]
    name, existing = _stored(output, origin.info.path)
    if existing is not None and not args.resume:
        raise StoreError(f"{output} already holds a surface for {origin.info.path} (checkpoints/{name}/surface, "
                         f"{existing.missing} of {existing.loss.size} cells left); pass --resume to continue it, "
                         "or write to another file with -o")
    dtype = DTYPES[args.dtype]
    directions = _directions(args, checkpoints, loss, data, dims, dtype)
    directions = dataclasses.replace(directions, description={
        **directions.description, "checkpoints": [c.info.path for c in checkpoints],
        "sha256": [c.info.sha256 for c in checkpoints], "checkpoint_names": [c.info.name for c in checkpoints],
        "data": data.description})
    command = " ".join(shlex.quote(a) for a in ["landscape", *argv])
    attrs = _checkpoint_attrs(origin)
    written = [name]

    def save(result: Any) -> None:
        with store.update_results(output) as handle:
            written[0] = store.write_checkpoint(handle, origin.info.name, {"surface": dataclasses.replace(
                result, command=command)}, attrs=attrs)

    if existing is not None and not args.quiet:
        left = f"{existing.missing} of {existing.loss.size} cells left" if existing.missing else "already complete"
        print(f"resuming checkpoints/{name}/surface: {left}", file=sys.stderr)
    result = evaluate_surface(origin.model, loss, data.batches, directions, x, y, dtype=dtype, device=args.device,
                              existing=existing, progress=False if args.quiet else None, on_row=save)
    shape = "×".join(str(n) for n in result.loss.shape)
    print(f"surface ({result.kind}, {shape} grid, {result.seconds:.1f} s): {output} "
          f"(checkpoints/{written[0]}/surface)")
    return 0
