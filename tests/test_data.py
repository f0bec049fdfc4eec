"""Built-in data sets, file formats, callables, subsets, batching and every refusal of ``landscape.data``."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import landscape.data as data_module
from landscape.data import BUILTIN_DATA, LoadedData, chebyshev, digits, load_data, teacher_student
from landscape.errors import DataError, OptionError

HERE = str(Path(__file__).parent)


@pytest.fixture(autouse=True)
def tests_on_path(monkeypatch):
    """Make ``datasets_for_tests`` importable for the ``module:function`` specs."""
    monkeypatch.syspath_prepend(HERE)


def arrays(n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3)).astype(np.float32), (np.arange(n) % 4).astype(np.int64)


def concatenated(batches) -> tuple[torch.Tensor, torch.Tensor]:
    """All batches of ``LoadedData.batches`` stacked back into one ``(X, y)``."""
    if isinstance(batches, tuple):
        return batches
    pairs = list(batches)
    return torch.cat([b[0] for b in pairs]), torch.cat([b[1] for b in pairs])


# ------------------------------------------------------------------------------------------------------ built-ins


def test_digits_splits_are_fixed_disjoint_and_cover_all():
    X_train, y_train = digits("train")
    X_test, y_test = digits("test")
    X_all, _ = digits("all")
    assert X_train.shape == (1438, 64) and X_test.shape == (359, 64) and X_all.shape == (1797, 64)
    assert X_train.dtype == torch.float32 and y_train.dtype == torch.int64
    rows = {tuple(r) for r in X_train.tolist()}
    assert not rows & {tuple(r) for r in X_test.tolist()}
    assert torch.equal(digits("train")[0], X_train) and torch.equal(digits("test")[1], y_test)


def test_load_digits_matches_digits():
    loaded = load_data("digits")
    X, y = loaded.batches
    assert torch.equal(X, digits()[0]) and torch.equal(y, digits()[1])
    assert (loaded.num_samples, loaded.num_classes, loaded.task) == (1438, 10, "classification")
    assert loaded.description == "digits[train], 1438 samples" and loaded.spec == "digits"


def test_chebyshev_matches_numpy():
    x, y = chebyshev()
    assert x.shape == y.shape == (20, 1) and x.dtype == y.dtype == torch.float32
    grid = np.linspace(-1, 1, 20)
    np.testing.assert_allclose(x[:, 0].numpy(), grid, atol=1e-7)
    np.testing.assert_allclose(y[:, 0].numpy(), np.polynomial.chebyshev.Chebyshev.basis(4)(grid), atol=1e-6)
    _, y7 = chebyshev(n=9, degree=7)
    np.testing.assert_allclose(y7[:, 0].numpy(), np.polynomial.chebyshev.Chebyshev.basis(7)(np.linspace(-1, 1, 9)),
                               atol=1e-6)


def test_load_chebyshev_is_regression_without_test_split():
    loaded = load_data("chebyshev")
    assert (loaded.num_samples, loaded.num_classes, loaded.task) == (20, None, "regression")
    assert torch.equal(load_data("chebyshev", split="all").batches[1], loaded.batches[1])
    with pytest.raises(OptionError, match="chebyshev data set has no test split"):
        load_data("chebyshev", split="test")


def test_teacher_is_seeded_and_split():
    X, y = teacher_student()
    assert X.shape == (800, 20) and y.shape == (800, 1) and X.dtype == y.dtype == torch.float32
    assert torch.equal(teacher_student()[1], y)
    assert not torch.equal(teacher_student(seed=1)[1], y)
    assert not torch.equal(teacher_student(noise=0.1)[1], y)
    X_test, _ = teacher_student(split="test")
    X_all, y_all = teacher_student(split="all")
    assert torch.equal(torch.cat([X, X_test]), X_all) and y_all.shape == (1000, 1)
    assert load_data("teacher").task == "regression"


def test_builtins_refuse_bad_options():
    assert set(BUILTIN_DATA) == {"digits", "chebyshev", "teacher"}
    with pytest.raises(OptionError, match="split must be one of"):
        load_data("digits", split="val")
    with pytest.raises(OptionError, match="noise >= 0"):
        teacher_student(noise=-1.0)
    with pytest.raises(OptionError, match="degree >= 0"):
        chebyshev(degree=-1)


# ----------------------------------------------------------------------------------------------------------- files


def save_npz(path: Path, **named) -> None:
    np.savez(path, **named)


def save_pt(path: Path, **named) -> None:
    torch.save({k: torch.as_tensor(v) for k, v in named.items()}, path)


def save_h5(path: Path, **named) -> None:
    with h5py.File(path, "w") as file:
        for key, value in named.items():
            file[key] = value


SAVERS = {"npz": save_npz, "pt": save_pt, "pth": save_pt, "h5": save_h5, "hdf5": save_h5}


@pytest.mark.parametrize("suffix", sorted(SAVERS))
def test_file_round_trip(tmp_path, suffix):
    X, y = arrays()
    path = tmp_path / f"data.{suffix}"
    SAVERS[suffix](path, X=X, y=y)
    loaded = load_data(str(path))
    assert isinstance(loaded, LoadedData) and isinstance(loaded.batches, tuple)
    assert torch.equal(loaded.batches[0], torch.from_numpy(X)) and torch.equal(loaded.batches[1], torch.from_numpy(y))
    assert (loaded.num_samples, loaded.num_classes, loaded.task) == (12, 4, "classification")
    assert loaded.description == f"{path}[train], 12 samples"


def test_pt_tensor_dataset(tmp_path):
    X, y = arrays()
    torch.save(TensorDataset(torch.from_numpy(X), torch.from_numpy(y)), tmp_path / "data.pt")
    X_loaded, y_loaded = load_data(str(tmp_path / "data.pt")).batches
    assert torch.equal(X_loaded, torch.from_numpy(X)) and torch.equal(y_loaded, torch.from_numpy(y))


@pytest.mark.parametrize("suffix", ["npz", "pt", "h5"])
def test_file_splits(tmp_path, suffix):
    (X_train, y_train), (X_test, y_test) = arrays(10, seed=0), arrays(4, seed=1)
    path = tmp_path / f"split.{suffix}"
    SAVERS[suffix](path, X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test)
    assert torch.equal(load_data(str(path)).batches[0], torch.from_numpy(X_train))
    assert torch.equal(load_data(str(path), split="test").batches[0], torch.from_numpy(X_test))
    with pytest.raises(DataError, match=r"no arrays X_all and y_all \(or X and y\).*found \['X_test'"):
        load_data(str(path), split="all")


def test_file_without_test_split(tmp_path):
    X, y = arrays()
    save_npz(tmp_path / "d.npz", X=X, y=y)
    assert load_data(str(tmp_path / "d.npz"), split="all").num_samples == 12
    with pytest.raises(DataError, match=r"no arrays X_test and y_test for split 'test'; found \['X', 'y'\]"):
        load_data(str(tmp_path / "d.npz"), split="test")


def test_file_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    save_npz(tmp_path / "f64.npz", X=rng.standard_normal((5, 2)), y=rng.standard_normal((5, 1)))
    save_npz(tmp_path / "ints.npz", X=np.arange(10, dtype=np.int32).reshape(5, 2), y=np.arange(5, dtype=np.uint8))
    X, y = load_data(str(tmp_path / "f64.npz")).batches
    assert X.dtype == y.dtype == torch.float64 and load_data(str(tmp_path / "f64.npz")).task == "regression"
    X, y = load_data(str(tmp_path / "ints.npz")).batches
    assert X.dtype == torch.float32 and y.dtype == torch.int64
    save_npz(tmp_path / "big.npz", X=np.arange(4, dtype=">f4").reshape(2, 2), y=np.arange(2, dtype=">i8"))
    X, y = load_data(str(tmp_path / "big.npz")).batches
    assert torch.equal(X, torch.arange(4.0).reshape(2, 2)) and torch.equal(y, torch.arange(2))


# ------------------------------------------------------------------------------------------------------- callables


def test_callable_returning_pair():
    loaded = load_data("landscape.data:chebyshev", batch_size=8)
    assert concatenated(loaded.batches)[1].shape == (20, 1) and loaded.task == "regression"
    assert loaded.description == "landscape.data:chebyshev, 20 samples, batch 8"


def test_callable_returning_dataset_is_stacked():
    loaded = load_data("datasets_for_tests:make_dataset")
    X, y = loaded.batches
    assert X.shape == (30, 4) and X.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(X[7], torch.arange(7, 11, dtype=torch.float32) / 10) and torch.equal(y, torch.arange(30) % 3)
    assert (loaded.num_samples, loaded.num_classes, loaded.task) == (30, 3, "classification")


def test_callable_dataset_subset_and_batches():
    loaded = load_data("datasets_for_tests:make_dataset", subset=10, batch_size=4, seed=3)
    X, y = concatenated(loaded.batches)
    assert [len(b[0]) for b in loaded.batches] == [4, 4, 2]
    rows = (X[:, 0] * 10).round().long()
    assert torch.equal(rows, rows.unique()) and torch.equal(y, rows % 3)
    assert loaded.description == "datasets_for_tests:make_dataset[subset 10 of 30, seed 3], 10 samples, batch 4"


def test_large_dataset_is_batched_lazily(monkeypatch):
    monkeypatch.setattr(data_module, "MAX_STACKED", 20)
    loaded = load_data("datasets_for_tests:make_dataset")
    assert isinstance(loaded.batches, DataLoader) and loaded.batches.batch_size == data_module.LAZY_BATCH_SIZE
    assert (loaded.num_samples, loaded.num_classes, loaded.task) == (30, None, "unknown")
    batches = load_data("datasets_for_tests:make_dataset", batch_size=7).batches
    assert [len(b[0]) for b in batches] == [7, 7, 7, 7, 2]
    assert torch.equal(concatenated(batches)[1], torch.arange(30) % 3)


def test_callable_returning_loader_is_used_as_is():
    loaded = load_data("datasets_for_tests:make_loader")
    assert isinstance(loaded.batches, DataLoader) and loaded.batches.batch_size == 8
    assert (loaded.num_samples, loaded.num_classes, loaded.task) == (30, None, "unknown")
    for option in ({"subset": 5}, {"batch_size": 4}):
        with pytest.raises(OptionError, match="do not apply to the DataLoader from 'datasets_for_tests:make_loader'"):
            load_data("datasets_for_tests:make_loader", **option)


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("no_such_module_xyz:f", DataError, "cannot import module 'no_such_module_xyz' of data spec"),
        ("datasets_for_tests:missing", DataError, "has no attribute 'missing'"),
        ("datasets_for_tests:NOT_CALLABLE", DataError, "is not callable: it names an object of type int"),
        ("datasets_for_tests:make_number", DataError, "returned an object of type int; expected"),
        ("datasets_for_tests:make_stream", DataError, "returned an object of type Stream; expected"),
        ("datasets_for_tests:make_dicts", DataError, "must yield \\(x, y\\) pairs"),
        ("datasets_for_tests:make_empty_dataset", DataError, "is empty"),
        ("datasets_for_tests:make_empty_loader", DataError, "make_empty_loader'.*empty"),
    ],
)
def test_callable_errors(spec, error, message):
    with pytest.raises(error, match=message):
        load_data(spec)


def test_callable_refuses_test_split():
    with pytest.raises(OptionError, match="split 'test' does not apply"):
        load_data("datasets_for_tests:make_dataset", split="test")


# ------------------------------------------------------------------------------------------------ subset, batching


def test_subset_is_seeded_without_replacement():
    X_all, y_all = digits()
    first = load_data("digits", subset=100, seed=5)
    X, y = first.batches
    assert X.shape == (100, 64) and len({tuple(r) for r in X.tolist()}) == 100
    assert torch.equal(load_data("digits", subset=100, seed=5).batches[0], X)
    assert not torch.equal(load_data("digits", subset=100, seed=6).batches[0], X)
    matches = (X[:, None, :] == X_all[None, :, :]).all(-1)
    assert (matches.sum(1) == 1).all() and torch.equal(y, y_all[matches.int().argmax(1)])
    assert first.description == "digits[train; subset 100 of 1438, seed 5], 100 samples"


def test_subset_out_of_range():
    with pytest.raises(DataError, match="subset 21 is larger than the 20 samples of chebyshev; ask for at most 20"):
        load_data("chebyshev", subset=21)
    with pytest.raises(OptionError, match="subset must be at least 1"):
        load_data("chebyshev", subset=0)
    assert load_data("chebyshev", subset=20).num_samples == 20


@pytest.mark.parametrize("batch_size", [1, 3, 7, 19, 20, 25])
def test_batches_cover_every_sample_once(batch_size):
    loaded = load_data("chebyshev", batch_size=batch_size)
    X, y = concatenated(loaded.batches)
    assert torch.equal(X, chebyshev()[0]) and torch.equal(y, chebyshev()[1])
    assert isinstance(loaded.batches, tuple) == (batch_size >= 20)
    if batch_size < 20:
        assert all(len(b[0]) == batch_size for b in loaded.batches[:-1])


def test_batch_size_must_be_positive():
    with pytest.raises(OptionError, match="batch_size must be at least 1, got 0"):
        load_data("chebyshev", batch_size=0)


# ---------------------------------------------------------------------------------------------------------- errors


def test_unknown_spec_lists_the_forms():
    expected = r"unknown data spec 'mnist'.*digits, chebyshev, teacher.*\.npz.*module:function"
    with pytest.raises(DataError, match=expected):
        load_data("mnist")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="data file .*nope.npz does not exist"):
        load_data(str(tmp_path / "nope.npz"))


@pytest.mark.parametrize("suffix", ["npz", "pt", "h5"])
def test_corrupt_files(tmp_path, suffix):
    path = tmp_path / f"bad.{suffix}"
    path.write_bytes(b"not a data file " * 8)
    with pytest.raises(DataError, match=f"cannot read data file .*bad.{suffix} .*valid .{suffix} file"):
        load_data(str(path))


def test_truncated_files(tmp_path):
    X, y = arrays()
    for suffix in ("npz", "pt"):
        whole = tmp_path / f"whole.{suffix}"
        SAVERS[suffix](whole, X=X, y=y)
        cut = tmp_path / f"cut.{suffix}"
        cut.write_bytes(whole.read_bytes()[:300])
        with pytest.raises(DataError, match=f"cannot read data file .*cut.{suffix}"):
            load_data(str(cut))


@pytest.mark.parametrize("suffix", ["npz", "pt", "h5"])
def test_missing_arrays_named(tmp_path, suffix):
    X, _ = arrays()
    path = tmp_path / f"d.{suffix}"
    SAVERS[suffix](path, inputs=X, X=X)
    with pytest.raises(DataError, match=r"has no arrays X_train and y_train \(or X and y\).*found \['X', 'inputs'\]"):
        load_data(str(path))


def test_pt_refusals(tmp_path):
    X, y = arrays()
    torch.save({"X": torch.from_numpy(X), "y": torch.from_numpy(y), "info": Path("x")}, tmp_path / "unsafe.pt")
    with pytest.raises(DataError, match=r"holds a pathlib\.\w*Path, which is not loaded \(weights_only=True"):
        load_data(str(tmp_path / "unsafe.pt"))
    torch.save(torch.from_numpy(X), tmp_path / "tensor.pt")
    with pytest.raises(DataError, match="holds a Tensor; expected a dict"):
        load_data(str(tmp_path / "tensor.pt"))
    torch.save(TensorDataset(*[torch.from_numpy(X)] * 3), tmp_path / "three.pt")
    with pytest.raises(DataError, match="holds 3 tensors; expected 2"):
        load_data(str(tmp_path / "three.pt"))


def test_npz_with_a_single_array(tmp_path):
    with open(tmp_path / "one.npz", "wb") as file:
        np.save(file, arrays()[0])
    with pytest.raises(DataError, match="holds a single array, not X and y"):
        load_data(str(tmp_path / "one.npz"))


@pytest.mark.parametrize(
    ("X", "y", "message"),
    [
        (np.zeros((5, 2)), np.zeros(4), "differ in length: 5 inputs but 4 targets"),
        (np.zeros((0, 2)), np.zeros(0), "is empty: X and y hold 0 samples"),
        (np.array([[0.0], [np.nan]]), np.zeros(2), "X in .* contains NaN or inf"),
        (np.zeros((2, 1)), np.array([0.0, np.inf]), "y in .* contains NaN or inf"),
        (np.array([["a"], ["b"]]), np.zeros(2), r"X in .* is not numeric \(dtype <U1\)"),
        (np.zeros((2, 1)), np.array([True, False]), r"y in .* is not numeric \(dtype bool\)"),
        (np.zeros((2, 1)), np.zeros(2, dtype=np.complex64), "y in .* is not numeric"),
        (np.float64(1.0), np.zeros(1), "need a sample dimension"),
    ],
)
def test_bad_arrays(tmp_path, X, y, message):
    save_npz(tmp_path / "d.npz", X=X, y=y)
    with pytest.raises(DataError, match=message):
        load_data(str(tmp_path / "d.npz"))


def test_bad_tensors_in_pt(tmp_path):
    torch.save({"X": torch.zeros(3, 2, dtype=torch.complex64), "y": torch.zeros(3)}, tmp_path / "c.pt")
    with pytest.raises(DataError, match=r"X in .*c.pt is not numeric \(dtype torch.complex64\)"):
        load_data(str(tmp_path / "c.pt"))
