"""How much curvature tracking costs during training, and what the warm start saves.

1. Products per λmax check along one training trajectory of the digits MLP (64-128-128-10, cross-entropy,
   full-batch SGD): Lanczos warm-started from the previous top eigenvector versus a cold random start, at the same
   tolerance, for checks every 50 and every 10 steps (target: warm at most one third of cold).
2. Wall time of `landscape train`'s loop with tracking every 50 steps (λmax, loss, accuracy and gradient norm on
   train and test; then also the Hutch++ trace with 12 products) against the same run without tracking.

    python scripts/bench_tracking.py            # about a minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from torch.nn import functional as F

from landscape.data import digits
from landscape.models import mlp
from landscape.report import format_table
from landscape.tracking import CurvatureTracker, TrackerSettings
from landscape.train import Trainer, TrainSettings


def warm_versus_cold(every: int, tol: float, steps: int) -> list[str]:
    X, y = digits("train")
    torch.manual_seed(0)
    model = mlp((64, 128, 128, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    warm = CurvatureTracker(F.cross_entropy, (X, y), settings=TrackerSettings(tol=tol, trace_matvecs=0))
    cold = CurvatureTracker(F.cross_entropy, (X, y), settings=TrackerSettings(tol=tol, trace_matvecs=0,
                                                                             warm_start=False))
    products: dict[str, list[int]] = {"warm": [], "cold": []}
    worst = 0.0
    for step in range(steps + 1):
        if step % every == 0:
            w, c = warm.measure(model, step), cold.measure(model, step)
            if step:  # the first check has nothing to warm-start from
                products["warm"].append(w["eig_matvecs"])
                products["cold"].append(c["eig_matvecs"])
            worst = max(worst, abs(w["lambda_max"] - c["lambda_max"]) / c["lambda_max"])
        optimizer.zero_grad()
        F.cross_entropy(model(X), y).backward()
        optimizer.step()
    mean_warm, mean_cold = statistics.mean(products["warm"]), statistics.mean(products["cold"])
    return [str(every), f"{tol:g}", f"{mean_warm:.2f}", f"{mean_cold:.2f}", f"{mean_warm / mean_cold:.2f}",
            f"{worst:.1e}"]


def overhead(steps: int, repeats: int) -> list[list[str]]:
    """Median wall time of the training loop without tracking, with λmax only, and with the default record."""
    variants = {"none": (0, 0), "every 50 steps, lambda_max, losses, grad norm": (50, 0),
                "every 50 steps, + Hutch++ trace (12 products)": (50, 12)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (every, trace_matvecs) in variants.items():
            torch.manual_seed(0)
            settings = TrainSettings(optimizer="sgd", lr=0.5, steps=steps, track_every=every,
                                     tracker=TrackerSettings(trace_matvecs=trace_matvecs))
            output = Path(tempfile.mkdtemp()) / "run.h5"
            trainer = Trainer(mlp((64, 128, 128, 10)), F.cross_entropy, digits("train"), digits("test"), settings,
                              output=output)
            times[name].append(trainer.run(progress=False).seconds)
    base = statistics.median(times["none"])
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        rows.append([name, f"{median:.2f} s", f"+{100 * (median / base - 1):.0f}%" if name != "none" else ""])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="training steps (default: 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the timed runs (default: 3)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = [warm_versus_cold(every, tol, args.steps) for every in (50, 10) for tol in (1e-4, 1e-6)]
    print("Products per lambda_max check along one SGD trajectory (digits MLP 64-128-128-10, cross-entropy):\n")
    print(format_table(["check every", "tol", "warm", "cold", "warm/cold", "max rel. diff of lambda_max"], rows,
                       markdown=True))
    print(f"\nWall time of {args.steps} full-batch SGD steps (median of {args.repeats}), with and without tracking:\n")
    print(format_table(["tracking", "time", "overhead"], overhead(args.steps, args.repeats), markdown=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
