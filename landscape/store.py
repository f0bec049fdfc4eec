"""The HDF5 results file: result dataclasses to groups and back, with provenance, written atomically.

Layout (documented in the README)::

    / attrs: format="landscape", format_version, created, modified, landscape/torch/h5py/numpy/python versions
    /checkpoints/<name>/            attrs: the checkpoint's provenance and the analysis settings
        <metric>/                   one result: arrays as datasets, scalars as attributes, attrs["result_type"]
        layers/<group>/<metric>/    the same per parameter group, attrs["params"] on <group>

Every write goes to a temporary copy in the same folder that is renamed over the target only once complete, so a
crash, an interrupt or a bad input never leaves a half-written file nor damages an existing one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shutil
import tempfile
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

import h5py
import numpy as np
import torch

from landscape.errors import StoreError
from landscape.linalg.results import DensityResult, DiagonalResult, EigenResult, JacobianResult, TraceResult

FORMAT = "landscape"
FORMAT_VERSION = 1
RESULT_TYPES = {cls.__name__: cls for cls in (EigenResult, TraceResult, DensityResult, DiagonalResult, JacobianResult)}
Result = Union[EigenResult, TraceResult, DensityResult, DiagonalResult]
PathLike = Union[str, os.PathLike]
_JSON = "json:"


@dataclass(frozen=True)
class CheckpointRecord:
    """What a results file holds for one checkpoint: its attributes, its results, and its per-layer results."""

    name: str
    attrs: dict[str, Any]
    results: dict[str, Result]
    layers: dict[str, dict[str, Result]]

    @property
    def step(self) -> Optional[int]:
        return self.attrs.get("step")


def register_result_type(cls: type) -> type:
    """Let the store write and read another frozen result dataclass (later metrics plug in here)."""
    RESULT_TYPES[cls.__name__] = cls
    return cls


def now() -> str:
    """The current UTC time in ISO 8601, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def software_versions() -> dict[str, str]:
    """The versions that decide the numbers, for the root attributes."""
    from landscape import __version__

    return {
        "landscape_version": __version__,
        "torch_version": torch.__version__,
        "h5py_version": h5py.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
    }


# -- attributes --------------------------------------------------------------------------------------------------
def _encode_attr(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return _JSON + json.dumps(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str):
        return str(value)  # plain str: h5py cannot store str subclasses such as torch's TorchVersion
    return value


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value.startswith(_JSON):
        return json.loads(value[len(_JSON):])
    if isinstance(value, np.generic):
        return value.item()
    return value


def set_attrs(node: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    """Write attributes; dicts and lists as JSON, None values skipped (HDF5 has no null)."""
    for key, value in attrs.items():
        if value is not None:
            node.attrs[key] = _encode_attr(value)


def get_attrs(node: h5py.HLObject) -> dict[str, Any]:
    """Read attributes back into Python values."""
    return {key: _decode_attr(value) for key, value in node.attrs.items()}


# -- results -----------------------------------------------------------------------------------------------------
def write_result(group: h5py.Group, result: Result) -> None:
    """Arrays and tensors as datasets, everything else as attributes; None fields are left out."""
    group.attrs["result_type"] = type(result).__name__
    for field in dataclasses.fields(result):
        value = getattr(result, field.name)
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray):
            group.create_dataset(field.name, data=value, compression="gzip" if value.size > 4096 else None)
        elif value is not None:
            group.attrs[field.name] = _encode_attr(value)


def _tensor_fields(cls: type) -> set[str]:
    hints = typing.get_type_hints(cls)
    return {name for name, hint in hints.items() if "Tensor" in str(hint)}


def read_result(group: h5py.Group) -> Result:
    """The result dataclass a group was written from."""
    kind = _decode_attr(group.attrs.get("result_type", ""))
    cls = RESULT_TYPES.get(kind)
    if cls is None:
        raise StoreError(f"group {group.name} of {group.file.filename} holds no known result (result_type={kind!r})")
    tensors = _tensor_fields(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name in group:
            array = group[field.name][()]
            values[field.name] = torch.from_numpy(np.asarray(array)) if field.name in tensors else np.asarray(array)
        elif field.name in group.attrs:
            values[field.name] = _decode_attr(group.attrs[field.name])
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            values[field.name] = None
    return cls(**values)


# -- files -------------------------------------------------------------------------------------------------------
def check_writable(path: PathLike) -> Path:
    """Fail now, before any computation, if ``path`` cannot be written (missing folder, no permission)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.exists() and path.is_dir():
        raise StoreError(f"output {path} is a folder; give a file name such as {path / 'results.h5'}")
    if not folder.is_dir():
        raise StoreError(f"cannot write {path}: folder {folder} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as err:
        raise StoreError(f"cannot write {path}: {err.strerror or err}") from None
    if path.exists():
        with open_results(path):
            pass
    return path


@contextlib.contextmanager
def open_results(path: PathLike) -> Iterator[h5py.File]:
    """Open an existing landscape results file for reading, with a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"results file {path} does not exist")
    try:
        handle = h5py.File(path, "r", locking=False)  # readable while a training run appends to it
    except OSError as err:
        raise StoreError(f"{path} is not a readable HDF5 file ({err})") from None
    with handle:
        if _decode_attr(handle.attrs.get("format", "")) != FORMAT:
            raise StoreError(f"{path} is an HDF5 file but not a landscape results file (no format='landscape')")
        yield handle


@contextlib.contextmanager
def update_results(path: PathLike) -> Iterator[h5py.File]:
    """Open ``path`` for changes that land all at once: edits go to a copy renamed over ``path`` on success."""
    path = Path(path)
    if path.exists():
        with open_results(path):
            pass
    folder = path.parent if str(path.parent) else Path(".")
    fd, temp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    temp = Path(temp_name)
    try:
        if path.exists():
            shutil.copyfile(path, temp)
            handle = h5py.File(temp, "a")
        else:
            handle = h5py.File(temp, "w")
            handle.attrs["format"] = FORMAT
            handle.attrs["format_version"] = FORMAT_VERSION
            handle.attrs["created"] = now()
        with handle:
            set_attrs(handle, {**software_versions(), "modified": now()})
            yield handle
            handle.flush()
        with open(temp, "rb") as done:
            os.fsync(done.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _group_name(checkpoints: h5py.Group, name: str, source: Optional[str]) -> str:
    """``name``, or ``name~2``, ``name~3``... when a different source file already took ``name``."""
    candidate, n = name, 1
    while candidate in checkpoints and source is not None and checkpoints[candidate].attrs.get("path") != source:
        n += 1
        candidate = f"{name}~{n}"
    return candidate


def write_checkpoint(
    handle: h5py.File,
    name: str,
    results: Mapping[str, Result],
    *,
    attrs: Mapping[str, Any],
    layers: Optional[Mapping[str, tuple[list[str], Mapping[str, Result]]]] = None,
) -> str:
    """Add (or replace) one checkpoint's results in an open file; returns the group name used.

    ``attrs`` carries provenance (``path`` distinguishes two checkpoints with the same name); ``layers`` maps a
    parameter group name to (its parameter names, its results). Metrics already stored and not recomputed stay.
    """
    checkpoints = handle.require_group("checkpoints")
    gname = _group_name(checkpoints, name, attrs.get("path"))
    group = checkpoints.require_group(gname)
    set_attrs(group, attrs)
    for metric, result in results.items():
        if metric in group:
            del group[metric]
        write_result(group.create_group(metric), result)
    for layer, (names, layer_results) in (layers or {}).items():
        node = group.require_group("layers").require_group(layer)
        set_attrs(node, {"params": list(names)})
        for metric, result in layer_results.items():
            if metric in node:
                del node[metric]
            write_result(node.create_group(metric), result)
    return gname


def _read_metrics(group: h5py.Group) -> dict[str, Result]:
    return {key: read_result(node) for key, node in group.items() if "result_type" in node.attrs}


def read_results(path: PathLike) -> dict[str, CheckpointRecord]:
    """Every checkpoint in a results file, ordered by step (then name), with results as dataclasses."""
    records = []
    with open_results(path) as handle:
        for name, group in handle.get("checkpoints", {}).items():
            layers = {key: _read_metrics(node) for key, node in group.get("layers", {}).items()}
            records.append(CheckpointRecord(name, get_attrs(group), _read_metrics(group), layers))
    records.sort(key=lambda r: (r.step is None, r.step if r.step is not None else 0, r.name))
    return {r.name: r for r in records}


def root_attributes(path: PathLike) -> dict[str, Any]:
    """The file-level attributes (format, versions, created, modified)."""
    with open_results(path) as handle:
        return get_attrs(handle)


# -- training runs: append-only records ------------------------------------------------------------------------
@dataclass(frozen=True)
class RunRecord:
    """A training run file: the run's attributes, and each table (``run``, ``run/curvature``) as column arrays."""

    attrs: dict[str, Any]
    tables: dict[str, dict[str, np.ndarray]]


class RunWriter:
    """A run's records as growing datasets (``maxshape=(None, ...)``), flushed at every append, so a run killed at any
    moment keeps everything it recorded. A new file is created complete (root and run attributes) by a rename."""

    def __init__(self, path: PathLike, attrs: Mapping[str, Any], *, resume: bool = False) -> None:
        self.path = Path(path)
        if resume:
            with open_results(self.path) as handle:
                if "run" not in handle:
                    raise StoreError(f"{self.path} holds no training run to resume")
        else:
            if self.path.exists():
                raise StoreError(f"{self.path} already exists; pass --resume to continue that run, or choose another "
                                 "output file")
            with update_results(self.path) as handle:
                set_attrs(handle.require_group("run"), attrs)
        self.handle = h5py.File(self.path, "a")

    def append(self, table: str, row: Mapping[str, Any]) -> None:
        """Add one row (a value, or an array of fixed shape, per column) to ``table`` and flush it to disk."""
        group = self.handle.require_group(table)
        for key, value in row.items():
            array = np.asarray(value)
            if array.dtype.kind not in "biuf":
                raise StoreError(f"column {key!r} of {table} must be numeric, got {array.dtype}")
            if key not in group:
                group.create_dataset(key, shape=(0, *array.shape), maxshape=(None, *array.shape),
                                     chunks=(256, *array.shape), dtype=array.dtype if array.dtype.kind != "b" else "u1")
            dataset = group[key]
            dataset.resize(dataset.shape[0] + 1, axis=0)
            dataset[-1] = array
        self.handle.flush()

    def truncate(self, table: str, last_step: int) -> None:
        """Drop the rows of ``table`` recorded after ``last_step`` (they are recomputed when a run resumes)."""
        if table not in self.handle:
            return
        group = self.handle[table]
        keep = int(np.searchsorted(group["step"][()], last_step, side="right")) if "step" in group else 0
        for dataset in group.values():
            if isinstance(dataset, h5py.Dataset):
                dataset.resize(keep, axis=0)
        self.handle.flush()

    def set_attrs(self, table: str, attrs: Mapping[str, Any]) -> None:
        set_attrs(self.handle.require_group(table), attrs)
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_run(path: PathLike) -> RunRecord:
    """A run file's attributes and tables (columns as arrays)."""
    with open_results(path) as handle:
        if "run" not in handle:
            raise StoreError(f"{path} holds no training run (no /run group)")
        tables: dict[str, dict[str, np.ndarray]] = {}

        def collect(name: str, node: Any) -> None:
            if isinstance(node, h5py.Dataset):
                table, _, column = f"run/{name}".rpartition("/")
                tables.setdefault(table, {})[column] = node[()]

        handle["run"].visititems(collect)
        return RunRecord(get_attrs(handle["run"]), tables)
