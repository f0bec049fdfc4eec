"""scripts/bench_peers.py on a tiny custom workload, its HDF5 layout, and the `landscape plot --kind peers` figure.

The peers are not installed in CI: the benchmark runs with ``--peers ""`` (our rows only), and the tests that call a
peer are skipped without it. Our eigenvalues are checked against a dense float64 Hessian from torch.func.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import bench_peers
from ckpt_factories import tiny_net
from reference import dense_hessian
from landscape import store
from landscape.cli import plot as cli_plot
from landscape.cli import main as landscape_main
from landscape.errors import StoreError
from landscape.plot.peers import load_peer_points, plot_peers


def _custom_args(folder: Path) -> list[str]:
    """A seeded tiny_net (67 parameters) with 40 samples of 4 features and 3 classes, saved as a state dict."""
    torch.manual_seed(0)
    torch.save(tiny_net().state_dict(), folder / "tiny.pt")
    rng = np.random.default_rng(0)
    np.savez(folder / "data.npz", X=rng.standard_normal((40, 4)).astype(np.float32), y=rng.integers(0, 3, 40))
    return ["--model", "ckpt_factories:tiny_net", "--checkpoint", str(folder / "tiny.pt"),
            "--data", str(folder / "data.npz"), "--loss", "cross-entropy"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The benchmark's file and printed tables (ours only), and the dense float64 Hessian's eigenvalues."""
    folder = tmp_path_factory.mktemp("peers")
    args = _custom_args(folder)
    output = folder / "bench.h5"
    printed, log = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(log):
        assert bench_peers.main([*args, "--quick", "--dtypes", "float32,float64", "--peers", "", "--threads", "1",
                                 "-o", str(output)]) == 0
    model = tiny_net()
    model.load_state_dict(torch.load(folder / "tiny.pt", weights_only=True))
    data = np.load(folder / "data.npz")
    X, y = torch.as_tensor(data["X"], dtype=torch.float64), torch.as_tensor(data["y"])
    exact = torch.linalg.eigvalsh(dense_hessian(model.double().eval(), X, y)).numpy()[::-1].copy()
    return {"path": output, "printed": printed.getvalue(), "exact": exact, "folder": folder, "args": args}


def _columns(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as handle:
        group = handle["peers"]
        return {name: group[name].asstr()[()] if h5py.check_string_dtype(group[name].dtype) else group[name][()]
                for name in group}


def test_hdf5_has_every_column_with_equal_lengths_and_the_provenance(bench):
    columns = _columns(bench["path"])
    assert set(bench_peers.COLUMNS) <= set(columns)
    lengths = {len(values) for values in columns.values()}
    assert len(lengths) == 1 and lengths.pop() > 0
    assert set(columns["library"]) == {"landscape"}
    assert set(columns["task"]) == {"top1", "top5", "trace", "density"}
    assert store.root_attributes(bench["path"])["format"] == "landscape"
    with store.open_results(bench["path"]) as handle:
        attrs = store.get_attrs(handle["peers"])
    for key in ("torch_version", "machine", "command", "date", "threads", "settings"):
        assert key in attrs
    assert "--quick" in attrs["command"] and attrs["threads"] == 1


def test_our_eigenvalues_match_the_dense_hessian(bench):
    columns = _columns(bench["path"])
    exact = bench["exact"]
    checked = 0
    for i, task in enumerate(columns["task"]):
        if task not in ("top1", "top5"):
            continue
        k = int(task[3:])
        values = np.array([float(v) for v in columns["values"][i].split(",")])
        assert len(values) == k and np.all(np.diff(values) <= 0)
        independent = np.max(np.abs(values - exact[:k]) / exact[:k])
        # the recorded error is against scipy eigsh in float64: it must agree with the dense reference
        assert columns["error"][i] == pytest.approx(independent, abs=1e-9)
        loose = "tol=0.001" in columns["method"][i]
        assert independent < (1e-2 if loose else 1e-5 if columns["dtype"][i] == "float32" else 1e-9)
        assert columns["products"][i] > 0 and columns["seconds"][i] > 0
        checked += 1
    assert checked == 2 * 2 + 2 * 3  # float32: tols 1e-3 and 1e-6; float64: also 1e-10


def test_trace_and_density_rows_have_no_error_without_an_exact_answer(bench):
    columns = _columns(bench["path"])
    for i, task in enumerate(columns["task"]):
        if task == "trace":
            assert math.isnan(columns["error"][i]) and columns["products"][i] == 21
            assert np.isfinite(float(columns["values"][i]))
        if task == "density":
            assert math.isnan(columns["error"][i]) and columns["products"][i] in (40, 25)
    seeds = {columns["seed"][i] for i, task in enumerate(columns["task"]) if task == "trace"}
    assert seeds == {0, 1}


def test_tables_and_verdicts_are_printed(bench):
    printed = bench["printed"]
    for task in ("top1", "top5", "trace", "density"):
        assert f"### {task}" in printed
    assert "| workload | dtype | library | method | settings | products | seconds | values | error | note |" in printed
    assert "no verdict: no peer row with an error" in printed
    assert "no verdict: no reference to measure errors against" in printed


def test_verdict_compares_our_fastest_row_at_the_best_peer_accuracy():
    def summary(library, seconds, error, method="m"):
        return bench_peers.Summary("w", "float64", "top1", library, method, "defaults", seconds, 10, error, error, "",
                                   "", 1)

    group = [summary("landscape", 1.0, 1e-3, "loose"), summary("landscape", 2.0, 1e-9, "tight"),
             summary("peer", 4.0, 1e-8), summary("peer", 0.5, 1e-2)]
    assert bench_peers.verdict(group, 0.0).startswith("met: ours tight")
    assert "2.00x" in bench_peers.verdict(group, 0.0)
    slow = [summary("landscape", 8.0, 1e-9), summary("peer", 4.0, 1e-8)]
    assert bench_peers.verdict(slow, 0.0).startswith("missed (time)")
    inaccurate = [summary("landscape", 1.0, 1e-3), summary("peer", 4.0, 1e-8)]
    assert bench_peers.verdict(inaccurate, 0.0).startswith("missed (accuracy)")
    # below the floor, errors count as equal
    assert bench_peers.verdict(inaccurate, 1e-2).startswith("met")


def test_counting_restores_what_it_patched():
    class Base:
        def product(self, v):
            return 2 * v

    class Child(Base):
        pass

    with bench_peers.counting(Child, "product") as count:
        assert Child().product(3) == 6 and Child().product(1) == 2
    assert count == [2] and "product" not in Child.__dict__
    had_eig = hasattr(torch, "eig")
    with bench_peers.torch_eig_shim():
        values, vectors = torch.eig(torch.diag(torch.tensor([2.0, 1.0])), eigenvectors=True)
    assert sorted(values[:, 0].tolist()) == [1.0, 2.0] and hasattr(torch, "eig") == had_eig


def test_cli_plot_draws_the_peers_kind_and_guesses_it(bench, tmp_path, capsys):
    assert cli_plot.guess_kind(bench["path"]) == "peers"
    output = tmp_path / "figs" / "peers"
    assert landscape_main(["plot", str(bench["path"]), "--kind", "peers", "-o", str(output)]) == 0
    assert capsys.readouterr().out.split() == [str(output) + ".png", str(output) + ".pdf"]
    for suffix, magic in ((".png", b"\x89PNG"), (".pdf", b"%PDF")):
        written = output.with_name(output.name + suffix)
        assert written.is_file() and written.read_bytes()[:4] == magic
    points = load_peer_points([bench["path"]])
    assert {p.task for p in points} == {"top1", "top5"}  # trace and density have no error to draw
    fig = plot_peers([bench["path"], bench["path"]], None, labels=["a", "b"])
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["top-1 eigenvalue", "top-5 eigenvalues"]


def test_a_file_without_peers_is_a_store_error_naming_it(tmp_path):
    path = tmp_path / "plain.h5"
    with store.update_results(path):
        pass
    with pytest.raises(StoreError, match="plain.h5 has no /peers group"):
        plot_peers([path], None)


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_peers_count_their_products(bench):
    """With a peer installed: its products are counted and its top eigenvalue is the dense one."""
    installed = [name for name, (module, _, _) in bench_peers.PEERS.items()
                 if importlib.util.find_spec(module) is not None]
    if not installed:
        pytest.skip("no peer library installed (pip install .[peers])")
    work = bench_peers.Workload("tiny", _tiny_model(bench["folder"]), *_tiny_data(bench["folder"]),
                                nn.functional.cross_entropy, top=bench["exact"][:5])
    case = bench_peers.Case(work, torch.float64)
    settings = bench_peers.Settings(matched_tol=1e-8)
    for name in installed:
        peer = bench_peers.PEER_CLASSES[name](case)
        rows = peer.eigen("top1", 1, settings, 20) if name == "eigenthings" else peer.eigen("top1", 1, settings)
        matched = [r for r in rows if r.settings == "matched"]
        assert all(r.products > 0 for r in rows), name
        # PyHessian normalizes by ‖v‖ + 1e-6: its values are biased by about 2e-6/λ relative
        assert min(r.error for r in matched) < (1e-5 if name == "pyhessian" else 1e-6), name
        assert all(p.grad is None for p in case.model.parameters())


def _tiny_model(folder: Path) -> nn.Module:
    model = tiny_net()
    model.load_state_dict(torch.load(folder / "tiny.pt", weights_only=True))
    return model.eval()


def _tiny_data(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = np.load(folder / "data.npz")
    return torch.as_tensor(data["X"]), torch.as_tensor(data["y"])


def test_report_reprints_the_tables_from_the_stored_rows(bench, tmp_path):
    printed = io.StringIO()
    merged = tmp_path / "merged.h5"
    with contextlib.redirect_stdout(printed):
        assert bench_peers.main(["--report", str(bench["path"]), str(bench["path"]), "-o", str(merged)]) == 0
    text = printed.getvalue()
    # the same file twice: the later one's rows replace the earlier one's, nothing is doubled
    assert len(_columns(merged)["task"]) == len(_columns(bench["path"])["task"])
    assert "### summary" in text and "| workload | dtype | task | best peer error (counts as equal up to) |" in text
    # the per-task tables are rebuilt from the file exactly as the run printed them
    assert text[text.index("\n### top1"):].split("\nmerged rows:")[0] == \
        bench["printed"][bench["printed"].index("\n### top1"):].split("\nraw rows:")[0]


def test_summary_table_names_the_rows_the_verdict_compares():
    def row(library, method, seconds, error):
        return bench_peers.Row("w1", "float32", "top1", library, method, "defaults", 0, seconds, 10, error,
                               "max rel. err", "1.0")

    rows = [row("landscape", "tight", 0.5, 1e-8), row("peer", "slow", 2.0, 1e-8), row("peer", "rough", 0.1, 1e-2)]
    table = bench_peers.summary_table(rows, {})
    line = table.splitlines()[-1]
    assert "peer slow: 1.0e-08 in 2.00 s" in line and "landscape tight: 1.0e-08 in 500.0 ms" in line
    assert "4.00×" in line and line.endswith("| met |")


def test_seeded_errors_within_two_standard_errors_of_the_best_peer_count_as_equal():
    def summary(library, seconds, error, se):
        return bench_peers.Summary("w", "float32", "density", library, "m", "defaults", seconds, 800, error, error,
                                   "", "", 3, error_se=se)

    tie = [summary("landscape", 2.0, 1.6e-4, 1e-5), summary("peer", 5.0, 1.5e-4, 1e-5)]
    verdict = bench_peers.judge(tie, 0.0)
    assert verdict.status == "met" and verdict.reach == pytest.approx(1.7e-4)
    assert "mean + 2 standard errors" in bench_peers.verdict(tie, 0.0)
    worse = [summary("landscape", 2.0, 2.0e-4, 1e-5), summary("peer", 5.0, 1.5e-4, 1e-5)]
    assert bench_peers.judge(worse, 0.0).status == "missed (accuracy)"


def test_info_describes_a_benchmark_file(bench, capsys):
    assert landscape_main(["info", str(bench["path"])]) == 0
    out = capsys.readouterr().out
    rows = len(_columns(bench["path"])["task"])
    assert f"peers: {rows} benchmark rows" in out and "libraries landscape" in out
    assert "no checkpoints and no training run yet" not in out
