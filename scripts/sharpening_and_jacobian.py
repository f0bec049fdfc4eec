"""Do sharpness and the input-output Jacobian norm rise together during progressive sharpening, and part at the edge
of stability? (MacDonald, Valmadre and Lucey 2023; ALGORITHMS.md)

Their ansatz ties the Gauss-Newton part of the loss Hessian to the layer Jacobians, so while full-batch gradient
descent sharpens, λmax and ‖∂f(x)/∂x‖ should rise together; once λmax is capped at 2/η (the edge of stability) the
Jacobian is free to keep changing while λmax stays put.

Three full-batch GD runs (squared loss), set up as in scripts/edge_of_stability.py, each recording λmax of the
Hessian and of the GGN and the mean and max spectral norm of the input-output Jacobian over the training samples
(``also_lambda_max=("ggn",)``, ``jacobian=True``, no trace):

* the Chebyshev toy (1 → 100 tanh → 1 on 20 points of T4) at η = 0.2 for 15,000 steps (sharpens, reaches 2/η = 10
  near step 3,800 and stays at the edge of stability) and at η = 0.05 for 20,000 steps (sharpens all along, far
  below 2/η = 40), records every 200 steps;
* the digits MLP 64 → 128 → 128 → 10 (tanh) on a 1000-sample subset at η = 0.1 for 8,000 steps (reaches 2/η = 20
  within the run), records every 100 steps.

The run files go to --data-dir (a complete run file with the same settings is kept, so a rerun only redraws; --force
retrains), the figures to --out as sharpening_jacobian_chebyshev.{png,pdf} and sharpening_jacobian_digits.{png,pdf},
and two tables (a row per run) give the Spearman rank correlation ρ between λmax and the mean (and max) Jacobian
norm over the records before λmax first reaches 0.9·2/η (the sharpening phase) and from then on (the EoS phase;
"-" if never reached), λmax_GGN/λmax at the first and last record, and two verdicts:

* "rise together" (sharpening phase): ρ(λmax, mean Jacobian norm) > 0.8;
* "part at EoS": from λmax's first record within 5% of 2/η to the end (the capped stretch) λmax stays within 5% of
  2/η (the mean of each fifth of the records) while the mean Jacobian norm changes by more than 10% (first fifth to
  last fifth), or ρ over the EoS phase falls below 0.5.

About 75 s on one CPU core (training dominates: ~1.3 ms a step for the toy, ~3.4 ms for digits; a record costs ~6 ms
for the toy and ~70 ms for digits); --quick runs short versions (figures with a _quick suffix, verdicts not judged).

    python scripts/sharpening_and_jacobian.py --out figures/ --data-dir /tmp/sj_runs
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
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch starts its thread pool

from scipy.stats import spearmanr  # noqa: E402

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
from landscape.tracking import TrackerSettings  # noqa: E402

RISE = 0.8  # "rise together": ρ above this in the sharpening phase
DROP = 0.5  # "part at EoS": ρ below this in the EoS phase ...
CHANGE = 0.10  # ... or the Jacobian norm changes by more than this while λmax stays within TOLERANCE of 2/η
CROSS = 0.9  # the EoS phase starts when λmax first reaches CROSS·2/η
COMMAND = "scripts/sharpening_and_jacobian.py"
# trained as edge_of_stability.py trains, with the GGN λmax and the Jacobian norms recorded
RECORDING = Recording(COMMAND, TrackerSettings(trace_matvecs=0, also_lambda_max=("ggn",), jacobian=True),
                      report_records=True)


def experiments(quick: bool) -> list[Experiment]:
    """The study's runs ("settle": expected to reach the edge of stability; "rise": expected to stay below it)."""
    every = 100 if quick else 200
    digits = {"model": "mlp", "model_kwargs": {"sizes": list(DIGITS_SIZES)}, "data": "digits", "subset": DIGITS_SUBSET}
    return [
        Experiment("chebyshev", 0.2, 2000 if quick else 15000, every, "settle"),
        Experiment("chebyshev", 0.05, 3000 if quick else 20000, every, "rise"),
        Experiment("digits", 0.1, 1000 if quick else 8000, 50 if quick else 100, "settle", **digits),
    ]


# -- the analysis -----------------------------------------------------------------------------------------------
def spearman(x: np.ndarray, y: np.ndarray) -> Optional[float]:
    """Spearman's rank correlation; None with fewer than 4 records (or a constant series)."""
    if len(x) < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


@dataclass(frozen=True)
class Summary:
    exp: Experiment
    threshold: float
    first_cross: Optional[int]  # first step with λmax ≥ CROSS·2/η
    records: tuple[int, int]  # records in the sharpening and EoS phases
    lam_sharp: tuple[float, float]  # λmax at the first and the last record of the sharpening phase
    jac_sharp: tuple[float, float]  # mean Jacobian norm at the same records
    rho_sharp: tuple[Optional[float], Optional[float]]  # ρ(λmax, mean |J|), ρ(λmax, max |J|) in the sharpening phase
    rho_eos: tuple[Optional[float], Optional[float]]  # the same in the EoS phase
    ggn_ratio: tuple[float, float]  # λmax_GGN / λmax at the first and last record
    capped_from: Optional[int]  # first step with λmax ≥ (1 − TOLERANCE)·2/η
    capped_spread: Optional[float]  # from then on: the largest |mean of a fifth of the records / (2/η) − 1|
    capped_change: tuple[Optional[float], Optional[float]]  # mean and max |J|: last fifth / first fifth − 1
    rise: str
    part: str


def fifths(values: np.ndarray) -> list[float]:
    """The means of the five consecutive fifths of ``values`` (fewer with fewer than five values)."""
    return [float(np.mean(chunk)) for chunk in np.array_split(values, min(5, len(values)))]


def summarize(exp: Experiment, path: Path, judge: bool) -> Summary:
    """The phases of one run (sharpening: before λmax first reaches CROSS·2/η; EoS: from then on), the correlations
    in each, and the verdicts (``judge`` False: "n/a")."""
    c = store.read_run(path).tables["run/curvature"]
    steps = np.asarray(c["step"])
    lam, ggn = np.asarray(c["lambda_max"], float), np.asarray(c["lambda_max_ggn"], float)
    jmean, jmax = np.asarray(c["jacobian_mean"], float), np.asarray(c["jacobian_max"], float)
    threshold = 2.0 / exp.lr
    crossed = np.nonzero(lam >= CROSS * threshold)[0]
    cut = int(crossed[0]) if len(crossed) else len(lam)
    sharp, eos = slice(0, cut), slice(cut, None)
    rho_sharp = (spearman(lam[sharp], jmean[sharp]), spearman(lam[sharp], jmax[sharp]))
    rho_eos = (spearman(lam[eos], jmean[eos]), spearman(lam[eos], jmax[eos]))
    last = max(cut - 1, 0)
    # the capped stretch: from λmax's first record within TOLERANCE of 2/η to the end
    capped = np.nonzero(lam >= (1 - TOLERANCE) * threshold)[0]
    capped_from = spread = None
    change: tuple[Optional[float], Optional[float]] = (None, None)
    if len(capped) and len(lam) - capped[0] >= 5:
        tail = slice(int(capped[0]), None)
        capped_from = int(steps[capped[0]])
        spread = max(abs(m / threshold - 1) for m in fifths(lam[tail]))
        change = tuple(fifths(j[tail])[-1] / fifths(j[tail])[0] - 1 for j in (jmean, jmax))  # type: ignore[assignment]
    rise = part = "n/a (quick)"
    if judge:
        rise = "yes" if rho_sharp[0] is not None and rho_sharp[0] > RISE else "no"
        if not len(crossed):
            part = "- (no EoS)"
        elif spread is None:
            part = "- (too few capped records)"
        else:
            capped_moving = spread <= TOLERANCE and abs(change[0]) > CHANGE  # type: ignore[arg-type]
            decorrelated = rho_eos[0] is not None and rho_eos[0] < DROP
            part = "yes" if capped_moving or decorrelated else "no"
    return Summary(exp, threshold, int(steps[cut]) if len(crossed) else None, (cut, len(lam) - cut),
                   (float(lam[0]), float(lam[last])), (float(jmean[0]), float(jmean[last])), rho_sharp, rho_eos,
                   (float(ggn[0] / lam[0]), float(ggn[-1] / lam[-1])), capped_from, spread, change, rise, part)


def _rho(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:+.2f}"


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:+.1%}"


def tables(summaries: list[Summary], markdown: bool = False) -> str:
    """Two tables: the sharpening phase, and the edge-of-stability phase with its capped stretch."""
    sharp = format_table(
        ["run", "2/η", "records", "λmax first→last", "mean|J| first→last", "ρ(λ, mean|J|)", "ρ(λ, max|J|)",
         "GGN/Hessian λmax, run start→end", "rise together"],
        [[s.exp.name, f"{s.threshold:.4g}", str(s.records[0]), f"{s.lam_sharp[0]:.3f}→{s.lam_sharp[1]:.3f}",
          f"{s.jac_sharp[0]:.3g}→{s.jac_sharp[1]:.3g}", _rho(s.rho_sharp[0]), _rho(s.rho_sharp[1]),
          f"{s.ggn_ratio[0]:.3f}→{s.ggn_ratio[1]:.3f}", s.rise] for s in summaries], markdown=markdown)
    eos = format_table(
        ["run", "first step ≥ 0.9·2/η", "records", "ρ(λ, mean|J|)", "ρ(λ, max|J|)", "capped from step (≥ 0.95·2/η)",
         "λmax spread", "Δ mean|J|", "Δ max|J|", "part at EoS"],
        [[s.exp.name, "-" if s.first_cross is None else f"{s.first_cross:,}", str(s.records[1]),
          _rho(s.rho_eos[0]), _rho(s.rho_eos[1]), "-" if s.capped_from is None else f"{s.capped_from:,}",
          "-" if s.capped_spread is None else f"{s.capped_spread:.1%}", _pct(s.capped_change[0]),
          _pct(s.capped_change[1]), s.part] for s in summaries], markdown=markdown)
    return (f"Sharpening phase (records before λmax first reaches {CROSS}·2/η):\n{sharp}\n\n"
            f"Edge-of-stability phase (records from then on):\n{eos}")


def legend() -> str:
    return (f"ρ: Spearman rank correlation between λmax and the mean (max) spectral norm |J| of the input-output "
            f"Jacobian over the phase's records. rise together: ρ(λ, mean|J|) > {RISE} in the sharpening phase.\n"
            f"Capped stretch: from λmax's first record ≥ {1 - TOLERANCE:g}·2/η to the end; λmax spread: the largest "
            f"gap to 2/η of the mean λmax of a fifth of its records; Δ|J|: mean over its last fifth / over its first "
            f"fifth - 1.\npart at EoS: λmax spread ≤ {TOLERANCE:.0%} while |Δ mean|J|| > {CHANGE:.0%}, or "
            f"ρ(λ, mean|J|) < {DROP} in the EoS phase.")


# -- main -------------------------------------------------------------------------------------------------------
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Progressive sharpening and the input-output Jacobian: train the Chebyshev toy and the digits "
        "MLP with full-batch GD, track λmax (Hessian and GGN) and the Jacobian norms, draw the figures and correlate "
        "them before and after the edge of stability.", epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="figures", metavar="DIR", help="folder for the figures (default: figures/)")
    parser.add_argument("--data-dir", default="/tmp/sj_runs", metavar="DIR",
                        help="folder for the HDF5 run files (default: /tmp/sj_runs)")
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test; figures get a _quick suffix "
                        "and the verdicts are not judged)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the subset (default: 0)")
    parser.add_argument("--force", action="store_true", help="retrain even when a complete run file exists")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    from landscape.plot import plot_curvature

    limit_threads(1)
    start = time.perf_counter()
    data_dir, out = Path(args.data_dir), Path(args.out)
    data_dir.mkdir(parents=True, exist_ok=True)
    runs = experiments(args.quick)
    paths = {e.name: data_dir / e.filename(args.seed) for e in runs}

    log(f"training {len(runs)} runs ({'quick' if args.quick else 'full'}) into {data_dir}/")
    failed = train_runs(runs, paths, args.seed, args.force, partial(train, recording=RECORDING))

    suffix = "_quick" if args.quick else ""
    summaries = []
    for family in ("chebyshev", "digits"):
        group = [e for e in runs if e.family == family and e not in failed]
        if not group:
            continue
        written = out / f"sharpening_jacobian_{family}{suffix}"
        plot_curvature([paths[e.name] for e in group], written, labels=[f"{family} η = {e.lr:g}" for e in group],
                       ggn=True)
        log(f"figure: {written}.png, {written}.pdf")
        summaries.extend(summarize(e, paths[e.name], judge=not args.quick) for e in group)

    print()
    print(tables(summaries, markdown=args.markdown))
    print(legend())
    if not args.quick:
        for s in summaries:
            print(f"{s.exp.name}: rise together during sharpening: {s.rise}; part at the edge of stability: {s.part}")
    print(f"total time {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
