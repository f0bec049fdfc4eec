"""Training with curvature tracking: progressive sharpening and the edge of stability, resumable to the bit.

Each step draws a mini-batch from a seeded permutation of the training set (or uses all of it: full-batch gradient
descent), takes one optimizer step (any optimizer of :mod:`landscape.optim.registry`), appends the step's loss to the
run file, and every ``track_every`` steps appends a curvature record (:mod:`landscape.tracking`). Checkpoints in the
toolkit's format hold the model, the optimizer, the schedule, the data order, torch's random state and the tracker's
warm-start vector, so ``resume`` continues a killed run exactly as if it had never stopped (on CPU).

Under ``torchrun`` (a ``runtime`` of several processes) every rank trains the same parameters on its part of each
batch, with gradients averaged across ranks (:mod:`landscape.distributed`), and tracks curvature on its shard of the
data with all-reduced products; rank 0 alone writes the run file and the checkpoints and shows progress.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

from landscape import store
from landscape.checkpoints import build_model, load_training_state, save_checkpoint
from landscape.data import load_data
from landscape.devices import dtype_name
from landscape.distributed import LOCAL, Runtime
from landscape.errors import DataError, LandscapeError, LossError, OptionError, option
from landscape.losses import check_targets, loss_name, resolve_loss
from landscape.operators.evaluation import no_grad_unless
from landscape.operators.functional import ModelLoss, eval_mode
from landscape.optim.registry import build_optimizer, not_data_parallel, resolve_hyperparameters, training_step
from landscape.progress import progress_bar
from landscape.results import TrainResult
from landscape.tokens import TokenBatches
from landscape.tracking import CurvatureTracker, TrackerSettings

SCHEDULES = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class TrainSettings:
    """How to train and what to record; stored with the run and checked on resume."""

    optimizer: str = "sgd"
    lr: float = 0.1
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    steps: int = 1000
    batch_size: Optional[int] = None  # None: full-batch gradient descent
    schedule: str = "constant"
    warmup: int = 0
    track_every: int = 50  # 0: no curvature records
    tracker: TrackerSettings = TrackerSettings()
    save_every: int = 0  # 0: a checkpoint at the end only
    target_loss: Optional[float] = None
    target_accuracy: Optional[float] = None
    divergence_factor: float = 1e3
    seed: int = 0

    def __post_init__(self) -> None:
        resolve_hyperparameters(self.optimizer, dict(self.hyperparameters))
        for name in ("steps",):
            if getattr(self, name) < 1:
                raise OptionError(f"{option(name)} must be a positive integer, got {getattr(self, name)}")
        for name in ("track_every", "save_every", "warmup"):
            if getattr(self, name) < 0:
                raise OptionError(f"{option(name)} must be 0 or more, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise OptionError(f"{option('lr')} must be a positive number, got {self.lr}")
        if self.seed < 0:
            raise OptionError(f"{option('seed')} must be 0 or more, got {self.seed}")
        if not self.divergence_factor > 1:
            raise OptionError(f"divergence_factor must be more than 1, got {self.divergence_factor}")
        if self.batch_size is not None and self.batch_size < 1:
            raise OptionError(f"{option('batch_size')} must be a positive integer, got {self.batch_size}")
        if self.schedule not in SCHEDULES:
            raise OptionError(f"{option('schedule')} must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")

    def as_attrs(self) -> dict[str, Any]:
        attrs = asdict(self)
        attrs["hyperparameters"] = resolve_hyperparameters(self.optimizer, dict(self.hyperparameters))
        attrs["tracker"] = {k: (dtype_name(v) if isinstance(v, torch.dtype) else v)
                            for k, v in asdict(self.tracker).items()}
        return attrs


def lr_factor(schedule: str, warmup: int, steps: int) -> Callable[[int], float]:
    """The multiplier of the base learning rate after ``k`` steps: linear warm-up, then constant, cosine or linear."""

    def factor(k: int) -> float:
        if k < warmup:
            return (k + 1) / warmup
        progress = (k - warmup) / max(1, steps - warmup)
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if schedule == "linear":
            return max(0.0, 1 - progress)
        return 1.0

    return factor


def in_memory(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Training draws its own batches, so it needs the data as one ``(X, y)`` pair (a list of batches is joined,
    token sequences read from disk are read whole)."""
    if isinstance(data, TokenBatches):
        return data.tensors()
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return data[0], data[1]
    if isinstance(data, list) and data:
        return torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    raise DataError("training needs the data set in memory as (X, y) tensors; a DataLoader is not supported here")


class BatchOrder:
    """Mini-batches from seeded permutations of the training set, epoch after epoch; resumable from its state."""

    def __init__(self, size: int, batch_size: Optional[int], seed: int) -> None:
        self.size = size
        self.batch_size = size if batch_size is None else min(batch_size, size)
        self.generator = torch.Generator().manual_seed(seed)
        self.permutation = torch.randperm(size, generator=self.generator)
        self.position = 0

    def next(self) -> Optional[torch.Tensor]:
        """Indices of the next batch, or None for full-batch training (all samples, in order)."""
        if self.batch_size == self.size:
            return None
        if self.position + self.batch_size > self.size:
            self.permutation = torch.randperm(self.size, generator=self.generator)
            self.position = 0
        index = self.permutation[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return index

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "permutation": self.permutation, "position": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.permutation = state["permutation"]
        self.position = int(state["position"])


CHECKPOINT_NAME = re.compile(r"step_(\d+)\.pt")


def latest_checkpoint(folder: Path) -> Optional[Path]:
    """The checkpoint with the highest step in ``folder``: only files named ``step_<N>.pt`` count, so other files
    there (``step_best.pt``, ``notes.pt``) are ignored."""
    steps = {int(match[1]): p for p in folder.glob("step_*.pt")
             if (match := CHECKPOINT_NAME.fullmatch(p.name)) and p.is_file()}
    return steps[max(steps)] if steps else None


class _NoWriter:
    """What ranks other than 0 hold in place of a :class:`~landscape.store.RunWriter`: they write nothing."""

    def append(self, table: str, row: Mapping[str, Any]) -> None:
        pass

    def set_attrs(self, table: str, attrs: Mapping[str, Any]) -> None:
        pass

    def __enter__(self) -> "_NoWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class Trainer:
    """One training run: the model, data, loss, optimizer, schedule, tracker, run file and checkpoints.

    ``runtime``: across processes, constructed and run on every rank of the process group with the same arguments.
    """

    def __init__(self, model: nn.Module, loss: Any, train_data: Any, test_data: Any, settings: TrainSettings, *,
                 output: str | Path, checkpoint_dir: Optional[str | Path] = None, model_spec: Optional[str] = None,
                 model_kwargs: Optional[Mapping[str, Any]] = None, dtype: torch.dtype = torch.float32,
                 device: Optional[str] = None, attrs: Optional[Mapping[str, Any]] = None,
                 runtime: Runtime = LOCAL) -> None:
        if runtime.distributed and settings.optimizer == "sa":
            raise OptionError(not_data_parallel())
        self.settings = settings
        self.device = torch.device(device or "cpu")
        self.model = model.to(device=self.device, dtype=dtype)
        self.loss = loss
        X, y = in_memory(train_data)
        self.X, self.y = X.to(self.device, dtype if X.is_floating_point() else X.dtype), y.to(self.device)
        if y.is_floating_point():
            self.y = self.y.to(dtype)
        self.test_data = test_data
        self.output = Path(output)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else self.output.with_name(
            f"{self.output.stem}_checkpoints")
        self.model_spec, self.model_kwargs = model_spec, dict(model_kwargs or {})
        self.attrs = {**(attrs or {}), "settings": json.dumps(settings.as_attrs(), default=str),
                      "dtype": dtype_name(dtype), "device": str(self.device)}
        torch.manual_seed(settings.seed)  # dropout and any other draw from torch's global generator
        self.optimizer = build_optimizer(settings.optimizer, self.model, lr=settings.lr, seed=settings.seed,
                                         loss=loss, **dict(settings.hyperparameters))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(settings.schedule, settings.warmup, settings.steps))
        self.order = BatchOrder(len(self.X), settings.batch_size, settings.seed)
        self.model.train()  # dropout and BatchNorm as in training; the tracker measures in eval mode
        tracker_settings = TrackerSettings(**{**asdict(settings.tracker), "seed": settings.seed,
                                              "dtype": settings.tracker.dtype or dtype, "device": str(self.device)})
        self.tracker = CurvatureTracker(loss, (self.X, self.y), test_data, tracker_settings, runtime=runtime)
        self.runtime = runtime
        self.writer = runtime.is_writer
        self.attrs.update(runtime.as_attrs())
        self.step = 0
        self.first_loss: Optional[float] = None

    # -- checkpoints ----------------------------------------------------------------------------------------
    def save(self) -> Path:
        """Write a checkpoint of the whole training state (rank 0 only, under torchrun); returns its path."""
        path = self.checkpoint_dir / f"step_{self.step}.pt"
        if not self.writer:
            return path
        save_checkpoint(path, self.model, step=self.step, model_spec=self.model_spec, model_kwargs=self.model_kwargs,
                        optimizer_state=self.optimizer.state_dict(),
                        extra={"scheduler": self.scheduler.state_dict(), "order": self.order.state_dict(),
                               "tracker": self.tracker.state_dict(), "torch_rng": torch.get_rng_state(),
                               "first_loss": self.first_loss})
        return path

    def restore(self, path: Path, *, trust: bool = False) -> None:
        """Continue from a checkpoint :meth:`save` wrote (weights-only; ``trust`` allows one that needs code)."""
        state = load_training_state(path, trust=trust)
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        extra = state["extra"]
        self.scheduler.load_state_dict(extra["scheduler"])
        self.order.load_state_dict(extra["order"])
        self.tracker.load_state_dict(extra["tracker"])
        torch.set_rng_state(extra["torch_rng"])
        self.first_loss = extra["first_loss"]
        self.step = int(state["step"])

    # -- the loop -------------------------------------------------------------------------------------------
    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (whole) batch."""
        index = self.order.next()
        return (self.X, self.y) if index is None else (self.X[index], self.y[index])

    def _track(self, writer: store.RunWriter) -> Optional[str]:
        """Append a curvature record; the stop reason if a target is reached."""
        record = self.tracker.measure(self.model, self.step)
        writer.append("run/curvature", record)
        s = self.settings
        if s.target_loss is not None and record["train_loss"] <= s.target_loss:
            return f"train loss {record['train_loss']:.4g} <= target {s.target_loss}"
        accuracy = record.get("train_accuracy")
        if s.target_accuracy is not None and accuracy is not None and accuracy >= s.target_accuracy:
            return f"train accuracy {accuracy:.4g} >= target {s.target_accuracy}"
        return None

    def _projection(self) -> float:
        """⟨θ, v⟩ with v the top eigenvector of the latest curvature record (in the tracker's parameter order)."""
        params = [p.detach() for p in self.model.parameters() if p.requires_grad]
        parts = self.tracker.top_vector.split([p.numel() for p in params])
        return float(sum((p.reshape(-1).to(v.dtype) @ v) for p, v in zip(params, parts)))

    def _check_loss(self, value: float) -> None:
        if self.first_loss is None:
            if not math.isfinite(value):
                raise LossError(f"the loss is {value} at the first step, before any update: the data or the "
                                "model's initial parameters hold NaN/inf")
            self.first_loss = value
        if not math.isfinite(value) or value > self.settings.divergence_factor * max(self.first_loss, 1e-12):
            raise LossError(f"training diverged at step {self.step}: loss {value:.4g} (first loss "
                            f"{self.first_loss:.4g}); the records so far are in {self.output} and the last good "
                            f"checkpoint in {self.checkpoint_dir}; lower {option('lr')}")

    def run(self, *, resume: bool = False, trust: bool = False, progress: Optional[bool] = None) -> TrainResult:
        """Train to ``settings.steps`` (or a target), appending records; with ``resume``, from the last checkpoint
        (or from step 0 when the run stopped before its first one), loaded weights-only unless ``trust``.

        If anything fails before the first step is complete, a run file this call created is removed again (with the
        checkpoint folder, when this call created it and it is empty); a resumed run's file is never removed.
        """
        start = time.perf_counter()
        s = self.settings
        self._check_pairing()
        restored = False
        if resume:
            writer, restored = self._resume_writer(trust)
        else:
            writer = store.RunWriter(self.output, self.attrs) if self.writer else _NoWriter()
        created = not resume and self.writer
        folder_existed = self.checkpoint_dir.exists()
        first_step_done = False
        checkpoint, stop = None, None
        bar = progress_bar(s.steps, "training", progress if self.writer else False, unit="step")
        bar.update(self.step)
        try:
            with writer:
                if s.track_every and self.step % s.track_every == 0 and not restored:
                    stop = self._track(writer)
                while stop is None and self.step < s.steps:
                    batch, reduce = self.runtime.split_batch(self._batch(), self.model)  # this rank's part
                    loss_value, used = training_step(self.optimizer, self.model, self.loss, batch, reduce=reduce)
                    self.runtime.sync_buffers(self.model)
                    lr = self.optimizer.param_groups[0]["lr"]
                    self.scheduler.step()
                    self.step += 1
                    row = {"step": self.step, "loss": loss_value, "lr": lr, "grad_evals": used}
                    if self.tracker.top_vector is not None:  # the iterate along the top eigenvector (SAM's bouncing)
                        row["top_projection"] = self._projection()
                    writer.append("run", row)
                    try:
                        self._check_loss(loss_value)
                    except LossError as err:
                        writer.set_attrs("run", {"stop_reason": str(err), "final_step": self.step})
                        raise
                    first_step_done = True
                    bar.update(1)
                    if s.track_every and self.step % s.track_every == 0:
                        stop = self._track(writer)
                    if s.save_every and self.step % s.save_every == 0:
                        checkpoint = self.save()
                stop = stop or f"reached {s.steps} steps"
                if checkpoint is None or checkpoint.stem != f"step_{self.step}":
                    checkpoint = self.save()
                writer.set_attrs("run", {"stop_reason": stop, "final_step": self.step})
        except BaseException:
            if created and not first_step_done:
                self._remove_partial_run(folder_existed)
            raise
        finally:
            bar.close()
        return TrainResult(self.step, stop, checkpoint, time.perf_counter() - start)

    def _check_pairing(self) -> None:
        """Run the model and the loss on the first training batch (in eval mode, without gradients unless the loss
        is a model loss) before any file is written, so that a model that does not fit the data, bad labels or a
        non-finite loss fail in one line."""
        inputs, targets = self.X[:self.order.batch_size], self.y[:self.order.batch_size]
        try:
            with no_grad_unless(self.loss), eval_mode(self.model):
                if isinstance(self.loss, ModelLoss):
                    value = self.loss(self.model, (inputs, targets))
                else:
                    outputs = self.model(inputs)
                    check_targets(self.loss, outputs, targets)
                    value = self.loss(outputs, targets)
        except LandscapeError:
            raise
        except Exception as err:  # the model's or the loss's own code failing on this data: keep the first line
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DataError(f"the model fails on the training data: {first}; check "
                            f"{option('model_spec', '--model')}, {option('model_kwargs')}, "
                            f"{option('data_spec', '--data')} and {option('loss_spec', '--loss')}") from None
        if not isinstance(value, torch.Tensor) or value.ndim != 0:
            raise LossError(f"the loss {loss_name(self.loss)} must return a scalar (the batch mean)")
        value = value.detach()
        if not math.isfinite(float(value)):
            raise LossError(f"the loss is {float(value)} on the first training batch, before any update: the data "
                            "or the model's initial parameters hold NaN/inf")

    def _remove_partial_run(self, folder_existed: bool) -> None:
        """Remove what a run that failed before its first step left: its run file and, when this run created it and
        it is still empty, its checkpoint folder (rank 0 only)."""
        self.output.unlink(missing_ok=True)
        if not folder_existed and self.checkpoint_dir.is_dir() and not any(self.checkpoint_dir.iterdir()):
            self.checkpoint_dir.rmdir()

    def _resume_writer(self, trust: bool) -> tuple[store.RunWriter | _NoWriter, bool]:
        """The run file opened to continue it, and whether a checkpoint was restored: from the last checkpoint the
        records after it are dropped; with none yet (the run stopped before its first), training starts again from
        step 0 and every record is dropped (the run's attributes stay)."""
        if not self.output.exists():
            raise OptionError(f"{option('resume')}: there is no run file {self.output} to continue; start the run "
                              f"without {option('resume')}")
        saved = json.loads(store.read_run(self.output).attrs.get("settings", "{}"))
        mine = json.loads(self.attrs["settings"])
        changed = sorted(k for k in mine if k not in ("steps", "target_loss", "target_accuracy")
                         and saved.get(k) != mine[k])
        if changed:
            raise OptionError(f"{option('resume')} with settings that differ from the run in {self.output}: "
                              f"{', '.join(changed)}; resume with the original options")
        last = latest_checkpoint(self.checkpoint_dir)
        if last is not None:
            self.restore(last, trust=trust)
        if not self.writer:
            return _NoWriter(), last is not None
        writer = store.RunWriter(self.output, self.attrs, resume=True)
        keep = self.step if last is not None else -1  # -1: no record at all, not even step 0's curvature
        writer.truncate("run", keep)
        writer.truncate("run/curvature", keep)
        return writer, last is not None


def train(
    model_spec: str,
    data_spec: str,
    settings: TrainSettings,
    *,
    output: str | Path,
    model_kwargs: Optional[Mapping[str, Any]] = None,
    loss_spec: Optional[str] = None,
    subset: Optional[int] = None,
    seq_len: Optional[int] = None,
    checkpoint_dir: Optional[str | Path] = None,
    dtype: torch.dtype = torch.float32,
    device: Optional[str] = None,
    resume: bool = False,
    trust: bool = False,
    command: Optional[str] = None,
    progress: Optional[bool] = None,
    runtime: Runtime = LOCAL,
) -> TrainResult:
    """Train the model ``model_spec`` names (built with ``model_kwargs``, initialised from ``settings.seed``) on the
    train split of the data ``data_spec`` names (a random ``subset`` of it, chosen with the seed, when given),
    evaluating its test split when it has one, with the loss ``loss_spec`` names (default: the data's); ``seq_len``
    cuts a token stream into sequences of that many tokens (see :func:`~landscape.data.load_data`); the run goes
    to ``output`` and the checkpoints to ``checkpoint_dir`` (see :class:`Trainer`).

    ``resume`` continues the run in ``output`` from its last checkpoint (``trust``: allow one that needs code to
    load); ``command`` is recorded in the run file. ``runtime``: across processes, called on every rank of the process
    group with the same arguments (see :class:`Trainer`); rank 0 alone writes.
    """
    if not resume:
        store.check_writable(output)
    model_kwargs = dict(model_kwargs or {})
    train_data = load_data(data_spec, split="train", subset=subset, seed=settings.seed, seq_len=seq_len)
    test_data = _test_split(data_spec, seq_len)
    loss = resolve_loss(loss_spec, train_data.task)
    torch.manual_seed(settings.seed)
    model = build_model(model_spec, model_kwargs)
    trainer = Trainer(model, loss, train_data.batches, test_data, settings, output=output,
                      checkpoint_dir=checkpoint_dir, model_spec=model_spec, model_kwargs=model_kwargs, dtype=dtype,
                      device=device, runtime=runtime,
                      attrs={"command": command, "model_spec": model_spec, "model_kwargs": model_kwargs,
                             "data": train_data.spec, "data_description": train_data.description,
                             "loss_function": loss_name(loss),
                             "num_params": sum(p.numel() for p in model.parameters())})
    return trainer.run(resume=resume, trust=trust, progress=progress)


def _test_split(spec: str, seq_len: Optional[int]) -> Optional[Any]:
    """The data's test split when it has one (else None: files and built-ins without a test split train only)."""
    try:
        return load_data(spec, split="test", seq_len=seq_len).batches
    except (OptionError, DataError):
        return None
