"""`landscape surface`: argument parsing for loss surfaces (the work is :func:`landscape.surface.run_surface`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from landscape.cli.options import DTYPES, add_input_arguments, add_precision_arguments, command_line, load_inputs
from landscape.errors import OptionError
from landscape.results import SurfaceResult
from landscape.surface import check_grid_size, parse_grid, run_surface

#: how many checkpoints each kind of direction takes (pca: runs, counted when their checkpoints are found)
CHECKPOINTS_NEEDED = {"random": 1, "eigen": 1, "line": 2, "plane": 3, "pca": None}
#: line and plane: a step of 0.05 puts the checkpoints (α, β = 0 and 1) on the grid, so the barrier is exact there
DEFAULT_GRIDS = {"random": "-1:1:51", "eigen": "-1:1:51", "line": "-0.5:1.5:41", "plane": "-0.5:1.5:41"}

SURFACE_EPILOG = """\
directions:
  random  Gaussian directions at CHECKPOINT, normalized by --normalization (Li et al. 2018: filter)
  eigen   the top Hessian eigenvectors at CHECKPOINT (Lanczos, unit length)
  line    the line through CHECKPOINT (α = 0) and CHECKPOINT2 (α = 1); 1-D
  plane   the plane through CHECKPOINT (0, 0), CHECKPOINT2 (1, 0) and CHECKPOINT3 (0, 1); 2-D
  pca     the top two principal components of a trajectory's checkpoints around its last one (Li et al. 2018),
          with every checkpoint's coordinates (the path); 2-D. Each folder, run file (its <stem>_checkpoints
          folder) or glob pattern is one run, checkpoint files one after another form one run; with several
          runs (SGD and SAM from one start) the origin is the first run's last checkpoint. Without --grid or
          --grid-y, an axis covers the paths with a 20% margin (51 points)

A line reports the loss barrier (Frankle et al. 2020): the largest excess of the loss over the chord between A and
B, max over the grid points in [0, 1] (a grid maximum; the grid must hold α = 0 and 1). --align first permutes B's
hidden units to A's by weight matching (Ainsworth et al. 2023; nn.Sequential MLPs and CNNs) and reports the
barrier before and after.

examples:
  landscape surface run_checkpoints/step_400.pt --data digits -o surface.h5
  landscape surface model.pt --model mlp --data digits --directions eigen --grid -0.5:0.5:41 -o eig.h5
  landscape surface init.pt final.pt --model mlp --data digits --directions line -o line.h5
  landscape surface a.pt b.pt --data digits --directions line --align -o aligned.h5
  landscape surface sgd.h5 sam.h5 --data digits --directions pca -o paths.h5     # two runs' checkpoints
  landscape surface a.pt b.pt c.pt --model mlp --data digits --directions plane --grid -0.5:1.5:41 -o plane.h5
  landscape surface ... -o surface.h5 --resume     # continue a killed grid: only its NaN cells are computed

The grid goes to checkpoints/<name>/surface of the output (x, y, loss, accuracy; NaN = not computed yet; for pca
also explained_variance and the checkpoints' coordinates, path; for a line barrier and barrier_alpha), written after
every row, each write atomic. Draw it with landscape.plot.plot_surface (paths and barriers: landscape.plot.paths)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """`landscape surface`: every option, with its default, in --help; the kinds of directions below."""
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
                   "second and third points after it; pca takes runs (folders, run files, glob patterns or "
                   "checkpoint files)")
    add_input_arguments(p, exact="the loss")
    p.add_argument("--directions", default="random", choices=tuple(CHECKPOINTS_NEEDED),
                   help="how the directions are made (default: random; see below)")
    p.add_argument("--normalization", default="filter", choices=("filter", "layer", "none"),
                   help="scaling of random directions: each filter (slice along dim 0) or each layer to the norm of "
                   "the same part of θ, or none (default: filter)")
    p.add_argument("--biases", default="zero", choices=("zero", "keep"), help="1-D tensors (biases, norm scales) "
                   "in random directions: zeroed, or kept and scaled to θ's norm (default: zero)")
    p.add_argument("--grid", metavar="START:STOP:NUM", help="points along direction 1 (default: -1:1:51 for random "
                   "and eigen, -0.5:1.5:41 for line and plane, the paths with a margin for pca)")
    p.add_argument("--grid-y", metavar="START:STOP:NUM", help="points along direction 2 (default: as --grid; for "
                   "pca the paths with a margin)")
    p.add_argument("--align", action="store_true", help="line only: permute B's hidden units to A's (weight "
                   "matching) before the path, and report the barrier before and after")
    p.add_argument("--dims", type=int, choices=(1, 2), help="1 (a curve) or 2 (a surface) (default: 1 for line, 2 "
                   "otherwise)")
    add_precision_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the random directions, the Lanczos start, "
                   "--align's order of layers and --subset (default: 0)")
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
    if kind == "pca" and dims != 2:
        raise OptionError("--directions pca is 2-D: the plane of the top two principal components")
    if args.align and kind != "line":
        raise OptionError(f"--align aligns B to A for the line between two checkpoints; it needs --directions line, "
                          f"not {kind}")
    if dims == 1 and args.grid_y is not None:
        raise OptionError("--grid-y needs a 2-D surface (--dims 2)")
    return dims


def _grids(args: argparse.Namespace, dims: int) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """The x grid and, for a 2-D surface, the y grid the options give (or the kind of directions' default; for pca
    None where not given: the job covers the paths)."""
    if args.directions == "pca":
        x = None if args.grid is None else parse_grid(args.grid, "--grid")
        y = None if args.grid_y is None else parse_grid(args.grid_y, "--grid-y")
        if x is not None and y is not None:
            check_grid_size(x, y, "--grid and --grid-y")
        return x, y
    text = args.grid if args.grid is not None else DEFAULT_GRIDS[args.directions]
    x = parse_grid(text, "--grid")
    y = None if dims == 1 else parse_grid(args.grid_y if args.grid_y is not None else text, "--grid-y")
    check_grid_size(x, y, "--grid" if args.grid_y is None else "--grid and --grid-y")
    return x, y


def _check_count(args: argparse.Namespace) -> None:
    """As many checkpoints as the kind of directions takes."""
    needed = CHECKPOINTS_NEEDED[args.directions]
    if needed is not None and len(args.checkpoints) != needed:
        points = {1: "one checkpoint (the origin)", 2: "two checkpoints (A, then B)",
                  3: "three checkpoints (A, B, then C)"}[needed]
        raise OptionError(f"--directions {args.directions} takes {points}, got {len(args.checkpoints)}")


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Check the options, compute the surface (resumed with --resume) and print where it went."""
    _check_count(args)
    dims = _dims(args)
    x, y = _grids(args, dims)
    model_kwargs, data, loss = load_inputs(args)
    result, name = run_surface(
        args.checkpoints, data=data, loss=loss, output=args.output, x=x, y=y, kind=args.directions,
        normalization=args.normalization, biases=args.biases, seed=args.seed, align=args.align,
        dtype=DTYPES[args.dtype],
        device=args.device, model_spec=args.model, model_kwargs=model_kwargs, trust=args.trust_checkpoint,
        resume=args.resume, command=command_line(argv), progress=False if args.quiet else None,
        report=None if args.quiet else (lambda line: print(line, file=sys.stderr)),
    )
    shape = "×".join(str(n) for n in result.loss.shape)
    print(f"surface ({result.kind}, {shape} grid, {result.seconds:.1f} s): {Path(args.output)} "
          f"(checkpoints/{name}/surface)")
    for line in summary(result):
        print(line)
    return 0


def summary(result: SurfaceResult) -> list[str]:
    """The closing lines: a line's loss barrier (and before alignment), a PCA plane's explained variance."""
    if result.kind == "pca" and result.explained_variance:
        shares = ", ".join(f"PC{i + 1} {100 * v:.1f} %" for i, v in enumerate(result.explained_variance))
        return [f"explained variance: {shares}; {len(result.path_names or [])} checkpoints on the plane "
                f"(grid {result.grid} × {result.grid_y})"]
    if result.kind != "line":
        return []
    if result.barrier is None:
        return ["loss barrier: none (the grid needs points at α = 0 and α = 1, e.g. --grid -0.5:1.5:41, and a "
                "finite loss at both)"]
    points = int(((result.x >= -1e-9) & (result.x <= 1 + 1e-9)).sum())
    if result.barrier > 0:
        line = (f"loss barrier {result.barrier:.4g} at α = {result.barrier_alpha:.3g} (largest excess over the chord "
                f"from A to B; a maximum over {points} grid points in [0, 1])")
    else:
        line = f"loss barrier 0: the loss stays on or below the chord from A to B at all {points} grid points in [0, 1]"
    if result.aligned and result.barrier_unaligned is not None:
        line += f"; before aligning B to A: {result.barrier_unaligned:.4g}"
    return [line]
