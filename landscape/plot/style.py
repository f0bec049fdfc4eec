"""One figure style for the toolkit's paper figures, and saving a figure as PNG and PDF.

The style is sized for a paper column (:data:`COLUMN_WIDTH` = 3.4 in): 8 pt labels, 7 pt ticks and legends, thin
lines, no top/right spines, no grid, and the Okabe–Ito colour cycle (distinguishable with the common colour-vision
deficiencies). Use it for one block with :func:`paper_style`, or for the whole process with :func:`apply_style`.

Every figure kind draws a run in the colour and marker of :func:`run_styles`: each optimizer has its own
(:data:`OPTIMIZER_STYLES`; SAM is vermillion with squares in the sharpening, curvature, SAM and spectrum figures
alike), and runs of no known optimizer take the free palette entries in order. Reference lines that belong to no run
(2/η) are drawn in :data:`NEUTRAL` grey and labelled; :func:`run_labels` names each run's optimizer in the legend.

Everything here works without a display: figures are made from :class:`matplotlib.figure.Figure` directly, never
through ``pyplot``, so no GUI backend is ever chosen and no global figure state is kept.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Protocol, Sequence

import matplotlib
from cycler import cycler
from matplotlib.figure import Figure
from matplotlib.textpath import TextPath

from landscape.errors import StoreError
from landscape.files import PathLike

#: A single paper column, in inches; a two-column (full text) width is about 7 in.
COLUMN_WIDTH = 3.4
#: The Okabe–Ito palette, most distinct first (yellow last: it is faint on white).
COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
#: Each optimizer's colour and marker, the same in every figure kind (the names of
#: :data:`landscape.optim.registry.HYPERPARAMETERS`; Okabe–Ito, with Tol's wine in place of the faint yellow).
OPTIMIZER_STYLES: dict[str, tuple[str, str]] = {
    "sgd": ("#0072B2", "o"), "sam": ("#D55E00", "s"), "nso": ("#009E73", "^"), "momentum": ("#CC79A7", "D"),
    "adam": ("#E69F00", "v"), "sofim": ("#56B4E9", "P"), "rs": ("#000000", "X"), "sa": ("#882255", "*"),
}
#: Other spellings of an optimizer in file and checkpoint names (full-batch gradient descent is ``sgd``).
OPTIMIZER_ALIASES = {"gd": "sgd"}
#: Markers for runs of no known optimizer, in order.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
#: The colour of reference lines that belong to no run, such as 2/η.
NEUTRAL = "0.35"
#: Hyperparameters named in the default run labels, with their symbols.
LABELLED_HYPERPARAMETERS = {"rho": "ρ", "sigma": "σ"}
#: Resolution of the PNG written by :func:`save`.
PNG_DPI = 200
#: Resolution of the parts of a PDF drawn as images (artists with ``rasterized=True``, e.g. dense per-step curves).
RASTER_DPI = 300

PAPER_RC: dict[str, Any] = {
    "figure.figsize": (COLUMN_WIDTH, 2.6),
    "figure.dpi": 100,
    "figure.constrained_layout.use": False,
    "savefig.dpi": PNG_DPI,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
    "savefig.facecolor": "white",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica", "sans-serif"],
    "mathtext.fontset": "dejavusans",
    "font.size": 8,
    "axes.labelsize": 8,
    "axes.titlesize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "legend.frameon": False,
    "legend.handlelength": 1.8,
    "legend.handletextpad": 0.5,
    "legend.columnspacing": 1.2,
    "legend.labelspacing": 0.3,
    "lines.linewidth": 1.0,
    "lines.markersize": 3,
    "axes.linewidth": 0.6,
    "axes.labelpad": 2.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.3,
    "axes.prop_cycle": cycler(color=list(COLORS)),
    "axes.formatter.use_mathtext": True,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.minor.width": 0.4,
    "ytick.minor.width": 0.4,
    "xtick.major.size": 3.0,
    "ytick.major.size": 3.0,
    "xtick.minor.size": 1.5,
    "ytick.minor.size": 1.5,
    "xtick.major.pad": 2.0,
    "ytick.major.pad": 2.0,
    "pdf.fonttype": 42,  # TrueType in the PDF: text stays text (searchable, editable), as journals ask
    "ps.fonttype": 42,
}


@contextlib.contextmanager
def paper_style(overrides: Optional[Mapping[str, Any]] = None) -> Iterator[None]:
    """The paper style (plus ``overrides``) inside a ``with`` block; rcParams are restored afterwards."""
    with matplotlib.rc_context({**PAPER_RC, **dict(overrides or {})}):
        yield


def apply_style(overrides: Optional[Mapping[str, Any]] = None) -> None:
    """Set the paper style (plus ``overrides``) for the rest of the process."""
    matplotlib.rcParams.update({**PAPER_RC, **dict(overrides or {})})


def new_figure(width: float = COLUMN_WIDTH, height: float = 2.6, **kwargs: Any) -> Figure:
    """A figure of the given size in inches, independent of pyplot (so nothing needs closing)."""
    return Figure(figsize=(width, height), **kwargs)


def save(fig: Figure, path: PathLike, *, formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Write ``fig`` to ``path.png`` (at :data:`PNG_DPI`) and ``path.pdf`` (vector; rasterized artists at
    :data:`RASTER_DPI`), creating folders; returns the paths written.

    ``path`` is given without a suffix; a trailing ``.png`` or ``.pdf`` is dropped (``eos_0.05`` keeps its
    ``.05``). The paper style's save settings (tight box, white background) apply whatever the caller's rcParams;
    the rest of the figure is drawn as it was styled when it was made.
    """
    base = Path(path)
    if base.suffix.lower() in (".png", ".pdf"):
        base = base.with_suffix("")
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(f"cannot create folder {base.parent} for figure {base.name}: {err.strerror or err}") from None
    written = []
    with matplotlib.rc_context({k: v for k, v in PAPER_RC.items() if k.startswith("savefig.")}):
        for fmt in formats:
            target = base.with_name(f"{base.name}.{fmt}")
            try:
                fig.savefig(target, format=fmt, dpi=PNG_DPI if fmt == "png" else RASTER_DPI)
            except OSError as err:
                raise StoreError(f"cannot write figure {target}: {err.strerror or err}") from None
            written.append(target)
    return written


@dataclass(frozen=True)
class RunStyle:
    """How one run is drawn in every figure kind: its colour and its marker."""

    color: str
    marker: str


def optimizer_in(*texts: Optional[str]) -> Optional[str]:
    """The first known optimizer named by one of ``texts`` as a whole or as one of its words (``sam``,
    ``minimum_sam``, ``train_nso.h5``, ``gd-0.2``), in :data:`OPTIMIZER_STYLES`' spelling; None when none is."""
    for text in texts:
        for word in re.split(r"[^a-z0-9]+", str(text or "").lower()):
            word = OPTIMIZER_ALIASES.get(word, word)
            if word in OPTIMIZER_STYLES:
                return word
    return None


def run_styles(optimizers: Sequence[Optional[str]]) -> list[RunStyle]:
    """One style per run, given each run's optimizer name (None when unknown): the first run of each known
    optimizer gets that optimizer's own colour and marker, so a figure of SGD and SAM colours them as every other
    figure does; the others (unknown optimizers, a second run of the same one) get the palette's colours and
    markers that no run of this figure uses, in order."""
    styles: list[Optional[RunStyle]] = [None] * len(optimizers)
    for i, name in enumerate(optimizers):
        key = optimizer_in(name) if name else None
        if key is not None and all(s is None or s.color != OPTIMIZER_STYLES[key][0] for s in styles):
            styles[i] = RunStyle(*OPTIMIZER_STYLES[key])
    used_colors = {s.color for s in styles if s is not None}
    used_markers = {s.marker for s in styles if s is not None}
    palette = dict.fromkeys((*COLORS, *(color for color, _ in OPTIMIZER_STYLES.values())))
    colors = [c for c in palette if c not in used_colors] or list(COLORS)
    markers = [m for m in MARKERS if m not in used_markers] or list(MARKERS)
    result, k = [], 0
    for style in styles:
        if style is None:
            style, k = RunStyle(colors[k % len(colors)], markers[k % len(markers)]), k + 1
        result.append(style)
    return result


class _Run(Protocol):
    path: Path
    settings: dict[str, Any]


def optimizer_name(settings: Mapping[str, Any]) -> Optional[str]:
    """The optimizer of a run's stored settings as a legend names it: ``GD`` for full-batch ``sgd`` (no
    ``batch_size``), else the name in capitals (``SGD``, ``SAM``); None when the settings name none."""
    name = settings.get("optimizer")
    if not isinstance(name, str) or not name:
        return None
    return "GD" if name == "sgd" and settings.get("batch_size") is None else name.upper()


def run_labels(runs: Sequence[_Run], *, with_lr: bool = False) -> list[str]:
    """A legend label per run naming its optimizer and the hyperparameters of :data:`LABELLED_HYPERPARAMETERS`
    (``GD``, ``SAM (ρ = 0.05)``), with η when ``with_lr`` or when the runs' rates differ; the file name is used for a
    run whose settings name no optimizer, and added where two labels would be the same."""
    rates = {run.settings.get("lr") for run in runs}
    labels = []
    for run in runs:
        name = optimizer_name(run.settings) or run.path.stem
        hyper = run.settings.get("hyperparameters") or {}
        parts = [f"{symbol} = {hyper[key]:.4g}" for key, symbol in LABELLED_HYPERPARAMETERS.items()
                 if isinstance(hyper.get(key), (int, float)) and not isinstance(hyper.get(key), bool)]
        lr = run.settings.get("lr")
        if (with_lr or len(rates) > 1) and isinstance(lr, (int, float)):
            parts.append(f"η = {lr:.4g}")
        labels.append(f"{name} ({', '.join(parts)})" if parts else name)
    return [f"{label}: {run.path.stem}" if labels.count(label) > 1 else label for label, run in zip(labels, runs)]


def legend_columns(labels: Sequence[str], width: float = COLUMN_WIDTH, fontsize: float = 7.0) -> int:
    """How many legend columns of ``labels`` (with their line handles) fit side by side in ``width`` inches."""
    handle = (1.8 + 0.5) * fontsize / 72  # handlelength + handletextpad of the paper style, in inches
    spacing = 1.2 * fontsize / 72  # columnspacing
    widest = max((TextPath((0, 0), label, size=fontsize).get_extents().width / 72 for label in labels), default=0.0)
    fit = int((0.95 * width + spacing) // (widest + handle + spacing))
    return max(1, min(len(labels), fit))
