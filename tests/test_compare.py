"""`landscape compare`: flatness rows read from results and run files, the table, the figure and the command."""

from __future__ import annotations

import argparse

import h5py
import numpy as np
import pytest

from landscape import store
from landscape.cli import compare as cli_compare
from landscape.cli import main
from landscape.compare import TABLE_HEADERS, flatness_table
from landscape.errors import StoreError, command_line_names
from landscape.plot import plot_compare
from landscape.plot.style import COLUMN_WIDTH
from landscape.results import source_labels
from landscape.store import flatness_rows

LRS = {"fast": 0.2, "slow": 0.05}


def _train(path, lr: float, *extra: str) -> None:
    code = main(["train", "--model", "mlp", "--model-kwargs", '{"sizes": [64, 8, 10]}', "--data", "digits",
                 "--subset", "200", "--lr", str(lr), "--steps", "40", "--track-every", "20",
                 "--track-trace-matvecs", "6", *extra, "--quiet", "-o", str(path)])
    assert code == 0


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two tracked runs (η = 0.2 and 0.05) and the analysis of the first run's two checkpoints (without the test
    split, so that a row lacks a test accuracy)."""
    folder = tmp_path_factory.mktemp("compare")
    paths = {name: folder / f"{name}.h5" for name in (*LRS, "results")}
    for name, lr in LRS.items():
        _train(paths[name], lr, "--track-jacobian", "--save-every", "20")
    code = main(["analyze", str(folder / "fast_checkpoints"), "--data", "digits", "--subset", "200", "--metrics",
                 "eigs,trace,jacobian", "--top-k", "2", "--trace-matvecs", "12", "--quiet", "--no-test",
                 "-o", str(paths["results"])])
    assert code == 0
    return paths


def _command(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli_compare.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["compare", *argv])
    with command_line_names():  # as landscape.cli.main does: the library's messages name options by their flags
        return cli_compare.run(args, ["compare", *argv])


def test_rows_hold_the_stored_numbers(files):
    rows = flatness_rows([files["results"], files["fast"], files["slow"]])
    assert [(row.name, row.step) for row in rows] == [("step_20", 20), ("step_40", 40), ("run", 40), ("run", 40)]

    records = store.read_results(files["results"])
    for row in rows[:2]:
        record = records[row.name]
        eigen, trace, jacobian = (record.results[k] for k in ("eigen", "trace", "jacobian"))
        assert row.source == str(files["results"])
        assert row.lambda_max == pytest.approx(eigen.values.max())
        assert (row.trace, row.trace_stderr) == pytest.approx((trace.estimate, trace.stderr))
        assert row.trace_per_param == pytest.approx(trace.estimate / record.attrs["num_params"])
        assert row.jacobian_max == pytest.approx(np.max(jacobian.spectral))
        assert (row.train_loss, row.train_accuracy) == pytest.approx((record.attrs["loss"], record.attrs["accuracy"]))
        assert row.sharpness_ratio is None and row.test_loss is None and row.test_accuracy is None

    for row, name in zip(rows[2:], LRS):
        run = store.read_run(files[name])
        last = {column: values[-1] for column, values in run.tables["run/curvature"].items()}
        assert row.source == str(files[name]) and row.lr == LRS[name]
        assert row.lambda_max == pytest.approx(last["lambda_max"])
        assert row.sharpness_ratio == pytest.approx(last["lambda_max"] * LRS[name] / 2)
        assert (row.trace, row.trace_stderr) == pytest.approx((last["trace"], last["trace_stderr"]))
        assert row.trace_per_param == pytest.approx(last["trace"] / run.attrs["num_params"])
        assert row.trace_per_param_stderr == pytest.approx(last["trace_stderr"] / run.attrs["num_params"])
        assert row.jacobian_max == pytest.approx(last["jacobian_max"])
        assert (row.train_loss, row.train_accuracy, row.test_loss, row.test_accuracy) == pytest.approx(
            (last["train_loss"], last["train_accuracy"], last["test_loss"], last["test_accuracy"]))


def test_table_has_a_line_per_row_and_a_markdown_form(files):
    rows = flatness_rows([files["results"], files["fast"], files["slow"]])
    text = flatness_table(rows).splitlines()
    assert len(text) == 2 + len(rows)
    assert text[0].split()[:3] == ["source/name", "step", "λmax"]
    assert [line.split()[0] for line in text[2:]] == ["results.h5:step_20", "results.h5:step_40", "fast.h5:run",
                                                      "slow.h5:run"]
    assert text[2].split()[2:4] == [f"{rows[0].lambda_max:.4g}", "-"]  # checkpoints have no η
    assert text[4].split()[3] == f"{rows[2].sharpness_ratio:.3g}"

    markdown = flatness_table(rows, markdown=True).splitlines()
    assert len(markdown) == 2 + len(rows)
    assert markdown[1] == "|" + "|".join("---" for _ in TABLE_HEADERS) + "|"
    for line in markdown:  # "|J|" is escaped, so every line has exactly one cell per column
        assert line.replace(r"\|", "").count("|") == len(TABLE_HEADERS) + 1


def test_source_labels_are_file_names_unless_two_share_one():
    assert source_labels(["a/run.h5", "b/run.h5", "c/x.h5"]) == {"a/run.h5": "a/run.h5", "b/run.h5": "b/run.h5",
                                                                 "c/x.h5": "x.h5"}
    assert source_labels(["a/run.h5", "b/sam.h5"]) == {"a/run.h5": "run.h5", "b/sam.h5": "sam.h5"}


def test_figure_draws_the_rows_as_labelled_bar_panels(files, tmp_path):
    output = tmp_path / "figs" / "flat"
    fig = plot_compare([files["results"], files["fast"], files["slow"]], output)

    for suffix, magic in ((".png", b"\x89PNG"), (".pdf", b"%PDF")):
        written = output.with_suffix(suffix)
        assert written.is_file() and written.stat().st_size > 1000
        assert written.read_bytes()[:4] == magic

    assert len(fig.axes) == 4
    labels = [ax.get_xlabel() for ax in fig.axes]
    assert "lambda" in labels[0] and "trace" in labels[1] and "Jacobian" in labels[2] and labels[3] == "test accuracy"
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["step_20", "step_40", "run, step 40",
                                                                     "run, step 40"]
    rows = flatness_rows([files["results"], files["fast"], files["slow"]])
    widths = [bar.get_width() for bar in fig.axes[0].patches]
    assert widths == pytest.approx([row.lambda_max for row in rows])
    assert len(fig.axes[3].patches) == 2  # the analysed checkpoints have no test accuracy: "n/a", no bar
    assert [t.get_text() for t in fig.axes[3].texts].count(" n/a") == 2
    colors = [bar.get_facecolor() for bar in fig.axes[0].patches]
    assert colors[0] == colors[1] != colors[2] != colors[3]  # one colour per file
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["results.h5", "fast.h5 (η = 0.2)", "slow.h5 (η = 0.05)"]

    runs_only = plot_compare([files["fast"], files["slow"]], None)  # one row per file: the files name the rows
    assert [t.get_text() for t in runs_only.axes[0].get_yticklabels()] == ["fast.h5 (η = 0.2)", "slow.h5 (η = 0.05)"]
    assert not runs_only.legends

    checkpoints_only = plot_compare([files["results"]], None)  # no test accuracy anywhere: no such panel
    assert len(checkpoints_only.axes) == 3
    assert checkpoints_only.get_size_inches()[0] > COLUMN_WIDTH  # three panels span the text width


def test_command_prints_the_table_and_writes_the_figure(files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _command(str(files["results"]), str(files["slow"]), "--markdown") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| source/name | step |") and len(out) == 2 + 3 + 1
    assert out[-1] == "figure: compare.png, compare.pdf"
    assert (tmp_path / "compare.png").stat().st_size > 1000 and (tmp_path / "compare.pdf").is_file()

    assert _command(str(files["fast"]), "--figure", "figs/fast") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("source/name") and out[2].startswith("fast.h5:run")
    assert out[-1] == "figure: figs/fast.png, figs/fast.pdf"
    assert (tmp_path / "figs" / "fast.png").is_file()

    assert _command(str(files["fast"]), "--no-figure") == 0
    assert "figure" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        _command(str(files["fast"]), "--no-figure", "--figure", "x")


def test_files_that_are_not_results_or_runs_give_one_line_errors(files, tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as handle:
        handle["x"] = np.zeros(3)
    empty = tmp_path / "empty.h5"
    with store.update_results(empty):
        pass
    untracked = tmp_path / "untracked.h5"
    code = main(["train", "--model", "mlp", "--model-kwargs", '{"sizes": [64, 4, 10]}', "--data", "digits",
                 "--subset", "50", "--steps", "2", "--track-every", "0", "--quiet", "-o", str(untracked)])
    assert code == 0

    cases = {foreign: "not a landscape results file", tmp_path / "missing.h5": "does not exist",
             empty: "nothing to compare", untracked: "--track-every"}
    for path, message in cases.items():
        with pytest.raises(StoreError, match=message) as err:
            _command(str(files["fast"]), str(path), "--no-figure")
        assert str(path) in str(err.value) and "\n" not in str(err.value)
