"""Paper figures from the toolkit's HDF5 files; plotting reads stored results and never recomputes them."""

from landscape.plot.curvature import plot_curvature
from landscape.plot.sharpening import (
    SharpeningRun,
    load_sharpening_run,
    plot_sharpening,
    stability_threshold,
)
from landscape.plot.style import (
    COLORS,
    COLUMN_WIDTH,
    PAPER_RC,
    PNG_DPI,
    RASTER_DPI,
    apply_style,
    new_figure,
    paper_style,
    save,
)

__all__ = [
    "COLORS",
    "COLUMN_WIDTH",
    "PAPER_RC",
    "PNG_DPI",
    "RASTER_DPI",
    "SharpeningRun",
    "apply_style",
    "load_sharpening_run",
    "new_figure",
    "paper_style",
    "plot_curvature",
    "plot_sharpening",
    "save",
    "stability_threshold",
]
