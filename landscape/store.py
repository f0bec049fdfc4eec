"""The HDF5 results file: result dataclasses to groups and back, with provenance, written atomically.

Layout (documented in the README)::

    / attrs: format="landscape", format_version, created, modified, landscape/torch/h5py/numpy/python versions
    /checkpoints/<name>/            attrs: the checkpoint's provenance and the analysis settings
        <metric>/                   one result: arrays as datasets, scalars as attributes, attrs["result_type"]
        layers/<group>/<metric>/    the same per parameter block, attrs on <group>: params (names), and for a
                                    block of landscape analyze --per-layer its slices (Python notation, "" for
                                    a whole parameter), kind, numel and order (its position in the model)

Every write holds the file's lock (``.NAME.lock`` beside it) and goes to a temporary copy in the same folder that is
renamed over the target only once complete (see :mod:`landscape.files`), so concurrent writers keep every result,
and a crash, an interrupt, a full disk or a bad input never leaves a half-written file nor damages an existing one.
Reads are retried while a training run appends to the file; damaged attributes are a one-line :class:`StoreError`.
The records written and read back are those of :mod:`landscape.results` (:func:`read_results`, :func:`read_run`,
and :func:`flatness_rows`: the flatness measures of results and run files side by side).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import typing
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, TypeVar, Union

import h5py
import numpy as np
import torch

from landscape import files
from landscape._version import __version__
from landscape.errors import OptionError, StoreError, option
from landscape.files import PathLike
from landscape.results import CheckpointRecord, FlatnessRow, Result, RunRecord

FORMAT = "landscape"
FORMAT_VERSION = 1
#: The result records the store writes and reads, by the name a group's ``result_type`` attribute holds.
RESULT_TYPES: dict[str, type] = {cls.__name__: cls for cls in typing.get_args(Result)}
T = TypeVar("T")
_JSON = "json:"
#: Attributes read as numbers (or a JSON object's text), on the root, a checkpoint group and the run group.
ROOT_TYPES: dict[str, type] = {"format_version": int}
CHECKPOINT_TYPES: dict[str, type] = {"step": int, "num_params": int, "size": int, "num_samples": int, "loss": float,
                                     "accuracy": float, "seconds": float, "world_size": int}
RUN_TYPES: dict[str, type] = {"settings": dict, "final_step": int, "num_params": int, "world_size": int}
#: How often a read is tried while the file changes under it (a training run appending), and the first pause.
READ_ATTEMPTS = 8
READ_BACKOFF = 0.005
_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def now() -> str:
    """The current UTC time in ISO 8601, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def software_versions() -> dict[str, str]:
    """The versions that decide the numbers, for the root attributes."""
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
    """An attribute as written by :func:`_encode_attr`; ValueError (UnicodeDecodeError, JSONDecodeError) if damaged."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value.startswith(_JSON):
        return json.loads(value[len(_JSON):])
    if isinstance(value, np.generic):
        return value.item()
    return value


def _damaged(node: h5py.HLObject, key: str, problem: str) -> StoreError:
    return StoreError(f"{node.file.filename}: attribute {key!r} of {node.name} {problem}; the file is damaged: "
                      "write it again with the command that made it")


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _read_attr(node: h5py.HLObject, key: str) -> Any:
    """One attribute, decoded; StoreError naming the file and the attribute when it cannot be."""
    value = node.attrs[key]
    try:
        return _decode_attr(value)
    except ValueError as err:
        raise _damaged(node, key, f"cannot be decoded ({str(err).splitlines()[0][:80]})") from None


def _check_type(node: h5py.HLObject, key: str, value: Any, kind: Any) -> Any:
    """``value`` if it is of ``kind`` (int, float, bool, str, list, dict: a JSON object's text); else StoreError."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is float and number:
        return value
    if kind is int and number and (isinstance(value, int) or value.is_integer()):
        return int(value)
    if kind is bool and (isinstance(value, bool) or number and value in (0, 1)):
        return value
    if kind in (str, list) and isinstance(value, kind):
        return value
    if kind is dict and isinstance(value, str):
        try:
            if isinstance(json.loads(value), dict):
                return value
        except ValueError:
            pass
        raise _damaged(node, key, f"should hold a JSON object, not {_shown(value)}")
    names = {int: "an integer", float: "a number", bool: "a boolean", str: "a string", list: "a list"}
    raise _damaged(node, key, f"should be {names.get(kind, kind)}, not {_shown(value)}")


def set_attrs(node: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    """Write attributes; dicts and lists as JSON, None values skipped (HDF5 has no null)."""
    for key, value in attrs.items():
        if value is not None:
            node.attrs[key] = _encode_attr(value)


def _attr_types(node: h5py.HLObject) -> Mapping[str, type]:
    """The attributes of ``node`` that must be of a type: on the root, ``/run`` or a ``/checkpoints/<name>`` group."""
    if node.name == "/":
        return ROOT_TYPES
    if node.name == "/run":
        return RUN_TYPES
    return CHECKPOINT_TYPES if node.name.rpartition("/")[0] == "/checkpoints" else {}


def get_attrs(node: h5py.HLObject) -> dict[str, Any]:
    """Read attributes back into Python values.

    A damaged attribute (undecodable, or not of its type: a number is expected for a checkpoint's ``step``, ``loss``,
    ...) is a one-line StoreError naming the file and the attribute.
    """
    attrs = {key: _read_attr(node, key) for key in node.attrs}
    for key, kind in _attr_types(node).items():
        if key in attrs:
            attrs[key] = _check_type(node, key, attrs[key], kind)
    return attrs


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


def _field_kinds(cls: type) -> dict[str, Any]:
    """Each field's stored kind: "tensor" or "array" (a dataset), a type its attribute must have, or None (any)."""
    kinds: dict[str, Any] = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is Union else []
        base = args[0] if len(args) == 1 else hint
        base = typing.get_origin(base) or base
        if "Tensor" in str(base):
            kinds[name] = "tensor"
        elif base is np.ndarray:
            kinds[name] = "array"
        else:
            kinds[name] = base if base in (int, float, bool, str, list) else None
    return kinds


def read_result(group: h5py.Group) -> Result:
    """The result dataclass a group was written from; StoreError naming the file and the dataset or attribute when
    a number is not a number (a damaged file)."""
    kind = _read_attr(group, "result_type") if "result_type" in group.attrs else ""
    cls = RESULT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise StoreError(f"group {group.name} of {group.file.filename} holds no known result (result_type={kind!r})")
    kinds = _field_kinds(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        name, expected = field.name, kinds[field.name]
        if name in group:
            array = np.asarray(group[name][()]) if isinstance(group[name], h5py.Dataset) else None
            if array is None or array.dtype.kind not in "biuf":
                what = "a group" if array is None else f"of dtype {array.dtype}"
                raise StoreError(f"{group.file.filename}: dataset {group.name}/{name} should hold numbers, but is "
                                 f"{what}; the file is damaged: write it again with the command that made it")
            values[name] = torch.from_numpy(array) if expected == "tensor" else array
        elif name in group.attrs:
            value = _read_attr(group, name)
            if expected in ("tensor", "array"):
                raise _damaged(group, name, f"should be a dataset of numbers, not {_shown(value)}")
            values[name] = value if expected is None else _check_type(group, name, value, expected)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            values[name] = None
    return cls(**values)


# -- files -------------------------------------------------------------------------------------------------------
def check_writable(path: PathLike) -> Path:
    """Fail now, before any computation, if ``path`` cannot be written (missing folder, no permission, not a results
    file, or one of a newer format)."""
    path = Path(path)
    target = files.target_of(path)
    folder = target.parent if str(target.parent) else Path(".")
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
        read_file(path, lambda handle: _check_version(handle, path, writing=True), warn_newer=False)
    return path


def _check_version(handle: h5py.File, path: Path, *, writing: bool) -> None:
    """A file of a newer format than this toolkit's is refused for writing, and read with a warning."""
    if "format_version" not in handle.attrs:
        return
    version = _check_type(handle, "format_version", _read_attr(handle, "format_version"), int)
    if version <= FORMAT_VERSION:
        return
    message = f"{path} has format_version {version}, newer than this landscape knows ({FORMAT_VERSION})"
    if writing:
        raise StoreError(f"{message}: refusing to write to it; upgrade landscape, or write to another file")
    warnings.warn(f"{message}; reading what it understands (upgrade landscape to read it all)", stacklevel=3)


def _open(path: Path) -> h5py.File:
    """An existing landscape results file, open for reading; OSError from HDF5 when it cannot be opened."""
    if not path.is_file():
        raise StoreError(f"results file {path} does not exist")
    handle = h5py.File(path, "r", locking=False)  # readable while a training run appends to it
    try:
        if (_read_attr(handle, "format") if "format" in handle.attrs else None) != FORMAT:
            raise StoreError(f"{path} is an HDF5 file but not a landscape results file (no format='landscape')")
    except BaseException:
        handle.close()
        raise
    return handle


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]


def _pause(path: Path, attempt: int, failure: str) -> None:
    """Wait before the next attempt at a read; StoreError ``failure`` after the last, or at once for a file that
    does not even begin as an HDF5 file."""
    try:
        with open(path, "rb") as head:
            hdf5 = head.read(len(_SIGNATURE)) == _SIGNATURE
    except OSError:
        hdf5 = False
    if attempt == READ_ATTEMPTS - 1 or not hdf5:
        raise StoreError(failure)
    time.sleep(READ_BACKOFF * 2 ** attempt)


def _unreadable(path: Path, err: BaseException) -> str:
    return f"{path} is not a readable HDF5 file ({_first_line(err)})"


def _read_failed(path: Path, err: BaseException) -> str:
    return f"cannot read {path}: {_first_line(err)} (it is damaged, or kept changing while read)"


def read_file(path: PathLike, read: Callable[[h5py.File], T], *, warn_newer: bool = True) -> T:
    """``read(handle)`` on the results file at ``path``, open for reading, and what it returns.

    A training run may be appending to the file: HDF5 then fails now and then, in the open or midway through a read
    ("Can't synchronously read data"), so the file is opened and read afresh, up to :data:`READ_ATTEMPTS` times with
    a growing pause. A file that still fails is a one-line StoreError. A file of a newer format is read with a
    warning (``warn_newer=False``: silently, for a writer that refuses it).
    """
    path = Path(path)
    attempt = 0
    while True:
        try:
            handle = _open(path)
        except (OSError, RuntimeError) as err:
            _pause(path, attempt, _unreadable(path, err))
        else:
            with handle:
                try:
                    if warn_newer:
                        _check_version(handle, path, writing=False)
                    return read(handle)
                except (OSError, RuntimeError) as err:
                    _pause(path, attempt, _read_failed(path, err))
        attempt += 1


@contextlib.contextmanager
def open_results(path: PathLike) -> Iterator[h5py.File]:
    """Open an existing landscape results file for reading, with a clear error for anything else.

    The open is retried while a writer changes the file, but the block runs once: an HDF5 error in it becomes a
    StoreError. To read a file that a training run may be appending to, pass a function to :func:`read_file`.
    """
    path = Path(path)
    attempt = 0
    while True:
        try:
            handle = _open(path)
            break
        except (OSError, RuntimeError) as err:
            _pause(path, attempt, _unreadable(path, err))
            attempt += 1
    with handle:
        _check_version(handle, path, writing=False)
        try:
            yield handle
        except OSError as err:
            raise StoreError(_read_failed(path, err)) from None


def _write_access() -> h5py.h5p.PropFAID:
    """HDF5 file access for writing without a chunk cache or sieve buffer: a failed write (a full disk) then raises
    where it happens; buffered, HDF5 reports it only in a finalizer (as a warning) and may crash on the next flush."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)
    cache = list(fapl.get_cache())
    cache[2] = 0  # chunk cache bytes
    fapl.set_cache(*cache)
    fapl.set_sieve_buf_size(0)
    return fapl


def _open_for_writing(path: Path, *, create: bool) -> h5py.File:
    name = os.fsencode(path)
    if create:
        return h5py.File(h5py.h5f.create(name, h5py.h5f.ACC_TRUNC, fapl=_write_access()))
    return h5py.File(h5py.h5f.open(name, h5py.h5f.ACC_RDWR, fapl=_write_access()))


@contextlib.contextmanager
def _swallowed_errors() -> Iterator[list[BaseException]]:
    """The errors raised while this block runs that Python could only print (h5py reports some failed writes when
    it releases an object); in the list yielded, once the block is done."""
    caught: list[BaseException] = []
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if files.failure_reason(unraisable.exc_value) is None:
            previous(unraisable)
        else:
            caught.append(unraisable.exc_value)

    sys.unraisablehook = hook
    try:
        yield caught
    finally:
        sys.unraisablehook = previous


@contextlib.contextmanager
def _filling(path: Path, temp: Path) -> Iterator[h5py.File]:
    """``temp`` open for writing: a copy of the results file ``path`` (of a format this toolkit writes), or a new
    results file; flushed and closed after the block. Call it holding the lock of ``path``."""
    with _swallowed_errors() as swallowed:
        if path.exists():
            read_file(path, lambda handle: _check_version(handle, path, writing=True), warn_newer=False)
            shutil.copyfile(path, temp)
            handle = _open_for_writing(temp, create=False)
        else:
            handle = _open_for_writing(temp, create=True)
            handle.attrs["format"] = FORMAT
            handle.attrs["format_version"] = FORMAT_VERSION
            handle.attrs["created"] = now()
        with handle:
            set_attrs(handle, {**software_versions(), "modified": now()})
            yield handle
            handle.flush()
    if swallowed:
        raise swallowed[0]


@contextlib.contextmanager
def update_results(path: PathLike) -> Iterator[h5py.File]:
    """Open ``path`` for changes that land all at once: edits go to a copy renamed over ``path`` on success.

    The file's lock is held throughout (another writer waits, and says so), so concurrent writers keep every result;
    the file keeps its mode (a new one gets the umask's), a symlink is written through to its target, and a failed
    write (a full disk) is a StoreError saying the previous file is unchanged.
    """
    path = Path(path)
    with files.replacing(path, error=StoreError, what=f"results file {path}") as temp:
        with _filling(path, temp) as handle:
            yield handle


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
    layers: Optional[Mapping[str, tuple[Union[Sequence[str], Mapping[str, Any]], Mapping[str, Result]]]] = None,
) -> str:
    """Add (or replace) one checkpoint's results in an open file; returns the group name used.

    ``attrs`` carries provenance (``path`` distinguishes two checkpoints with the same name); ``layers`` maps a
    parameter group name to (its parameter names, or its attributes with the names under ``"params"``, its results).
    Metrics already stored and not recomputed stay.
    """
    checkpoints = handle.require_group("checkpoints")
    gname = _group_name(checkpoints, name, attrs.get("path"))
    group = checkpoints.require_group(gname)
    set_attrs(group, attrs)
    for metric, result in results.items():
        if metric in group:
            del group[metric]
        write_result(group.create_group(metric), result)
    for layer, (about, layer_results) in (layers or {}).items():
        node = group.require_group("layers").require_group(layer)
        set_attrs(node, dict(about) if isinstance(about, Mapping) else {"params": list(about)})
        for metric, result in layer_results.items():
            if metric in node:
                del node[metric]
            write_result(node.create_group(metric), result)
    return gname


def _read_metrics(group: h5py.Group) -> dict[str, Result]:
    return {key: read_result(node) for key, node in group.items() if "result_type" in node.attrs}


def read_results(path: PathLike) -> dict[str, CheckpointRecord]:
    """Every checkpoint in a results file, ordered by step (then name), with results as dataclasses."""

    def read(handle: h5py.File) -> list[CheckpointRecord]:
        records = []
        for name, group in handle.get("checkpoints", {}).items():
            layers = {key: _read_metrics(node) for key, node in group.get("layers", {}).items()}
            records.append(CheckpointRecord(name, get_attrs(group), _read_metrics(group), layers))
        return records

    records = read_file(path, read)
    records.sort(key=lambda r: (r.step is None, r.step if r.step is not None else 0, r.name))
    return {r.name: r for r in records}


def root_attributes(path: PathLike) -> dict[str, Any]:
    """The file-level attributes (format, versions, created, modified)."""
    return read_file(path, get_attrs)


# -- training runs: append-only records ------------------------------------------------------------------------
class RunWriter:
    """A run's records as growing datasets (``maxshape=(None, ...)``), flushed at every append, so a run killed at any
    moment keeps everything it recorded. A new file is created complete (root and run attributes) by a rename.

    Every change holds the file's lock, so other writers (``landscape analyze -o`` the same file) take turns with
    the run; when one of them has replaced the file meanwhile, the run's next change reopens it.
    """

    def __init__(self, path: PathLike, attrs: Mapping[str, Any], *, resume: bool = False) -> None:
        self.path = Path(path)
        self.handle: Optional[h5py.File] = None
        self._opened: Optional[tuple[int, int]] = None  # (device, inode) of the file self.handle has open
        if resume:
            with self._writing("open the run") as handle:
                has_run = "run" in handle
            if not has_run:
                self.close()
                raise StoreError(f"{self.path} holds no training run to resume")
            return
        with files.replacing(self.path, error=StoreError, what=f"run file {self.path}") as temp:
            if self.path.exists():  # checked under the lock: two runs cannot both create it
                raise StoreError(f"{self.path} already exists; pass {option('resume')} to continue that run, or "
                                 "choose another output file")
            with _filling(self.path, temp) as handle:
                set_attrs(handle.require_group("run"), attrs)

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[h5py.File]:
        """The file open for writing under its lock (reopened if replaced) and flushed after the block; a failed
        write (a full disk) is a StoreError saying what was kept."""
        try:
            with files.locked(self.path) as target:
                if not target.is_file():
                    raise StoreError(f"cannot {what}: run file {self.path} does not exist (moved or removed?)")
                now = os.stat(target)
                if self.handle is None or self._opened != (now.st_dev, now.st_ino):
                    if self.handle is not None:
                        self.handle.close()  # the file another writer replaced
                        self.handle = None
                    handle = _open_for_writing(target, create=False)
                    try:
                        _check_version(handle, self.path, writing=True)
                    except BaseException:
                        handle.close()
                        raise
                    self.handle, self._opened = handle, (now.st_dev, now.st_ino)
                yield self.handle
                self.handle.flush()
        except StoreError:
            raise
        except (OSError, RuntimeError) as err:
            failure = f"cannot {what} of run file {self.path}: {files.failure_reason(err) or _first_line(err)}"
            then = f": free some space, then continue the run with {option('resume')}" if files.disk_full(err) else ""
            raise StoreError(f"{failure}; the records written before are kept{then}") from err

    def append(self, table: str, row: Mapping[str, Any]) -> None:
        """Add one row (a value, or an array of fixed shape, per column) to ``table`` and flush it to disk; a row
        that cannot be written completely is removed again."""
        arrays = {key: np.asarray(value) for key, value in row.items()}
        for key, array in arrays.items():
            if array.dtype.kind not in "biuf":
                raise StoreError(f"column {key!r} of {table} must be numeric, got {array.dtype}")
        with self._writing(f"append a row to table {table}") as handle:
            group = handle.require_group(table)
            lengths: dict[str, Optional[int]] = {}  # of the columns this row has changed (None: created)
            try:
                for key, array in arrays.items():
                    if key not in group:
                        lengths[key] = None
                        group.create_dataset(key, shape=(0, *array.shape), maxshape=(None, *array.shape),
                                             chunks=(256, *array.shape),
                                             dtype=array.dtype if array.dtype.kind != "b" else "u1")
                    dataset = group[key]
                    length = dataset.shape[0]
                    lengths.setdefault(key, length)
                    dataset.resize(length + 1, axis=0)
                    dataset[-1] = array
                handle.flush()
            except BaseException:
                _drop_row(group, lengths)
                raise

    def truncate(self, table: str, last_step: int) -> None:
        """Drop the rows of ``table`` recorded after ``last_step`` (they are recomputed when a run resumes)."""
        with self._writing(f"truncate table {table}") as handle:
            if table not in handle:
                return
            group = handle[table]
            keep = int(np.searchsorted(group["step"][()], last_step, side="right")) if "step" in group else 0
            for dataset in group.values():
                if isinstance(dataset, h5py.Dataset):
                    dataset.resize(keep, axis=0)

    def set_attrs(self, table: str, attrs: Mapping[str, Any]) -> None:
        """Set attributes of ``table`` (a group, created if needed)."""
        with self._writing(f"set attributes of {table}") as handle:
            set_attrs(handle.require_group(table), attrs)

    def close(self) -> None:
        """Close the file (under its lock: closing may still write to it)."""
        if self.handle is None:
            return
        handle, self.handle = self.handle, None
        with files.locked(self.path):
            handle.close()

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _drop_row(group: h5py.Group, lengths: Mapping[str, Optional[int]]) -> None:
    """Undo a partly written row: the columns it grew back to their ``lengths``, those it created (None) removed
    (best effort: the write that failed may fail again)."""
    with contextlib.suppress(Exception):
        for key, length in lengths.items():
            if length is None:
                group.pop(key, None)
            else:
                group[key].resize(length, axis=0)
        group.file.flush()


def read_run(path: PathLike) -> RunRecord:
    """A run file's attributes and tables (columns as arrays)."""

    def read(handle: h5py.File) -> RunRecord:
        if "run" not in handle:
            raise StoreError(f"{path} holds no training run (no /run group)")
        tables: dict[str, dict[str, np.ndarray]] = {}

        def collect(name: str, node: Any) -> None:
            if isinstance(node, h5py.Dataset):
                table, _, column = f"run/{name}".rpartition("/")
                values = node[()]
                if np.asarray(values).dtype.kind not in "biuf":
                    raise StoreError(f"{path}: column {node.name} should hold numbers, but is of dtype "
                                     f"{node.dtype}; the file is damaged")
                tables.setdefault(table, {})[column] = values

        handle["run"].visititems(collect)
        return RunRecord(get_attrs(handle["run"]), tables)

    return read_file(path, read)


# -- flatness rows: results and run files side by side ---------------------------------------------------------
def flatness_rows(paths: Union[PathLike, Sequence[PathLike]]) -> list[FlatnessRow]:
    """The :class:`~landscape.results.FlatnessRow` of every file, in the order given (a file's checkpoints by step,
    then its run); nothing is recomputed.

    :class:`StoreError` names a file that is missing, not a landscape file, or holds neither analysed checkpoints
    nor a training run with curvature records."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise OptionError("compare needs at least one results or run file")
    return [row for path in paths for row in _file_rows(Path(path))]


def _file_rows(path: Path) -> list[FlatnessRow]:
    """One row per analysed checkpoint, plus one for the training run when the file holds one."""
    rows = [FlatnessRow.of_checkpoint(str(path), record) for record in read_results(path).values()]
    has_run = read_file(path, lambda handle: "run" in handle)  # retried while a run appends to the file
    run = read_run(path) if has_run else None
    run_row = FlatnessRow.of_run(str(path), run) if run is not None else None
    if run_row is not None:
        rows.append(run_row)
    if not rows:
        what = "no training run" if run is None else \
            f"a training run without curvature records (train with {option('track_every')} N, N > 0)"
        raise StoreError(f"{path} has nothing to compare: no analysed checkpoints (landscape analyze) and {what}")
    return rows
