"""Train the digits MLP with SGD, SAM, NSO, RS, SA and SOFIM at equal gradient evaluations; compare the minima.

From one initialisation per seed and one mini-batch order per seed, each optimizer trains until it has spent the same
number of mini-batch gradient evaluations (SAM and NSO spend two per step, RS and SA two when they perturb). For each
final model: train loss, test loss and accuracy, λmax (Lanczos), trace and trace/n (Krylov-Hutchinson) of the
training-loss Hessian. A second part asks whether SOFIM reaches a target training loss in fewer gradient
evaluations than momentum SGD, each at its best learning rate from a small grid.

Everything goes to one HDF5 file (one group per optimizer and seed, see the README's schema) and a markdown table is
printed. Example (about 4 minutes on 2 CPU cores):

    python scripts/compare_optimizers.py --seeds 0 1 2 --evals 3000 -o compare_optimizers.h5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any, Optional

import torch
from torch.nn import functional as F

from landscape import store
from landscape.analysis import AnalysisSettings, curvature
from landscape.data import digits
from landscape.models import mlp
from landscape.optim.registry import build_optimizer, resolve_hyperparameters, training_step
from landscape.report import format_table

SIZES = (64, 128, 128, 10)
#: The compared optimizers and their settings; lr is shared by the SGD family so the comparison is at equal steps.
RECIPES: dict[str, dict[str, Any]] = {
    "sgd": {},
    "sam": {"rho": 0.05},
    "nso": {"sigma": 0.01, "num_perturbations": 1},
    "rs": {"rho": 0.5, "grad_threshold": 0.2},
    "sa": {"rho": 0.05, "grad_threshold": 0.2},
    "sofim": {"beta": 0.9, "rho": 1.0},
}
#: SOFIM's step is about lr·(1 − β)/ρ times momentum SGD's when ‖m̂‖² ≪ ρ, so it gets a learning rate 10× as large.
LR_SCALE = {"sofim": 10.0}


def train(name: str, options: dict[str, Any], *, lr: float, seed: int, evals: int, batch_size: int,
          target_loss: Optional[float] = None, stop_at_target: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train from the seed's initialisation on the seed's batch order until ``evals`` gradients are spent (or, with
    ``stop_at_target``, until the full training loss reaches ``target_loss``)."""
    X, y = digits("train")
    torch.manual_seed(seed)
    model = mlp(SIZES)
    optimizer = build_optimizer(name, model, lr=lr, seed=seed, loss=F.cross_entropy, **options)
    order = torch.Generator().manual_seed(seed)
    spent, steps, reached, curve = 0, 0, None, []
    start = time.perf_counter()
    while spent < evals:
        index = torch.randint(0, len(y), (batch_size,), generator=order)
        _, used = training_step(optimizer, model, F.cross_entropy, (X[index], y[index]))
        spent, steps = spent + used, steps + 1
        if target_loss is not None and reached is None and steps % 5 == 0:
            with torch.no_grad():
                if F.cross_entropy(model(X), y).item() <= target_loss:
                    reached = spent
                    if stop_at_target:
                        break
        if steps % 50 == 0:
            with torch.no_grad():
                curve.append((spent, F.cross_entropy(model(X), y).item()))
    return model, {"steps": steps, "grad_evals": spent, "evals_to_target": reached, "curve": curve,
                   "train_seconds": time.perf_counter() - start}


def evaluate(model: torch.nn.Module, seed: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit on both splits, and λmax and trace of the training-loss Hessian."""
    fit = {}
    with torch.no_grad():
        for split in ("train", "test"):
            X, y = digits(split)
            out = model(X)
            fit[f"{split}_loss"] = F.cross_entropy(out, y).item()
            fit[f"{split}_accuracy"] = (out.argmax(1) == y).float().mean().item()
    settings = AnalysisSettings(metrics=("eigs", "trace"), top_k=1, tol=1e-5, trace_matvecs=99, seed=seed)
    return fit, curvature(model, F.cross_entropy, digits("train"), settings, progress=False)


def spread(values: list[float], digits_: int = 4) -> str:
    """mean ± standard deviation over seeds."""
    if len(values) == 1:
        return f"{values[0]:.{digits_}g}"
    return f"{statistics.mean(values):.{digits_}g} ± {statistics.stdev(values):.2g}"


def compare(args: argparse.Namespace, output: str) -> list[list[str]]:
    rows = []
    for name, options in RECIPES.items():
        per_seed = []
        for seed in args.seeds:
            lr = args.lr * LR_SCALE.get(name, 1.0)
            model, run = train(name, options, lr=lr, seed=seed, evals=args.evals, batch_size=args.batch_size)
            fit, results = evaluate(model, seed)
            per_seed.append((fit, results))
            attrs = {"optimizer": name, "hyperparameters": {"lr": lr, **resolve_hyperparameters(name, options)},
                     "seed": seed, "batch_size": args.batch_size, "model_spec": "mlp",
                     "model_kwargs": {"sizes": list(SIZES)}, "data": "digits", "loss_function": "cross-entropy",
                     "num_params": sum(p.numel() for p in model.parameters()), **fit,
                     **{k: v for k, v in run.items() if k != "curve"},
                     "curve_evals": [e for e, _ in run["curve"]], "curve_loss": [v for _, v in run["curve"]]}
            with store.update_results(output) as handle:  # each run lands as soon as it is done
                store.write_checkpoint(handle, f"{name}_seed{seed}", results, attrs=attrs)
            print(f"{name} seed {seed}: train loss {fit['train_loss']:.4f}, test acc {fit['test_accuracy']:.4f}, "
                  f"lambda_max {results['eigen'].values[0]:.4g}, trace {results['trace'].estimate:.4g} "
                  f"({run['steps']} steps, {run['train_seconds']:.1f} s)", file=sys.stderr)
        rows.append([name, spread([f["train_loss"] for f, _ in per_seed]),
                     spread([f["test_accuracy"] for f, _ in per_seed]),
                     spread([r["eigen"].values[0] for _, r in per_seed]),
                     spread([r["trace"].estimate for _, r in per_seed]),
                     spread([r["trace"].normalized for _, r in per_seed], 3)])
    return rows


def matched(args: argparse.Namespace, output: str) -> list[list[str]]:
    """Flatness at equal training loss: cross-entropy curvature shrinks as the loss falls, so optimizers compared at
    equal cost but different losses partly compare how far each got. Each run stops at ``--match-loss``."""
    rows = []
    for name, options in RECIPES.items():
        per_seed = []
        for seed in args.seeds:
            lr = args.lr * LR_SCALE.get(name, 1.0)
            model, run = train(name, options, lr=lr, seed=seed, evals=4 * args.evals, batch_size=args.batch_size,
                               target_loss=args.match_loss, stop_at_target=True)
            fit, results = evaluate(model, seed)
            per_seed.append((run["evals_to_target"], fit, results))
            with store.update_results(output) as handle:
                store.write_checkpoint(handle, f"{name}_seed{seed}_at_loss", results,
                                       attrs={"optimizer": name, "seed": seed, "stopped_at_loss": args.match_loss,
                                              "grad_evals": run["grad_evals"], **fit})
        reached = [e for e, _, _ in per_seed if e is not None]
        rows.append([name, spread([float(e) for e in reached], 3) if reached else f"> {4 * args.evals}",
                     spread([f["test_accuracy"] for _, f, _ in per_seed]),
                     spread([r["eigen"].values[0] for _, _, r in per_seed]),
                     spread([r["trace"].estimate for _, _, r in per_seed])])
    return rows


def speed(args: argparse.Namespace, output: str) -> list[list[str]]:
    """Gradient evaluations to the target training loss, at each optimizer's best learning rate of a grid."""
    rows = []
    for name, options, grid in (("momentum", {}, args.momentum_lrs), ("sofim", RECIPES["sofim"], args.sofim_lrs)):
        best: Optional[tuple[float, list[Optional[int]]]] = None
        for lr in grid:
            reached = [train(name, options, lr=lr, seed=seed, evals=args.evals, batch_size=args.batch_size,
                             target_loss=args.target_loss)[1]["evals_to_target"] for seed in args.seeds]
            with store.update_results(output) as handle:
                store.set_attrs(handle.require_group("speed"), {f"{name}_lr{lr:g}_evals_to_target": reached})
            score = statistics.mean(r if r is not None else float("inf") for r in reached)
            if best is None or score < statistics.mean(r if r is not None else float("inf") for r in best[1]):
                best = (lr, reached)
        lr, reached = best
        shown = [str(r) if r is not None else f"> {args.evals}" for r in reached]
        rows.append([name, f"{lr:g}", ", ".join(shown)])
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    parser.add_argument("--evals", type=int, default=3000, help="gradient evaluations per run (default: 3000)")
    parser.add_argument("--batch-size", type=int, default=128, help="mini-batch size (default: 128)")
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate of the SGD family (default: 0.05)")
    parser.add_argument("--match-loss", type=float, default=0.03, help="training loss at which the second "
                        "comparison measures flatness (default: 0.03)")
    parser.add_argument("--target-loss", type=float, default=0.05, help="training loss for the speed comparison")
    parser.add_argument("--momentum-lrs", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3])
    parser.add_argument("--sofim-lrs", type=float, nargs="+", default=[0.1, 0.3, 1.0, 3.0])
    parser.add_argument("-o", "--output", default="compare_optimizers.h5", help="HDF5 output file")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    store.check_writable(args.output)
    rows = compare(args, args.output)
    matched_rows = matched(args, args.output)
    speed_rows = speed(args, args.output)
    print(f"Digits MLP {'-'.join(map(str, SIZES))}, {args.evals} gradient evaluations of batch {args.batch_size}, "
          f"seeds {' '.join(map(str, args.seeds))} (mean ± std):\n")
    print(format_table(["optimizer", "train loss", "test accuracy", "lambda_max", "trace", "trace/n"], rows,
                       markdown=True))
    print(f"\nAt equal training loss: each run stopped once its full training loss reached {args.match_loss}:\n")
    print(format_table(["optimizer", "gradient evals used", "test accuracy", "lambda_max", "trace"], matched_rows,
                       markdown=True))
    print(f"\nGradient evaluations to train loss {args.target_loss} (best learning rate of the grid, per seed):\n")
    print(format_table(["optimizer", "best lr", "evals per seed"], speed_rows, markdown=True))
    print(f"\nresults: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
