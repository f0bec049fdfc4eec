"""Loss surfaces: the loss (and accuracy) on a line or a plane through parameter space (Li et al. 2018).

A surface is ``L(θ₀ + a·d₁ + b·d₂)`` over a grid of ``(a, b)``; :class:`Directions` holds the origin θ₀ and the
directions d as flat vectors over the model's trainable parameters (``named_parameters()`` order). They come from

- :func:`random_direction`: Gaussian directions, filter-normalized (each slice along dim 0 of every weight tensor
  scaled to the norm of the same slice of θ₀), layer-normalized (each tensor scaled as a whole) or raw;
- :func:`eigen_directions`: the top Hessian eigenvectors (Lanczos), unit length;
- :func:`checkpoint_line` / :func:`checkpoint_plane`: the line through two checkpoints (α = 0 at A, 1 at B) and the
  plane through three (A at the origin, B at (1, 0), C at (0, 1));
- :func:`pca_directions`: the top two principal components of a trajectory's checkpoints around its final point
  (Li et al. 2018, §7), from the k × k Gram matrix of the differences, with every checkpoint's coordinates.

:func:`evaluate_surface` evaluates the grid without touching the model (``torch.func.functional_call``), row by row,
over the whole data set with exact batch-size weighting, and resumes a grid whose cells are NaN; the grid is a
:class:`~landscape.results.SurfaceResult`. On a line between two checkpoints it carries the loss barrier
(:func:`loss_barrier`, Frankle et al. 2020); :func:`run_surface` can first align B's hidden units to A's
(:func:`landscape.align.weight_matching`, Ainsworth et al. 2023).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from landscape import store
from landscape.align import weight_matching
from landscape.analysis import check_pairing
from landscape.checkpoints import Checkpoint, CheckpointInfo, checkpoint_provenance, find_checkpoints, load_checkpoint
from landscape.data import LoadedData
from landscape.devices import compute_dtype, dtype_name
from landscape.errors import CheckpointError, OptionError, ParameterError, StoreError
from landscape.errors import option as option_name
from landscape.linalg import lanczos
from landscape.losses import loss_name
from landscape.operators.evaluation import Evaluator
from landscape.operators.functional import is_scripted
from landscape.operators.hessian import HessianOperator
from landscape.operators.params import FlatLayout, select_parameters
from landscape.progress import progress_bar
from landscape.results import SurfaceResult, source_labels

__all__ = [
    "MAX_GRID_CELLS",
    "Directions",
    "check_grid_size",
    "checkpoint_line",
    "checkpoint_plane",
    "eigen_directions",
    "evaluate_surface",
    "flat_parameters",
    "grid_spec",
    "loss_barrier",
    "parse_grid",
    "path_grid",
    "pca_directions",
    "random_direction",
    "run_surface",
    "trajectory_runs",
]

KINDS = ("random", "eigen", "line", "plane", "pca")
NORMALIZATIONS = ("filter", "layer", "none")
BIASES = ("zero", "keep")
EPS = 1e-10  # Li et al.'s guard against a zero slice of the random direction


@dataclass(frozen=True)
class Directions:
    """An origin and one or two directions, flat float64 CPU vectors over the trainable parameters, with how they
    were made (``description``: kind, seed, normalization, biases, eigenvalues; callers may add checkpoints,
    checkpoint_names, sha256 and data, which the result records)."""

    origin: torch.Tensor
    directions: tuple[torch.Tensor, ...]
    description: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.directions) not in (1, 2):
            raise OptionError(f"a surface needs one or two directions, got {len(self.directions)}")
        for d in self.directions:
            if d.shape != self.origin.shape:
                raise OptionError(f"a direction has {d.numel()} entries but the origin {self.origin.numel()}; both "
                                  "must cover the same trainable parameters")

    @property
    def dims(self) -> int:
        return len(self.directions)


# -- grids -------------------------------------------------------------------------------------------------------
#: The most cells (points of a curve, or rows × columns of a plane) a surface may have. The arrays themselves are
#: small (loss and accuracy, 16 bytes a cell: 16 MB here, a few copies of which are held and rewritten to the results
#: file as rows complete), but every cell is a full pass over the data, so a million cells (1000×1000; the default is
#: 51×51 = 2,601) is already far more than any figure shows: a generous cap that refuses a mistyped NUM (an extra
#: zero or three) up front, before it allocates gigabytes or runs for months.
MAX_GRID_CELLS = 1_000_000


def parse_grid(text: str, option: Optional[str] = None) -> np.ndarray:
    """``"START:STOP:NUM"`` → NUM evenly spaced values from START to STOP (both included), NUM at most
    :data:`MAX_GRID_CELLS` (``option`` names the grid in the message; default ``grid``, ``--grid`` in the CLI)."""
    option = option or option_name("grid")
    hint = f"{option} takes START:STOP:NUM with START < STOP and NUM >= 2, e.g. -1:1:51; got {text!r}"
    parts = str(text).split(":")
    if len(parts) != 3:
        raise OptionError(hint)
    try:
        start, stop, num = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise OptionError(hint) from None
    if not (math.isfinite(start) and math.isfinite(stop) and start < stop and num >= 2):
        raise OptionError(hint)
    if num > MAX_GRID_CELLS:
        raise OptionError(f"{option} {text}: {num:,} points is more than a surface may have (at most "
                          f"{MAX_GRID_CELLS:,} cells, e.g. 1000×1000; each cell is a pass over the data)")
    return np.linspace(start, stop, num)


def check_grid_size(x: np.ndarray, y: Optional[np.ndarray] = None, option: Optional[str] = None) -> None:
    """Refuse a grid of more than :data:`MAX_GRID_CELLS` cells (``option`` names the grid in the message; default
    ``grid``, ``--grid`` in the CLI)."""
    option = option or option_name("grid")
    cells = len(x) * (1 if y is None else len(y))
    if cells > MAX_GRID_CELLS:
        shape = f"{len(x)}" if y is None else f"{len(x)}×{len(y)}"
        raise OptionError(f"{option}: a {shape} grid has {cells:,} cells, more than a surface may have (at most "
                          f"{MAX_GRID_CELLS:,}, e.g. 1000×1000; each cell is a pass over the data)")


def grid_spec(values: np.ndarray) -> str:
    """The ``START:STOP:NUM`` spec of an axis (exact for evenly spaced values)."""
    values = np.asarray(values, dtype=float)
    return f"{values[0]:g}:{values[-1]:g}:{len(values)}"


# -- directions --------------------------------------------------------------------------------------------------
def _trainable(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    named = dict(model.named_parameters())
    return [(name, named[name]) for name in select_parameters(model)]


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """The trainable parameters in ``named_parameters()`` order, as one flat float64 CPU vector."""
    return torch.cat([p.detach().reshape(-1).to("cpu", torch.float64) for _, p in _trainable(model)])


def _normalized(d: torch.Tensor, theta: torch.Tensor, normalization: str, biases: str) -> torch.Tensor:
    """One parameter's slice of a random direction, scaled as Li et al. do (``d ‖θ‖ / (‖d‖ + 1e-10)``)."""
    if d.ndim < 2:
        if biases == "zero":
            return torch.zeros_like(d)
        return d if normalization == "none" else d * theta.norm() / (d.norm() + EPS)
    if normalization == "filter":
        d_rows, t_rows = d.reshape(d.shape[0], -1), theta.reshape(theta.shape[0], -1)
        scale = t_rows.norm(dim=1) / (d_rows.norm(dim=1) + EPS)
        return (d_rows * scale[:, None]).reshape(d.shape)
    if normalization == "layer":
        return d * theta.norm() / (d.norm() + EPS)
    return d


def random_direction(model: nn.Module, *, seed: int = 0, dims: int = 2, normalization: str = "filter",
                     biases: str = "zero") -> Directions:
    """``dims`` Gaussian directions at the model's parameters, drawn in float64 from a generator seeded with
    ``seed`` and normalized per tensor: ``"filter"`` scales each slice along dim 0 of a tensor with two or more
    dimensions to the norm of the same slice of θ, ``"layer"`` each such tensor as a whole, ``"none"`` leaves them.
    One-dimensional tensors (biases, norm scales) are zeroed (``biases="zero"``) or kept, scaled as a whole tensor
    to θ's norm unless ``normalization="none"``."""
    if normalization not in NORMALIZATIONS:
        raise OptionError(f"{option_name('normalization')} must be one of {', '.join(NORMALIZATIONS)}, "
                          f"got {normalization!r}")
    if biases not in BIASES:
        raise OptionError(f"{option_name('biases')} must be one of {', '.join(BIASES)}, got {biases!r}")
    if dims not in (1, 2):
        raise OptionError(f"{option_name('dims')} must be 1 or 2, got {dims}")
    params = [p.detach().to("cpu", torch.float64) for _, p in _trainable(model)]
    gen = torch.Generator().manual_seed(seed)
    directions = []
    for _ in range(dims):
        raw = torch.randn(sum(p.numel() for p in params), generator=gen, dtype=torch.float64)
        parts = FlatLayout(p.shape for p in params).split(raw)
        directions.append(torch.cat([_normalized(d, p, normalization, biases).reshape(-1)
                                     for d, p in zip(parts, params)]))
    description = {"kind": "random", "seed": seed, "normalization": normalization, "biases": biases}
    return Directions(flat_parameters(model), tuple(directions), description)


def eigen_directions(model: nn.Module, loss: Any, data: Any, k: int = 2, *, dtype: Optional[torch.dtype] = None,
                     device: Optional[str] = None, seed: int = 0, tol: float = 1e-6,
                     progress: Optional[bool] = None) -> Directions:
    """The top ``k`` (1 or 2) eigenvectors of the Hessian of the mean loss over ``data`` (Lanczos, unit length,
    largest eigenvalue first); the eigenvalues go into the description."""
    if k not in (1, 2):
        raise OptionError(f"{option_name('k', '--dims')} must be 1 or 2, got {k}")
    op = HessianOperator(model, loss, data, dtype=dtype, device=device)
    eig = lanczos(op, k, tol=tol, seed=seed, return_vectors=True, progress=progress)
    op.release()
    vectors = tuple(v.detach().to("cpu", torch.float64) for v in eig.vectors)
    description = {"kind": "eigen", "seed": seed, "eigenvalues": [float(v) for v in eig.values]}
    return Directions(flat_parameters(model), vectors, description)


def checkpoint_line(theta_a: torch.Tensor, theta_b: torch.Tensor) -> Directions:
    """The line through two flat parameter vectors: origin A, direction B − A (α = 1 at B)."""
    a, b = _flat(theta_a), _flat(theta_b)
    _check_same_size(a, b, "B")
    return Directions(a, (b - a,), {"kind": "line"})


def checkpoint_plane(theta_a: torch.Tensor, theta_b: torch.Tensor, theta_c: torch.Tensor) -> Directions:
    """The plane through three flat parameter vectors: origin A, directions B − A and C − A."""
    a, b, c = _flat(theta_a), _flat(theta_b), _flat(theta_c)
    _check_same_size(a, b, "B")
    _check_same_size(a, c, "C")
    return Directions(a, (b - a, c - a), {"kind": "plane"})


def pca_directions(thetas: Sequence[torch.Tensor], origin: torch.Tensor) -> tuple[Directions, np.ndarray]:
    """The top two principal components of the differences θᵢ − origin (Li et al. 2018, §7), and every θᵢ's
    coordinates on their plane, a (k, 2) array.

    With D the (k, n) matrix of differences (uncentred: the origin is the reference, as the final point of a
    trajectory is), the components are the top eigenvectors of DᵀD, found from the k × k Gram matrix G = D Dᵀ = U Λ Uᵀ
    as dⱼ = Dᵀuⱼ / √λⱼ (unit length, orthogonal), so the cost is O(k²n) and no n × n matrix is formed; all in float64.
    The description records each one's explained variance λⱼ / Σλ (its share of Σᵢ‖θᵢ − origin‖²). Signs are chosen
    so that the first θᵢ (the start of the trajectory) has coordinates ≤ 0. ParameterError when the differences do
    not span a plane (fewer than two independent ones: the checkpoints lie on a line through the origin)."""
    o = _flat(origin)
    for i, theta in enumerate(thetas):
        _check_same_size(o, _flat(theta), f"#{i + 1}")
    diffs = torch.stack([_flat(theta) - o for theta in thetas])
    values, vectors = torch.linalg.eigh(diffs @ diffs.T)
    values, vectors = values.flip(0), vectors.flip(1)
    if len(values) < 2 or not values[1] > 1e-12 * values[0]:
        raise ParameterError(f"the {len(thetas)} checkpoints' differences from the origin do not span a plane (their "
                             "Gram matrix has fewer than two positive eigenvalues); give checkpoints off one line, "
                             "or use the line through two of them")
    directions = diffs.T @ vectors[:, :2] / values[:2].sqrt()
    coordinates = diffs @ directions
    signs = torch.where(coordinates[0] > 0, -1.0, 1.0).to(torch.float64)
    directions, coordinates = directions * signs, coordinates * signs
    explained = (values[:2] / values.clamp(min=0).sum()).tolist()
    description = {"kind": "pca", "explained_variance": explained}
    return Directions(o, (directions[:, 0].contiguous(), directions[:, 1].contiguous()), description), \
        coordinates.numpy()


def path_grid(coordinates: np.ndarray, num: int = 51, margin: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Axes of ``num`` points that cover the points ``coordinates`` (k, 2) and the origin, widened by ``margin`` of
    their extent on either side and rounded outwards to a tenth of a power of ten (a readable ``START:STOP:NUM``)."""
    axes = []
    for column in np.asarray(coordinates, dtype=float).T:
        low, high = min(float(column.min()), 0.0), max(float(column.max()), 0.0)
        span = high - low if high > low else 1.0
        low, high = low - margin * span, high + margin * span
        unit = 10.0 ** (math.floor(math.log10(high - low)) - 1)
        axes.append(np.linspace(math.floor(low / unit) * unit, math.ceil(high / unit) * unit, num))
    return axes[0], axes[1]


RUN_FILE_SUFFIXES = (".h5", ".hdf5")


def trajectory_runs(entries: Sequence[str | Path | Sequence[str | Path]]) -> list[tuple[str, list[Path]]]:
    """The checkpoint files of each run that ``entries`` name, with a short label per run: a folder (as ``landscape
    train --save-every`` writes), a glob pattern, a run file (its checkpoints are in ``<stem>_checkpoints`` beside
    it, where ``landscape train`` puts them by default) or a list is one run; checkpoint files given one after
    another form one run."""
    runs: list[tuple[str, list[Path]]] = []
    loose: list[Path] = []

    def close_loose() -> None:
        if loose:
            runs.append((str(loose[0].parent), list(loose)))
            loose.clear()

    for entry in entries:
        if isinstance(entry, (list, tuple)):
            close_loose()
            runs.append((str(Path(entry[0]).parent) if entry else "", find_checkpoints(list(entry))))
            continue
        path = Path(entry)
        if path.is_file() and path.suffix.lower() in RUN_FILE_SUFFIXES:
            close_loose()
            runs.append((str(path), find_checkpoints(_run_folder(path))))
        elif path.is_file():
            loose.extend(find_checkpoints(path))
        else:
            close_loose()
            runs.append((str(path), find_checkpoints(path)))
    close_loose()
    labels = source_labels([label for label, _ in runs])
    return [(labels[label], files) for label, files in runs]


def _run_folder(path: Path) -> Path:
    """The checkpoint folder of a run file: ``<stem>_checkpoints`` beside it (``landscape train``'s default)."""
    if not store.read_file(path, lambda handle: "run" in handle):
        raise StoreError(f"{path} holds no training run (/run); pass a run file of `landscape train`, a folder of "
                         "checkpoints or the checkpoint files")
    folder = path.with_name(f"{path.stem}_checkpoints")
    if not folder.is_dir():
        raise CheckpointError(f"{path} is a run file, but its checkpoint folder {folder} does not exist; when the run "
                              "wrote its checkpoints elsewhere (--checkpoint-dir), pass that folder instead")
    return folder


def loss_barrier(alpha: np.ndarray, loss: np.ndarray) -> Optional[tuple[float, float]]:
    """The loss barrier on a line from A (α = 0) to B (α = 1) (Frankle et al. 2020), and the α where it is reached:
    max over the grid points α ∈ [0, 1] of L(α) − ((1 − α)·L(A) + α·L(B)), the loss's excess over the chord between
    the ends. A grid maximum, over points that include α = 0 and 1 (where the excess is 0), so it is ≥ 0; None when
    the grid has no point at α = 0 or 1 (within 1e-9 of the grid's extent), when a point in [0, 1] is not computed
    yet (NaN), or when the loss at an end is not finite."""
    alpha, loss = np.asarray(alpha, dtype=float), np.asarray(loss, dtype=float)
    inside = _unit_interval(alpha)
    ends = [np.flatnonzero(inside & np.isclose(alpha, end, rtol=0, atol=_TOL * _extent(alpha))) for end in (0, 1)]
    if not all(len(e) for e in ends) or np.isnan(loss[inside]).any():
        return None
    at_a, at_b = loss[ends[0][0]], loss[ends[1][0]]
    if not (math.isfinite(at_a) and math.isfinite(at_b)):
        return None
    a = np.clip(alpha[inside], 0.0, 1.0)
    excess = loss[inside] - ((1.0 - a) * at_a + a * at_b)
    best = int(np.argmax(excess))
    return float(excess[best]), float(a[best])


_TOL = 1e-9  # how far from 0 or 1, relative to the grid's extent, a grid point still counts as A or B


def _extent(alpha: np.ndarray) -> float:
    return max(1.0, float(np.ptp(alpha)))


def _unit_interval(alpha: np.ndarray) -> np.ndarray:
    """Which grid points lie in [0, 1] (up to rounding in the grid)."""
    tol = _TOL * _extent(alpha)
    return (alpha >= -tol) & (alpha <= 1.0 + tol)


def _with_barrier(result: SurfaceResult) -> SurfaceResult:
    """A line's result with its loss barrier (None until the grid's points in [0, 1] are computed)."""
    if result.kind != "line" or result.dims != 1:
        return result
    barrier = loss_barrier(result.x, result.loss)
    return dataclasses.replace(result, barrier=None if barrier is None else barrier[0],
                               barrier_alpha=None if barrier is None else barrier[1])


def _flat(theta: torch.Tensor) -> torch.Tensor:
    return theta.detach().reshape(-1).to("cpu", torch.float64)


def _check_same_size(a: torch.Tensor, other: torch.Tensor, name: str) -> None:
    if a.shape != other.shape:
        raise ParameterError(f"checkpoint {name} has {other.numel()} trainable parameters but A has {a.numel()}; "
                             "the checkpoints must share one architecture")


# -- evaluation --------------------------------------------------------------------------------------------------
def _blank(directions: Directions, x: np.ndarray, y: Optional[np.ndarray], loss: Any, dtype: torch.dtype,
           ) -> SurfaceResult:
    """A result with every cell NaN, described by the directions."""
    shape = (len(x),) if y is None else (len(x), len(y))
    d = directions.description
    return SurfaceResult(
        x=np.asarray(x, dtype=float), y=np.zeros(0) if y is None else np.asarray(y, dtype=float),
        loss=np.full(shape, np.nan), accuracy=np.full(shape, np.nan), kind=d.get("kind", "custom"),
        grid=grid_spec(x), grid_y=None if y is None else grid_spec(y),
        direction_norms=[float(v.norm()) for v in directions.directions], loss_function=loss_name(loss),
        dtype=dtype_name(dtype), seconds=0.0, normalization=d.get("normalization"),
        biases=d.get("biases"), seed=d.get("seed"), eigenvalues=d.get("eigenvalues"),
        checkpoints=d.get("checkpoints"), checkpoint_names=d.get("checkpoint_names"), sha256=d.get("sha256"),
        data=d.get("data"), explained_variance=d.get("explained_variance"), path=d.get("path"),
        path_names=d.get("path_names"), path_steps=d.get("path_steps"), path_runs=d.get("path_runs"),
        path_labels=d.get("path_labels"), aligned=d.get("aligned"),
    )


#: what must agree between a stored partial grid and the one asked for, to resume it
_SAME = ("kind", "normalization", "biases", "seed", "checkpoints", "sha256", "loss_function", "dtype", "data",
         "aligned")


def _check_resumable(existing: SurfaceResult, fresh: SurfaceResult) -> None:
    """Refuse to mix cells of different surfaces (other grid, directions, checkpoints, loss, data or precision)."""
    if existing.loss.shape != fresh.loss.shape or not (np.allclose(existing.x, fresh.x)
                                                      and np.allclose(existing.y, fresh.y)):
        raise OptionError(f"the stored surface has grid {existing.grid} × {existing.grid_y or '-'}, not "
                          f"{fresh.grid} × {fresh.grid_y or '-'}; resume with the same "
                          f"{option_name('x', '--grid')}, {option_name('y', '--grid-y')} and "
                          f"{option_name('directions', '--dims')}")
    for name in _SAME:
        old, new = getattr(existing, name), getattr(fresh, name)
        if old is not None and new is not None and old != new:
            raise OptionError(f"the stored surface has {name} {old!r}, not {new!r}; resume with the options it was "
                              "computed with, or write a new file")


def evaluate_surface(
    model: nn.Module,
    loss: Any,
    data: Any,
    directions: Directions,
    x: np.ndarray,
    y: Optional[np.ndarray] = None,
    *,
    dtype: Optional[torch.dtype] = None,
    device: Optional[str] = None,
    existing: Optional[SurfaceResult] = None,
    progress: Optional[bool] = None,
    on_row: Optional[Callable[[SurfaceResult], None]] = None,
    vectorize: Optional[bool] = None,
) -> SurfaceResult:
    """The mean loss and accuracy over ``data`` at ``origin + x[i]·d₁`` (1-D, ``y`` None) or
    ``origin + x[i]·d₁ + y[j]·d₂`` (2-D), computed row by row (row i: the cells at ``x[i]``).

    The model is never modified: parameters go in through ``torch.func.functional_call``, in eval mode, on
    ``dtype``/``device`` (default: the model's; float32 for a half-precision model). ``existing`` resumes a grid: its computed cells are kept and only
    its NaN cells evaluated (it must describe the same surface: OptionError otherwise). ``on_row(result)`` receives
    the result so far after each row, so a caller can save partial grids. ``vectorize`` evaluates a row's points in
    one ``vmap``ped call (default: on CUDA; on CPU a loop over points was 2-3× faster in our measurements, and
    TorchScript modules refuse ``vmap``). A line (``kind`` "line") carries its loss barrier (:func:`loss_barrier`)
    once the grid's points in [0, 1] are computed. Buffers (BatchNorm running statistics) are the model's along
    the whole grid: only the trainable parameters move.
    """
    if directions.dims == 1 and y is not None:
        raise OptionError("one direction makes a 1-D surface: give the x grid only (no y grid, no "
                          f"{option_name('y', '--grid-y')})")
    if directions.dims == 2 and y is None:
        raise OptionError("two directions make a 2-D surface: give a y grid too")
    check_grid_size(x, y, "the grid")
    first = _trainable(model)[0][1]
    dtype = dtype or compute_dtype(first.dtype)
    device = torch.device(device) if device is not None else first.device
    if vectorize is None:
        vectorize = device.type == "cuda" and not is_scripted(model)
    evaluator = Evaluator(model, loss, data, dtype=dtype, device=device, vectorize=vectorize)
    if directions.origin.numel() != evaluator.layout.numel:
        raise ParameterError(f"the directions have {directions.origin.numel()} entries but the model has "
                             f"{evaluator.layout.numel} trainable parameters")
    result = _blank(directions, x, y, loss, dtype)
    if existing is not None:
        _check_resumable(existing, result)
        result = dataclasses.replace(result, loss=existing.loss.copy(), accuracy=existing.accuracy.copy(),
                                     seconds=existing.seconds, command=existing.command,
                                     data=result.data if result.data is not None else existing.data)
    origin = directions.origin.to(device, dtype)
    vectors = [d.to(device, dtype) for d in directions.directions]
    loss_grid, accuracy_grid = result.loss.reshape(len(x), -1), result.accuracy.reshape(len(x), -1)
    seconds, start = result.seconds, time.perf_counter()

    def snapshot() -> SurfaceResult:
        return _with_barrier(dataclasses.replace(result, loss=result.loss.copy(), accuracy=result.accuracy.copy(),
                                                 seconds=seconds + time.perf_counter() - start))

    bar = progress_bar(result.missing, "surface", progress, unit="point")
    for i in range(len(x)):
        todo = np.flatnonzero(np.isnan(loss_grid[i]))
        if todo.size == 0:
            continue
        thetas = (origin + float(x[i]) * vectors[0]).expand(todo.size, -1)
        if y is not None:
            thetas = thetas + torch.as_tensor(np.asarray(y)[todo], dtype=dtype, device=device)[:, None] * vectors[1]
        losses, accuracy = evaluator(thetas)
        loss_grid[i, todo] = np.where(np.isnan(losses), np.inf, losses)
        accuracy_grid[i, todo] = np.nan if accuracy is None else accuracy
        bar.update(todo.size)
        if on_row is not None:
            on_row(snapshot())
    bar.close()
    return snapshot()


# -- the job -----------------------------------------------------------------------------------------------------
def run_surface(
    checkpoints: Sequence[str | Path | Sequence[str | Path]],
    *,
    data: LoadedData,
    loss: Any,
    output: str | Path,
    x: Optional[np.ndarray] = None,
    y: Optional[np.ndarray] = None,
    kind: str = "random",
    normalization: str = "filter",
    biases: str = "zero",
    seed: int = 0,
    align: bool = False,
    dtype: torch.dtype = torch.float32,
    device: Optional[str] = None,
    model_spec: Optional[str] = None,
    model_kwargs: Optional[Mapping[str, Any]] = None,
    trust: bool = False,
    resume: bool = False,
    command: Optional[str] = None,
    progress: Optional[bool] = None,
    report: Optional[Callable[[str], None]] = None,
) -> tuple[SurfaceResult, str]:
    """The loss and accuracy over ``data`` on the grid ``x`` (× ``y`` for a plane) through the first checkpoint,
    along ``kind`` directions: random (``normalization``, ``biases``, ``seed``; see :func:`random_direction`), eigen
    (the top Hessian eigenvectors), line (through two checkpoints; ``align`` first permutes B's hidden units to A's,
    see :func:`landscape.align.weight_matching`), plane (through three) or pca (the principal components of one or
    more trajectories, see below); returns the grid and its group name in ``output``.

    pca: ``checkpoints`` name runs (:func:`trajectory_runs`: a folder, run file, glob pattern or list per run;
    checkpoint files one after another form one run), at least two checkpoints each and three in all, ordered by
    step. The origin is the last checkpoint of the first run (Li et al. use a run's final point; with several runs
    from one start, the first run's end keeps the origin a trained network the others are seen from), and the
    directions the top principal components of every checkpoint's difference from it (:func:`pca_directions`). A
    grid not given (``x`` or ``y`` None) covers the paths with a margin (:func:`path_grid`).

    The checkpoints are loaded (``model_spec``, ``model_kwargs``, ``trust``: see
    :func:`~landscape.checkpoints.load_checkpoint`) and run on the first batch before any work. The grid goes to
    ``checkpoints/<name>/surface`` of the origin in ``output`` after every row, each write atomic, with the origin's
    provenance and ``command``; ``resume`` continues the grid ``output`` holds for the origin (only its NaN cells
    are computed), which ``report(line)`` announces. With ``align``, the barrier between A and B as stored is
    evaluated too, at the grid's points in [0, 1] (``barrier_unaligned``).
    """
    if kind not in KINDS:
        raise OptionError(f"{option_name('kind', '--directions')} must be one of {', '.join(KINDS)}, got {kind!r}")
    if align and kind != "line":
        raise OptionError(f"{option_name('align')} aligns B to A on the line between two checkpoints; it needs "
                          f"{option_name('kind', '--directions')} line, not {kind}")
    if kind != "pca" and x is None:
        raise OptionError(f"{option_name('x', '--grid')} is needed for {kind} directions (only pca chooses a grid)")
    output = store.check_writable(output)
    load = dict(model_spec=model_spec, model_kwargs=model_kwargs, trust=trust)
    unaligned: Optional[Directions] = None
    if kind == "pca":
        origin, directions, infos = _trajectory(checkpoints, loss, data, load)
        grid = path_grid(directions.description["path"])
        x = grid[0] if x is None else x
        y = grid[1] if y is None else y
    else:
        loaded = [load_checkpoint(p, **load) for p in checkpoints]
        check_pairing(loaded[0], loss, data)
        for other in loaded[1:]:
            _check_same_architecture(loaded[0], other)
        origin, infos = loaded[0], [c.info for c in loaded]
    name, existing = _stored(output, origin.info.path)
    if existing is not None and not resume:
        raise StoreError(f"{output} already holds a surface for {origin.info.path} (checkpoints/{name}/surface, "
                         f"{existing.missing} of {existing.loss.size} cells left); pass {option_name('resume')} to "
                         f"continue it, or write to another file with {option_name('output', '-o')}")
    dims = 1 if y is None else 2
    if kind == "random":
        directions = random_direction(origin.model, seed=seed, dims=dims, normalization=normalization, biases=biases)
    elif kind == "eigen":
        directions = eigen_directions(origin.model, loss, data.batches, dims, dtype=dtype, device=device, seed=seed,
                                      progress=progress)
    elif kind in ("line", "plane"):
        thetas = [flat_parameters(c.model) for c in loaded]
        if align:
            unaligned = checkpoint_line(*thetas)
            thetas[1] = flat_parameters(weight_matching(loaded[0].model, loaded[1].model, seed=seed))
        directions = checkpoint_line(*thetas) if kind == "line" else checkpoint_plane(*thetas)
    directions = dataclasses.replace(directions, description={
        **directions.description, "checkpoints": [i.path for i in infos], "sha256": [i.sha256 for i in infos],
        "checkpoint_names": [i.name for i in infos], "data": data.description, "aligned": align if kind == "line" else None})
    attrs = checkpoint_provenance(origin)
    written = [name]

    def save(result: SurfaceResult) -> None:
        with store.update_results(output) as handle:
            written[0] = store.write_checkpoint(handle, origin.info.name, {"surface": dataclasses.replace(
                result, command=command)}, attrs=attrs)

    if existing is not None and report is not None:
        left = f"{existing.missing} of {existing.loss.size} cells left" if existing.missing else "already complete"
        report(f"resuming checkpoints/{name}/surface: {left}")
    result = evaluate_surface(origin.model, loss, data.batches, directions, x, y, dtype=dtype, device=device,
                              existing=existing, progress=progress, on_row=save)
    if unaligned is not None and result.barrier is not None:
        before = evaluate_surface(origin.model, loss, data.batches, unaligned, result.x[_unit_interval(result.x)],
                                  dtype=dtype, device=device, progress=progress)
        result = dataclasses.replace(result, barrier_unaligned=before.barrier)
        save(result)
    return result, written[0]


def _trajectory(entries: Sequence[str | Path | Sequence[str | Path]], loss: Any, data: LoadedData,
                load: Mapping[str, Any]) -> tuple[Checkpoint, Directions, list[CheckpointInfo]]:
    """The origin (the first run's last checkpoint), the PCA directions with every checkpoint's coordinates, and the
    checkpoints' provenance, origin first. Each checkpoint is kept as a flat vector only, its model dropped (the
    origin's is loaded again, unless it is the first checkpoint)."""
    runs = trajectory_runs(entries)
    short = [label for label, files in runs if len(files) < 2]
    if short or sum(len(files) for _, files in runs) < 3:
        raise OptionError(f"{option_name('kind', '--directions')} pca needs a trajectory: at least two checkpoints "
                          "per run and three in all" + (f" (run {short[0]} has fewer)" if short else ""))
    first: Optional[Checkpoint] = None
    points: list[tuple[int, CheckpointInfo, torch.Tensor]] = []
    for run, (_, files) in enumerate(runs):
        loaded = []
        for path in files:
            checkpoint = load_checkpoint(path, **load)
            if first is None:
                check_pairing(checkpoint, loss, data)
                first = checkpoint
            else:
                _check_same_architecture(first, checkpoint)
            loaded.append((run, checkpoint.info, flat_parameters(checkpoint.model)))
        points += sorted(loaded, key=lambda point: (point[1].step is None, point[1].step or 0))
    last = max(i for i, point in enumerate(points) if point[0] == 0)
    origin_info = points[last][1]
    origin = first if first.info.path == origin_info.path else load_checkpoint(origin_info.path, **load)
    directions, coordinates = pca_directions([theta for _, _, theta in points], points[last][2])
    infos = [origin_info] + [info for i, (_, info, _) in enumerate(points) if i != last]
    description = {**directions.description, "path": coordinates, "path_names": [p[1].name for p in points],
                   "path_steps": [p[1].step for p in points], "path_runs": [p[0] for p in points],
                   "path_labels": [label for label, _ in runs]}
    return origin, dataclasses.replace(directions, description=description), infos


def _check_same_architecture(first: Checkpoint, other: Checkpoint) -> None:
    """A line, plane or trajectory needs checkpoints with the same trainable parameters (names and shapes)."""
    shapes = [(name, tuple(p.shape)) for name, p in first.model.named_parameters() if p.requires_grad]
    others = [(name, tuple(p.shape)) for name, p in other.model.named_parameters() if p.requires_grad]
    if shapes != others:
        raise CheckpointError(f"{other.info.path} has other parameters than {first.info.path}; a line, plane or "
                              "trajectory needs checkpoints of one architecture")


def _stored(output: Path, path: str) -> tuple[Optional[str], Optional[SurfaceResult]]:
    """The group name and surface the output already holds for the checkpoint at ``path`` (None, None if none)."""
    if not output.exists():
        return None, None
    for name, record in store.read_results(output).items():
        if record.attrs.get("path") == path and "surface" in record.results:
            return name, record.results["surface"]
    return None, None
