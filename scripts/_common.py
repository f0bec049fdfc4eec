"""What more than one script in scripts/ uses: the reference workloads of the benchmarks (bench_engine, bench_peers)
and the full-batch gradient-descent runs of the sharpening studies (edge_of_stability, sharpening_and_jacobian).

A script run as ``python scripts/NAME.py`` finds this module beside it (Python puts the script's folder first on
``sys.path``); the tests find it through ``pythonpath`` in setup.cfg.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from landscape import store
from landscape.errors import LandscapeError, LossError
from landscape.models import cnn, mlp
from landscape.tracking import TrackerSettings

# -- the reference workloads of the benchmarks ------------------------------------------------------------------
# W3's top-5 from scipy eigsh in float64 with tol 0 (shared/bench/README.md): no dense answer exists for 1.08M params.
W3_TOP5 = np.array([0.1108068, 0.0867240, 0.0707441, 0.0535318, 0.0483125])


def load_workload(bench: Path, name: str,
                  device: torch.device = torch.device("cpu")) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """Reference workload ``name`` (w1, w2 or w3 of ``bench``): the model with its weights, in eval mode, and the
    digits data as one batch, on ``device``."""
    data = np.load(bench / "digits.npz")
    X, y = torch.as_tensor(data["X"]), torch.as_tensor(data["y"])
    model = {"w1": lambda: mlp((64, 128, 128, 10)), "w2": cnn, "w3": lambda: mlp((64, 1000, 1000, 10))}[name]()
    if name == "w2":
        X = X.reshape(-1, 1, 8, 8)
    model.load_state_dict(torch.load(bench / f"{name}.pt", weights_only=True))
    return model.eval().to(device), (X.to(device), y.to(device))


def fastest_seconds(calls: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """The fastest of ``repeats`` timed calls of each function, after one untimed call each (CUDA synchronised).
    The functions take turns, round after round, so a burst of load from other processes slows all of them alike,
    and the minimum is the figure least disturbed by it."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in calls.values():
        fn()
    best = {name: math.inf for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def fmt_time(seconds: float) -> str:
    """A duration for tables: milliseconds below a second, else seconds."""
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


# -- full-batch gradient-descent runs of the sharpening studies ---------------------------------------------------
DIGITS_SIZES = (64, 128, 128, 10)
DIGITS_SUBSET = 1000
TOLERANCE = 0.05  # "within 5% of 2/η"


@dataclass(frozen=True)
class Experiment:
    """One training run of the study and the target it is judged against."""

    family: str  # "chebyshev" or "digits"
    lr: float
    steps: int
    track_every: int
    target: str  # "settle" (expected to reach 2/η and stay near it) or "rise" (expected to keep rising below it)
    model: str = "chebyshev"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "chebyshev"
    subset: Optional[int] = None

    @property
    def name(self) -> str:
        return f"{self.family} η={self.lr:g}"

    def filename(self, seed: int) -> str:
        return f"{self.family}_lr{self.lr:g}_steps{self.steps}_every{self.track_every}_seed{seed}.h5"


@dataclass(frozen=True)
class Recording:
    """What a script's runs record and how their files are labelled; a run file is complete only for the same one."""

    command: str  # the script; the run file's "command" attr is f"{command} ({exp.name})"
    tracker: TrackerSettings = TrackerSettings(trace_matvecs=0)  # λmax only, no trace
    report_records: bool = False  # log the number of curvature records and their mean cost after training

    def label(self, exp: Experiment) -> str:
        return f"{self.command} ({exp.name})"


def train_settings(exp: Experiment, seed: int, recording: Recording) -> Any:
    """Full-batch gradient descent for ``exp`` with ``recording``'s tracker."""
    from landscape.train import TrainSettings

    return TrainSettings(optimizer="sgd", lr=exp.lr, steps=exp.steps, batch_size=None,
                         track_every=exp.track_every, tracker=recording.tracker, seed=seed)


def build_trainer(exp: Experiment, path: Path, seed: int, recording: Recording) -> Any:
    """The Trainer for one run, built as ``landscape train`` builds it (so the run file is the same)."""
    from landscape.checkpoints import build_model
    from landscape.data import load_data
    from landscape.losses import loss_name, resolve_loss
    from landscape.train import Trainer

    data = load_data(exp.data, split="train", subset=exp.subset, seed=seed)
    loss = resolve_loss("squared", data.task)
    torch.manual_seed(seed)
    model = build_model(exp.model, exp.model_kwargs)
    attrs = {"command": recording.label(exp), "experiment": exp.name,
             "model_spec": exp.model, "model_kwargs": exp.model_kwargs, "data": data.spec,
             "data_description": data.description, "loss_function": loss_name(loss),
             "num_params": sum(p.numel() for p in model.parameters())}
    return Trainer(model, loss, data.batches, None, train_settings(exp, seed, recording), output=path,
                   model_spec=exp.model, model_kwargs=exp.model_kwargs, attrs=attrs)


def expected_settings(exp: Experiment, seed: int, recording: Recording) -> dict[str, Any]:
    """The settings a complete run file of ``exp`` stores (as read back from JSON)."""
    return json.loads(json.dumps(train_settings(exp, seed, recording).as_attrs(), default=str))


def is_complete(exp: Experiment, path: Path, seed: int, recording: Recording) -> tuple[bool, str]:
    """Whether ``path`` holds a finished run of ``exp`` written with ``recording`` (all steps, or a recorded
    divergence); else why not."""
    if not path.exists():
        return False, "no run file"
    try:
        record = store.read_run(path)
    except LandscapeError as err:
        return False, f"unreadable ({err})"
    attrs = record.attrs
    try:
        settings = json.loads(attrs.get("settings") or "{}")
    except json.JSONDecodeError:
        return False, "settings not readable"
    if settings != expected_settings(exp, seed, recording):
        return False, "different settings"
    if (attrs.get("experiment") != exp.name or attrs.get("command") != recording.label(exp)
            or attrs.get("model_kwargs") != exp.model_kwargs):
        return False, "a different experiment"
    reason = str(attrs.get("stop_reason", ""))
    if not reason:
        return False, "unfinished (killed?)"
    if attrs.get("final_step") != exp.steps and "diverged" not in reason:
        return False, f"stopped early: {reason}"
    return True, reason


def remove_run(path: Path) -> None:
    """Delete a run file and its checkpoint folder."""
    path.unlink(missing_ok=True)
    shutil.rmtree(path.with_name(f"{path.stem}_checkpoints"), ignore_errors=True)


def log(text: str) -> None:
    """One line of progress, printed at once."""
    print(text, flush=True)


def train_runs(runs: list[Experiment], paths: dict[str, Path], seed: int, force: bool,
               train_one: Callable[..., None]) -> list[Experiment]:
    """Train every run with ``train_one(exp, path, seed, force, log)``; returns the runs that failed (reported)."""
    failed = []
    for exp in runs:
        try:
            train_one(exp, paths[exp.name], seed, force, log)
        except LandscapeError as err:
            log(f"  {exp.name}: error: {err}")
            failed.append(exp)
    return failed


def train(exp: Experiment, path: Path, seed: int, force: bool, log: Callable[[str], None],
          recording: Recording) -> None:
    """Train ``exp`` into ``path`` with ``recording`` unless a complete run is already there (or ``force``)."""
    complete, why = is_complete(exp, path, seed, recording)
    if complete and not force:
        log(f"  {exp.name:18s} kept      {path}  ({why})")
        return
    if path.exists():
        log(f"  {exp.name:18s} retrain   {path}  ({'--force' if complete else why})")
        remove_run(path)
    start = time.perf_counter()
    trainer = build_trainer(exp, path, seed, recording)
    try:
        result = trainer.run(progress=False)
        outcome = result.stop_reason
    except LossError as err:  # the records up to the divergence are in the file; the table shows them
        outcome = f"diverged: {err}"
    records = ""
    if recording.report_records:
        seconds = store.read_run(path).tables["run/curvature"]["seconds"]
        records = f", {len(seconds)} records at {1000 * float(np.mean(seconds)):.0f} ms each"
    log(f"  {exp.name:18s} trained   {path}  {exp.steps} steps in {time.perf_counter() - start:.1f} s{records} "
        f"({outcome})")


def limit_threads(threads: int) -> None:
    """Use ``threads`` torch threads and as many BLAS threads (Lanczos calls numpy's eigh between products)."""
    torch.set_num_threads(max(1, threads))
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=max(1, threads))
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass
