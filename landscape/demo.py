"""`landscape demo`: the whole toolkit on an embedded default, in about a minute on a laptop CPU.

From one initialisation, the digits MLP is trained on Cohen et al.'s squared loss with full-batch gradient descent,
SAM and NSO at one step size, on a seeded 500-sample subset of the training split, while its curvature is tracked;
the three minima are analysed (spectrum, trace, Jacobian norms, a 2-D loss surface through each), compared, and
drawn. Every number lands in HDF5 files and every
figure is drawn from them, exactly as the individual commands would.

The recipe is chosen so that each figure shows its phenomenon within the minute: with η = 0.25, gradient descent's
λmax rises from about 3.3 to 2/η = 8 by step ~300 (progressive sharpening), overshoots, and from step ~400 hovers
within 10% of 2/η while the loss keeps falling with spikes (the edge of stability); SAM (ρ = 0.05) bounces
across the sharpest direction from step ~40 on and stays near λmax ≈ 4; NSO (σ = 0.02) keeps the trace lowest. The
three minima's λmax (about 8, 4 and 3.5) and traces differ visibly.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from landscape import store
from landscape.analysis import AnalysisSettings, analyze
from landscape.checkpoints import load_checkpoint
from landscape.compare import flatness_table
from landscape.data import load_data
from landscape.devices import check_device
from landscape.errors import OptionError, option
from landscape.losses import squared_loss
from landscape.models import mlp
from landscape.plot.compare import plot_compare
from landscape.plot.curvature import plot_curvature
from landscape.plot.sam import plot_sam
from landscape.plot.sharpening import load_sharpening_run, plot_sharpening
from landscape.plot.spectrum import plot_spectrum
from landscape.plot.style import run_labels
from landscape.plot.surface import plot_surface
from landscape.surface import check_grid_size, evaluate_surface, parse_grid, random_direction
from landscape.tracking import TrackerSettings
from landscape.train import Trainer, TrainSettings

SIZES = (64, 128, 128, 10)
#: The three optimizers, from the same initialisation (and batch order, with mini-batches); SAM and NSO spend two
#: gradients per step. ``sgd`` on the full batch is gradient descent (GD in the figures).
RECIPES = {"sgd": {}, "sam": {"rho": 0.05}, "nso": {"sigma": 0.02}}
#: Cohen et al.'s squared loss on one-hot targets: its sharpness rises under gradient descent (cross-entropy's falls
#: as the loss does, so no edge of stability would show within the demo's minute).
LOSS = squared_loss
LOSS_NAME = "squared"
#: The spectrum figure's Gaussian width, a fraction of the eigenvalues' range: the outliers as bumps, not spikes.
SPECTRUM_BANDWIDTH = 0.01


@dataclass(frozen=True)
class DemoSettings:
    """The demo's knobs; the defaults take about a minute on 2 CPU cores. ``batch_size`` None trains on the full
    batch (gradient descent), which the edge of stability needs; ``subset`` samples of the digits training split
    (drawn with ``seed``; None: all 1438) are trained on and analysed."""

    steps: int = 800
    batch_size: Optional[int] = None
    subset: Optional[int] = 500
    lr: float = 0.25
    track_every: int = 25
    grid: str = "-1:1:21"
    density_steps: int = 60
    seed: int = 0
    dtype: torch.dtype = torch.float32
    device: Optional[str] = None


def new_folder(base: str = "landscape-demo") -> Path:
    """``base``, or ``base-2``, ``base-3``... : a folder that does not exist yet in the current directory."""
    candidate, n = Path(base), 1
    while candidate.exists():
        n += 1
        candidate = Path(f"{base}-{n}")
    return candidate


def train_all(out: Path, s: DemoSettings, progress: Optional[bool], say: Callable[[str], None]) -> dict[str, Path]:
    """One tracked run per optimizer; returns the run files (the final minima are copied to ``minimum_<name>.pt``)."""
    runs = {}
    train = load_data("digits", split="train", subset=s.subset, seed=s.seed)
    data, test = train.batches, load_data("digits", split="test").batches
    for name, hparams in RECIPES.items():
        torch.manual_seed(s.seed)  # one initialisation for all
        settings = TrainSettings(optimizer=name, lr=s.lr, hyperparameters=hparams, steps=s.steps,
                                 batch_size=s.batch_size, track_every=s.track_every, seed=s.seed,
                                 tracker=TrackerSettings(trace_matvecs=12, jacobian=True))
        trainer = Trainer(mlp(SIZES), LOSS, data, test, settings, output=out / f"train_{name}.h5",
                          checkpoint_dir=out / f"checkpoints_{name}", model_spec="mlp",
                          model_kwargs={"sizes": list(SIZES)}, dtype=s.dtype, device=s.device,
                          attrs={"command": "landscape demo", "model_spec": "mlp", "data": "digits",
                                 "data_description": train.description, "loss_function": LOSS_NAME,
                                 "num_params": sum(p.numel() for p in mlp(SIZES).parameters())})
        result = trainer.run(progress=progress)
        shutil.copyfile(result.checkpoint, out / f"minimum_{name}.pt")
        runs[name] = out / f"train_{name}.h5"
        say(f"trained {name}: {result.steps} steps in {result.seconds:.1f} s -> {runs[name]}")
    return runs


def analyse_minima(out: Path, s: DemoSettings, progress: Optional[bool], say: Callable[[str], None]) -> Path:
    """Spectrum, trace and Jacobian norms of each minimum (with its test loss and accuracy), then a 2-D
    filter-normalized surface through it."""
    minima = [str(out / f"minimum_{name}.pt") for name in RECIPES]
    results = out / "minima.h5"
    data = load_data("digits", split="train", subset=s.subset, seed=s.seed)  # the samples the runs trained on
    settings = AnalysisSettings(metrics=("eigs", "trace", "density", "jacobian"), top_k=5,
                                density_steps=s.density_steps, dtype=s.dtype, device=s.device, seed=s.seed)
    analyze(minima, data=data, loss=LOSS, output=str(results), settings=settings,
            command="landscape demo", progress=progress, test_data=load_data("digits", split="test"))
    grid = parse_grid(s.grid)
    for path in minima:
        checkpoint = load_checkpoint(path)
        directions = random_direction(checkpoint.model, seed=s.seed, dims=2)
        surface = evaluate_surface(checkpoint.model, LOSS, data.batches, directions, grid, grid,
                                   dtype=s.dtype, device=s.device, progress=progress)
        with store.update_results(results) as handle:
            store.write_checkpoint(handle, checkpoint.info.name, {"surface": surface},
                                   attrs={"path": checkpoint.info.path})
    say(f"analysed the minima (spectrum, trace, Jacobian norms, {len(grid)}x{len(grid)} surfaces) -> {results}")
    return results


def draw(out: Path, runs: dict[str, Path], results: Path) -> list[Path]:
    """Every figure kind, from the HDF5 files alone; a run is labelled by its optimizer in every figure (``GD``,
    ``SAM (ρ = 0.05)``) and drawn in its optimizer's colour."""
    figures = out / "figures"
    paths = list(runs.values())
    labels = run_labels([load_sharpening_run(path) for path in paths])
    minima = [f"minimum_{name}" for name in runs]
    written = []
    for name, call in (("sharpening", lambda o: plot_sharpening(paths, o)),
                       ("curvature", lambda o: plot_curvature(paths, o)),
                       ("sam", lambda o: plot_sam([runs["sgd"], runs["sam"]], o)),
                       ("spectrum", lambda o: plot_spectrum(results, o, checkpoints=minima, labels=labels,
                                                            bandwidth=SPECTRUM_BANDWIDTH)),
                       ("surface", lambda o: plot_surface(results, o, checkpoint="minimum_sam")),
                       ("compare", lambda o: plot_compare([results], o))):
        call(figures / name)
        written.append(figures / f"{name}.png")
    return written


def run_demo(out: Optional[Path] = None, settings: DemoSettings = DemoSettings(), *, progress: Optional[bool] = None,
             say: Callable[[str], None] = print) -> tuple[str, Path]:
    """Train, track, analyse, compare and draw; returns the comparison table and the output folder.

    The device, the grid and ``out`` (a folder, new or existing) are checked before any work."""
    start = time.perf_counter()
    check_device(settings.device)
    grid = parse_grid(settings.grid)
    check_grid_size(grid, grid)
    out = Path(out) if out is not None else new_folder()
    if out.exists() and not out.is_dir():
        raise OptionError(f"{option('out')} {out} is an existing file, not a folder; give a folder (new or "
                          "existing) for the demo's files")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OptionError(f"{option('out')} {out}: cannot create the folder ({err.strerror})") from None
    runs = train_all(out, settings, progress, say)
    results = analyse_minima(out, settings, progress, say)
    figures = draw(out, runs, results)
    table = flatness_table(store.flatness_rows([*runs.values(), results]))
    say(f"figures: {', '.join(str(f) for f in figures)} (and PDFs)")
    say(f"done in {time.perf_counter() - start:.0f} s; everything is in {out}/")
    return table, out
