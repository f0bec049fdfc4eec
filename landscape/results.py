"""Every frozen result record of landscape, in one module that the algorithms, the jobs, the store and the plots read.

A record holds the numbers and how they were obtained, so any result can be stored and trusted:

- one metric of one operator or model: :class:`EigenResult`, :class:`TraceResult`, :class:`DiagonalResult`,
  :class:`DensityResult`, :class:`JacobianResult`, :class:`SurfaceResult`, :class:`SharpnessResult` (the
  :data:`Result` union, which the store writes to an HDF5 group and reads back);
- what a file holds: :class:`CheckpointRecord` (a results file's checkpoint) and :class:`RunRecord` (a training run);
- what a job returns: :class:`CheckpointSummary` (analyze), :class:`TrainResult` (train), :class:`FlatnessRow`
  (compare: one row per checkpoint or run, built from the records above).

This module imports nothing of landscape, so every layer may read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch


@dataclass(frozen=True)
class EigenResult:
    """Eigenpairs of a symmetric operator.

    ``values`` and ``residuals`` (``‖Av − λv‖`` per pair, as estimated by the method) are float64 arrays;
    ``vectors`` is a (k, n) tensor on the operator's device and dtype, or None when not requested.
    ``residual_history`` holds, per product, the largest relative residual among the wanted pairs.
    """

    values: np.ndarray
    residuals: np.ndarray
    converged: np.ndarray
    vectors: Optional[torch.Tensor]
    method: str
    which: str
    num_matvecs: int
    tol: float
    seed: Optional[int]
    seconds: float
    restarts: int = 0
    residual_history: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def relative_residuals(self) -> np.ndarray:
        return self.residuals / np.maximum(np.abs(self.values), np.finfo(np.float64).tiny)


@dataclass(frozen=True)
class TraceResult:
    """A stochastic trace estimate with its standard error.

    ``exact_part`` is the part computed exactly on a deflation subspace (zero for plain Hutchinson); ``samples``
    are the per-probe quadratic forms of the stochastic remainder, whose mean plus ``exact_part`` is ``estimate``.
    """

    estimate: float
    stderr: float
    samples: np.ndarray
    exact_part: float
    method: str
    num_matvecs: int
    seed: Optional[int]
    seconds: float
    dimension: int

    @property
    def normalized(self) -> float:
        """The trace divided by the dimension (the flatness measure tr(H)/n of Ahn et al.)."""
        return self.estimate / self.dimension


@dataclass(frozen=True)
class DiagonalResult:
    """A stochastic estimate of the diagonal, with the per-entry standard error."""

    diagonal: torch.Tensor
    stderr: torch.Tensor
    method: str
    num_matvecs: int
    seed: Optional[int]
    seconds: float


@dataclass(frozen=True)
class DensityResult:
    """Spectral density by stochastic Lanczos quadrature.

    ``nodes`` and ``weights`` are (probes, steps) arrays (padded with NaN nodes and zero weights where a probe's
    Krylov space was exhausted early); ``density`` is their Gaussian-broadened mixture on ``grid``.
    """

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float
    num_probes: int
    num_steps: int
    reorthogonalize: bool
    num_matvecs: int
    seed: Optional[int]
    seconds: float
    dimension: int

    @property
    def trace_estimate(self) -> float:
        """n · mean over probes of Σ τ θ: the Hutchinson estimate hidden in the quadrature."""
        return float(self.dimension * np.nansum(self.weights * np.nan_to_num(self.nodes), axis=1).mean())


@dataclass(frozen=True)
class JacobianResult:
    """Per-sample input-output Jacobian norms over a data set (MacDonald, Valmadre, Lucey 2023).

    ``frobenius`` and ``spectral`` are (N,) float64 arrays of ``‖∂f(x_i)/∂x_i‖`` in data order, or None when that
    norm was not computed; ``f`` is the model's logits or softmax probabilities (``outputs``). ``method`` says how the
    Frobenius norm was obtained: ``"exact"`` (one VJP per output) or ``"probe"`` (``num_probes`` random VJPs with
    ``distribution`` probes, unbiased for the squared norm). The spectral norm comes from at most
    ``power_iterations`` power iterations on JᵀJ: a lower bound on each sample's largest singular value, tight once
    converged. The sample maximum of the spectral norm is a lower bound on the model's Lipschitz constant;
    ``lipschitz_upper`` (the product of the layers' spectral norms, for plain feed-forward nets) an upper bound.
    """

    frobenius: Optional[np.ndarray]
    spectral: Optional[np.ndarray]
    outputs: str
    method: str
    num_probes: int
    power_iterations: int
    lipschitz_upper: Optional[float]
    seed: Optional[int]
    seconds: float
    distribution: Optional[str] = None

    def _norms(self) -> Optional[np.ndarray]:
        return self.spectral if self.spectral is not None else self.frobenius

    @property
    def num_samples(self) -> int:
        norms = self._norms()
        return 0 if norms is None else len(norms)

    @property
    def frobenius_mean(self) -> Optional[float]:
        return None if self.frobenius is None else float(np.mean(self.frobenius))

    @property
    def frobenius_max(self) -> Optional[float]:
        return None if self.frobenius is None else float(np.max(self.frobenius))

    @property
    def spectral_mean(self) -> Optional[float]:
        return None if self.spectral is None else float(np.mean(self.spectral))

    @property
    def spectral_max(self) -> Optional[float]:
        """The largest per-sample spectral norm: the data-based lower estimate of the Lipschitz constant."""
        return None if self.spectral is None else float(np.max(self.spectral))

    @property
    def argmax(self) -> Optional[int]:
        """Index of the sample with the largest spectral norm (of the largest Frobenius norm without spectral)."""
        norms = self._norms()
        return None if norms is None or len(norms) == 0 else int(np.argmax(norms))

    def quantiles(self, q: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[str, dict[float, float]]:
        """``{"frobenius": {q: value}, "spectral": {q: value}}`` for the norms that were computed."""
        out: dict[str, dict[float, float]] = {}
        for name in ("frobenius", "spectral"):
            norms = getattr(self, name)
            if norms is not None and len(norms):
                out[name] = {float(p): float(v) for p, v in zip(q, np.quantile(norms, list(q)))}
        return out


@dataclass(frozen=True)
class SurfaceResult:
    """The loss (and accuracy) at ``θ₀ + x[i]·d₁ (+ y[j]·d₂)``: ``loss[i]`` or ``loss[i, j]``.

    ``y`` is empty for a 1-D curve. NaN marks a cell not computed yet (a resumable grid), +inf a cell where the loss
    is not finite; ``accuracy`` is NaN throughout when the outputs are not class scores with integer labels.
    ``grid`` / ``grid_y`` are the ``START:STOP:NUM`` specs of the axes; ``kind`` is random, eigen, line or plane;
    ``normalization`` and ``biases`` apply to random directions, ``eigenvalues`` to eigen directions;
    ``direction_norms`` are the lengths ‖dᵢ‖; ``checkpoints`` (paths, origin first), ``checkpoint_names`` and
    ``sha256`` name the files; ``data`` describes the data and ``command`` the command line that made the grid.

    ``kind="pca"`` (Li et al. 2018, §7): the directions are the top two principal components of the differences
    θᵢ − θ₀ of a trajectory's checkpoints from the origin θ₀ (the final checkpoint; for several runs, the final
    checkpoint of the first), uncentred; ``explained_variance`` is each one's share of Σᵢ‖θᵢ − θ₀‖². ``path`` (k, 2)
    holds every checkpoint's coordinates on the plane, ``path_names`` and ``path_steps`` its name and step,
    ``path_runs`` the index of its run in ``path_labels`` (one label per run), in step order within each run.

    ``kind="line"``: ``barrier`` is the loss barrier of Frankle et al. 2020, max over α ∈ [0, 1] of
    L(θ_α) − ((1 − α)·L(A) + α·L(B)), taken over the grid points in [0, 1] (a grid maximum; None when the grid lacks
    α = 0 or 1, or a cell there is not computed yet), reached at ``barrier_alpha``. ``aligned``: B's hidden units
    were permuted to A's by weight matching (Ainsworth et al. 2023) before the line was drawn; ``barrier_unaligned``
    is then the barrier on the same α grid between A and B as stored.
    """

    x: np.ndarray
    y: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    kind: str
    grid: str
    direction_norms: list
    loss_function: str
    dtype: str
    seconds: float
    grid_y: Optional[str] = None
    normalization: Optional[str] = None
    biases: Optional[str] = None
    seed: Optional[int] = None
    eigenvalues: Optional[list] = None
    checkpoints: Optional[list] = None
    checkpoint_names: Optional[list] = None
    sha256: Optional[list] = None
    data: Optional[str] = None
    command: Optional[str] = None
    explained_variance: Optional[list] = None
    path: Optional[np.ndarray] = None
    path_names: Optional[list] = None
    path_steps: Optional[list] = None
    path_runs: Optional[list] = None
    path_labels: Optional[list] = None
    barrier: Optional[float] = None
    barrier_alpha: Optional[float] = None
    aligned: Optional[bool] = None
    barrier_unaligned: Optional[float] = None

    @property
    def dims(self) -> int:
        return 1 if self.y.size == 0 else 2

    @property
    def missing(self) -> int:
        """How many cells are still to compute."""
        return int(np.isnan(self.loss).sum())


#: The flatness measures of :class:`SharpnessResult`, by ``kind``.
SHARPNESS_KINDS = ("worst", "average", "fisher_rao", "relative_flatness")


@dataclass(frozen=True)
class SharpnessResult:
    """A flatness measure of a minimum beyond the Hessian's spectrum (see :mod:`landscape.flatness`).

    ``kind`` says which (:data:`SHARPNESS_KINDS`):

    - ``"worst"``: max over ‖δ‖₂ ≤ ρ of L(θ+δ) − L(θ) (``adaptive``: δ = |θ| ⊙ u with ‖u‖₂ ≤ ρ), by projected
      gradient ascent from ``restarts`` starts of ``steps`` steps each; with ``chunk_size`` m, the mean over m-sample
      chunks of each chunk's own maximum (m-sharpness, as SAM uses it);
    - ``"average"``: E L(θ+δ) − L(θ) for δ ~ N(0, ρ²I) (``adaptive``: N(0, ρ² diag(θ²))), over ``samples`` draws;
    - ``"fisher_rao"``: the empirical Fisher-Rao norm E_i ⟨θ, ∇θ ℓ_i⟩² (Liang et al. 2019);
    - ``"relative_flatness"``: Σ_{s,s'} ⟨w_s, w_s'⟩ tr H_{s,s'} of the weight matrix ``layer`` (Petzka et al. 2021).

    ``value`` is the measure; ``stderr`` its standard error where the method has one (over draws, chunks, samples
    or probes); ``values`` the per-draw, per-chunk, per-restart or per-sample numbers it comes from. ``loss`` is
    L(θ); ``num_gradients`` counts the passes over the data (or a chunk) that computed a gradient, ``num_losses`` the
    points at which the loss alone was computed (an antithetic pair shares one pass); ``delta`` the perturbation found (worst case on the whole data, when asked for).
    """

    kind: str
    value: float
    stderr: Optional[float]
    values: np.ndarray
    loss: float
    adaptive: bool
    num_gradients: int
    num_losses: int
    seed: Optional[int]
    seconds: float
    dimension: int
    dtype: str
    rho: Optional[float] = None
    chunk_size: Optional[int] = None
    num_chunks: int = 1
    steps: Optional[int] = None
    restarts: Optional[int] = None
    samples: Optional[int] = None
    layer: Optional[str] = None
    delta: Optional[torch.Tensor] = None

    @property
    def key(self) -> str:
        """The name it is stored under among a checkpoint's results: ``sharpness_worst_adaptive``, ..."""
        return f"sharpness_{self.kind}" + ("_adaptive" if self.adaptive else "")

    @property
    def label(self) -> str:
        """A short column label: ``worst ρ=0.05``, ``average-adaptive ρ=0.05``, ``worst ρ=0.05 m=128``, ..."""
        name = self.kind.replace("_", "-") + ("-adaptive" if self.adaptive else "")
        if self.rho is not None:
            name += f" ρ={self.rho:g}"
        if self.chunk_size is not None:
            name += f" m={self.chunk_size}"
        return name


#: One stored metric: what :func:`landscape.store.write_result` writes and :func:`landscape.store.read_result` reads.
Result = Union[EigenResult, TraceResult, DensityResult, DiagonalResult, JacobianResult, SurfaceResult,
               SharpnessResult]


# -- files -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointRecord:
    """What a results file holds for one checkpoint: its attributes, its results, and its per-layer results."""

    name: str
    attrs: dict[str, Any]
    results: dict[str, Result]
    layers: dict[str, dict[str, Result]]

    @property
    def step(self) -> Optional[int]:
        return self.attrs.get("step")


@dataclass(frozen=True)
class RunRecord:
    """A training run file: the run's attributes, and each table (``run``, ``run/curvature``) as column arrays."""

    attrs: dict[str, Any]
    tables: dict[str, dict[str, np.ndarray]]


# -- jobs --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointSummary:
    """One row of the closing table."""

    name: str
    step: Optional[int]
    loss: float
    accuracy: Optional[float]
    results: dict[str, Result]
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    """How a run ended."""

    steps: int
    stop_reason: str
    checkpoint: Optional[Path]
    seconds: float


# -- flatness: one row per checkpoint or run ---------------------------------------------------------------------
RUN_NAME = "run"


@dataclass(frozen=True)
class FlatnessRow:
    """The flatness measures of one checkpoint (results file) or of a run's last curvature record (run file).

    ``source`` is the file as given; ``name`` the checkpoint's group name, or ``"run"``. ``sharpness_ratio`` is
    λmax·η/2 with η the run's base learning rate (its stored settings; a schedule is not followed): 1 at the edge of
    stability of plain gradient descent (momentum and adaptive methods have other thresholds), None for checkpoints,
    whose files do not record η. ``lr`` is that η (None for checkpoints). Missing measures are None.
    ``sharpness`` maps the label of every stored :class:`SharpnessResult` (``worst ρ=0.05``, ``fisher-rao``, ...) to
    its value and standard error (None where the measure has none), in the order of :data:`SHARPNESS_KINDS`, plain
    before adaptive; a run's curvature records hold none. ``barrier`` is the loss barrier of a stored line between
    two checkpoints (``landscape surface A B --directions line``: see :class:`SurfaceResult`), and
    ``barrier_unaligned`` the one before B was aligned to A (``--align``); None otherwise.
    """

    source: str
    name: str
    step: Optional[int]
    lambda_max: Optional[float]
    sharpness_ratio: Optional[float]
    trace: Optional[float]
    trace_stderr: Optional[float]
    trace_per_param: Optional[float]
    jacobian_max: Optional[float]
    train_loss: Optional[float]
    train_accuracy: Optional[float]
    test_loss: Optional[float]
    test_accuracy: Optional[float]
    lr: Optional[float] = None
    sharpness: Mapping[str, tuple[float, Optional[float]]] = field(default_factory=dict)
    barrier: Optional[float] = None
    barrier_unaligned: Optional[float] = None

    @property
    def trace_per_param_stderr(self) -> Optional[float]:
        """The standard error of ``trace_per_param`` (the trace's, divided by the number of parameters)."""
        if self.trace_stderr is None or self.trace_per_param is None or not self.trace:
            return None
        return self.trace_stderr * self.trace_per_param / self.trace

    @classmethod
    def of_checkpoint(cls, source: str, record: CheckpointRecord) -> FlatnessRow:
        """λmax, trace, Jacobian and loss barrier from the stored results; loss and accuracy from the attributes,
        filed under the split that was analysed."""
        eigen, trace, jacobian = (record.results.get(key) for key in ("eigen", "trace", "jacobian"))
        fit = {"loss": _float(record.attrs.get("loss")), "accuracy": _float(record.attrs.get("accuracy"))}
        on_test = _analysed_split(record.attrs) == "test"
        surface = record.results.get("surface")
        line = surface if isinstance(surface, SurfaceResult) else None
        return cls(
            source=source, name=record.name, step=_int(record.step),
            lambda_max=float(np.max(eigen.values)) if eigen is not None and len(eigen.values) else None,
            sharpness_ratio=None,
            trace=float(trace.estimate) if trace is not None else None,
            trace_stderr=float(trace.stderr) if trace is not None else None,
            trace_per_param=float(trace.normalized) if trace is not None else None,
            jacobian_max=jacobian.spectral_max if jacobian is not None else None,
            train_loss=None if on_test else fit["loss"], train_accuracy=None if on_test else fit["accuracy"],
            test_loss=fit["loss"] if on_test else _float(record.attrs.get("test_loss")),
            test_accuracy=fit["accuracy"] if on_test else _float(record.attrs.get("test_accuracy")),
            sharpness=sharpness_measures(list(record.results.values())),
            barrier=_float(line.barrier) if line is not None else None,
            barrier_unaligned=_float(line.barrier_unaligned) if line is not None else None,
        )

    @classmethod
    def of_run(cls, source: str, run: RunRecord) -> Optional[FlatnessRow]:
        """The run's last curvature record (a column added after the first records counts only if it reaches it);
        None when the run has no curvature records."""
        table = run.tables.get("run/curvature", {})
        steps = table.get("step")
        if steps is None or len(steps) == 0:
            return None
        last = len(steps) - 1

        def value(column: str) -> Optional[float]:
            data = table.get(column)
            return float(data[last]) if data is not None and len(data) == last + 1 else None

        lambda_max, trace, lr = value("lambda_max"), value("trace"), _learning_rate(run.attrs)
        num_params = _int(run.attrs.get("num_params"))
        return cls(
            source=source, name=RUN_NAME, step=int(steps[last]), lambda_max=lambda_max,
            sharpness_ratio=lambda_max * lr / 2 if lambda_max is not None and lr is not None else None,
            trace=trace, trace_stderr=value("trace_stderr"),
            trace_per_param=trace / num_params if trace is not None and num_params else None,
            jacobian_max=value("jacobian_max"),
            train_loss=value("train_loss"), train_accuracy=value("train_accuracy"),
            test_loss=value("test_loss"), test_accuracy=value("test_accuracy"), lr=lr,
        )


def sharpness_labels(measures: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every label among ``measures`` (each a :attr:`FlatnessRow.sharpness`, or the like: label → anything), ordered
    as each row's are: by kind (as in :data:`SHARPNESS_KINDS`), plain before adaptive, then by ρ and chunk size."""
    order = {kind.replace("_", "-"): i for i, kind in enumerate(SHARPNESS_KINDS)}

    def key(label: str) -> tuple:
        name, *details = label.split(" ")
        numbers = dict(detail.partition("=")[::2] for detail in details)
        kind = name.removesuffix("-adaptive")
        return (order.get(kind, len(order)), kind, name != kind, float(numbers.get("ρ", 0)), int(numbers.get("m", 0)))

    return sorted(dict.fromkeys(label for held in measures for label in held), key=key)


def source_labels(sources: Sequence[str]) -> dict[str, str]:
    """A short label per distinct source: its file name, or as many trailing path parts as tell it from the others."""
    parts = {source: Path(source).parts or (source,) for source in dict.fromkeys(sources)}

    def label(source: str) -> str:
        own = parts[source]
        depth = next((d for d in range(1, len(own)) if all(p[-d:] != own[-d:] for s, p in parts.items()
                                                            if s != source)), len(own))
        return str(Path(*own[-depth:]))

    return {source: label(source) for source in parts}


def sharpness_measures(results: Sequence[Any]) -> dict[str, tuple[float, Optional[float]]]:
    """label → (value, standard error) of each :class:`SharpnessResult` among ``results``, ordered by kind (as in
    :data:`SHARPNESS_KINDS`), plain before adaptive, then by ρ and chunk size."""
    order = {kind: i for i, kind in enumerate(SHARPNESS_KINDS)}
    measures = sorted((r for r in results if isinstance(r, SharpnessResult)),
                      key=lambda r: (order.get(r.kind, len(order)), r.adaptive, r.rho or 0.0, r.chunk_size or 0))
    return {r.label: (float(r.value), None if r.stderr is None else float(r.stderr)) for r in measures}


def _analysed_split(attrs: Mapping[str, Any]) -> str:
    """"test" when the data description's tags name the test split (``digits[test; ...]``), else "train" (the
    default split of ``landscape analyze``)."""
    description = str(attrs.get("data_description", ""))
    tags = description.partition("[")[2].partition("]")[0]
    return "test" if "test" in (tag.strip() for tag in tags.split(";")) else "train"


def _learning_rate(attrs: Mapping[str, Any]) -> Optional[float]:
    """The base learning rate η of the run's stored settings (None when absent or not positive)."""
    try:
        settings = json.loads(attrs.get("settings") or "{}")
    except (TypeError, json.JSONDecodeError):
        return None
    lr = settings.get("lr") if isinstance(settings, dict) else None
    return float(lr) if isinstance(lr, (int, float)) and lr > 0 else None


def _float(value: Any) -> Optional[float]:
    return None if value is None else float(value)


def _int(value: Any) -> Optional[int]:
    return None if value is None else int(value)
