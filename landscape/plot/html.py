"""Interactive landscapes: one self-contained HTML page (plotly) drawn from a results file, never recomputed.

:func:`write_html` reads what ``landscape surface`` and ``landscape analyze`` stored and writes one page with
plotly.js inside it, so it opens offline in any browser and can be sent as a single file:

- a 2-D surface as a 3-D surface of log₁₀ loss (the loss itself when some value is not positive) with its contours
  projected on the floor beneath, the checkpoints the directions pass through marked, and, when the file has them,
  the checkpoints' path on a PCA plane; hovering a grid point shows its coordinates, loss and accuracy;
- a 1-D surface (a random or eigenvector direction, or the line through two checkpoints) as a line chart of the loss
  with the accuracy on a second axis, the checkpoints marked and, when stored, the loss barrier of the path;
- a spectral density (``--metrics density``) on a log scale per checkpoint, the top eigenvalues marked above it.

plotly is an optional extra (``pip install "landscape[html]"``): only this module imports it, when a page is written.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from matplotlib.colors import to_hex

from landscape import files, store
from landscape.errors import LandscapeError, StoreError, option
from landscape.files import PathLike
from landscape.plot.paths import pca_axis_labels
from landscape.plot.spectrum import FLOOR, SpectrumCheckpoint, checkpoint_labels, load_spectra
from landscape.plot.style import COLORS, NEUTRAL, optimizer_in, run_styles
from landscape.plot.surface import axis_labels, checkpoint_marks, load_surface
from landscape.results import SurfaceResult

__all__ = ["INSTALL", "spectrum_figure", "surface_figure", "write_html"]

#: How to install what this module needs.
INSTALL = 'pip install "landscape[html]"'
#: plotly's name of the colour scale of the surface (the static figures' viridis).
COLORSCALE = "Viridis"
#: Contour levels of the surface, evenly spaced in its z (log₁₀ loss: log-spaced in the loss, as the static figure).
NUM_LEVELS = 24
#: How far below the surface's lowest point the floor with the projected contours lies, as a fraction of its z range.
FLOOR_DEPTH = 0.45
TEMPLATE = "plotly_white"
#: plotly's options for every figure: no logo, a PNG download at twice the size.
CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "png", "scale": 2}}
MARK = {"symbol": "diamond", "size": 7, "color": "white", "line": {"color": "black", "width": 2}}
#: How far above the surface its marks are drawn (so that it does not hide them), as a fraction of its z range.
LIFT = 0.02


def _plotly() -> tuple[Any, Any]:
    """plotly's graph_objects and io modules, or one line saying how to install the extra."""
    try:
        import plotly.graph_objects as go
        import plotly.io as pio
    except ImportError:
        raise LandscapeError(f"an interactive HTML page needs plotly, an optional extra: {INSTALL}") from None
    return go, pio


def _metrics(path: Path) -> dict[str, set[str]]:
    """The names of the results stored under each checkpoint of ``path`` (read without loading them)."""
    with store.open_results(path) as handle:
        return {name: {key for key, node in group.items() if "result_type" in node.attrs}
                for name, group in handle.get("checkpoints", {}).items()}


def write_html(path: PathLike, output: PathLike, *, checkpoint: Optional[str] = None,
               title: Optional[str] = None) -> Path:
    """Write one self-contained interactive page of the results file ``path`` to ``output``; returns its path.

    The page holds the loss surface of ``checkpoint`` (the file's only one when None) and the spectral densities with
    the top eigenvalues (of ``checkpoint``, or of up to five checkpoints spread over training), whichever the file
    has, each drawn from the stored numbers. ``output`` gets ``.html`` added unless it ends in ``.html`` or ``.htm``;
    it is written all at once (a failed write leaves the previous page). plotly.js is inside the page, so it opens
    offline. ``title``: the page's heading (default: the file's name).
    """
    _, pio = _plotly()  # first: without plotly, say so before reading anything
    path = Path(path)
    output = Path(output)
    if output.suffix.lower() not in (".html", ".htm"):
        output = output.with_name(output.name + ".html")
    if not path.is_file():
        raise StoreError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    held = _metrics(path)
    if checkpoint is not None and checkpoint not in held:
        raise StoreError(f"{path} has no checkpoint {checkpoint!r} ({option('checkpoint')}); it has "
                         f"{', '.join(held) or 'none'}")
    wanted = [held[checkpoint]] if checkpoint is not None else list(held.values())
    figures = []
    if any("surface" in metrics for metrics in wanted):
        name, surface = load_surface(path, checkpoint)
        figures.append(surface_figure(surface, name))
    if any("density" in metrics for metrics in wanted):
        spectra = load_spectra(path, checkpoints=[checkpoint] if checkpoint is not None else None)
        figures.append(spectrum_figure(spectra))
    if not figures:
        where = f" for {checkpoint}" if checkpoint is not None else ""
        raise StoreError(f"{path} holds no loss surface and no spectral density{where} to draw; compute one with "
                         "`landscape surface` or `landscape analyze --metrics density`")
    page = _page(pio, figures, path, title if title is not None else path.name)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(f"cannot create folder {output.parent} for page {output.name}: "
                         f"{err.strerror or err}") from None
    with files.replacing(output, error=StoreError, what=f"HTML page {output}") as temp:
        temp.write_text(page, encoding="utf-8")
    return output


def _page(pio: Any, figures: Sequence[Any], path: Path, title: str) -> str:
    """The HTML of the page: a heading naming the file and how it was made, then each figure (plotly.js once)."""
    about = store.root_attributes(path)
    facts = [f"results file <code>{escape(str(path))}</code>"]
    facts += [f"{label} {escape(str(about[key]))}" for key, label in
              (("created", "written"), ("landscape_version", "by landscape"), ("command", "with")) if about.get(key)]
    divs = [pio.to_html(figure, full_html=False, include_plotlyjs=i == 0, config=CONFIG, div_id=f"figure-{i}",
                        default_width="100%", default_height="640px")
            for i, figure in enumerate(figures)]
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1em 2em;color:#222}h1{font-size:1.3em;margin:0 0 .2em}"
        "p.about{color:#555;font-size:.85em;margin:0 0 1em}section{margin-bottom:1.5em}</style>",
        "</head>", "<body>", f"<h1>{escape(title)}</h1>", f'<p class="about">{"; ".join(facts)}</p>',
        *[f"<section>{div}</section>" for div in divs], "</body>", "</html>", ""])


# -- surfaces ----------------------------------------------------------------------------------------------------
def surface_figure(result: SurfaceResult, name: str) -> Any:
    """The plotly figure of one stored surface: a line chart for a 1-D surface, a 3-D surface for a 2-D one."""
    go, _ = _plotly()
    return _curve(go, result, name) if result.dims == 1 else _surface(go, result, name)


def _finite(values: np.ndarray) -> np.ndarray:
    """``values`` as floats with every non-finite cell NaN (plotly leaves such cells out)."""
    values = np.asarray(values, dtype=float)
    return np.where(np.isfinite(values), values, np.nan)


def _hover(loss: float, accuracy: float) -> str:
    """The loss and accuracy of one point, as the hover box shows them."""
    text = f"loss {loss:.5g}" if np.isfinite(loss) else "loss not finite" if np.isinf(loss) else "not computed"
    return text + (f"<br>accuracy {accuracy:.4g}" if np.isfinite(accuracy) else "")


def _surface(go: Any, result: SurfaceResult, name: str) -> Any:
    """log₁₀ loss over the plane with its contours projected on a floor beneath, checkpoints and path marked."""
    loss = _finite(result.loss)
    computed = loss[np.isfinite(loss)]
    use_log = computed.min() > 0
    z = np.log10(loss) if use_log else loss
    low, high = float(np.nanmin(z)), float(np.nanmax(z))
    span = high - low if high > low else max(abs(high), 1.0) * 1e-6
    floor = low - FLOOR_DEPTH * span
    xlabel, ylabel = _labels(result, name)
    zlabel = "log₁₀ loss" if use_log else "loss"
    accuracy = np.broadcast_to(_finite(result.accuracy), loss.shape)
    hover = np.array([[f"{escape(xlabel)} {x:.4g}<br>{escape(ylabel)} {y:.4g}<br>"
                       f"{_hover(result.loss[i, j], accuracy[i, j])}" for i, x in enumerate(result.x)]
                      for j, y in enumerate(result.y)], dtype=object)  # an array: plotly keeps it 2-D
    colorbar: dict[str, Any] = {"title": {"text": "loss" if use_log else zlabel}, "len": 0.75}
    if use_log:
        ticks = _log_ticks(10 ** low, 10 ** high)
        colorbar.update(tickvals=np.log10(ticks), ticktext=[f"{t:g}" for t in ticks])
    traces = [go.Surface(
        x=result.x, y=result.y, z=z.T, colorscale=COLORSCALE, cmin=low, cmax=high, colorbar=colorbar, name="loss",
        text=hover, hovertemplate="%{text}<extra></extra>",
        contours={"z": {"show": True, "start": low, "end": high, "size": span / NUM_LEVELS, "usecolormap": True,
                        "project": {"z": True}, "width": 1}})]
    for (px, py), label in checkpoint_marks(result, name):
        i, j = int(np.abs(result.x - px).argmin()), int(np.abs(result.y - py).argmin())
        if np.isclose(result.x[i], px) and np.isclose(result.y[j], py) and np.isfinite(z[i, j]):
            # on the surface, and named on the floor beneath (where the walls of a valley do not hide the name)
            traces.append(go.Scatter3d(
                x=[px, px], y=[py, py], z=[z[i, j] + LIFT * span, floor], mode="markers+text",
                text=["", escape(label)], textposition="top center", marker=MARK, name=escape(label), showlegend=False,
                hovertemplate=f"{escape(label)}<br>{_hover(result.loss[i, j], accuracy[i, j])}<extra></extra>"))
    traces += _trajectory(go, result, z, floor, LIFT * span)
    figure = go.Figure(traces)
    axis = {"backgroundcolor": "white", "gridcolor": "#ddd", "showbackground": True}
    figure.update_layout(
        template=TEMPLATE, title={"text": f"Loss surface of {escape(name)} ({result.kind} directions)", "x": 0.5},
        margin={"l": 0, "r": 0, "t": 50, "b": 0}, showlegend=any(t.showlegend for t in traces[1:]),
        legend={"x": 0.01, "y": 0.98},
        scene={"xaxis": {**axis, "title": {"text": xlabel}}, "yaxis": {**axis, "title": {"text": ylabel}},
               "zaxis": {**axis, "title": {"text": zlabel}, "range": [floor, high + 0.05 * span]},
               "aspectmode": "manual", "aspectratio": {"x": 1, "y": 1, "z": 0.7},
               "camera": {"eye": {"x": -1.5, "y": -1.5, "z": 1.1}}})
    return figure


def _log_ticks(low: float, high: float) -> list[float]:
    """1, 2, 5 × 10ᵏ between ``low`` and ``high`` (both ends when none lies between)."""
    ticks = [m * 10.0 ** k for k in range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
             for m in (1, 2, 5) if low <= m * 10.0 ** k <= high]
    return ticks if len(ticks) >= 2 else [low, high]


def _labels(result: SurfaceResult, name: str) -> tuple[str, str]:
    """The axis labels of the static figure; on a PCA plane, each component with its share of the variance."""
    return pca_axis_labels(result) if result.kind == "pca" else axis_labels(result, name)


def _trajectory(go: Any, result: SurfaceResult, z: np.ndarray, floor: float, lift: float) -> list[Any]:
    """The checkpoints' path stored with a PCA plane (none without one), one line per run: on the floor over the
    projected contours, at its exact coordinates, and on the surface at the grid's value interpolated there."""
    if result.path is None or len(result.path) == 0:
        return []
    from scipy.interpolate import RegularGridInterpolator

    path = np.asarray(result.path, dtype=float)
    count = len(path)
    runs = np.asarray(result.path_runs if result.path_runs is not None else [0] * count, dtype=int)
    labels = list(result.path_labels or [])
    labels += [f"run {k + 1}" for k in range(len(labels), int(runs.max()) + 1)]
    names = list(result.path_names or [f"checkpoint {k + 1}" for k in range(count)])
    steps = list(result.path_steps or [None] * count)
    on_surface = RegularGridInterpolator((result.x, result.y), z, bounds_error=False, fill_value=np.nan)(path)
    styles = run_styles([optimizer_in(label) for label in labels])
    traces = []
    for run, (label, style) in enumerate(zip(labels, styles)):
        mine = np.flatnonzero(runs == run)
        hover = [f"{escape(label)}: {escape(str(names[k]))}" + (f" (step {steps[k]})" if steps[k] is not None else "")
                 + f"<br>({path[k, 0]:.4g}, {path[k, 1]:.4g})" for k in mine]
        common = {"x": path[mine, 0], "y": path[mine, 1], "text": hover, "hovertemplate": "%{text}<extra></extra>",
                  "legendgroup": escape(label), "line": {"color": style.color, "width": 5}}
        traces.append(go.Scatter3d(z=on_surface[mine] + lift, mode="lines+markers", name=escape(label),
                                   showlegend=True, marker={"size": 3, "color": style.color}, **common))
        traces.append(go.Scatter3d(z=np.full(len(mine), floor), mode="lines+markers", showlegend=False,
                                   marker={"size": 2, "color": style.color}, **common))
    return traces


def _curve(go: Any, result: SurfaceResult, name: str) -> Any:
    """The loss against the coordinate (log axis when it spans more than a factor of 30), accuracy on a right axis."""
    loss = _finite(result.loss)
    computed = loss[np.isfinite(loss)]
    xlabel = _labels(result, name)[0]
    figure = go.Figure(go.Scatter(x=result.x, y=loss, mode="lines+markers", name="loss", marker={"size": 4},
                                  line={"color": COLORS[0]}, hovertemplate="loss %{y:.5g}<extra></extra>"))
    if np.isfinite(result.accuracy).any():
        figure.add_trace(go.Scatter(x=result.x, y=_finite(result.accuracy), mode="lines", name="accuracy",
                                    yaxis="y2", line={"color": COLORS[1], "dash": "dash"},
                                    hovertemplate="accuracy %{y:.4g}<extra></extra>"))
    for (position, _), label in checkpoint_marks(result, name):
        if result.x[0] <= position <= result.x[-1]:
            figure.add_vline(x=position, line={"color": to_hex(NEUTRAL), "dash": "dot", "width": 1},
                             annotation_text=escape(label), annotation_position="top")
    for trace in _barrier(go, result):
        figure.add_trace(trace)
    log = computed.min() > 0 and computed.max() / computed.min() > 30
    figure.update_layout(
        template=TEMPLATE, title={"text": f"Loss along {escape(xlabel)}", "x": 0.5}, hovermode="x unified",
        xaxis={"title": {"text": xlabel}, "range": [float(result.x[0]), float(result.x[-1])]},
        yaxis={"title": {"text": _loss_title(result)}, "type": "log" if log else "linear"},
        yaxis2={"title": {"text": "accuracy"}, "overlaying": "y", "side": "right", "range": [0, 1.02],
                "showgrid": False, "tickmode": "linear", "tick0": 0, "dtick": 0.2},
        legend={"orientation": "h", "x": 0.5, "xanchor": "center", "y": -0.15})
    return figure


def _loss_title(result: SurfaceResult) -> str:
    """The loss axis' title, naming the loss function when it is stored."""
    return f"loss ({result.loss_function})" if result.loss_function else "loss"


def _barrier(go: Any, result: SurfaceResult) -> list[Any]:
    """The loss barrier of a line between two checkpoints, when stored: the chord between the losses at α = 0 and 1,
    and the gap between the chord and the loss where it is largest (the barrier)."""
    barrier, alpha = result.barrier, result.barrier_alpha
    ends = [np.flatnonzero(np.isclose(result.x, a)) for a in (0.0, 1.0)]
    if barrier is None or alpha is None or any(len(e) == 0 for e in ends):
        return []
    start, stop = (float(result.loss[e[0]]) for e in ends)
    chord = (1 - alpha) * start + alpha * stop
    text = f"barrier {barrier:.4g}"
    if result.aligned and result.barrier_unaligned is not None:
        text += f" (unaligned {result.barrier_unaligned:.4g})"
    # as the static figure (landscape.plot.paths.draw_barrier) draws them
    return [go.Scatter(x=[0.0, 1.0], y=[start, stop], mode="lines", name="chord A–B",
                       line={"color": to_hex(NEUTRAL), "dash": "dash", "width": 1}, hoverinfo="skip"),
            go.Scatter(x=[alpha, alpha], y=[chord, chord + barrier], mode="lines+markers+text", name=text,
                       line={"color": COLORS[3], "width": 2}, marker={"size": 6}, text=["", text],
                       textposition="top right", hovertemplate=f"{text} at α = {alpha:.3g}<extra></extra>")]


# -- spectra -----------------------------------------------------------------------------------------------------
def spectrum_figure(checkpoints: Sequence[SpectrumCheckpoint], labels: Optional[Sequence[str]] = None) -> Any:
    """The spectral density of each checkpoint on a log scale (floored at :data:`FLOOR` of the largest value, as the
    static figure), its top eigenvalues as triangles above the curves; hovering shows each value."""
    go, _ = _plotly()
    labels = list(labels) if labels is not None else checkpoint_labels(checkpoints)
    styles = run_styles([optimizer_in(c.name, label, c.path.stem if c.path else None)
                         for c, label in zip(checkpoints, labels)])
    peak = max(float(np.nanmax(c.density.density)) for c in checkpoints)
    floor = FLOOR * peak if peak > 0 else FLOOR
    figure = go.Figure()
    for row, (checkpoint, label, style) in enumerate(zip(checkpoints, labels, styles)):
        density = checkpoint.density
        figure.add_trace(go.Scatter(
            x=density.grid, y=np.maximum(density.density, floor), mode="lines", name=escape(label),
            legendgroup=label, line={"color": style.color},
            hovertemplate=f"{escape(label)}<br>eigenvalue %{{x:.4g}}<br>density %{{y:.3g}}<extra></extra>"))
        if checkpoint.eigen is not None and len(checkpoint.eigen.values):
            values = np.asarray(checkpoint.eigen.values, dtype=float)
            height = peak * 10 ** ((0.3 + 0.25 * row) * np.log10(peak / floor) / 8)  # one row per checkpoint
            figure.add_trace(go.Scatter(
                x=values, y=np.full(len(values), height), mode="markers", name=f"{escape(label)}: top eigenvalues",
                legendgroup=label, marker={"symbol": "triangle-down", "size": 10, "color": style.color},
                customdata=np.arange(1, len(values) + 1),
                hovertemplate=f"{escape(label)}<br>λ%{{customdata}} = %{{x:.6g}}<extra></extra>"))
    figure.update_layout(
        template=TEMPLATE, title={"text": "Hessian spectral density (stochastic Lanczos quadrature)", "x": 0.5},
        xaxis={"title": {"text": "eigenvalue"}}, yaxis={"title": {"text": "density (log scale)"}, "type": "log",
                                                        "exponentformat": "power"},
        hovermode="closest", legend={"orientation": "h", "x": 0.5, "xanchor": "center", "y": -0.15})
    return figure
