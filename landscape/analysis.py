"""The main job: checkpoints, data and a loss in; Hessian eigenvalues, trace and density per checkpoint out, in HDF5."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

from landscape import flatness, store
from landscape.checkpoints import Checkpoint, checkpoint_provenance, file_sha256, find_checkpoints, load_checkpoint
from landscape.data import LoadedData
from landscape.devices import compute_dtype, dtype_name, memory_bytes
from landscape.distributed import LOCAL, Runtime
from landscape.errors import LandscapeError, LossError, OptionError, option
from landscape.jacobian import jacobian_norms
from landscape.linalg import lanczos, spectral_density, trace
from landscape.linalg.trace import METHODS as TRACE_METHODS
from landscape.losses import check_targets, loss_name
from landscape.operators.batches import checked_batches, move_batch
from landscape.operators.blocks import restrict
from landscape.operators.evaluation import fit, no_grad_unless
from landscape.operators.functional import ModelLoss, call_with, evaluate_loss
from landscape.operators.factory import CURVATURES, check_compile
from landscape.param_blocks import Block, model_blocks
from landscape.results import CheckpointSummary, Result, SharpnessResult
from landscape.tokens import TokenBatches

METRICS = ("eigs", "trace", "density", "jacobian", "sharpness")
#: The metrics computed unless told otherwise (sharpness takes gradient passes over the data: only when asked).
DEFAULT_METRICS = ("eigs", "trace", "density", "jacobian")
#: The group each metric is stored under; sharpness writes one group per measure (:meth:`AnalysisSettings.groups`).
GROUP_NAMES = {"eigs": "eigen", "trace": "trace", "density": "density", "jacobian": "jacobian"}
#: The flatness measures of the sharpness metric: their names (as ``--sharpness`` spells them) and their
#: :class:`~landscape.results.SharpnessResult` kinds.
SHARPNESS_MEASURES = {"worst": "worst", "average": "average", "fisher-rao": "fisher_rao",
                      "relative-flatness": "relative_flatness"}
#: The measures ``adaptive`` applies to (the others are invariant to rescaling as they are).
ADAPTIVE_KINDS = ("worst", "average")

#: The share of memory the density's reorthogonalized basis may take before --max-basis is set for it.
BASIS_MEMORY_SHARE = 0.25


@dataclass(frozen=True)
class AnalysisSettings:
    """What to compute and how; stored with every checkpoint's results."""

    metrics: tuple[str, ...] = DEFAULT_METRICS
    top_k: int = 5
    tol: float = 1e-6
    trace_matvecs: int = 99
    trace_method: str = "krylov"
    density_probes: int = 10
    density_steps: int = 80
    per_layer: bool = False
    dtype: torch.dtype = torch.float32
    device: Optional[str] = None
    seed: int = 0
    save_vectors: bool = False
    curvature: str = "hessian"
    jacobian_outputs: str = "logits"
    compile: bool = False  # torch.compile the Hessian-vector product (forward-over-reverse)
    max_basis: Optional[int] = None  # most parameter-space vectors Lanczos (and SLQ's reorthogonalization) keep
    rho: float = 0.05  # radius of the worst- and average-case perturbations
    sharpness: tuple[str, ...] = ("worst", "average")  # measures of the sharpness metric (SHARPNESS_MEASURES)
    adaptive: bool = False  # adaptive worst/average sharpness (perturbations scaled by |θ|) instead of the plain
    sharpness_steps: int = 10  # gradient ascent steps per start of worst-case sharpness
    sharpness_restarts: int = 3  # starts of worst-case sharpness
    sharpness_samples: int = 32  # Gaussian draws of average-case sharpness
    chunk_size: Optional[int] = None  # m of m-sharpness: worst case per m-sample chunk, averaged

    def __post_init__(self) -> None:
        if self.curvature not in CURVATURES:
            raise OptionError(f"{option('curvature')} must be one of {', '.join(CURVATURES)}, "
                              f"got {self.curvature!r}")
        check_compile(self.curvature, self.compile)
        if self.jacobian_outputs not in ("logits", "probabilities"):
            raise OptionError(f"{option('jacobian_outputs')} must be logits or probabilities, "
                              f"got {self.jacobian_outputs!r}")
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise OptionError(f"{option('metrics')} must be a comma-separated subset of {','.join(METRICS)}, "
                              f"got {unknown or 'nothing'}")
        for name in ("top_k", "trace_matvecs", "density_probes", "density_steps"):
            if getattr(self, name) < 1:
                raise OptionError(f"{option(name)} must be a positive integer, got {getattr(self, name)}")
        if self.trace_method not in TRACE_METHODS:
            raise OptionError(f"{option('trace_method')} must be one of {', '.join(TRACE_METHODS)}, "
                              f"got {self.trace_method!r}")
        if not self.tol >= 0:
            raise OptionError(f"{option('tol')} must be non-negative, got {self.tol}")
        if self.max_basis is not None and self.max_basis < 1:
            raise OptionError(f"{option('max_basis')} must be a positive integer, got {self.max_basis}")
        if self.max_basis is not None and "eigs" in self.metrics and self.max_basis < self.top_k + 2:
            raise OptionError(f"{option('max_basis')} must be at least {option('top_k')} + 2 = {self.top_k + 2} (the "
                              f"wanted eigenvectors and two more), got {self.max_basis}")
        self._check_sharpness()

    def _check_sharpness(self) -> None:
        """The sharpness options, with the measures named as ``--sharpness`` spells them (``fisher_rao`` is taken
        for ``fisher-rao`` too) and stored as their kinds."""
        names = (self.sharpness,) if isinstance(self.sharpness, str) else tuple(self.sharpness)
        kinds = [SHARPNESS_MEASURES.get(str(name).replace("_", "-")) for name in names]
        unknown = [name for name, kind in zip(names, kinds) if kind is None]
        if unknown or not names:
            raise OptionError(f"{option('sharpness')} must be a comma-separated subset of "
                              f"{','.join(SHARPNESS_MEASURES)}, got {', '.join(map(repr, unknown)) or 'nothing'}")
        object.__setattr__(self, "sharpness", tuple(dict.fromkeys(kinds)))
        if isinstance(self.rho, bool) or not isinstance(self.rho, (int, float)) or not (
                math.isfinite(self.rho) and self.rho > 0):
            raise OptionError(f"{option('rho')} must be a positive number (the perturbation radius), got {self.rho}")
        for name in ("sharpness_steps", "sharpness_restarts", "sharpness_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptionError(f"{option(name)} must be a positive integer, got {value}")
        if self.chunk_size is not None:
            if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 1:
                raise OptionError(f"{option('chunk_size')} must be a positive integer (the m of m-sharpness), got "
                                  f"{self.chunk_size}")
            if "sharpness" in self.metrics and "worst" not in self.sharpness:
                raise OptionError(f"{option('chunk_size')} (m-sharpness) applies to worst-case sharpness only: add "
                                  f"worst to {option('sharpness')}")

    def groups(self) -> set[str]:
        """The names of the groups the requested metrics are stored under (those of :attr:`GROUP_NAMES`, and a
        ``sharpness_<kind>[_adaptive]`` group per sharpness measure)."""
        wanted = {GROUP_NAMES[m] for m in self.metrics if m in GROUP_NAMES}
        if "sharpness" in self.metrics:
            wanted |= {f"sharpness_{kind}" + ("_adaptive" if self.adaptive and kind in ADAPTIVE_KINDS else "")
                       for kind in self.sharpness}
        return wanted

    @property
    def reorthogonalize(self) -> bool:
        """Whether SLQ keeps and reorthogonalizes against each probe's basis (probes × steps vectors): unless that
        is more than ``max_basis``; without it SLQ keeps three vectors per probe (about six at the peak)."""
        return self.max_basis is None or self.density_probes * self.density_steps <= self.max_basis

    def as_attrs(self) -> dict[str, Any]:
        """The settings as HDF5-friendly attributes."""
        attrs = dataclasses.asdict(self)
        attrs["metrics"] = list(self.metrics)
        attrs["sharpness"] = list(self.sharpness)
        attrs["dtype"] = dtype_name(self.dtype)
        return attrs

    def fit_to(self, dimension: int) -> tuple["AnalysisSettings", list[str]]:
        """These settings for a curvature matrix of ``dimension`` (the number of trainable parameters): --top-k and
        --density-steps clipped to it (a matrix has no more eigenvalues, nor Lanczos more steps), and a note for each
        option that was clipped (options of metrics not computed are left alone), and for a density that --max-basis
        keeps from reorthogonalizing."""
        changes, notes = {}, []
        options = (("top_k", "eigs", "eigenvalues"), ("density_steps", "density", "Lanczos steps per probe"))
        for name, metric, what in options:
            value = getattr(self, name)
            if metric in self.metrics and value > dimension:
                changes[name] = dimension
                notes.append(f"{option(name)} {value} is more than the {dimension} parameters; clipped to "
                             f"{dimension} {what}")
        fitted = dataclasses.replace(self, **changes)
        fitted, capped = fitted._basis_in_memory(dimension)
        notes += capped
        if "density" in self.metrics and not fitted.reorthogonalize:
            kept = fitted.density_probes * fitted.density_steps
            notes.append(f"{option('density_probes')} {fitted.density_probes} × {option('density_steps')} "
                         f"{fitted.density_steps} reorthogonalized would keep {kept} vectors, more than "
                         f"{option('max_basis')} {self.max_basis}: the density runs without reorthogonalization "
                         f"(about {6 * fitted.density_probes} vectors at the peak)")
        return fitted, notes

    def _basis_in_memory(self, dimension: int) -> tuple["AnalysisSettings", list[str]]:
        """Without ``max_basis``, the density's reorthogonalized basis (probes × steps vectors of ``dimension``) must
        fit in a quarter of the memory the vectors live in (:data:`BASIS_MEMORY_SHARE`); when it would not,
        ``max_basis`` is set to what fits (at least top_k + 2), with a note, so a large model's density runs instead
        of exhausting memory."""
        if self.max_basis is not None or "density" not in self.metrics:
            return self, []
        vector = dimension * torch.empty((), dtype=compute_dtype(self.dtype)).element_size()
        budget = memory_bytes(self.device) * BASIS_MEMORY_SHARE
        needed = self.density_probes * self.density_steps * vector
        if not budget or needed <= budget:
            return self, []
        fits = max(int(budget // vector), self.top_k + 2)
        note = (f"the density's basis ({self.density_probes} × {self.density_steps} vectors of {dimension} "
                f"parameters, {needed / 2**30:.1f} GiB) would not fit in memory; {option('max_basis')} set to {fits}")
        return dataclasses.replace(self, max_basis=fits), [note]


def curvature(
    model: nn.Module,
    loss: Any,
    data: Any,
    settings: AnalysisSettings,
    *,
    params: Optional[Sequence[str]] = None,
    block: Optional[Block] = None,
    progress: Optional[bool] = None,
    runtime: Runtime = LOCAL,
) -> dict[str, Result]:
    """The requested metrics of the curvature matrix (``settings.curvature``, the Hessian by default) of the mean loss
    over ``data`` (over ``params``, or the coordinates of one parameter ``block``, when given), and the input-output
    Jacobian norms when asked for (of the whole model).

    Across processes (``runtime``), ``data`` is the whole data set on every rank; each rank builds the operator on its
    shard and every product is all-reduced (see :mod:`landscape.operators.distributed`); the Jacobian norms are
    computed by the writing rank alone."""
    params = block.params if block is not None else params
    op = runtime.curvature_operator(settings.curvature, model, loss, data, params=params, dtype=settings.dtype,
                                    device=settings.device, seed=settings.seed, compile=settings.compile)
    op = restrict(op, block, model)
    results: dict[str, Result] = {}
    if "eigs" in settings.metrics:
        eig = lanczos(op, min(settings.top_k, op.shape[0]), tol=settings.tol, max_basis=settings.max_basis,
                      seed=settings.seed, return_vectors=settings.save_vectors, progress=progress)
        results["eigen"] = eig
    if "trace" in settings.metrics:
        results["trace"] = trace(op, settings.trace_matvecs, method=settings.trace_method, seed=settings.seed,
                                 progress=progress)
    if "density" in settings.metrics:
        results["density"] = spectral_density(op, num_probes=settings.density_probes,
                                              num_steps=settings.density_steps, seed=settings.seed,
                                              reorthogonalize=settings.reorthogonalize, progress=progress)
    if "jacobian" in settings.metrics and params is None and runtime.is_writer:
        results["jacobian"] = jacobian(model, data, settings, progress=progress)
    op.release()
    if "sharpness" in settings.metrics and params is None and runtime.is_writer:
        for result in sharpness_measures(model, loss, data, settings, progress=progress):
            results[result.key] = result
    return results


def jacobian(model: nn.Module, data: Any, settings: AnalysisSettings, *, progress: Optional[bool] = None) -> Result:
    """Per-sample Jacobian norms over the data, with the layer-norm product bound where the architecture allows it."""
    return jacobian_norms(model, data, outputs=settings.jacobian_outputs, lipschitz_bound="if-supported",
                          dtype=settings.dtype, device=settings.device, seed=settings.seed, progress=progress)


def sharpness_measures(model: nn.Module, loss: Any, data: Any, settings: AnalysisSettings, *,
                       progress: Optional[bool] = None) -> list[SharpnessResult]:
    """Each flatness measure of ``settings.sharpness`` of the whole model over ``data`` (see
    :mod:`landscape.flatness`): worst- and average-case sharpness at radius ``rho`` (adaptive when asked; worst case
    per ``chunk_size`` chunk when given), the Fisher-Rao norm, relative flatness; seeded by ``settings.seed``."""
    common = {"dtype": settings.dtype, "device": settings.device, "progress": progress}
    results = []
    for kind in settings.sharpness:
        if kind in ADAPTIVE_KINDS:
            results.append(flatness.sharpness(
                model, loss, data, rho=settings.rho, kind=kind, adaptive=settings.adaptive,
                steps=settings.sharpness_steps, restarts=settings.sharpness_restarts,
                samples=settings.sharpness_samples, chunk_size=settings.chunk_size if kind == "worst" else None,
                seed=settings.seed, **common))
        elif kind == "fisher_rao":
            results.append(flatness.fisher_rao_norm(model, loss, data, **common))
        else:
            results.append(flatness.relative_flatness(model, loss, data, seed=settings.seed, **common))
    return results


def first_batch(data: Any) -> Any:
    """The first batch of a data set (a single ``(X, y)`` pair is its own first batch)."""
    for batch, _ in checked_batches(data):
        return batch
    raise AssertionError("checked_batches yields or raises")


def with_largest_token(batch: Any, data: LoadedData) -> Any:
    """For token data, ``batch`` with its first token set to the largest token of the whole data (when larger), so
    that the check of the first batch also catches a token beyond the model's vocabulary in a later batch."""
    if data.task != "language-model" or not isinstance(batch[0], torch.Tensor):
        return batch
    if data.num_classes is not None:
        largest = data.num_classes - 1
    elif isinstance(data.batches, TokenBatches):
        largest = data.batches.largest_token()
    else:
        return batch
    if int(batch[0].max()) >= largest:
        return batch
    tokens = batch[0].clone()
    tokens.view(-1)[0] = largest
    return (tokens, tokens) if torch.equal(batch[0], batch[1]) else (tokens, batch[1])


def check_pairing(checkpoint: Checkpoint, loss: Any, data: LoadedData) -> None:
    """Run the model and loss on the first batch (holding the data's largest token, for token data): wrong shapes,
    bad labels, a token beyond the vocabulary or a non-finite loss fail here, clearly."""
    model = checkpoint.model
    where = checkpoint.info.path
    param = next(model.parameters(), None)
    if param is None:
        raise LandscapeError(f"{where}: the model has no parameters")
    dtype = compute_dtype(param.dtype)  # a half-precision checkpoint is checked as it is computed: in float32
    batch = move_batch(with_largest_token(first_batch(data.batches), data), param.device, dtype)
    state = move_batch(dict(model.named_parameters()) | dict(model.named_buffers()), param.device, dtype)
    try:
        with no_grad_unless(loss):
            if not isinstance(loss, ModelLoss):
                check_targets(loss, call_with(model, state, batch[0]), batch[1])
            value = evaluate_loss(model, loss, state, batch)
    except LandscapeError as err:
        raise type(err)(f"{where} on {data.spec}: {err}") from None
    except Exception as err:  # the model's own code failing on this data: say where, keep the first line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if data.task == "language-model":  # an embedding's "index out of range" is a token beyond the vocabulary
            first += (f" (the largest token of {data.spec} is {int(batch[0].max())}: within the model's "
                      "vocabulary?)")
        raise LandscapeError(f"{where}: the model fails on a batch of {data.spec}: {first}") from None
    if not isinstance(value, torch.Tensor) or value.ndim != 0:
        raise LossError(f"the loss {loss_name(loss)} must return a scalar (the batch mean)")
    if not math.isfinite(float(value.detach())):
        raise LossError(f"{where}: the loss is {float(value.detach())} on the first batch of {data.spec}; "
                        "the checkpoint or the data holds NaN/inf or the model diverged")


def analyze_checkpoint(
    checkpoint: Checkpoint,
    loss: Any,
    data: LoadedData,
    settings: AnalysisSettings,
    *,
    progress: Optional[bool] = None,
    runtime: Runtime = LOCAL,
) -> tuple[dict[str, Result], dict[str, tuple[dict[str, Any], dict[str, Result]]], float, Optional[float]]:
    """Whole-model results, per-block results (when asked: each parameter block of
    :func:`~landscape.param_blocks.model_blocks` by name, with its attributes), and the loss and accuracy at the
    checkpoint (across processes: over every rank's shard of ``data``, see :func:`curvature`)."""
    model = checkpoint.model
    try:
        local = runtime.shard(data.batches)
        loss_value, accuracy = fit(model, loss, local, dtype=settings.dtype, device=settings.device)
        loss_value, accuracy = runtime.mean_fit(loss_value, accuracy, local,
                                                device=settings.device or next(model.parameters()).device)
        results = curvature(model, loss, data.batches, settings, progress=progress, runtime=runtime)
        layers = {}
        if settings.per_layer:
            for order, block in enumerate(model_blocks(model)):
                layers[block.name] = (block.attrs(order), curvature(model, loss, data.batches, settings, block=block,
                                                                    progress=progress, runtime=runtime))
    except LandscapeError as err:
        raise type(err)(f"{checkpoint.info.path}: {err}") from None
    return results, layers, loss_value, accuracy


def checkpoint_attrs(checkpoint: Checkpoint, data: LoadedData, loss: Any, settings: AnalysisSettings,
                     command: Optional[str]) -> dict[str, Any]:
    """Provenance of one checkpoint's results: the file, the model, the data, the loss, the settings, the run."""
    model = checkpoint.model
    return {
        **checkpoint_provenance(checkpoint),
        "data": data.spec,
        "data_description": data.description,
        "num_samples": data.num_samples,
        "loss_function": loss_name(loss),
        "command": command,
        "analyzed": store.now(),
        **settings.as_attrs(),
        "device": str(settings.device or next(model.parameters()).device),
    }


def already_done(output: Path, checkpoint_paths: Iterable[Path], settings: AnalysisSettings) -> set[str]:
    """Checkpoint files whose results (same sha256, every requested metric) the output file already holds."""
    if not output.exists():
        return set()
    wanted = settings.groups()
    held = {
        (record.attrs.get("path"), record.attrs.get("sha256"))
        for record in store.read_results(output).values()
        if wanted <= set(record.results) and (not settings.per_layer or record.layers)
    }
    done = set()
    for path in checkpoint_paths:
        if (str(path.resolve()), file_sha256(path)) in held:
            done.add(str(path))
    return done


def analyze(
    checkpoints: Sequence[str],
    *,
    data: LoadedData,
    loss: Any,
    output: str,
    settings: AnalysisSettings,
    model_spec: Optional[str] = None,
    model_kwargs: Optional[Mapping[str, Any]] = None,
    trust: bool = False,
    resume: bool = False,
    command: Optional[str] = None,
    progress: Optional[bool] = None,
    report: Any = None,
    note: Any = None,
    runtime: Runtime = LOCAL,
    test_data: Optional[LoadedData] = None,
) -> list[CheckpointSummary]:
    """Analyse every checkpoint and add its results to ``output``, one atomic write per checkpoint.

    Every input is checked before any computation (each checkpoint is loaded and run on the first batch), so a bad
    file or option never leaves a partial output. ``resume`` skips checkpoints whose results are already stored.
    ``report(message)`` receives a line per checkpoint as it completes; ``note(message)`` a line, before any work,
    for each option adjusted to a checkpoint (--top-k or --density-steps beyond its number of parameters are
    clipped to it; its results record the values used and the notes).

    ``runtime``: across processes (a :class:`~landscape.distributed.Runtime` of several ranks), called on every rank
    of the process group with the same arguments (``data`` the whole data set); each rank works on its shard of the
    data, the curvature products are all-reduced, and the writing rank (rank 0) alone reports, shows progress and
    writes ``output`` (the other ranks return the same summaries).

    ``test_data``: a held-out split (the test split of the data analysed); each checkpoint's mean loss and accuracy
    on it are recorded too (``test_loss``, ``test_accuracy``), which ``landscape compare`` shows beside the training
    ones.
    """
    writer = runtime.is_writer
    if not writer:
        report, note, progress = None, None, False
    out_path = store.check_writable(output) if writer else Path(output)
    paths = find_checkpoints(checkpoints)
    skip = already_done(out_path, paths, settings) if resume and writer else set()
    skip = runtime.broadcast(skip)  # the writer reads the output file; every rank skips the same checkpoints

    def load(path: Path) -> Checkpoint:
        return load_checkpoint(path, model_spec=model_spec, model_kwargs=model_kwargs, trust=trust)

    def fitted(checkpoint: Checkpoint) -> tuple[AnalysisSettings, list[str]]:
        return settings.fit_to(sum(p.numel() for p in checkpoint.model.parameters() if p.requires_grad))

    for path in paths:
        if str(path) not in skip:
            checkpoint = load(path)
            check_pairing(checkpoint, loss, data)
            for line in fitted(checkpoint)[1] if note else ():
                note(f"note: {path}: {line}")
    summaries = []
    for index, path in enumerate(paths, 1):
        if str(path) in skip:
            if report:
                report(f"[{index}/{len(paths)}] {path}: already in {out_path}, skipped ({option('resume')})")
            continue
        start = time.perf_counter()
        checkpoint = load(path)
        if report:
            report(f"[{index}/{len(paths)}] {path}: analysing {checkpoint.info.format}, step {checkpoint.info.step}")
        used, notes = fitted(checkpoint)
        results, layers, loss_value, accuracy = analyze_checkpoint(checkpoint, loss, data, used, progress=progress,
                                                                   runtime=runtime)
        seconds = time.perf_counter() - start
        attrs = checkpoint_attrs(checkpoint, data, loss, used, command)
        attrs.update(loss=loss_value, accuracy=accuracy, seconds=seconds, notes=notes or None, **runtime.as_attrs())
        if test_data is not None and writer:
            test_loss, test_accuracy = fit(checkpoint.model, loss, test_data.batches, dtype=used.dtype,
                                           device=used.device)
            attrs.update(test_loss=test_loss, test_accuracy=test_accuracy, test_data=test_data.description)
        name = checkpoint.info.name
        if writer:
            with store.update_results(out_path) as handle:
                name = store.write_checkpoint(handle, checkpoint.info.name, results, attrs=attrs, layers=layers)
        summaries.append(CheckpointSummary(name, checkpoint.info.step, loss_value, accuracy, results, seconds))
        if report:
            report(f"[{index}/{len(paths)}] {path}: done in {seconds:.1f} s")
    return summaries
