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
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np

if __name__ == "__main__" and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch starts its thread pool; --threads can raise it

from _common import (  # noqa: E402
    DIGITS_SIZES,
    DIGITS_SUBSET,
    TOLERANCE,
    Experiment,
    Recording,
    limit_threads,
    log,
    train,
    train_runs,
)
from landscape import store  # noqa: E402
from landscape.report import format_table  # noqa: E402

PAST = 30.0  # "for η = 0.05 it keeps rising past 30"
COMMAND = "scripts/edge_of_stability.py"
RECORDING = Recording(COMMAND)  # λmax only, no trace


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

    limit_threads(args.threads)
    start = time.perf_counter()
    data_dir, out = Path(args.data_dir), Path(args.out)
    data_dir.mkdir(parents=True, exist_ok=True)
    runs = [e for e in experiments(args.quick) if args.only in (None, e.family)]
    paths = {e.name: data_dir / e.filename(args.seed) for e in runs}

    log(f"training {len(runs)} runs ({'quick' if args.quick else 'full'}) into {data_dir}/")
    failed = train_runs(runs, paths, args.seed, args.force, partial(train, recording=RECORDING))

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
