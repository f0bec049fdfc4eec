"""The interactive HTML page (landscape.plot.html) from small results files with closed-form surfaces and spectra,
and the page opened in a real headless browser (Debian's chromium, driven over the DevTools protocol on a pipe):
it loads with no console error or uncaught exception, fetches nothing from the network, and its screenshot shows
the plots (the colour scale's ends on the surface, the line's colour on the spectrum) where a blank page is white."""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import importlib.util
import io
import itertools
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest

from landscape import files, store
from landscape.errors import LandscapeError, StoreError
from landscape.results import DensityResult, EigenResult, SurfaceResult

from landscape.plot.html import INSTALL, spectrum_figure, surface_figure, write_html

needs_plotly = pytest.mark.skipif(importlib.util.find_spec("plotly") is None,
                                  reason='the HTML page needs the html extra: pip install ".[html]"')

GRID = np.linspace(-1.0, 1.0, 21)
EIGENVALUES = np.array([8.0, 6.5, 3.0])
#: viridis' two ends (plotly's "Viridis"): the lowest and the highest loss of the surface
VIRIDIS_LOW, VIRIDIS_HIGH = (68, 1, 84), (253, 231, 37)
SPECTRUM_BLUE = (0, 114, 178)  # the first run colour of landscape.plot.style (a checkpoint of no known optimizer)


def bowl(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A closed-form loss surface: positive, lowest (0.05) at the origin, spanning two decades."""
    return 0.05 + 2.0 * x**2 + 0.5 * y**2 + 0.3 * np.sin(3.0 * x) * y


def _surface(x: np.ndarray, y: np.ndarray, loss: np.ndarray, kind: str, **extra: Any) -> SurfaceResult:
    return SurfaceResult(x=x, y=y, loss=loss, accuracy=1.0 / (1.0 + loss), kind=kind, grid="-1:1:21",
                         direction_norms=[1.0, 1.0], loss_function="cross_entropy", dtype="float64", seconds=0.0,
                         **extra)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, Path]:
    """A file with a 2-D surface, a spectral density and top eigenvalues; one with a line between two checkpoints."""
    folder = tmp_path_factory.mktemp("html")
    X, Y = np.meshgrid(GRID, GRID, indexing="ij")
    plane = _surface(GRID, GRID, bowl(X, Y), "random", grid_y="-1:1:21", normalization="filter")
    grid = np.linspace(-1.0, 10.0, 200)
    density = DensityResult(grid=grid, density=np.exp(-grid**2 / 0.1) + 0.01 * np.exp(-(grid - 8.0) ** 2 / 0.2),
                            nodes=np.zeros((1, 2)), weights=np.zeros((1, 2)), sigma=0.1, num_probes=1, num_steps=2,
                            reorthogonalize=True, num_matvecs=2, seed=0, seconds=0.0, dimension=100)
    eigen = EigenResult(values=EIGENVALUES, residuals=np.zeros(3), converged=np.ones(3, bool), vectors=None,
                        method="lanczos", which="LA", num_matvecs=10, tol=1e-6, seed=0, seconds=0.0)
    alpha = np.linspace(-0.5, 1.5, 21)
    line = _surface(alpha, np.zeros(0), 0.1 + np.sin(np.pi * alpha) ** 2, "line", checkpoint_names=["A", "B"])
    paths = {"plane": folder / "plane.h5", "line": folder / "line.h5"}
    with store.update_results(paths["plane"]) as handle:
        store.write_checkpoint(handle, "minimum", {"surface": plane, "density": density, "eigen": eigen},
                               attrs={"step": 300})
    with store.update_results(paths["line"]) as handle:
        store.write_checkpoint(handle, "A", {"surface": line}, attrs={"step": 100})
    return paths


# -- the page, without a browser ---------------------------------------------------------------------------------
@needs_plotly
def test_surface_figure_holds_log_loss_at_every_grid_point_with_loss_and_accuracy_on_hover(results):
    name, result = "minimum", store.read_results(results["plane"])["minimum"].results["surface"]
    surface = surface_figure(result, name).data[0]
    X, Y = np.meshgrid(GRID, GRID, indexing="ij")
    assert np.allclose(np.asarray(surface.z), np.log10(bowl(X, Y)).T)  # plotly's z is indexed [y][x]
    number = r"(-?\d+\.?\d*(?:e-?\d+)?)"
    for (i, x), (j, y) in itertools.product(enumerate(GRID), repeat=2):
        shown = re.fullmatch(rf"filter-normalized direction 1 {number}<br>filter-normalized direction 2 {number}<br>"
                             rf"loss {number}<br>accuracy {number}", surface.text[j][i])
        loss = bowl(x, y)
        assert [float(v) for v in shown.groups()] == pytest.approx([x, y, loss, 1.0 / (1.0 + loss)], rel=1e-3,
                                                                   abs=1e-12)
    contours = surface.contours.z
    assert contours.show and contours.project.z  # the contours projected on the floor beneath


@needs_plotly
def test_page_is_one_self_contained_file_with_plotly_inside(results, tmp_path):
    written = write_html(results["plane"], tmp_path / "out" / "page")
    assert written == tmp_path / "out" / "page.html"
    page = written.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\ssrc=", page)  # nothing to fetch: plotly.js is in the page
    assert page.count("Plotly.newPlot(") == 2 and len(page) > 1_000_000  # surface and spectrum, plotly.js once
    assert files.stale_temporaries(written) == []


def test_without_plotly_the_message_names_the_extra(results, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)  # import plotly.graph_objects now fails
    with pytest.raises(LandscapeError, match=re.escape(INSTALL) + "$"):
        write_html(results["plane"], tmp_path / "page.html")
    assert not (tmp_path / "page.html").exists()


@needs_plotly
def test_a_file_with_nothing_to_draw_is_refused(results, tmp_path):
    with pytest.raises(StoreError, match="no checkpoint 'nope'"):
        write_html(results["plane"], tmp_path / "page.html", checkpoint="nope")
    empty = tmp_path / "empty.h5"
    with store.update_results(empty) as handle:
        store.write_checkpoint(handle, "c", {}, attrs={"step": 1})
    with pytest.raises(StoreError, match="no loss surface and no spectral density"):
        write_html(empty, tmp_path / "page.html")


@needs_plotly
def test_pca_path_is_drawn_per_run_on_the_floor_and_on_the_surface_with_the_explained_variance():
    X, Y = np.meshgrid(GRID, GRID, indexing="ij")
    # two runs ending at the origin (the PCA plane's origin), every checkpoint on a grid node
    path = np.array([[0.8, 0.6], [0.5, 0.3], [0.0, 0.0], [-0.6, 0.9], [-0.3, 0.4], [0.0, 0.0]])
    result = _surface(GRID, GRID, bowl(X, Y), "pca", grid_y="-1:1:21", explained_variance=[0.842, 0.101],
                      path=path, path_names=[f"step_{n}" for n in (0, 50, 100) * 2], path_steps=[0, 50, 100] * 2,
                      path_runs=[0, 0, 0, 1, 1, 1], path_labels=["sgd", "sam"])
    figure = surface_figure(result, "step_100")
    assert (figure.layout.scene.xaxis.title.text, figure.layout.scene.yaxis.title.text) == ("PC1 (84.2 %)",
                                                                                           "PC2 (10.1 %)")
    lines = [t for t in figure.data if t.type == "scatter3d" and t.mode == "lines+markers"]
    on_surface = [t for t in lines if t.showlegend]
    assert [t.name for t in on_surface] == ["sgd", "sam"] and len(lines) == 4
    assert on_surface[0].line.color != on_surface[1].line.color  # each optimizer in its own colour
    floor = min(figure.layout.scene.zaxis.range)
    for run, trace in enumerate(on_surface):
        mine = path[3 * run:3 * run + 3]
        assert np.allclose(np.asarray(trace.x), mine[:, 0]) and np.allclose(np.asarray(trace.y), mine[:, 1])
        lift = np.asarray(trace.z) - np.log10(bowl(mine[:, 0], mine[:, 1]))  # on a grid node: the loss there
        assert np.allclose(lift, lift[0]) and 0 <= lift[0] < 0.1
        (beneath,) = [t for t in lines if not t.showlegend and t.legendgroup == trace.name]
        assert np.allclose(np.asarray(beneath.x), mine[:, 0]) and np.allclose(np.asarray(beneath.z), floor)


@needs_plotly
def test_line_chart_shows_the_barrier_between_the_chord_and_the_loss(results):
    result = store.read_results(results["line"])["A"].results["surface"]
    # L(α) = 0.1 + sin²(πα): both ends 0.1, the largest excess over the chord is 1 at α = ½
    barrier = dataclasses.replace(result, barrier=1.0, barrier_alpha=0.5)
    plain, drawn = surface_figure(result, "A"), surface_figure(barrier, "A")
    assert [t.name for t in plain.data] == ["loss", "accuracy"]
    chord, gap = drawn.data[2:]
    assert np.allclose(np.asarray(chord.x), [0, 1]) and np.allclose(np.asarray(chord.y), [0.1, 0.1])
    assert np.allclose(np.asarray(gap.x), 0.5) and np.allclose(np.asarray(gap.y), [0.1, 0.1 + np.sin(np.pi / 2) ** 2])
    assert "barrier 1" in gap.name


@needs_plotly
def test_spectrum_marks_every_top_eigenvalue(results):
    from landscape.plot.spectrum import load_spectra

    figure = spectrum_figure(load_spectra(results["plane"]))
    curve, marks = figure.data
    assert np.allclose(np.asarray(marks.x), EIGENVALUES) and marks.marker.symbol == "triangle-down"
    assert min(marks.y) > max(curve.y) and figure.layout.yaxis.type == "log"


# -- the page in a real browser ----------------------------------------------------------------------------------
def chromium() -> Optional[str]:
    """Debian's chromium (or another chromium-like browser on PATH)."""
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


class Browser:
    """Headless chromium driven over the DevTools protocol on a pipe (fds 3 and 4, messages ending in NUL)."""

    #: every plot drawn (a page without any is ready at once)
    READY = ("[...document.querySelectorAll('.js-plotly-plot')]"
             ".every(p => p._fullLayout && p.querySelector('.main-svg'))")

    def __init__(self, executable: str, profile: Path, width: int, height: int, timeout: float) -> None:
        to_browser_read, self._write = os.pipe()
        self._read, from_browser_write = os.pipe()
        # the browser's ends above 4, so that placing them on 3 and 4 in the child overwrites neither
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5) for fd in (to_browser_read, from_browser_write)]
        for fd in (to_browser_read, from_browser_write):
            os.close(fd)
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--no-first-run",
                 "--hide-scrollbars", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                 f"--window-size={width},{height}", "about:blank"]

        def commands_on_3_answers_on_4() -> None:  # runs in the child before exec; dup2'd fds are inheritable
            os.dup2(ends[0], 3)
            os.dup2(ends[1], 4)

        self.process = subprocess.Popen([executable, *flags], pass_fds=(3, 4), preexec_fn=commands_on_3_answers_on_4,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in ends:
            os.close(fd)
        self.deadline = time.monotonic() + timeout
        self.events: list[dict] = []
        self._buffer, self._id, self.size = b"", 0, (width, height)

    def send(self, method: str, session: Optional[str] = None, **params: Any) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._next()
            if reply.get("id") == self._id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._next())
        return next(e for e in self.events if e.get("method") == method)

    def _next(self) -> dict:
        while b"\0" not in self._buffer:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError("the browser did not answer in time")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError(f"the browser exited (code {self.process.wait()})")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def open(self, page: Path) -> tuple[bytes, list[list[float]], list[str], list[str]]:
        """Load ``page`` in a new tab and wait until each plotly plot on it is drawn; returns a screenshot of the
        whole page (PNG), the plots' boxes (left, top, right, bottom), the errors and the URLs it requested."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.send(f"{domain}.enable", session)
        width, height = self.size
        self.send("Emulation.setDeviceMetricsOverride", session, width=width, height=height, deviceScaleFactor=1,
                  mobile=False)
        self.events.clear()
        self.send("Page.navigate", session, url=page.resolve().as_uri())
        self.wait_for("Page.loadEventFired")
        while not self._evaluate(session, self.READY):
            time.sleep(0.1)
        self._evaluate(session, "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(1))))")
        boxes = self._evaluate(session, "[...document.querySelectorAll('.js-plotly-plot')].map(p => "
                                        "{ const b = p.getBoundingClientRect(); return [b.left, b.top, b.right, "
                                        "b.bottom]; })")
        height = int(max((box[3] for box in boxes), default=height - 10)) + 10
        self.send("Emulation.setDeviceMetricsOverride", session, width=width, height=height, deviceScaleFactor=1,
                  mobile=False)
        png = base64.b64decode(self.send("Page.captureScreenshot", session, format="png")["data"])
        errors = [_error_text(e) for e in self.events if _is_error(e)]
        urls = [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]
        self.send("Target.closeTarget", targetId=target)
        return png, boxes, errors, urls

    def _evaluate(self, session: str, expression: str) -> Any:
        result = self.send("Runtime.evaluate", session, expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (TimeoutError, RuntimeError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._read)
        os.close(self._write)


def _is_error(event: dict) -> bool:
    """An uncaught exception, console.error/assert, or a browser log entry of level error (e.g. a failed load)."""
    method, params = event.get("method"), event.get("params", {})
    return (method == "Runtime.exceptionThrown"
            or method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert")
            or method == "Log.entryAdded" and params["entry"].get("level") == "error")


def _error_text(event: dict) -> str:
    params = event["params"]
    if event["method"] == "Runtime.exceptionThrown":
        details = params["exceptionDetails"]
        return details.get("exception", {}).get("description") or details.get("text", "")
    if event["method"] == "Runtime.consoleAPICalled":
        return " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
    return params["entry"].get("text", "")


def _pixels(png: bytes, box: list[float]) -> np.ndarray:
    """The RGB pixels of ``box`` (left, top, right, bottom in CSS pixels) of a screenshot."""
    import matplotlib.image

    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    rgb = np.round(image[..., :3] * 255).astype(int)
    left, top, right, bottom = (int(round(v)) for v in box)
    return rgb[top:bottom, left:right].reshape(-1, 3)


def _near(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 40) -> int:
    """How many pixels lie within ``tolerance`` (per channel) of ``colour``."""
    return int((np.abs(pixels - np.array(colour)).max(axis=1) <= tolerance).sum())


@needs_plotly
@pytest.mark.slow
def test_page_loads_in_headless_chromium_without_errors_and_shows_the_plots(results, tmp_path):
    executable = chromium()
    if executable is None:
        pytest.skip("no chromium found (Debian: apt-get install -y chromium; .ci/run installs it when missing)")
    pages = {kind: write_html(results[kind], tmp_path / f"{kind}.html") for kind in results}
    pages["blank"] = tmp_path / "blank.html"  # what the browser shows where nothing is drawn
    pages["blank"].write_text('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>blank</title>'
                              "</head><body></body></html>")
    browser = Browser(executable, tmp_path / "profile", 1200, 900, timeout=60)
    try:
        shown = {kind: browser.open(page) for kind, page in pages.items()}
    finally:
        browser.close()
    for kind, (png, boxes, errors, urls) in shown.items():
        assert errors == [], f"{kind}: console errors {errors}"
        assert all(url.startswith(("file:", "data:", "blob:")) for url in urls), f"{kind}: fetched {urls}"
        (tmp_path / f"{kind}.png").write_bytes(png)
    png, boxes, _, _ = shown["blank"]
    blank = _pixels(png, [0, 0, 1200, 900])
    assert boxes == [] and len(np.unique(blank, axis=0)) == 1 and (blank == 255).all()  # one colour: white

    png, boxes, _, _ = shown["plane"]
    assert len(boxes) == 2  # the surface above the spectrum
    surface, spectrum = (_pixels(png, box) for box in boxes)
    # the 3-D surface (WebGL) is drawn: both ends of the colour scale, i.e. the lowest and the highest loss, are seen
    coloured = (surface != 255).any(axis=1).mean()
    assert coloured > 0.1 and _near(surface, VIRIDIS_LOW) > 100 and _near(surface, VIRIDIS_HIGH) > 100, coloured
    assert len(np.unique(surface, axis=0)) > 500  # shaded: far more colours than the axes' greys on white
    assert _near(spectrum, SPECTRUM_BLUE, 30) > 300  # the density curve and the eigenvalue triangles

    png, boxes, _, _ = shown["line"]
    (line,) = (_pixels(png, box) for box in boxes)
    assert _near(line, SPECTRUM_BLUE, 30) > 300  # the loss curve, in the first colour
