"""Paper figures from the toolkit's HDF5 files; plotting reads stored results and never recomputes them."""

from landscape.plot.blocks import plot_blocks
from landscape.plot.compare import plot_compare
from landscape.plot.curvature import plot_curvature
from landscape.plot.peers import plot_peers
from landscape.plot.sam import plot_sam
from landscape.plot.sharpening import (
    SharpeningRun,
    load_sharpening_run,
    plot_sharpening,
    stability_threshold,
)
from landscape.plot.spectrum import plot_spectrum
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
from landscape.plot.surface import plot_surface

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
    "plot_blocks",
    "plot_compare",
    "plot_curvature",
    "plot_peers",
    "plot_sam",
    "plot_sharpening",
    "plot_spectrum",
    "plot_surface",
    "save",
    "stability_threshold",
]
