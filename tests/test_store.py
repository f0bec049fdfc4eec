"""The HDF5 results store: exact round trips, adding to a file, atomic writes, clear errors."""

from __future__ import annotations

import dataclasses
import os

import h5py
import numpy as np
import pytest
import torch

import landscape as L
from landscape import store
from landscape.errors import StoreError
from landscape.report import describe, results_table

from reference import random_symmetric


@pytest.fixture(scope="module")
def results():
    op = L.DenseOperator(random_symmetric(40, seed=3))
    return {
        "eigen": L.lanczos(op, 4, seed=1),
        "trace": L.trace(op, 21, seed=2),
        "density": L.spectral_density(op, num_probes=3, num_steps=10, seed=3, grid_points=200),
        "diagonal": L.diagonal(op, 12, seed=4),
    }


def assert_same(a, b):
    assert type(a) is type(b)
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and torch.equal(x.cpu(), y), field.name
        elif isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=field.name)
        else:
            assert x == y, field.name


def write(path, name, results, **attrs):
    with store.update_results(path) as handle:
        return store.write_checkpoint(handle, name, results, attrs={"path": f"/ckpts/{name}.pt", **attrs})


def test_every_result_type_round_trips_exactly(tmp_path, results):
    path = tmp_path / "r.h5"
    write(path, "a", results, step=7, model_kwargs={"sizes": [4, 8]}, metrics=["eigs", "trace"])
    record = store.read_results(path)["a"]
    for metric, result in results.items():
        assert_same(result, record.results[metric])
    assert record.step == 7
    assert record.attrs["model_kwargs"] == {"sizes": [4, 8]}
    assert record.attrs["metrics"] == ["eigs", "trace"]


def test_eigenvectors_are_optional(tmp_path, results):
    path = tmp_path / "r.h5"
    without = dataclasses.replace(results["eigen"], vectors=None)
    write(path, "a", {"eigen": without})
    assert store.read_results(path)["a"].results["eigen"].vectors is None


def test_root_attributes_carry_versions(tmp_path, results):
    path = tmp_path / "r.h5"
    write(path, "a", results)
    root = store.root_attributes(path)
    assert root["format"] == "landscape" and root["format_version"] == store.FORMAT_VERSION
    assert root["torch_version"] == torch.__version__ and root["h5py_version"] == h5py.__version__
    assert root["landscape_version"] == L.__version__


def test_per_layer_results_round_trip(tmp_path, results):
    path = tmp_path / "r.h5"
    layers = {"0": (["0.weight", "0.bias"], {"trace": results["trace"]}),
              "2": (["2.weight"], {"eigen": results["eigen"]})}
    with store.update_results(path) as handle:
        store.write_checkpoint(handle, "a", {"trace": results["trace"]}, attrs={"path": "x"}, layers=layers)
    record = store.read_results(path)["a"]
    assert set(record.layers) == {"0", "2"}
    assert_same(record.layers["0"]["trace"], results["trace"])
    assert_same(record.layers["2"]["eigen"], results["eigen"])
    with h5py.File(path) as f:
        assert list(store.get_attrs(f["checkpoints/a/layers/0"])["params"]) == ["0.weight", "0.bias"]


def test_checkpoints_and_runs_add_to_one_file(tmp_path, results):
    path = tmp_path / "r.h5"
    write(path, "late", {"trace": results["trace"]}, step=100)
    write(path, "early", {"eigen": results["eigen"]}, step=5)
    write(path, "late", {"eigen": results["eigen"]}, step=100)  # a second run adds a metric, keeps the first
    records = store.read_results(path)
    assert list(records) == ["early", "late"]  # ordered by step
    assert set(records["late"].results) == {"trace", "eigen"}


def test_a_rerun_replaces_a_metric(tmp_path, results):
    path = tmp_path / "r.h5"
    write(path, "a", {"trace": results["trace"]})
    other = dataclasses.replace(results["trace"], estimate=123.0)
    write(path, "a", {"trace": other})
    assert store.read_results(path)["a"].results["trace"].estimate == 123.0


def test_same_name_from_another_file_gets_its_own_group(tmp_path, results):
    path = tmp_path / "r.h5"
    with store.update_results(path) as handle:
        first = store.write_checkpoint(handle, "model", results, attrs={"path": "/a/model.pt"})
        second = store.write_checkpoint(handle, "model", results, attrs={"path": "/b/model.pt"})
        again = store.write_checkpoint(handle, "model", results, attrs={"path": "/b/model.pt"})
    assert (first, second, again) == ("model", "model~2", "model~2")


def test_a_failed_write_leaves_the_file_untouched_and_no_temporary(tmp_path, results):
    path = tmp_path / "r.h5"
    write(path, "a", {"trace": results["trace"]})
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with store.update_results(path) as handle:
            store.write_checkpoint(handle, "b", results, attrs={"path": "b"})
            raise RuntimeError("boom")
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["r.h5"]


def test_a_failed_first_write_creates_nothing(tmp_path, results):
    path = tmp_path / "new.h5"
    with pytest.raises(RuntimeError):
        with store.update_results(path):
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []


def test_foreign_and_corrupt_files_are_refused(tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(StoreError, match="not a landscape results file"):
        store.read_results(foreign)
    with pytest.raises(StoreError, match="not a landscape results file"):
        with store.update_results(foreign):
            pass
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(300))
    with pytest.raises(StoreError, match="not a readable HDF5 file"):
        store.read_results(corrupt)
    with pytest.raises(StoreError, match="does not exist"):
        store.read_results(tmp_path / "missing.h5")


def test_unwritable_outputs_fail_before_any_work(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        store.check_writable(tmp_path / "no" / "such" / "r.h5")
    with pytest.raises(StoreError, match="is a folder"):
        store.check_writable(tmp_path)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_reported(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="cannot write"):
            store.check_writable(folder / "r.h5")
    finally:
        folder.chmod(0o700)


def test_describe_and_table_show_every_checkpoint(tmp_path, results):
    path = tmp_path / "r.h5"
    write(path, "ckpt_a", results, step=1, loss=0.5, accuracy=0.9)
    write(path, "ckpt_b", {"trace": results["trace"]}, step=2)
    text = describe(path)
    assert "checkpoints/ckpt_a" in text and "checkpoints/ckpt_b" in text
    assert f"{results['trace'].estimate:.6g}" in text
    table = results_table(path)
    assert table.splitlines()[0].split()[0] == "checkpoint"
    assert [line.split()[0] for line in table.splitlines()[2:]] == ["ckpt_a", "ckpt_b"]
    assert results_table(path, markdown=True).startswith("| checkpoint |")
