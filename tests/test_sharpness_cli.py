"""`landscape analyze --metrics sharpness` and `landscape compare` on its results: the groups stored, the values the
library functions give for the same seed, the table's columns, the figure's panels, bad options and --resume."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import ErrorbarContainer

import landscape as L
from landscape import store
from landscape.analysis import AnalysisSettings
from landscape.checkpoints import load_checkpoint, save_checkpoint
from landscape.cli import main
from landscape.compare import TABLE_HEADERS, flatness_table
from landscape.data import load_data
from landscape.losses import resolve_loss
from landscape.models import mlp
from landscape.plot import plot_compare

SIZES = [64, 6, 10]
SUBSET, SEED = 120, 3
#: cheap settings, the same in every run and direct call
COMMON = ["--data", "digits", "--subset", str(SUBSET), "--seed", str(SEED), "--dtype", "float64",
          "--sharpness-steps", "4", "--sharpness-restarts", "2", "--sharpness-samples", "8", "--quiet"]
MEASURES = ["--sharpness", "worst,average,fisher-rao,relative-flatness"]
ADAPTIVE = ["--metrics", "sharpness", "--sharpness", "worst,average", "--adaptive", "--chunk-size", "50"]


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def checkpoints(folder):
    """Two checkpoints of different flatness: a net, and the same net with its first layer three times larger."""
    torch.manual_seed(0)
    model = mlp(SIZES)
    save_checkpoint(folder / "net.pt", model, step=1, model_spec="mlp", model_kwargs={"sizes": SIZES})
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    save_checkpoint(folder / "scaled.pt", model, step=2, model_spec="mlp", model_kwargs={"sizes": SIZES})
    return [folder / "net.pt", folder / "scaled.pt"]


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """Both checkpoints analysed with every measure (and eigs, trace per layer), then again with the adaptive
    worst (m-sharpness) and average case added to the same file; the first run's standard output."""
    folder = tmp_path_factory.mktemp("sharpness")
    paths = checkpoints(folder)
    out = folder / "r.h5"
    code = main(["analyze", *map(str, paths), *COMMON, "--metrics", "eigs,trace,sharpness", *MEASURES, "--top-k", "2",
                 "--trace-matvecs", "8", "--per-layer", "-o", str(out), "--rho", "0.1"])
    assert code == 0
    code = main(["analyze", *map(str, paths), *COMMON, *ADAPTIVE, "-o", str(out)])
    assert code == 0
    return out, paths


def direct(path, key):
    """The measure stored under ``key``, computed by the library function with the options of the runs above."""
    model = load_checkpoint(path).model
    data = load_data("digits", subset=SUBSET, seed=SEED)
    loss = resolve_loss(None, data.task)
    common = {"dtype": torch.float64, "progress": False}
    if key == "sharpness_fisher_rao":
        return L.fisher_rao_norm(model, loss, data.batches, **common)
    if key == "sharpness_relative_flatness":
        return L.relative_flatness(model, loss, data.batches, seed=SEED, **common)
    kind, adaptive = key.split("_")[1], key.endswith("_adaptive")
    return L.sharpness(model, loss, data.batches, kind=kind, adaptive=adaptive, rho=0.05 if adaptive else 0.1,
                       steps=4, restarts=2, samples=8, chunk_size=50 if adaptive and kind == "worst" else None,
                       seed=SEED, **common)


def test_each_measure_is_stored_as_the_library_computes_it(analysed):
    out, paths = analysed
    records = store.read_results(out)
    keys = {"sharpness_worst", "sharpness_average", "sharpness_fisher_rao", "sharpness_relative_flatness",
            "sharpness_worst_adaptive", "sharpness_average_adaptive"}
    for path in paths:
        record = records[path.stem]
        assert set(record.results) == {"eigen", "trace"} | keys
        for block in record.layers.values():  # per-layer blocks get the curvature metrics only
            assert set(block) == {"eigen", "trace"}
        assert record.attrs["sharpness"] == ["worst", "average"] and record.attrs["adaptive"]  # the last run's
        assert record.attrs["chunk_size"] == 50 and record.attrs["rho"] == 0.05
        for key in keys:
            stored, truth = record.results[key], direct(path, key)
            assert stored.key == key
            assert stored.value == pytest.approx(truth.value, rel=1e-10, abs=1e-15), (path.stem, key)
            assert (stored.stderr is None) == (truth.stderr is None)
            # L(θ) of every measure is the loss analyze measured at the checkpoint, by another code path
            assert stored.loss == pytest.approx(record.attrs["loss"], rel=1e-10)
        worst = record.results["sharpness_worst_adaptive"]
        assert (worst.chunk_size, worst.num_chunks, worst.rho) == (50, 3, 0.05)  # 120 samples: 50 + 50 + 20
        assert record.results["sharpness_worst"].rho == 0.1


def test_closing_table_shows_the_measures(tmp_path, capsys):
    path = checkpoints(tmp_path)[0]
    code, out, err = run(["analyze", path, *COMMON, "--metrics", "sharpness", "--sharpness", "average",
                          "-o", tmp_path / "r.h5"], capsys)
    assert code == 0, err
    stored = store.read_results(tmp_path / "r.h5")["net"].results["sharpness_average"]
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if "average ρ=0.05" in line)
    assert lines[header].split()[0] == "checkpoint"
    assert lines[header + 2].split() == ["net", f"{stored.value:.4g}", "±", f"{stored.stderr:.2g}"]


def markdown_cells(line):
    """The cells of a markdown table line ("|" inside a cell is escaped as "\\|")."""
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])]


def test_compare_table_has_a_column_per_measure(analysed):
    out, _ = analysed
    rows = store.flatness_rows([out])
    records = store.read_results(out)
    labels = ["worst ρ=0.1", "worst-adaptive ρ=0.05 m=50", "average ρ=0.1", "average-adaptive ρ=0.05",
              "fisher-rao", "relative-flatness"]
    text = flatness_table(rows).splitlines()
    after = TABLE_HEADERS.index("|J|₂ max") + 1
    markdown = flatness_table(rows, markdown=True).splitlines()
    assert markdown_cells(markdown[0]) == [
        *TABLE_HEADERS[:after], *labels, *TABLE_HEADERS[after:]]
    for row, line in zip(rows, markdown[2:]):
        cells = markdown_cells(line)
        results = records[row.name].results
        for label, cell in zip(labels, cells[after:]):
            result = next(r for r in results.values() if getattr(r, "label", None) == label)
            assert row.sharpness[label] == (result.value, result.stderr)
            expected = f"{result.value:.4g}" + ("" if result.stderr is None else f" ± {result.stderr:.2g}")
            assert cell == expected, label
    assert len(text) == 2 + len(rows)


def _overlaps(boxes):
    return [(a, b) for a, b in itertools.combinations(boxes, 2) if a.overlaps(b)]


def test_compare_figure_has_a_readable_panel_per_measure(analysed, tmp_path):
    out, _ = analysed
    fig = plot_compare([out], tmp_path / "compare")
    assert (tmp_path / "compare.png").stat().st_size > 1000 and (tmp_path / "compare.pdf").is_file()
    rows = store.flatness_rows([out])
    labels = [ax.get_xlabel() for ax in fig.axes]
    assert len(fig.axes) == 2 + 6 + 1  # λmax, trace, six measures, test accuracy: wrapped into lines of three
    assert labels[-1] == "test accuracy"
    assert labels[2:-1] == ["worst-case sharpness\nρ=0.1", "worst-case sharpness\nadaptive ρ=0.05 m=50 ± s.e.",
                          "average-case sharpness\nρ=0.1 ± s.e.", "average-case sharpness\nadaptive ρ=0.05 ± s.e.",
                          "Fisher-Rao norm\n± s.e.", "relative flatness"]
    order = ["worst ρ=0.1", "worst-adaptive ρ=0.05 m=50", "average ρ=0.1", "average-adaptive ρ=0.05", "fisher-rao",
             "relative-flatness"]
    for ax, label in zip(fig.axes[2:], order):
        widths = [patch.get_width() for patch in ax.patches]
        assert widths == pytest.approx([row.sharpness[label][0] for row in rows]), label
        has_error = rows[0].sharpness[label][1] is not None  # error bars where the measure has a standard error
        errorbars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(errorbars) == (len(rows) if has_error else 0), label
    tops = sorted({round(ax.get_position().y0, 6) for ax in fig.axes}, reverse=True)
    assert len(tops) == 3  # three lines of panels

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    texts = [ax.xaxis.label for ax in fig.axes] + [t for ax in fig.axes for t in ax.texts]
    for ax in fig.axes:  # the tick labels drawn: those within the axis limits
        (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
        texts += [t for t in ax.get_xticklabels() if t.get_text() and x0 <= t.get_position()[0] <= x1]
        texts += [t for t in ax.get_yticklabels()
                  if t.get_text() and t.get_visible() and y0 <= t.get_position()[1] <= y1]
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert not _overlaps(boxes)
    figure_box = fig.bbox
    assert all(figure_box.x0 - 1 <= b.x0 and b.x1 <= figure_box.x1 + 1 for b in boxes)  # nothing cut at the sides


BAD = [
    (["--rho", "-1"], "--rho"),
    (["--rho", "nan"], "--rho"),
    (["--sharpness", "foo"], "--sharpness"),
    (["--sharpness", ""], "--sharpness"),
    (["--chunk-size", "0"], "--chunk-size"),
    (["--sharpness", "average", "--chunk-size", "10"], "--chunk-size"),
    (["--sharpness-steps", "0"], "--sharpness-steps"),
    (["--sharpness-samples", "-2"], "--sharpness-samples"),
]


@pytest.mark.parametrize("extra, flag", BAD, ids=[" ".join(e) for e, _ in BAD])
def test_bad_options_are_one_line_exit_2_and_no_file(tmp_path, capsys, extra, flag):
    path = checkpoints(tmp_path)[0]
    out = tmp_path / "r.h5"
    code, _, err = run(["analyze", path, "--data", "digits", "--metrics", "sharpness", "--quiet", "-o", out, *extra],
                       capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("landscape analyze: error:"), err
    assert flag in lines[0]
    assert not out.exists() and not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_settings_accept_either_spelling_and_name_the_groups():
    settings = AnalysisSettings(metrics=("eigs", "sharpness"), sharpness=("fisher_rao", "average", "worst"),
                                adaptive=True)
    assert settings.sharpness == ("fisher_rao", "average", "worst")
    assert settings.groups() == {"eigen", "sharpness_fisher_rao", "sharpness_average_adaptive",
                                 "sharpness_worst_adaptive"}
    assert AnalysisSettings().metrics == ("eigs", "trace", "density", "jacobian")  # sharpness only when asked
    assert AnalysisSettings(metrics=("trace",)).groups() == {"trace"}


def test_resume_skips_only_files_that_hold_every_requested_measure(tmp_path, capsys):
    path = checkpoints(tmp_path)[0]
    out = tmp_path / "r.h5"
    args = ["analyze", path, "--data", "digits", "--subset", "60", "--metrics", "sharpness", "--sharpness",
            "worst", "--sharpness-steps", "2", "--sharpness-restarts", "1", "-o", out]
    assert run(args, capsys)[0] == 0
    stamp = store.read_results(out)["net"].attrs["analyzed"]
    code, _, err = run([*args, "--resume"], capsys)
    assert code == 0 and "skipped" in err
    assert store.read_results(out)["net"].attrs["analyzed"] == stamp
    code, _, err = run([*args, "--resume", "--adaptive"], capsys)  # a measure not stored yet: computed
    assert code == 0 and "skipped" not in err
    assert {"sharpness_worst", "sharpness_worst_adaptive"} <= set(store.read_results(out)["net"].results)
    code, _, err = run([*args, "--resume", "--adaptive"], capsys)
    assert code == 0 and "skipped" in err


@pytest.mark.slow
def test_readme_example_runs_as_written(tmp_path):
    """The README's sharpness-example block, on checkpoints made as the quick start makes them."""
    from landscape.data import digits

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    after = readme[readme.index("<!-- sharpness-example"):]
    block = re.search(r"^```bash[ \t]*\n(.*?)^```", after, re.S | re.M).group(1)
    torch.manual_seed(0)
    model, (X, y) = mlp(), digits("train")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(1, 301):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(X), y).backward()
        optimizer.step()
        if step % 200 == 100:
            torch.save(model.state_dict(), tmp_path / f"ckpt_step{step}.pt")
    command = tmp_path / "bin" / "landscape"
    command.parent.mkdir()
    command.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m landscape "$@"\n')
    command.chmod(0o755)
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=f"{command.parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(["bash", "-e", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = store.read_results(tmp_path / "flatness.h5")
    for record in records.values():
        assert {"eigen", "trace", "sharpness_worst", "sharpness_average", "sharpness_fisher_rao",
                "sharpness_worst_adaptive", "sharpness_average_adaptive"} == set(record.results)
    header = next(line for line in proc.stdout.splitlines() if line.startswith("source/name"))
    assert "worst-adaptive ρ=0.05 m=256" in header and "fisher-rao" in header
    assert (tmp_path / "flatness.png").stat().st_size > 1000 and (tmp_path / "flatness.pdf").is_file()
