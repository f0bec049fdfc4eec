"""One figure style for the toolkit's paper figures, and saving a figure as PNG and PDF.

The style is sized for a paper column (:data:`COLUMN_WIDTH` = 3.4 in): 8 pt labels, 7 pt ticks and legends, thin
lines, no top/right spines, no grid, and the Okabe–Ito colour cycle (distinguishable with the common colour-vision
deficiencies). Use it for one block with :func:`paper_style`, or for the whole process with :func:`apply_style`.

Everything here works without a display: figures are made from :class:`matplotlib.figure.Figure` directly, never
through ``pyplot``, so no GUI backend is ever chosen and no global figure state is kept.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import matplotlib
from cycler import cycler
from matplotlib.figure import Figure

from landscape.errors import StoreError
from landscape.files import PathLike

#: A single paper column, in inches; a two-column (full text) width is about 7 in.
COLUMN_WIDTH = 3.4
#: The Okabe–Ito palette, most distinct first (yellow last: it is faint on white).
COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
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
