"""Reproduce progressive sharpening and the edge of stability (Cohen et al. 2021) and draw the paper figures.

Full-batch gradient descent with step η: the sharpness λmax (largest Hessian eigenvalue of the training loss) rises
during training until it reaches about 2/η, then hovers there while the loss keeps falling, non-monotonically.

Two experiments, trained through the Python API with λmax tracked by warm-started Lanczos (no trace):

* the Chebyshev toy (20 points of T4 on [-1, 1], net 1 → 100 tanh → 1, squared loss ½(f − y)²) at η = 0.2 and
  0.1 for 20,000 steps and η = 0.05 for 70,000 steps (before it meets 2/η, λmax follows the product η·steps, and
  at η = 0.05 it passes 30 only near 63,000 steps), λmax every 200 steps;
* the digits MLP 64 → 128 → 128 → 10 (tanh) on a 1000-sample subset of the digits training split, squared loss on
  one-hot targets, at η = 0.2 and 0.1 for 10,000 steps, λmax every 100 steps.

The run files go to --data-dir (a run whose file is already there and complete, with the same settings, is not
trained again, so a rerun only redraws; --force retrains), the figures to --out as eos_chebyshev.{png,pdf} and
eos_digits.{png,pdf}, and a table compares each run with 2/η and with the targets:

* Chebyshev η = 0.2 and 0.1: λmax rises from about 2.9 and its mean over the last 25% of the records is within 5%
  of 2/η by 20,000 steps;
* Chebyshev η = 0.05: λmax keeps rising, past 30 by the end of the run;
* digits at both step sizes: λmax rises (starts below 2/η / 2) and then hovers within 5% of 2/η.

About 4 minutes on one CPU core (the Chebyshev runs take ~1.3 ms a step, the digits runs ~4 ms); --quick runs
short versions (under a minute, figures with a _quick suffix, targets not judged). Exit status 0 unless a run
could not be trained; a missed target is reported in the table, not as an error.

    python scripts/edge_of_stability.py --out figures/ --data-dir eos_runs/
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

if __name__ == "__main__" and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch starts its thread pool; --threads can raise it

import torch  # noqa: E402

from landscape import store  # noqa: E402
from landscape.errors import LandscapeError, LossError  # noqa: E402
from landscape.report import format_table  # noqa: E402
from landscape.tracking import TrackerSettings  # noqa: E402

DIGITS_SIZES = (64, 128, 128, 10)
DIGITS_SUBSET = 1000
TOLERANCE = 0.05  # "within 5% of 2/η"
PAST = 30.0  # "for η = 0.05 it keeps rising past 30"
COMMAND = "scripts/edge_of_stability.py"


@dataclass(frozen=True)
class Experiment:
    """One training run of the study and the target it is judged against."""

    family: str  # "chebyshev" or "digits"
    lr: float
    steps: int
    track_every: int
    target: str  # "settle" (mean of the last 25% within 5% of 2/η, after rising) or "rise" (final λmax > PAST)
    model: str = "chebyshev"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "chebyshev"
    subset: Optional[int] = None

    @property
    def name(self) -> str:
        return f"{self.family} η={self.lr:g}"

    def filename(self, seed: int) -> str:
        return f"{self.family}_lr{self.lr:g}_steps{self.steps}_every{self.track_every}_seed{seed}.h5"


def experiments(quick: bool) -> list[Experiment]:
    """The study's runs; ``quick`` shortens every run (a smoke test: too short to reach the targets)."""
    cheb = 2000 if quick else 20000
    cheb_long = 4000 if quick else 70000  # η = 0.05 passes 30 near 63k steps (λmax follows η·steps until 2/η)
    digits_steps = 1000 if quick else 10000
    cheb_every = 100 if quick else 200
    digits_kwargs = {"model": "mlp", "model_kwargs": {"sizes": list(DIGITS_SIZES)}, "data": "digits",
                     "subset": DIGITS_SUBSET}
    return [
        Experiment("chebyshev", 0.2, cheb, cheb_every, "settle"),
        Experiment("chebyshev", 0.1, cheb, cheb_every, "settle"),
        Experiment("chebyshev", 0.05, cheb_long, cheb_every, "rise"),
        Experiment("digits", 0.2, digits_steps, 50 if quick else 100, "settle", **digits_kwargs),
        Experiment("digits", 0.1, digits_steps, 50 if quick else 100, "settle", **digits_kwargs),
    ]


# -- training ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recording:
    """What a script's runs record and how their files are labelled; a run file is complete only for the same one.

    The defaults are this script's; scripts/sharpening_and_jacobian.py trains the same way with its own.
    """

    command: str = COMMAND  # the run file's "command" attr is f"{command} ({exp.name})"
    tracker: TrackerSettings = TrackerSettings(trace_matvecs=0)  # λmax only, no trace
    report_records: bool = False  # log the number of curvature records and their mean cost after training

    def label(self, exp: Experiment) -> str:
        return f"{self.command} ({exp.name})"


RECORDING = Recording()


def train_settings(exp: Experiment, seed: int, recording: Recording = RECORDING) -> Any:
    """Full-batch gradient descent for ``exp`` with ``recording``'s tracker."""
    from landscape.train import TrainSettings

    return TrainSettings(optimizer="sgd", lr=exp.lr, steps=exp.steps, batch_size=None,
                         track_every=exp.track_every, tracker=recording.tracker, seed=seed)


def build_trainer(exp: Experiment, path: Path, seed: int, recording: Recording = RECORDING) -> Any:
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


def expected_settings(exp: Experiment, seed: int, recording: Recording = RECORDING) -> dict[str, Any]:
    """The settings a complete run file of ``exp`` stores (as read back from JSON)."""
    return json.loads(json.dumps(train_settings(exp, seed, recording).as_attrs(), default=str))


def is_complete(exp: Experiment, path: Path, seed: int, recording: Recording = RECORDING) -> tuple[bool, str]:
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
    path.unlink(missing_ok=True)
    shutil.rmtree(path.with_name(f"{path.stem}_checkpoints"), ignore_errors=True)


def log(text: str) -> None:
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
          recording: Recording = RECORDING) -> None:
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


# -- the table --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Summary:
    exp: Experiment
    threshold: float
    initial: float
    final: float
    tail_mean: float
    gap: float
    first_cross: Optional[int]
    last_step: int
    verdict: str


def summarize(exp: Experiment, path: Path, judge: bool) -> Summary:
    """λmax at step 0 and at the end, its mean over the last 25% of the records, its gap to 2/η, the first step at
    which it reaches 0.9·2/η, and PASS/FAIL against the target (``judge`` False: "n/a")."""
    record = store.read_run(path)
    curvature = record.tables["run/curvature"]
    steps, lam = np.asarray(curvature["step"]), np.asarray(curvature["lambda_max"], dtype=float)
    threshold = 2.0 / exp.lr
    tail = lam[int(np.floor(0.75 * len(lam))):] if len(lam) > 1 else lam
    tail_mean = float(np.mean(tail))
    gap = (tail_mean - threshold) / threshold
    crossed = np.nonzero(lam >= 0.9 * threshold)[0]
    first_cross = int(steps[crossed[0]]) if len(crossed) else None
    last_step = int(steps[-1])
    if not judge:
        verdict = "n/a (quick)"
    elif last_step < exp.steps:
        verdict = f"FAIL (stopped at step {last_step})"
    elif exp.target == "settle":
        rose = lam[0] < 0.5 * threshold
        verdict = "PASS" if rose and abs(gap) <= TOLERANCE else "FAIL"
    else:
        verdict = "PASS" if lam[-1] > PAST else "FAIL"
    return Summary(exp, threshold, float(lam[0]), float(lam[-1]), tail_mean, gap, first_cross, last_step, verdict)


def target_text(exp: Experiment) -> str:
    if exp.target == "settle":
        return f"rises, ends within {TOLERANCE:.0%} of 2/η"
    return f"ends past {PAST:g}"


def table(summaries: list[Summary], markdown: bool = False) -> str:
    headers = ["run", "η", "2/η", "λmax step 0", "final λmax", "mean λmax last 25%", "gap to 2/η",
               "first step ≥ 0.9·2/η", "target", "result"]
    rows = [[s.exp.name, f"{s.exp.lr:g}", f"{s.threshold:.4g}", f"{s.initial:.3f}", f"{s.final:.3f}",
             f"{s.tail_mean:.3f}", f"{s.gap:+.1%}", "-" if s.first_cross is None else f"{s.first_cross:,}",
             target_text(s.exp), s.verdict] for s in summaries]
    return format_table(headers, rows, markdown=markdown)


# -- main -------------------------------------------------------------------------------------------------------
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Progressive sharpening and the edge of stability: train the Chebyshev toy and the digits MLP "
        "with full-batch gradient descent at several step sizes, track λmax, draw the figures and check λmax "
        "against 2/η.", epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="figures", metavar="DIR", help="folder for the figures (default: figures/)")
    parser.add_argument("--data-dir", default="eos_runs", metavar="DIR",
                        help="folder for the HDF5 run files (default: eos_runs/)")
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test, under a minute; figures "
                        "get a _quick suffix and the targets are not judged)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the subset (default: 0)")
    parser.add_argument("--force", action="store_true", help="retrain even when a complete run file exists")
    parser.add_argument("--only", choices=("chebyshev", "digits"), help="run and draw one of the two studies")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default: 1)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    from landscape.plot import plot_sharpening

    torch.set_num_threads(max(1, args.threads))
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=max(1, args.threads))  # numpy's BLAS too (Lanczos calls eigh between products)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass
    start = time.perf_counter()
    data_dir, out = Path(args.data_dir), Path(args.out)
    data_dir.mkdir(parents=True, exist_ok=True)
    runs = [e for e in experiments(args.quick) if args.only in (None, e.family)]
    paths = {e.name: data_dir / e.filename(args.seed) for e in runs}

    log(f"training {len(runs)} runs ({'quick' if args.quick else 'full'}) into {data_dir}/")
    failed = train_runs(runs, paths, args.seed, args.force, train)

    suffix = "_quick" if args.quick else ""
    titles = {"chebyshev": "eos_chebyshev", "digits": "eos_digits"}
    summaries = []
    for family, stem in titles.items():
        group = [e for e in runs if e.family == family and e not in failed]
        if not group:
            continue
        written = out / f"{stem}{suffix}"
        plot_sharpening([paths[e.name] for e in group], written, labels=[f"η = {e.lr:g}" for e in group])
        log(f"figure: {written}.png, {written}.pdf")
        summaries.extend(summarize(e, paths[e.name], judge=not args.quick) for e in group)

    print()
    print(table(summaries, markdown=args.markdown))
    passed = sum(s.verdict == "PASS" for s in summaries)
    if not args.quick:
        print(f"\n{passed} of {len(summaries)} runs meet their targets", end="")
    print(f"\ntotal time {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
