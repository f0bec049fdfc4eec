"""Which flatness measure predicts generalization? Jiang et al. (2020, "Fantastic generalization measures and where
to find them")'s protocol at small scale on a CPU.

A full grid of ReLU MLPs (input → width → width → classes) per data set, varying batch size, learning rate, width,
weight decay and optimizer (SGD, or SAM around SGD from ``landscape.optim``), each trained from the same seeded
initialisation on the same seeded batch order until its full training cross-entropy reaches the same target
(Jiang's stopping criterion; a network that has not reached it after ``--max-epochs`` epochs, or whose loss went
NaN, is kept in the CSV with ``reached`` false and left out of every correlation). For each network, on the training
data:

* worst-case sharpness max_{‖δ‖≤ρ} L(θ+δ) − L(θ) and its adaptive version (δ = |θ| ⊙ u, ‖u‖ ≤ ρ), by projected
  gradient ascent (``landscape.flatness.sharpness``, float64);
* average-case sharpness E L(θ+δ) − L(θ), δ ~ N(0, ρ²I), and its adaptive version N(0, ρ² diag(θ²)) (float64);
* the Fisher-Rao norm (Liang et al. 2019, float64) and the relative flatness κ^φ_Tr of the output layer (Petzka et
  al. 2021; exact, float32: it takes one Hessian-vector product per output weight);
* λmax of the Hessian (Lanczos) and its trace (Krylov-Hutchinson), float64;

The default ρ (``--rho-*``) make each sharpness a loss increase of the order of the target training loss itself
(about 0.002 to 0.03 at 0.01): large enough to leave the quadratic regime's noise floor, small enough not to leave
the basin. Adaptive ρ is relative to |θ|: ρ = 0.2 in the average case moves each weight by about 20% of itself.

and the train/test cross-entropy and error. The generalization gap is test error − train error (Jiang's target) and,
finer, test − train cross-entropy. For each measure, data set and gap: Kendall's τ-b over all networks that reached
the target, and Jiang's granulated Ψ: for each varied hyperparameter, ψ = the mean of τ-b within the groups of
networks that share every other hyperparameter (groups whose gap, or measure, is all ties have no τ-b and are left
out), and Ψ = the mean of the ψ. A positive τ means a larger measure goes with a larger gap.

The second data set, breast_cancer, is scikit-learn's Wisconsin breast-cancer set (569 samples, 30 features, two
classes), split 80/20 by a fixed seeded permutation and standardized with the training split's statistics; wine
(178 samples, 13 features, three classes) is the same. Digits is ``landscape.data.digits``'s split.

Prints one markdown table per gap (rows: data set × measure; columns τ, Ψ and each hyperparameter's ψ), writes one
CSV row per network to ``-o`` (rewritten after each network, so a killed run keeps what it had) and, with
``--figure``, draws τ and Ψ per measure (png + pdf); ``--from-csv`` redoes tables and figure from such a CSV without
training. Progress, one line per network, goes to stderr. The default grid (2 × 72 networks) takes about 4 minutes
of CPU time on one core (7.5 minutes' wall time on a 2-core machine shared with other jobs); ``--tiny`` is a smoke
test of a few seconds.

    python scripts/flatness_vs_generalization.py -o flatness_vs_generalization.csv \\
        --figure figures/flatness_vs_generalization
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from _common import limit_threads
from landscape import files, hessian_eigen, hessian_trace
from landscape.data import digits
from landscape.errors import LandscapeError, OptionError, StoreError
from landscape.flatness import fisher_rao_norm, relative_flatness, sharpness
from landscape.models import mlp
from landscape.optim import SAM
from landscape.optim.registry import training_step
from landscape.plot.style import COLUMN_WIDTH, COLORS, new_figure, paper_style, save
from landscape.report import format_table

#: The varied hyperparameters, in the order of the tables' columns, with their short column names.
HYPERPARAMETERS = {"batch_size": "batch", "lr": "lr", "width": "width", "weight_decay": "wd", "optimizer": "opt"}
#: The measures, in table order: CSV column → table label (ρ filled in from the options).
MEASURES = {
    "worst": "worst-case sharpness (ρ={rho_worst:g})",
    "worst_adaptive": "adaptive worst-case (ρ={rho_worst_adaptive:g})",
    "average": "average-case sharpness (ρ={rho_average:g})",
    "average_adaptive": "adaptive average-case (ρ={rho_average_adaptive:g})",
    "fisher_rao": "Fisher-Rao norm",
    "relative_flatness": "relative flatness",
    "lambda_max": "λmax",
    "trace": "trace",
}
#: The generalization gaps: CSV column → heading.
GAPS = {"error_gap": "test error − train error", "loss_gap": "test − train cross-entropy"}
DATASETS = ("digits", "breast_cancer", "wine")
#: The run's settings recorded in every CSV row (what --from-csv needs to label the measures).
SETTINGS = ("seed", "target_loss", "max_epochs", "sam_rho", "rho_worst", "rho_worst_adaptive", "rho_average",
            "rho_average_adaptive")
#: Fraction of the samples held out, and the seed of the permutation that splits them (breast_cancer, wine).
TEST_FRACTION = 0.2
SPLIT_SEED = 0

#: The grid and effort of a normal run and of --tiny (each overridable by its option).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"datasets": ["digits", "breast_cancer"], "batch_sizes": [32, 64, 128], "lrs": [0.05, 0.1, 0.2],
                "widths": [32, 128], "weight_decays": [0.0, 1e-3], "optimizers": ["sgd", "sam"],
                "target_loss": 0.01, "max_epochs": 600, "steps": 10, "restarts": 3, "samples": 32,
                "trace_matvecs": 99},
    "tiny": {"datasets": ["digits", "breast_cancer"], "batch_sizes": [128], "lrs": [0.1, 0.3], "widths": [16],
             "weight_decays": [0.0], "optimizers": ["sgd", "sam"], "target_loss": 0.3, "max_epochs": 30,
             "steps": 3, "restarts": 1, "samples": 4, "trace_matvecs": 10},
}

Data = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Config:
    """One network of the grid: its hyperparameters."""

    batch_size: int
    lr: float
    width: int
    weight_decay: float
    optimizer: str

    @property
    def name(self) -> str:
        return (f"bs={self.batch_size} lr={self.lr:g} width={self.width} wd={self.weight_decay:g} "
                f"{self.optimizer}")


def load_dataset(name: str) -> tuple[Data, Data]:
    """The (train, test) splits of ``name``: digits as ``landscape.data.digits`` splits it; breast_cancer and wine
    by a fixed seeded permutation, standardized with the training split's mean and standard deviation."""
    if name == "digits":
        return digits("train"), digits("test")
    from sklearn import datasets

    raw = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine}[name]()
    X, y = raw.data.astype(np.float64), raw.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    cut = round(len(y) * (1 - TEST_FRACTION))
    train, test = order[:cut], order[cut:]
    mean, std = X[train].mean(axis=0), X[train].std(axis=0)
    X = (X - mean) / np.where(std > 0, std, 1.0)
    return ((torch.as_tensor(X[train], dtype=torch.float32), torch.as_tensor(y[train])),
            (torch.as_tensor(X[test], dtype=torch.float32), torch.as_tensor(y[test])))


def fit(model: nn.Module, data: Data) -> tuple[float, float]:
    """Mean cross-entropy and error rate of ``model`` on ``data``."""
    with torch.no_grad():
        out = model(data[0])
        return F.cross_entropy(out, data[1]).item(), (out.argmax(1) != data[1]).double().mean().item()


def train(config: Config, data: Data, *, target_loss: float, max_epochs: int, sam_rho: float,
          seed: int) -> tuple[nn.Module, dict[str, Any]]:
    """Train from the seed's initialisation on the seed's batch order (epochs of shuffled mini-batches) until the
    full training cross-entropy is at most ``target_loss``, or ``max_epochs`` have passed, or the loss is NaN.

    Weight decay goes to SGD (SAM's base optimizer), so SAM's perturbation follows the cross-entropy's gradient."""
    X, y = data
    torch.manual_seed(seed)
    model = mlp((X.shape[1], config.width, config.width, int(y.max()) + 1), activation="relu")
    params = list(model.parameters())
    if config.optimizer == "sam":
        optimizer: torch.optim.Optimizer = SAM(params, torch.optim.SGD, rho=sam_rho, lr=config.lr,
                                               weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)
    order = torch.Generator().manual_seed(seed)
    start, steps, status, loss = time.perf_counter(), 0, "max_epochs", math.inf
    for epoch in range(1, max_epochs + 1):
        for index in torch.randperm(len(y), generator=order).split(config.batch_size):
            training_step(optimizer, model, F.cross_entropy, (X[index], y[index]))
            steps += 1
        loss = fit(model, data)[0]
        if not math.isfinite(loss):
            status = "diverged"
            break
        if loss <= target_loss:
            status = "reached"
            break
    return model, {"status": status, "reached": status == "reached", "epochs": epoch, "steps": steps,
                   "final_train_loss": loss, "train_seconds": time.perf_counter() - start}


def measure(model: nn.Module, data: Data, args: argparse.Namespace, seed: int) -> dict[str, float]:
    """Every measure of the trained ``model`` on the training ``data``, with standard errors where the method has
    one (``<name>_stderr``), and the seconds they took."""
    loss, f64 = F.cross_entropy, torch.float64
    start = time.perf_counter()
    row: dict[str, float] = {}
    for kind, adaptive in (("worst", False), ("worst", True), ("average", False), ("average", True)):
        name = kind + ("_adaptive" if adaptive else "")
        result = sharpness(model, loss, data, rho=getattr(args, f"rho_{name}"), kind=kind, adaptive=adaptive,
                           steps=args.steps, restarts=args.restarts, samples=args.samples, dtype=f64, seed=seed,
                           progress=False)
        row[name] = result.value
        if kind == "average":  # the worst case on the whole data is a maximum found, with no standard error
            row[f"{name}_stderr"] = result.stderr
    result = fisher_rao_norm(model, loss, data, dtype=f64, progress=False)
    row["fisher_rao"], row["fisher_rao_stderr"] = result.value, _or_nan(result.stderr)
    result = relative_flatness(model, loss, data, dtype=torch.float32, seed=seed, progress=False)
    row["relative_flatness"], row["relative_flatness_stderr"] = result.value, _or_nan(result.stderr)
    row["lambda_max"] = float(hessian_eigen(model, loss, data, k=1, dtype=f64, tol=1e-4, seed=seed,
                                            progress=False).values[0])
    trace = hessian_trace(model, loss, data, args.trace_matvecs, dtype=f64, seed=seed)
    row["trace"], row["trace_stderr"] = trace.estimate, trace.stderr
    row["measure_seconds"] = time.perf_counter() - start
    return row


def _or_nan(value: Optional[float]) -> float:
    return math.nan if value is None else value


# -- rank correlations ------------------------------------------------------------------------------------------
def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b of the pairs (x_i, y_i): (C − D) / √((P − T_x)(P − T_y)), C and D the concordant and
    discordant pairs, P all n(n−1)/2 pairs, T_x and T_y those tied in x and in y. It equals τ-a without ties and
    counts a tied pair as neither concordant nor discordant. NaN when x or y is all ties (or n < 2)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise OptionError(f"kendall_tau needs two 1-D sequences of the same length, got shapes {x.shape}, {y.shape}")
    upper = np.triu_indices(len(x), k=1)
    sx, sy = np.sign(np.subtract.outer(x, x))[upper], np.sign(np.subtract.outer(y, y))[upper]
    denominator = math.sqrt(np.count_nonzero(sx) * np.count_nonzero(sy))
    return float(np.sum(sx * sy) / denominator) if denominator > 0 else math.nan


def granulated(rows: list[dict[str, Any]], measure_name: str, gap: str,
               varied: Sequence[str]) -> tuple[float, dict[str, float]]:
    """Jiang et al.'s granulated Kendall coefficient Ψ and each hyperparameter's ψ: ψ_h is the mean τ-b within the
    groups of networks equal in every hyperparameter but h (groups with no τ-b, all ties, left out; NaN if none
    is left); Ψ the mean of the defined ψ over the ``varied`` hyperparameters."""
    psi = {}
    for h in varied:
        others = [k for k in varied if k != h]
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for row in rows:
            groups.setdefault(tuple(row[k] for k in others), []).append(row)
        taus = [kendall_tau([r[measure_name] for r in g], [r[gap] for r in g]) for g in groups.values() if len(g) > 1]
        taus = [t for t in taus if not math.isnan(t)]
        psi[h] = float(np.mean(taus)) if taus else math.nan
    defined = [v for v in psi.values() if not math.isnan(v)]
    return (float(np.mean(defined)) if defined else math.nan), psi


def summarize(rows: list[dict[str, Any]], datasets: Sequence[str],
              varied: Sequence[str]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """τ, Ψ and ψ per (data set, gap, measure), over the networks that reached the target."""
    summary = {}
    for dataset in datasets:
        kept = [r for r in rows if r["dataset"] == dataset and r["reached"]]
        for gap, measure_name in itertools.product(GAPS, MEASURES):
            tau = kendall_tau([r[measure_name] for r in kept], [r[gap] for r in kept]) if kept else math.nan
            big_psi, psi = granulated(kept, measure_name, gap, varied)
            summary[dataset, gap, measure_name] = {"tau": tau, "Psi": big_psi, "psi": psi, "networks": len(kept),
                                                   "levels": len({r[gap] for r in kept})}
    return summary


# -- output -----------------------------------------------------------------------------------------------------
def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """All rows so far, written at once (columns: the union of the rows' keys, in first-seen order)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with files.replacing(path, error=StoreError, what=f"output file {path}") as temp:
        with open(temp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(rows)


def _cell(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:+.2f}"


def tables(summary: dict[tuple[str, str, str], dict[str, Any]], labels: dict[str, str], datasets: Sequence[str],
           varied: Sequence[str]) -> str:
    """One markdown table per gap: a row per data set and measure; τ, Ψ and each varied hyperparameter's ψ."""
    out = []
    for gap, heading in GAPS.items():
        rows = []
        for dataset, measure_name in itertools.product(datasets, MEASURES):
            s = summary[dataset, gap, measure_name]
            rows.append([f"{dataset} ({s['networks']})", labels[measure_name], _cell(s["tau"]), _cell(s["Psi"]),
                         *(_cell(s["psi"][h]) for h in varied)])
        headers = ["data set (networks)", "measure", "τ", "Ψ", *(f"ψ {HYPERPARAMETERS[h]}" for h in varied)]
        out.append(f"Kendall τ-b with the generalization gap {heading}:\n\n"
                   + format_table(headers, rows, markdown=True))
    return "\n\n".join(out)


def draw(path: str, summary: dict[tuple[str, str, str], dict[str, Any]], labels: dict[str, str],
         datasets: Sequence[str]) -> list[Path]:
    """Horizontal bars of τ and Ψ per measure: a row of panels per gap, a column per data set."""
    names = list(MEASURES)
    position = np.arange(len(names))[::-1].astype(float)
    height = 0.38
    with paper_style():
        fig = new_figure(2 * COLUMN_WIDTH, 1.15 + 1.7 * len(GAPS))
        axes = fig.subplots(len(GAPS), len(datasets), sharex=True, sharey=True, squeeze=False)
        for (i, gap), (j, dataset) in itertools.product(enumerate(GAPS), enumerate(datasets)):
            ax = axes[i][j]
            for offset, key, color, label in ((height / 2, "tau", COLORS[0], "τ (all networks)"),
                                              (-height / 2, "Psi", COLORS[1], "Ψ (granulated)")):
                values = [summary[dataset, gap, n][key] for n in names]
                ax.barh(position + offset, np.nan_to_num(values), height, color=color, label=label)
            ax.axvline(0.0, color="0.3", linewidth=0.6)
            ax.set_xlim(-1.05, 1.05)
            ax.set_xticks([-1, -0.5, 0, 0.5, 1])
            s = summary[dataset, gap, names[0]]
            ax.set_title(f"{dataset}: gap = {GAPS[gap]}\n({s['networks']} networks, {s['levels']} distinct gaps)")
            if i == len(GAPS) - 1:
                ax.set_xlabel("rank correlation with the gap")
        axes[0][0].set_yticks(position, [labels[n] for n in names])
        axes[0][0].legend(loc="best")
        fig.subplots_adjust(hspace=0.45, wspace=0.1)
        return save(fig, path)


# -- the run ----------------------------------------------------------------------------------------------------
def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    default, tiny = PRESETS["default"], PRESETS["tiny"]

    def preset(key: str) -> str:
        return f"(default: {_shown(default[key])}; --tiny: {_shown(tiny[key])})"

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    grid = parser.add_argument_group("the grid (every combination is trained, per data set)")
    grid.add_argument("--datasets", nargs="+", choices=DATASETS, default=None, help=f"data sets {preset('datasets')}")
    grid.add_argument("--batch-sizes", type=int, nargs="+", default=None, help=f"batch sizes {preset('batch_sizes')}")
    grid.add_argument("--lrs", type=float, nargs="+", default=None, help=f"learning rates {preset('lrs')}")
    grid.add_argument("--widths", type=int, nargs="+", default=None,
                      help=f"width of both hidden ReLU layers {preset('widths')}")
    grid.add_argument("--weight-decays", type=float, nargs="+", default=None,
                      help=f"weight decay of SGD (SAM's base optimizer too) {preset('weight_decays')}")
    grid.add_argument("--optimizers", nargs="+", choices=("sgd", "sam"), default=None,
                      help=f"optimizers: plain SGD, or SAM around it {preset('optimizers')}")
    grid.add_argument("--sam-rho", type=float, default=0.05, help="ρ of the SAM optimizer (default: 0.05)")
    stop = parser.add_argument_group("training")
    stop.add_argument("--target-loss", type=float, default=None,
                      help=f"train until the full training cross-entropy is at most this {preset('target_loss')}")
    stop.add_argument("--max-epochs", type=int, default=None,
                      help=f"give up (and leave the network out) after this many epochs {preset('max_epochs')}")
    effort = parser.add_argument_group("the measures")
    effort.add_argument("--rho-worst", type=float, default=0.1,
                        help="ρ of worst-case sharpness, ‖δ‖₂ ≤ ρ (default: 0.1)")
    effort.add_argument("--rho-worst-adaptive", type=float, default=0.5,
                        help="ρ of adaptive worst-case sharpness, δ = |θ| ⊙ u with ‖u‖₂ ≤ ρ (default: 0.5)")
    effort.add_argument("--rho-average", type=float, default=0.02,
                        help="ρ of average-case sharpness, δ ~ N(0, ρ²I), so ‖δ‖ ≈ ρ√n (default: 0.02)")
    effort.add_argument("--rho-average-adaptive", type=float, default=0.2,
                        help="ρ of adaptive average-case sharpness (δ ~ N(0, ρ² diag(θ²)): each weight moves by "
                             "about ρ times itself; default: 0.2)")
    effort.add_argument("--steps", type=int, default=None,
                        help=f"gradient-ascent steps per start of worst-case sharpness {preset('steps')}")
    effort.add_argument("--restarts", type=int, default=None,
                        help=f"starts of worst-case sharpness {preset('restarts')}")
    effort.add_argument("--samples", type=int, default=None,
                        help=f"antithetic draws of average-case sharpness {preset('samples')}")
    effort.add_argument("--trace-matvecs", type=int, default=None,
                        help=f"Hessian-vector products of the trace estimate {preset('trace_matvecs')}")
    parser.add_argument("--tiny", action="store_true",
                        help="a smoke test of a few seconds: the tiny grid and effort (options given still win)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of every network's initialisation and batch order, and of every measure "
                             "(default: 0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and BLAS threads; one is fastest on a shared 2-core machine (default: 1)")
    parser.add_argument("-o", "--output", default="flatness_vs_generalization.csv",
                        help="CSV file: one row per network with its hyperparameters, fit, gaps and measures "
                        "(default: flatness_vs_generalization.csv)")
    parser.add_argument("--from-csv", default=None, metavar="CSV",
                        help="train nothing: print the tables (and draw --figure) from a CSV this script wrote; "
                             "the grid, training and measure options are then not used (default: off)")
    parser.add_argument("--figure", default=None,
                        help="draw the figure to FIGURE.png and FIGURE.pdf, e.g. figures/flatness_vs_generalization "
                             "(default: no figure)")
    args = parser.parse_args(argv)
    for key, value in PRESETS["tiny" if args.tiny else "default"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def check(args: argparse.Namespace) -> None:
    """Refuse impossible settings before any training."""
    positive = {"--batch-sizes": args.batch_sizes, "--lrs": args.lrs, "--widths": args.widths,
                "--target-loss": [args.target_loss], "--max-epochs": [args.max_epochs], "--steps": [args.steps],
                "--restarts": [args.restarts], "--samples": [args.samples], "--trace-matvecs": [args.trace_matvecs],
                "--rho-worst": [args.rho_worst], "--rho-worst-adaptive": [args.rho_worst_adaptive],
                "--rho-average": [args.rho_average], "--rho-average-adaptive": [args.rho_average_adaptive],
                "--threads": [args.threads]}
    for flag, values in positive.items():
        if not all(v > 0 for v in values):
            raise OptionError(f"{flag} must be positive, got {' '.join(map(str, values))}")
    if not all(v >= 0 for v in [*args.weight_decays, args.sam_rho]):
        raise OptionError("--weight-decays and --sam-rho must be >= 0")
    folder = Path(args.output).parent
    if not folder.is_dir():
        raise StoreError(f"cannot write {args.output}: folder {folder} does not exist (-o/--output)")


def run(args: argparse.Namespace, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Train and measure every network of the grid on every data set; returns the CSV rows."""
    configs = [Config(*values) for values in itertools.product(args.batch_sizes, args.lrs, args.widths,
                                                               args.weight_decays, args.optimizers)]
    settings = {key: getattr(args, key) for key in SETTINGS}
    rows: list[dict[str, Any]] = []
    for dataset in args.datasets:
        train_data, test_data = load_dataset(dataset)
        for number, config in enumerate(configs, 1):
            model, info = train(config, train_data, target_loss=args.target_loss, max_epochs=args.max_epochs,
                                sam_rho=args.sam_rho, seed=args.seed)
            row: dict[str, Any] = {"dataset": dataset, **asdict(config), **settings, **info}
            prefix = f"[{dataset} {number}/{len(configs)}] {config.name}:"
            if not info["reached"]:
                rows.append(row)
                write_csv(Path(args.output), rows)
                log(f"{prefix} {info['status']} after {info['epochs']} epochs "
                    f"(train loss {info['final_train_loss']:.3g}) — left out")
                continue
            (train_loss, train_error), (test_loss, test_error) = fit(model, train_data), fit(model, test_data)
            row.update(train_loss=train_loss, test_loss=test_loss, train_error=train_error, test_error=test_error,
                       error_gap=test_error - train_error, loss_gap=test_loss - train_loss)
            row.update(measure(model, train_data, args, args.seed))
            rows.append(row)
            write_csv(Path(args.output), rows)
            log(f"{prefix} {info['epochs']} epochs ({info['train_seconds']:.1f} s), test error {test_error:.4f}, "
                f"loss gap {row['loss_gap']:.3f}; λmax {row['lambda_max']:.3g}, worst {row['worst']:.3g}, "
                f"measures {row['measure_seconds']:.1f} s")
    return rows


def read_csv(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV this script wrote, with numbers as numbers and ``reached`` as a bool."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as err:
        raise StoreError(f"cannot read --from-csv {path}: {err.strerror or err}") from None
    missing = {"dataset", "reached", *HYPERPARAMETERS, *SETTINGS, *GAPS, *MEASURES} - set(rows[0] if rows else ())
    if missing:
        raise StoreError(f"--from-csv {path} is not a file this script wrote (no rows, or no column "
                         f"{', '.join(sorted(missing))})")

    def value(text: str) -> Any:
        if text in ("True", "False"):
            return text == "True"
        try:
            number = float(text) if text else math.nan
        except ValueError:
            return text
        return int(number) if number.is_integer() and "." not in text and "e" not in text else number

    return [{key: value(text) for key, text in row.items()} for row in rows]


def report(rows: list[dict[str, Any]], figure: Optional[str]) -> None:
    """Print the tables (and draw the figure) of ``rows``: the data sets, varied hyperparameters and settings are
    read off the rows."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    varied = [h for h in HYPERPARAMETERS if len({r[h] for r in rows}) > 1]
    first = rows[0]
    labels = {name: label.format(**first) for name, label in MEASURES.items()}
    summary = summarize(rows, datasets, varied)
    print(f"Networks trained to training cross-entropy {first['target_loss']:g} (at most {first['max_epochs']} "
          f"epochs); varied: {', '.join(varied) or 'nothing'}; seed {first['seed']}.")
    for dataset in datasets:
        total = sum(r["dataset"] == dataset for r in rows)
        s = summary[dataset, "error_gap", next(iter(MEASURES))]
        print(f"{dataset}: {s['networks']} of {total} networks reached the target; the error gap takes "
              f"{s['levels']} distinct values.")
    print()
    print(tables(summary, labels, datasets, varied))
    if figure:
        print("\nfigure: " + ", ".join(map(str, draw(figure, summary, labels, datasets))))


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    limit_threads(args.threads)
    start = time.perf_counter()
    try:
        if args.from_csv:
            rows = read_csv(Path(args.from_csv))
        else:
            check(args)
            rows = run(args, lambda text: print(text, file=sys.stderr, flush=True))
        report(rows, args.figure)
        if not args.from_csv:
            print(f"per-network rows: {args.output}")
    except LandscapeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wall time: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
