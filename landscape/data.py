"""Data for the analyses: built-in data sets, files (.npz, .pt, .h5), token files and user callables, by one spec
string.

``load_data(spec)`` accepts

- a built-in name: ``digits`` (scikit-learn's 8×8 digits), ``chebyshev`` (the edge-of-stability toy),
  ``teacher`` (a random tanh teacher network labelling Gaussian inputs);
- a file by suffix: ``.npz`` or ``.h5``/``.hdf5`` with arrays ``X`` and ``y``, or ``.pt``/``.pth`` holding a dict
  ``{"X": tensor, "y": tensor}`` or a ``TensorDataset`` of two tensors (loaded with ``weights_only=True``);
  arrays ``X_<split>``/``y_<split>`` select a split;
- token data for language models (:mod:`landscape.tokens`): integer sequences (N, T) in ``.npy`` or as ``X`` in a
  ``.npz`` without ``y``, or a flat token stream (``.bin`` of uint16 tokens, 1-D ``.npy``) cut into ``seq_len``
  windows; memory-mapped files are read one batch at a time;
- ``package.module:function``, called with no arguments, returning ``(X, y)`` tensors, a map-style ``Dataset``
  whose items are ``(x, y)`` pairs, or a ``DataLoader`` (used as is).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, Subset, TensorDataset

from landscape.errors import DataError, OptionError, option
from landscape.operators.batches import checked_batches, is_single_batch
from landscape.specs import import_callable
from landscape.tokens import STREAM_BATCH_SIZE, TOKEN_SUFFIXES, TokenArray, TokenBatches, as_tokens, is_token_npz, \
    read_tokens

SPLITS = ("train", "test", "all")
FILE_SUFFIXES = (".npz", ".pt", ".pth", ".h5", ".hdf5")
MAX_STACKED = 50_000  # a Dataset up to this many samples is stacked into tensors; a larger one is batched lazily
LAZY_BATCH_SIZE = 1024
_CALLABLE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@dataclass(frozen=True)
class LoadedData:
    """Data ready for an analysis, with what is known about it for the provenance record."""

    batches: Any  # one (X, y) tuple, a list of (X, y) batches, a DataLoader, or TokenBatches read from disk
    num_samples: int
    spec: str  # the spec as given
    description: str  # e.g. "digits[train], 1438 samples"
    num_classes: int | None  # max label (token) + 1 for integer labels (tokens) held in memory, else None
    task: str  # "classification" (integer labels), "regression" (float targets), "language-model" (token data)
    # or "unknown" (lazily loaded)


def digits(split: str = "train", *, test_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)``: X float32 (N, 64), each feature standardized over all 1797 samples; y int64 labels.

    The split is a fixed seeded permutation, so "train" and "test" never overlap and never change.
    """
    _check_split(split)
    from sklearn.datasets import load_digits

    raw = load_digits()
    X = raw.data.astype(np.float64)
    X = (X - X.mean(axis=0)) / np.where(X.std(axis=0) > 0, X.std(axis=0), 1.0)
    y = raw.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = round(len(y) * (1 - test_fraction))
    index = {"train": order[:cut], "test": order[cut:], "all": np.arange(len(y))}[split]
    return torch.as_tensor(X[index], dtype=torch.float32), torch.as_tensor(y[index])


def chebyshev(n: int = 20, degree: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, T_degree(x))``: n points evenly spaced in [−1, 1], both float32 of shape (n, 1)."""
    if n < 1 or degree < 0:
        raise OptionError(f"chebyshev needs n >= 1 and degree >= 0, got n={n}, degree={degree}")
    x = torch.linspace(-1.0, 1.0, n, dtype=torch.float64).reshape(n, 1)
    previous, current = torch.ones_like(x), x
    for _ in range(degree):
        previous, current = current, 2 * x * current - previous
    return x.float(), previous.float()


def teacher_student(
    n: int = 1000,
    in_dim: int = 20,
    hidden: int = 32,
    out_dim: int = 1,
    noise: float = 0.0,
    seed: int = 0,
    split: str = "train",
    test_fraction: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian inputs X (float32, (N, in_dim)) labelled by a fixed random teacher ``tanh(X W1ᵀ) W2ᵀ`` plus
    Gaussian noise of std ``noise``: float32 regression targets (N, out_dim).

    Everything is drawn from one ``torch.Generator`` seeded with ``seed``; of the n samples the first
    ``round(n (1 − test_fraction))`` are "train", the rest "test".
    """
    _check_split(split)
    if min(n, in_dim, hidden, out_dim) < 1 or noise < 0:
        raise OptionError(f"teacher_student needs positive sizes and noise >= 0, got n={n}, in_dim={in_dim}, "
                          f"hidden={hidden}, out_dim={out_dim}, noise={noise}")
    gen = torch.Generator().manual_seed(seed)
    W1 = torch.randn(hidden, in_dim, generator=gen) / in_dim**0.5
    W2 = torch.randn(out_dim, hidden, generator=gen) / hidden**0.5
    X = torch.randn(n, in_dim, generator=gen)
    y = torch.tanh(X @ W1.T) @ W2.T + noise * torch.randn(n, out_dim, generator=gen)
    cut = round(n * (1 - test_fraction))
    index = {"train": slice(0, cut), "test": slice(cut, n), "all": slice(0, n)}[split]
    return X[index], y[index]


def _chebyshev_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The default Chebyshev toy; it is a training set only, so "train" and "all" are the same 20 points."""
    _check_split(split)
    if split == "test":
        raise OptionError("the chebyshev data set has no test split: it is 20 training points; use split 'train'")
    return chebyshev()


BUILTIN_DATA: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "digits": digits,
    "chebyshev": _chebyshev_split,
    "teacher": teacher_student,
}


def load_data(
    spec: str,
    *,
    split: str = "train",
    batch_size: int | None = None,
    subset: int | None = None,
    seed: int = 0,
    seq_len: int | None = None,
) -> LoadedData:
    """Load the data named by ``spec`` (a built-in name, a file or ``package.module:function``).

    ``subset=N`` keeps N samples (token sequences) drawn without replacement with ``seed`` (kept in data order).
    ``batch_size`` splits the samples into consecutive batches; ``None`` (or at least N) keeps them as one
    ``(X, y)`` batch. A ``DataLoader`` from a function is used as is, so ``subset`` and ``batch_size`` are refused
    for it. ``seq_len`` cuts a flat token stream into windows of that many tokens (and applies to nothing else);
    a memory-mapped token stream, or memory-mapped sequences given a ``batch_size``, become :class:`TokenBatches`
    read from disk batch by batch (``STREAM_BATCH_SIZE`` sequences each for a stream without a ``batch_size``).
    """
    _check_split(split)
    if batch_size is not None and batch_size < 1:
        raise OptionError(f"batch_size must be at least 1, got {batch_size}")
    if subset is not None and subset < 1:
        raise OptionError(f"subset must be at least 1 sample, got {subset}")
    suffix = Path(spec).suffix.lower()
    if suffix in TOKEN_SUFFIXES or (suffix == ".npz" and Path(spec).is_file() and is_token_npz(spec)):
        return _from_tokens(spec, read_tokens(spec, split, seq_len), split, batch_size, subset, seed)
    if seq_len is not None:
        raise OptionError(f"{option('seq_len')} cuts a token stream (.bin, or a 1-D .npy) into sequences; it does "
                          f"not apply to {spec}")
    if spec in BUILTIN_DATA:
        X, y = BUILTIN_DATA[spec](split=split)
        return _from_tensors(spec, X, y, [split], batch_size, subset, seed)
    if Path(spec).suffix.lower() in FILE_SUFFIXES:
        X, y = _read_file(spec, split)
        return _from_tensors(spec, X, y, [split], batch_size, subset, seed)
    if _CALLABLE_SPEC.match(spec):
        return _from_callable(spec, split, batch_size, subset, seed)
    raise DataError(
        f"unknown data spec {spec!r}: expected a built-in ({', '.join(BUILTIN_DATA)}), a file ending in "
        f"{', '.join(FILE_SUFFIXES)} with arrays X and y, token data (.npy, .bin), or 'package.module:function' "
        "returning a Dataset or DataLoader"
    )


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise OptionError(f"split must be one of {SPLITS}, got {split!r}")


def _summary(err: BaseException) -> str:
    """``Type: first sentence`` of an exception, for one-line error messages."""
    text = re.split(r"\.\s|\n", str(err).strip(), maxsplit=1)[0]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _describe(name: str, tags: list[str], num_samples: int, batch_size: int | None) -> str:
    """``name[tags], N samples[, batch B]`` for the provenance record."""
    head = f"{name}[{'; '.join(tags)}]" if tags else name
    batched = batch_size is not None and batch_size < num_samples
    samples = f"{num_samples} sample" + ("s" if num_samples != 1 else "")
    return f"{head}, {samples}" + (f", batch {batch_size}" if batched else "")


# ----------------------------------------------------------------------------------------------- in-memory data


def _from_tensors(
    spec: str, X: Any, y: Any, tags: list[str], batch_size: int | None, subset: int | None, seed: int
) -> LoadedData:
    """Validate ``(X, y)``, take the subset and batch it."""
    X, y = _features(_as_tensor(X, "X", spec)), _targets(_as_tensor(y, "y", spec))
    _check_arrays(X, y, spec)
    if subset is not None:
        tags = tags + [_subset_tag(subset, len(X), seed)]
        index = _subset_index(len(X), subset, seed, spec)
        X, y = X[index], y[index]
    num_classes, task = _task_of(y)
    description = _describe(spec, tags, len(X), batch_size)
    return LoadedData(_batched(X, y, batch_size), len(X), spec, description, num_classes, task)


def _as_tensor(array: Any, key: str, source: str) -> torch.Tensor:
    """``array`` as a CPU tensor, refusing anything that is not real numbers."""
    if not isinstance(array, torch.Tensor):
        array = np.asarray(array)
        if array.dtype.kind not in "iuf":
            raise DataError(f"{key} in {source} is not numeric (dtype {array.dtype}); store real numbers")
        array = torch.from_numpy(np.require(array, dtype=array.dtype.newbyteorder("="), requirements="C"))
    if array.is_complex() or array.dtype == torch.bool:
        raise DataError(f"{key} in {source} is not numeric (dtype {array.dtype}); store real numbers")
    return array.detach().cpu()


def _features(X: torch.Tensor) -> torch.Tensor:
    """float64 stays float64; everything else becomes float32."""
    return X if X.dtype == torch.float64 else X.float()


def _targets(y: torch.Tensor) -> torch.Tensor:
    """Integer labels become int64; float targets follow the feature rule."""
    return _features(y) if y.is_floating_point() else y.long()


def _check_arrays(X: torch.Tensor, y: torch.Tensor, source: str) -> None:
    """Refuse scalars, mismatched lengths, empty data and non-finite values."""
    if X.ndim == 0 or y.ndim == 0:
        raise DataError(f"X and y in {source} need a sample dimension; got shapes {tuple(X.shape)} and "
                        f"{tuple(y.shape)}")
    if len(X) != len(y):
        raise DataError(f"X and y in {source} differ in length: {len(X)} inputs but {len(y)} targets; "
                        "store one per sample")
    if len(X) == 0:
        raise DataError(f"the data set {source} is empty: X and y hold 0 samples")
    for key, tensor in (("X", X), ("y", y)):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise DataError(f"{key} in {source} contains NaN or inf values; clean or drop those samples")


def _subset_tag(subset: int, size: int, seed: int) -> str:
    return f"subset {subset} of {size}, seed {seed}"


def _subset_index(size: int, subset: int, seed: int, source: str) -> torch.Tensor:
    """``subset`` distinct indices out of ``size``, drawn with ``seed`` and sorted into data order."""
    if subset > size:
        raise DataError(f"subset {subset} is larger than the {size} samples of {source}; ask for at most {size}")
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(size, generator=generator)[:subset].sort().values


def _task_of(y: torch.Tensor) -> tuple[int | None, str]:
    """``(num_classes, task)``: integer labels are classification, float targets regression."""
    if y.is_floating_point():
        return None, "regression"
    return int(y.max()) + 1, "classification"


def _batched(X: torch.Tensor, y: torch.Tensor, batch_size: int | None) -> Any:
    """One ``(X, y)`` tuple when a batch holds everything, else a list of consecutive ``(X, y)`` batches."""
    if batch_size is None or batch_size >= len(X):
        return X, y
    return list(zip(X.split(batch_size), y.split(batch_size)))


# -------------------------------------------------------------------------------------------------- token data


def _from_tokens(spec: str, tokens: TokenArray, split: str, batch_size: int | None, subset: int | None,
                 seed: int) -> LoadedData:
    """Token sequences as ``(tokens, tokens)`` batches: read from the memory-mapped file batch by batch for a stream
    or when batched, else held in memory."""
    tags, rows, index = [split, *tokens.tags], tokens.rows, None
    if subset is not None:
        tags.append(_subset_tag(subset, len(rows), seed))
        index = _subset_index(len(rows), subset, seed, spec).numpy()
    count = len(rows) if index is None else len(index)
    if tokens.mapped and (tokens.stream or batch_size is not None):
        size = batch_size or STREAM_BATCH_SIZE
        batches = TokenBatches(rows, size, spec, index)
        return LoadedData(batches, count, spec, _describe(spec, tags, count, size), None, "language-model")
    X = as_tokens(rows if index is None else rows[index], spec)
    return LoadedData(_batched(X, X, batch_size), count, spec, _describe(spec, tags, count, batch_size),
                      int(X.max()) + 1, "language-model")


# ------------------------------------------------------------------------------------------------------- files


def _read_file(spec: str, split: str) -> tuple[Any, Any]:
    """The ``(X, y)`` arrays of ``split`` in the file ``spec``; an unreadable file raises :class:`DataError`."""
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"data file {spec} does not exist; check the path")
    try:
        return _READERS[path.suffix.lower()](spec, split)
    except (OSError, ValueError, EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise DataError(
            f"cannot read data file {spec} ({_summary(err)}); "
            f"check that it is a valid {path.suffix} file"
        ) from err


def _split_keys(keys: list[str], split: str, source: str) -> tuple[str, str]:
    """``X_<split>``/``y_<split>`` when present, else ``X``/``y`` for "train" and "all"."""
    if f"X_{split}" in keys and f"y_{split}" in keys:
        return f"X_{split}", f"y_{split}"
    if split != "test" and "X" in keys and "y" in keys:
        return "X", "y"
    wanted = f"X_{split} and y_{split}" + ("" if split == "test" else " (or X and y)")
    raise DataError(f"{source} has no arrays {wanted} for split {split!r}; found {sorted(keys)}")


def _read_npz(spec: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    arrays = np.load(spec, allow_pickle=False)
    if not isinstance(arrays, np.lib.npyio.NpzFile):
        raise DataError(f"{spec} holds a single array, not X and y; save it with numpy.savez({spec!r}, X=X, y=y)")
    with arrays:
        x_key, y_key = _split_keys(arrays.files, split, spec)
        return arrays[x_key], arrays[y_key]


def _read_pt(spec: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with torch.serialization.safe_globals([TensorDataset]):
            obj = torch.load(spec, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if unsafe is None:
            raise
        raise DataError(
            f"{spec} holds a {unsafe.group(1)}, which is not loaded (weights_only=True, for safety); "
            "save a dict with torch.save({'X': X, 'y': y}, path) or a TensorDataset(X, y)"
        ) from err
    if isinstance(obj, TensorDataset):
        if len(obj.tensors) != 2:
            raise DataError(f"the TensorDataset in {spec} holds {len(obj.tensors)} tensors; expected 2, X and y")
        obj = {"X": obj.tensors[0], "y": obj.tensors[1]}
    if not isinstance(obj, dict):
        raise DataError(f"{spec} holds a {type(obj).__name__}; expected a dict {{'X': X, 'y': y}} or a TensorDataset")
    x_key, y_key = _split_keys(list(obj), split, spec)
    return obj[x_key], obj[y_key]


def _read_h5(spec: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    with h5py.File(spec, "r") as file:
        keys = [key for key, item in file.items() if isinstance(item, h5py.Dataset)]
        x_key, y_key = _split_keys(keys, split, spec)
        return file[x_key][()], file[y_key][()]


_READERS: dict[str, Callable[[str, str], tuple[Any, Any]]] = {
    ".npz": _read_npz, ".pt": _read_pt, ".pth": _read_pt, ".h5": _read_h5, ".hdf5": _read_h5,
}


# --------------------------------------------------------------------------------------------------- callables


def _from_callable(
    spec: str, split: str, batch_size: int | None, subset: int | None, seed: int
) -> LoadedData:
    """Call ``package.module:function`` and take what it returns: (X, y), a Dataset or a DataLoader."""
    if split == "test":
        raise OptionError(f"split 'test' does not apply to {spec!r}, which chooses its own data; "
                          "name a function that returns the test data instead")
    obj = import_callable(spec, DataError, "data spec")()
    if isinstance(obj, DataLoader):
        return _from_loader(spec, obj, batch_size, subset)
    if is_single_batch(obj):
        return _from_tensors(spec, obj[0], obj[1], [], batch_size, subset, seed)
    if isinstance(obj, IterableDataset) or not (hasattr(obj, "__len__") and hasattr(obj, "__getitem__")):
        raise DataError(f"data spec {spec!r} returned an object of type {type(obj).__name__}; expected (X, y) "
                        "tensors, a map-style Dataset of (x, y) items or a DataLoader")
    return _from_dataset(spec, obj, batch_size, subset, seed)


def _from_loader(spec: str, loader: DataLoader, batch_size: int | None, subset: int | None) -> LoadedData:
    """A user's DataLoader, used as is; one pass counts its samples and checks it yields (X, y) batches."""
    if batch_size is not None or subset is not None:
        raise OptionError(f"batch_size and subset do not apply to the DataLoader from {spec!r}, which batches "
                          "itself; drop them, or return the Dataset instead")
    try:
        num_samples = sum(size for _, size in checked_batches(loader))
    except DataError as err:
        raise DataError(f"the DataLoader from {spec!r}: {err}") from err
    return LoadedData(loader, num_samples, spec, f"{spec}[DataLoader], {num_samples} samples", None, "unknown")


def _from_dataset(spec: str, dataset: Any, batch_size: int | None, subset: int | None, seed: int) -> LoadedData:
    """A map-style Dataset: stacked into tensors up to ``MAX_STACKED`` samples, else batched lazily."""
    if len(dataset) == 0:
        raise DataError(f"the Dataset from {spec!r} is empty: it has 0 samples")
    tags = []
    if subset is not None:
        tags.append(_subset_tag(subset, len(dataset), seed))
        dataset = Subset(dataset, _subset_index(len(dataset), subset, seed, spec).tolist())
    if len(dataset) <= MAX_STACKED:
        X, y = _stack(dataset, spec)
        return _from_tensors(spec, X, y, tags, batch_size, None, seed)
    size = batch_size or LAZY_BATCH_SIZE
    loader = DataLoader(dataset, batch_size=size, shuffle=False)
    return LoadedData(loader, len(dataset), spec, _describe(spec, tags, len(dataset), size), None, "unknown")


def _stack(dataset: Any, spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All items of a map-style Dataset collated into one ``(X, y)`` pair."""
    try:
        batch = next(iter(DataLoader(dataset, batch_size=len(dataset))))
    except (RuntimeError, TypeError) as err:
        raise DataError(f"cannot stack the items of the Dataset from {spec!r} ({_summary(err)}); "
                        "its items must be (x, y) pairs of equal shapes") from err
    if not is_single_batch(batch):
        raise DataError(f"the Dataset from {spec!r} must yield (x, y) pairs of tensors or numbers; "
                        f"its items collate to a {type(batch).__name__}")
    return batch[0], batch[1]
