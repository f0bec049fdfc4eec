"""Load users' checkpoints as they are, and save the toolkit's own.

Reads PyTorch state dicts (bare or under a wrapper key, from Lightning, DataParallel/DDP or ``torch.compile``),
safetensors, TorchScript, ``torch.export`` programs, the toolkit's own format, and Hugging Face ``save_pretrained``
folders (:mod:`landscape.hf`, with the optional extra ``landscape[hf]``). The format is found from the file's
contents, not its suffix. Every problem with a file is a one-line :class:`CheckpointError`; problems with
``--model`` / ``--model-kwargs`` are :class:`OptionError`. Nothing in a file runs code unless the caller trusts it
(``trust=True``, ``--trust-checkpoint``): see :func:`load_checkpoint`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pickle
import pickletools
import re
import struct
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn
from torch._weights_only_unpickler import _get_allowed_globals

from landscape import hf
from landscape.devices import dtype_name
from landscape.errors import CheckpointError, OptionError, option
from landscape.files import PathLike, replacing
from landscape.models import BUILTIN_MODELS
from landscape.specs import current_folder_on_path, import_callable

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "Checkpoint",
    "CheckpointInfo",
    "build_model",
    "checkpoint_provenance",
    "find_checkpoints",
    "load_checkpoint",
    "parse_model_kwargs",
    "save_checkpoint",
]

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".pt2", ".ts", ".jit")
_NAME_SUFFIXES = CHECKPOINT_SUFFIXES + (".tar",)  # "checkpoint.pth.tar" is a common spelling
_STEP_KEYS = ("step", "global_step", "iteration", "epoch")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
_TOOLKIT_FORMAT = "landscape-checkpoint"
_TOOLKIT_VERSION = 1
_MAX_LISTED = 10
_MAX_WRAPPER_DEPTH = 4
# The model specs a checkpoint may name and have built without trust: the built-in models, by name or import path.
_BUILTIN_SPECS = frozenset(BUILTIN_MODELS) | {f"landscape.models:{f.__name__}" for f in BUILTIN_MODELS.values()}
_LEGACY_PICKLES = 5  # a legacy torch.save file: magic number, protocol, sys info, the object, storage keys; then data
_STRING_OPCODES = frozenset(("STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                             "BINUNICODE8"))
_MODEL_HINT = f"use a built-in name ({', '.join(sorted(BUILTIN_MODELS))}) or 'package.module:factory' for your own"


def _trust_hint() -> str:
    """How to load a file that runs code, named as the caller spells it (``trust`` or ``--trust-checkpoint``)."""
    return f"pass {option('trust', '--trust-checkpoint')}, but only for files you trust"


def _model() -> str:
    """The option naming the architecture (``model_spec`` or ``--model``)."""
    return option("model_spec", "--model")

# What torch.load, pickle, zipfile and safetensors raise on truncated, corrupt or foreign bytes.
_READ_ERRORS = (
    RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, KeyError, OSError,
    AttributeError, IndexError, TypeError, AssertionError, struct.error, OverflowError, MemoryError, SafetensorError,
)
# Types a weights-only torch.load accepts, so a toolkit checkpoint never needs trust to load.
_SAVEABLE_CONTAINERS = (dict, OrderedDict, list, tuple, set, torch.Size)
_SAVEABLE_LEAVES = (type(None), bool, int, float, complex, str, bytes, torch.Tensor, torch.dtype, torch.device)


@dataclass(frozen=True)
class CheckpointInfo:
    """Where a checkpoint came from, recorded next to the results so they can be traced back to the file."""

    path: str  # absolute path
    name: str  # file name without the checkpoint extension(s), e.g. "step_100"
    format: str  # "state_dict" | "lightning" | "safetensors" | "torchscript" | "export" | "landscape" | "module"
    #              | "huggingface" (a save_pretrained folder: path, size and sha256 are of its weight files, see hf.py)
    size: int  # bytes
    sha256: str
    step: int | None  # training step from the contents, else from the file name, else None
    dtype: str | None = None  # precision of the floating-point tensors as saved ("bfloat16"; "bfloat16+float32")


@dataclass(frozen=True)
class Checkpoint:
    """A model with the checkpoint's weights loaded (on CPU), and how it was built."""

    model: nn.Module
    info: CheckpointInfo
    model_spec: str | None  # None when the file carries its own architecture (TorchScript, export, pickled module)
    model_kwargs: dict


def checkpoint_provenance(checkpoint: Checkpoint) -> dict[str, Any]:
    """What the results of a checkpoint record of it: the file (path, format, size, sha256, step) and the model
    (spec, kwargs, number of trainable parameters)."""
    info, model = checkpoint.info, checkpoint.model
    return {"path": info.path, "format": info.format, "size": info.size, "sha256": info.sha256, "step": info.step,
            "saved_dtype": info.dtype,
            "model_spec": checkpoint.model_spec, "model_kwargs": dict(checkpoint.model_kwargs),
            "num_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}


@dataclass(frozen=True)
class _Weights:
    """What a weights file holds once unwrapped: a state dict (or a whole pickled module) and what it says of itself."""

    format: str
    state_dict: Mapping[str, Any]
    module: nn.Module | None = None
    model_spec: str | None = None
    model_kwargs: dict = field(default_factory=dict)
    step: int | None = None


# ----------------------------------------------------------------------------------------------------------- models


def build_model(spec: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Build the model ``--model`` names: a built-in name, or ``package.module:factory`` called with ``**kwargs``.

    The factory may be any callable returning an ``nn.Module``, including an ``nn.Module`` subclass; a transformers
    model it returns gives its logits rather than a ``ModelOutput`` (:func:`landscape.hf.logits_only`).
    """
    if not isinstance(spec, str):
        raise OptionError(f"{_model()} must be a string, got a {type(spec).__name__}: {_MODEL_HINT}")
    kwargs = dict(kwargs or {})
    factory = BUILTIN_MODELS.get(spec) or _import_factory(spec)
    try:
        model = factory(**kwargs)
    except (TypeError, ValueError) as err:
        raise OptionError(
            f"{_model()} {spec!r} could not be built with {option('model_kwargs')} {kwargs!r} ({_first_line(err)}); "
            "check the argument names and values"
        ) from err
    if not isinstance(model, nn.Module):
        raise OptionError(
            f"{_model()} {spec!r} returned a {type(model).__name__}, expected a torch.nn.Module; "
            "point it at a function or class that builds the model"
        )
    return hf.logits_only(model) if hf.is_transformers_model(model) else model


def _import_factory(spec: str) -> Any:
    """The callable a ``package.module:factory`` spec names (``factory`` may be dotted, e.g. ``Class.create``)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise OptionError(f"unknown {_model()} {spec!r}: {_MODEL_HINT}")
    return import_callable(spec, OptionError, _model())


def parse_model_kwargs(text: str | None) -> dict:
    """The ``--model-kwargs`` JSON object as a dict (``{}`` when not given)."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise OptionError(
            f"{option('model_kwargs')} is not valid JSON ({err.msg} at character {err.pos}); "
            'expected an object such as \'{"sizes": [64, 10]}\''
        ) from err
    if not isinstance(value, dict):
        raise OptionError(
            f"{option('model_kwargs')} must be a JSON object, got a {type(value).__name__}; "
            'write it as \'{"name": value, ...}\''
        )
    return value


# ------------------------------------------------------------------------------------------------------- discovery


def find_checkpoints(paths: Sequence[PathLike] | PathLike) -> list[Path]:
    """The checkpoint files that files, folders (non-recursive, known suffixes) and glob patterns name; a Hugging
    Face ``save_pretrained`` folder (``config.json`` and weights) is one checkpoint, also inside a named folder.

    Deduplicated, as absolute paths, ordered by the step in the file name; files without one come last, ties by name.
    A single path may be passed instead of a sequence.
    """
    entries = [paths] if isinstance(paths, (str, os.PathLike)) else paths
    found: dict[Path, Path] = {}
    for entry in entries:
        for path in _expand(str(entry)):
            found.setdefault(path.resolve(), path.absolute())
    return sorted(found.values(), key=_order_key)


def _expand(entry: str) -> list[Path]:
    """The files one ``find_checkpoints`` entry names."""
    path = Path(entry)
    if path.is_file() or hf.is_pretrained_folder(path):
        return [path]
    if path.is_dir():
        files = _folder_files(path)
        if not files:
            raise CheckpointError(
                f"folder '{entry}' holds no checkpoint files (looked for {', '.join(CHECKPOINT_SUFFIXES)} and "
                "save_pretrained folders, not deeper); name the files or a glob pattern instead"
            )
        return files
    if not re.search(r"[*?[]", entry):
        raise CheckpointError(f"checkpoint path '{entry}' does not exist; pass a file, a folder or a glob pattern")
    matches = [p for m in sorted(glob.glob(entry, recursive=True)) for p in _glob_match(Path(m))]
    if not matches:
        raise CheckpointError(f"glob pattern '{entry}' matched no checkpoint files; check the pattern and the folder")
    return matches


def _glob_match(path: Path) -> list[Path]:
    """A glob match as files: the file itself (or save_pretrained folder), or a folder's checkpoint files."""
    if hf.is_pretrained_folder(path):
        return [path]
    if path.is_dir():
        return _folder_files(path)
    return [path] if path.is_file() else []


def _folder_files(folder: Path) -> list[Path]:
    """The files directly in ``folder`` with a checkpoint suffix, and its subfolders that are save_pretrained
    folders (as a Hugging Face Trainer's ``checkpoint-500/``, ...)."""
    return sorted(p for p in folder.iterdir()
                  if (p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES) or hf.is_pretrained_folder(p))


def _order_key(path: Path) -> tuple[bool, int, str, str]:
    step = _step_from_name(_short_name(path))
    return (step is None, step or 0, path.name, str(path))


def _short_name(path: Path) -> str:
    """The file name without its checkpoint extension(s): ``step_100.pth.tar`` -> ``step_100``."""
    name = path.name
    while (suffix := Path(name).suffix).lower() in _NAME_SUFFIXES and suffix != name:
        name = name[: -len(suffix)]
    return name


_NAMED_STEP = re.compile(
    r"(?<![A-Za-z])(?:global_step|steps?|iteration|iter|it|epoch|ep|ckpt|checkpoint)[_=-]?(\d+)", re.I
)
_TRAILING_STEP = re.compile(r"(?:^|[_=.-])(\d+)$")


def _step_from_name(name: str) -> int | None:
    """A step in a short name: after a word such as step or epoch (``ckpt_step=1200``, ``epoch5``), or a number
    set apart at the end (``model-000300``, ``100``); not the digits of a model name such as ``resnet18``."""
    named = _NAMED_STEP.findall(name)
    if named:
        return int(named[-1])
    trailing = _TRAILING_STEP.search(name)
    return int(trailing.group(1)) if trailing else None


# --------------------------------------------------------------------------------------------------------- loading


def load_checkpoint(
    path: PathLike,
    *,
    model_spec: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    trust: bool = False,
) -> Checkpoint:
    """Load a checkpoint file into a model on CPU, whatever the format (found from the contents).

    State dicts and safetensors need ``model_spec`` (``--model``) to build the architecture; toolkit checkpoints
    carry their own (an explicit ``model_spec`` wins). TorchScript and ``torch.export`` files carry their own code
    and ignore ``model_spec``, as a Hugging Face ``save_pretrained`` folder does (its ``config.json`` names the
    architecture, built through transformers, see :mod:`landscape.hf`; the model then returns its logits).

    Nothing in the file runs code unless ``trust`` is set (``--trust-checkpoint``): pickles are loaded weights-only,
    a model spec read from a file is built only if it names a built-in model, and TorchScript and ``torch.export``
    programs (code that can do anything once run) and Hugging Face configs naming code of their own (``auto_map``)
    are refused.
    """
    path = Path(path)
    if hf.is_pretrained_folder(path):
        return _load_pretrained(path, trust)
    kind = _sniff(path)
    if kind in ("torchscript", "export"):
        if not trust:
            raise _program_refused(path, kind)
        model = _load_torchscript(path) if kind == "torchscript" else _load_export(path)
        return Checkpoint(model, _info(path, kind, None, model.state_dict().values()), None, {})
    weights = _load_safetensors(path) if kind == "safetensors" else _unpack(_torch_load(path, trust), path)
    if model_spec is None and weights.model_spec is not None and not trust:
        _check_builtin_spec(weights.model_spec, path)
    spec = model_spec if model_spec is not None else weights.model_spec
    if spec is None and weights.module is not None:
        return Checkpoint(weights.module, _info(path, weights.format, weights.step, weights.state_dict.values()),
                          None, {})
    if spec is None:
        raise CheckpointError(
            f"checkpoint '{path}' holds only weights (a state dict), not the architecture; pass {_model()} "
            f"and {option('model_kwargs')} to build it: {_MODEL_HINT}"
        )
    use_file_kwargs = model_kwargs is None and spec == weights.model_spec
    kwargs = dict(weights.model_kwargs if use_file_kwargs else model_kwargs or {})
    model = build_model(spec, kwargs)
    _load_state_dict(model, weights.state_dict, path, spec)
    return Checkpoint(model, _info(path, weights.format, weights.step, weights.state_dict.values()), spec, kwargs)


def _load_pretrained(folder: Path, trust: bool) -> Checkpoint:
    """A ``save_pretrained`` folder: the model its config describes, its weight files read as single files are
    (safetensors, or pickles weights-only unless trusted), fitted to the model's keys and checked as any state dict."""
    model = hf.build_pretrained(folder, trust=trust)
    state: dict[str, Any] = {}
    for file in hf.weight_files(folder):
        weights = _load_safetensors(file) if file.suffix == ".safetensors" else _unpack(_torch_load(file, trust), file)
        state.update(weights.state_dict)
    _load_state_dict(model, hf.fit_state_dict(model, state), folder, type(model).__name__,
                     fix="its config.json and weights disagree: re-save the folder with save_pretrained")
    return Checkpoint(hf.logits_only(model), _info(folder, "huggingface", None, state.values()), None, {})


def _check_builtin_spec(spec: str, path: Path) -> None:
    """Raise unless a model spec read from a checkpoint names a built-in model: anything else is code to import."""
    if spec in _BUILTIN_SPECS:
        return
    shown = repr(spec) if len(spec) <= 80 else repr(spec[:77] + "...")
    raise CheckpointError(
        f"checkpoint '{path}' names the model factory {shown}, which is not a built-in model: building it would "
        f"import and run code the file chose; pass {_model()} to name the architecture yourself, "
        f"or, to build the file's, {_trust_hint()}"
    )


def _program_refused(path: Path, kind: str) -> CheckpointError:
    """The error for a TorchScript or ``torch.export`` file loaded without trust."""
    what = "a TorchScript program" if kind == "torchscript" else "a torch.export program"
    return CheckpointError(
        f"refused to load checkpoint '{path}': it is {what}, code that can do anything once run (write files, ...), "
        f"and {_model()} cannot stand in for it; {_trust_hint()}, or save its state_dict() instead and load that "
        f"with {_model()}, which runs nothing from the file"
    )


def _sniff(path: Path) -> str:
    """The file's format from its first bytes: "zip" (torch.save), "pickle" (legacy torch.save, or pickles of
    protocol 0 and 1, which have no header but parse as pickles), "safetensors", "torchscript" or "export"."""
    head = _read_head(path)
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path)
    if head.startswith(b"\x80"):
        return "pickle"
    header_len = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    if (0 < header_len <= path.stat().st_size - 8 and head[8:9] == b"{") or path.suffix.lower() == ".safetensors":
        return "safetensors"
    if _scan_pickles(path):
        return "pickle"
    raise CheckpointError(
        f"checkpoint '{path}' is not a format landscape reads (a torch.save file, safetensors, TorchScript or "
        "torch.export .pt2); it may be truncated or corrupt, re-save or re-download it"
    )


def _read_head(path: Path) -> bytes:
    """The first 16 bytes of an existing, non-empty, readable file."""
    if not path.exists():
        raise CheckpointError(f"checkpoint file '{path}' does not exist; check the path")
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' is not a file (a folder?); name one checkpoint file")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as err:
        raise CheckpointError(f"checkpoint '{path}' cannot be read ({err.strerror}); check its permissions") from err
    if not head:
        raise CheckpointError(
            f"checkpoint '{path}' is empty (0 bytes); it was not written completely, re-save or re-download it"
        )
    return head


def _zip_kind(path: Path) -> str:
    """Tell torch.save, TorchScript and torch.export zip archives apart by the records inside."""
    try:
        with zipfile.ZipFile(path) as archive:
            records = {name.split("/", 1)[-1] for name in archive.namelist()}
    except _READ_ERRORS as err:
        raise _corrupt(path, "zip archive", err) from err
    if "archive_format" in records or "serialized_exported_program.json" in records:
        return "export"
    if "constants.pkl" in records and any(r.startswith("code/") for r in records):
        return "torchscript"
    if "data.pkl" in records:
        return "zip"
    raise CheckpointError(
        f"checkpoint '{path}' is a zip archive but not one torch.save, TorchScript or torch.export writes "
        "(no data.pkl inside); it may be corrupt, or a different framework's file"
    )


def _load_torchscript(path: Path) -> nn.Module:
    try:
        # the user handed us a TorchScript file; torch's advice to migrate away from it is not for them
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except _READ_ERRORS as err:
        raise _corrupt(path, "TorchScript", err) from err


def _load_export(path: Path) -> nn.Module:
    """The runnable module of a ``torch.export`` program, moved to CPU."""
    from torch.export.passes import move_to_device_pass  # imported here: only recent torch versions have it

    try:
        program = torch.export.load(str(path))
        return move_to_device_pass(program, "cpu").module()
    except _READ_ERRORS as err:
        raise _corrupt(path, "torch.export", err) from err


def _load_safetensors(path: Path) -> _Weights:
    """A safetensors file's tensors, and the step its metadata records, if any."""
    try:
        tensors = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except _READ_ERRORS as err:
        raise _corrupt(path, "safetensors", err) from err
    steps = {key: int(value) for key, value in metadata.items() if key in _STEP_KEYS and value.strip().isdigit()}
    return _Weights("safetensors", tensors, step=_step_from_contents(steps))


def _torch_load(path: Path, trust: bool) -> Any:
    """``torch.load`` on CPU, weights-only unless trusted (then classes are found in the current folder too, as
    ``--model`` specs are), with its many failure modes turned into one line."""
    if trust:
        current_folder_on_path()
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except ImportError as err:
        raise CheckpointError(
            f"checkpoint '{path}' needs Python code that cannot be imported ({_first_line(err)}); install or "
            "put on PYTHONPATH (or in the current folder) the package that saved it"
        ) from err
    except _READ_ERRORS as err:
        refused = _refusal(path, str(err)) if isinstance(err, pickle.UnpicklingError) and not trust else None
        raise (refused or _corrupt(path, "PyTorch", err)) from err


def _refusal(path: Path, message: str) -> CheckpointError | None:
    """Why the weights-only loader refused a well-formed pickle (code it references, or opcodes only the full
    unpickler reads), or None when the file is not well-formed pickles: then it is corrupt."""
    named = re.search(r"GLOBAL ([\w.]+)", message)  # "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y"
    if named:
        return _needs_code(path, named.group(1))
    scans = _scan_pickles(path)
    if scans is None:
        return None
    unsafe = sorted({name for _, _, names in scans for name in names} - set(_get_allowed_globals()))
    if unsafe:
        return _needs_code(path, _listing(unsafe))
    operand = re.search(r"Unsupported operand (\d+)", message)
    opcode = chr(int(operand.group(1))) if operand else None
    if not any(opcode in codes for _, codes, _ in scans):
        return None
    if any("P" in codes for _, codes, _ in scans):  # PERSID: protocol 0's text persistent ids, which torch rejects
        return CheckpointError(
            f"checkpoint '{path}' is pickled with protocol 0, whose text tensor references torch.load cannot read "
            "back, trusted or not; re-save the weights with torch.save's default protocol"
        )
    return CheckpointError(
        f"refused to load checkpoint '{path}': it is pickled with protocol {max(p for p, _, _ in scans)}, whose "
        f"{pickletools.code2op[opcode].name} opcode the safe weights-only loader cannot read (only the full "
        f"unpickler, which can run code, reads it; or re-save it with torch.save's default protocol); {_trust_hint()}"
    )


def _needs_code(path: Path, names: str) -> CheckpointError:
    """The error for a pickle that references callables (``names``) the weights-only loader does not allow."""
    return CheckpointError(
        f"refused to load checkpoint '{path}': unpickling it would run code ({names}), which the safe weights-only "
        f"loader does not allow; {_trust_hint()}"
    )


def _scan_pickles(path: Path) -> list[tuple[int, set[str], set[str]]] | None:
    """Each pickle of a ``torch.save`` file (zip or legacy) as (protocol, opcodes, globals it names), read opcode by
    opcode without running anything; None when they are not well-formed pickles."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                record = next((n for n in archive.namelist() if n.split("/", 1)[-1] == "data.pkl"), None)
                if record is None:
                    return None
                with archive.open(record) as stream:
                    return [_scan_pickle(stream)]
        scans = []
        with open(path, "rb") as stream:
            while len(scans) < _LEGACY_PICKLES and stream.peek(1):
                scans.append(_scan_pickle(stream))
        return scans
    except _READ_ERRORS:
        return None


def _scan_pickle(stream: Any) -> tuple[int, set[str], set[str]]:
    """One pickle's protocol, opcodes and the ``module.name`` globals it references (from GLOBAL, and from
    STACK_GLOBAL by following the strings pushed and memoized before it), read with ``pickletools.genops``."""
    protocol, codes, names = 0, set(), set()
    pushed: list[Any] = []  # what each opcode pushed: strings as they are, anything else as None
    memo: dict[int, Any] = {}
    for op, arg, _ in pickletools.genops(stream):
        codes.add(op.code)
        protocol = max(protocol, arg if op.name == "PROTO" else op.proto)  # protocols 0 and 1 have no PROTO opcode
        if op.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
            pushed.append(None)
        elif op.name == "STACK_GLOBAL":
            module, name = pushed[-2:] if len(pushed) >= 2 else (None, None)
            names.add(f"{module}.{name}" if isinstance(module, str) and isinstance(name, str) else "(unnamed)")
            pushed.append(None)
        elif op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
            memo[len(memo) if arg is None else arg] = pushed[-1] if pushed else None
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif op.name in _STRING_OPCODES:
            pushed.append(arg)
        elif op.name not in ("FRAME", "STOP"):
            pushed.append(None)
    return protocol, codes, names


def _unpack(obj: Any, path: Path) -> _Weights:
    """Find the weights in what ``torch.load`` returned: a toolkit checkpoint, a state dict, or one under wrappers."""
    if isinstance(obj, Mapping) and obj.get("format") == _TOOLKIT_FORMAT:
        return _unpack_toolkit(obj, path)
    step = _step_from_contents(obj) if isinstance(obj, Mapping) else None
    lightning = isinstance(obj, Mapping) and "pytorch-lightning_version" in obj
    inner = _unwrap(obj)
    if isinstance(inner, nn.Module):
        return _Weights("module", inner.state_dict(), module=inner, step=step)
    _check_is_state_dict(inner, path)
    return _Weights("lightning" if lightning else "state_dict", inner, step=step)


def _unwrap(obj: Any) -> Any:
    """Descend through wrapper keys (``state_dict``, ``model``, ...) to the state dict or module inside."""
    for _ in range(_MAX_WRAPPER_DEPTH):  # bounded: a pickle can hold a dict that contains itself
        if not isinstance(obj, Mapping):
            return obj
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), (Mapping, nn.Module))), None)
        if inner is None:
            return obj
        obj = inner
    return obj


def _unpack_toolkit(obj: Mapping, path: Path) -> _Weights:
    """The weights and model spec of a checkpoint ``save_checkpoint`` wrote, with its fields checked."""
    version = obj.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= _TOOLKIT_VERSION:
        raise CheckpointError(
            f"checkpoint '{path}' has landscape format_version {version!r}, this version reads 1 to "
            f"{_TOOLKIT_VERSION}; upgrade landscape if a newer one wrote it, else the file is corrupt"
        )
    expected = {"state_dict": Mapping, "model_spec": (str, type(None)), "model_kwargs": (Mapping, type(None)),
                "step": (int, type(None))}
    for key, types in expected.items():
        if not isinstance(obj.get(key), types):
            raise CheckpointError(
                f"checkpoint '{path}' is a corrupt landscape checkpoint: field {key!r} is a "
                f"{type(obj.get(key)).__name__}; re-save it"
            )
    _check_is_state_dict(obj["state_dict"], path)
    kwargs = dict(obj.get("model_kwargs") or {})
    if not all(isinstance(k, str) for k in kwargs):
        raise CheckpointError(f"checkpoint '{path}' is a corrupt landscape checkpoint: model_kwargs has non-str keys")
    return _Weights("landscape", obj["state_dict"], None, obj.get("model_spec"), kwargs, _step_from_contents(obj))


def load_training_state(path: PathLike, *, trust: bool = False) -> dict[str, Any]:
    """Everything a toolkit checkpoint holds (weights, step, optimizer state, ``extra``), to resume training from it.

    Loaded weights-only, as ``landscape train`` writes it; ``trust`` (``--trust-checkpoint``) allows a file that
    needs the full unpickler, which can run code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    obj = _torch_load(path, trust)
    if not isinstance(obj, Mapping) or obj.get("format") != _TOOLKIT_FORMAT:
        raise CheckpointError(f"checkpoint '{path}' was not written by landscape train: it cannot resume a run")
    _unpack_toolkit(obj, path)
    return dict(obj)


def _step_from_contents(obj: Mapping) -> int | None:
    """The first of ``step``, ``global_step``, ``iteration``, ``epoch`` that holds an integer."""
    for key in _STEP_KEYS:
        value = obj.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _check_is_state_dict(obj: Any, path: Path) -> None:
    """Raise unless ``obj`` is a mapping with string keys holding at least one tensor."""
    wrappers = ", ".join(_WRAPPER_KEYS)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"checkpoint '{path}' holds a {type(obj).__name__}, expected a state dict (parameter name -> tensor), "
            f"bare or under one of the keys {wrappers}; save model.state_dict()"
        )
    if not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"checkpoint '{path}' has a state dict with non-string keys; save model.state_dict()")
    if not any(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = _listing([repr(k) for k in obj])
        raise CheckpointError(
            f"checkpoint '{path}' holds no tensors where the state dict should be (keys: {keys or 'none'}); expected "
            f"parameter name -> tensor, bare or under one of the keys {wrappers}"
        )


# ---------------------------------------------------------------------------------------------------- key matching


def _load_state_dict(model: nn.Module, state_dict: Mapping[str, Any], path: Path, spec: str,
                     fix: str | None = None) -> None:
    """Copy the checkpoint's tensors into ``model`` after checking keys, types and shapes ourselves; ``fix`` is
    what a mismatch tells the user to do (by default: check the model options)."""
    expected = model.state_dict()
    removed, state = _match_keys(state_dict, expected)
    _check_keys(state, expected, path, spec, removed, fix)
    _check_values(state, expected, path, spec, fix)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # anything our checks did not foresee (sparse, meta or quantized tensors, ...)
        raise CheckpointError(
            f"checkpoint '{path}' could not be copied into model {spec!r} ({_first_line(err)}); re-save the weights "
            "as plain tensors with model.state_dict()"
        ) from err


def _match_keys(state_dict: Mapping[str, Any], expected: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The reading of the checkpoint's keys that fits the model: as saved, or with a prefix removed.

    Prefixes come from wrappers (``module.`` from DataParallel/DDP, ``model.`` from Lightning, ``_orig_mod.`` from
    torch.compile, ...) and are only removed when that makes the keys match. Without an exact match, the reading
    that shares the most keys with the model, to report what differs. Returns what was removed and the state dict.
    """
    wanted = set(expected)
    readings = list(_key_readings(state_dict, wanted))
    exact = next((r for r in readings if set(r[1]) == wanted), None)
    return exact or max(readings, key=lambda r: len(wanted.intersection(r[1])))


def _key_readings(state_dict: Mapping[str, Any], wanted: set[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Candidate readings, most literal first: as saved, then without each prefix that turns some key into a model
    key (in order of first appearance); then the same with every ``_orig_mod.`` removed."""
    sources = [("", dict(state_dict))]
    if any("_orig_mod." in k for k in state_dict):
        sources.append(("'_orig_mod.'", {k.replace("_orig_mod.", ""): v for k, v in state_dict.items()}))
    for removed, source in sources:
        yield removed, source
        for prefix in _prefixes(source, wanted):
            label = f"{removed} and {prefix!r}" if removed else repr(prefix)
            yield label, {k[len(prefix):]: v for k, v in source.items() if k.startswith(prefix)}


def _prefixes(keys: Mapping[str, Any], wanted: set[str]) -> list[str]:
    """Every ``a.b.`` such that some key is ``a.b.<a model key>``, in order of first appearance."""
    found: dict[str, None] = {}
    for key in keys:
        for match in re.finditer(r"\.", key):
            if key[match.end():] in wanted:
                found.setdefault(key[: match.end()], None)
    return list(found)


def _check_keys(state: Mapping[str, Any], expected: Mapping[str, Any], path: Path, spec: str, removed: str,
                fix: str | None = None) -> None:
    """Raise naming the missing and unexpected keys, if any."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) {_listing([repr(k) for k in missing])}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) {_listing([repr(k) for k in unexpected])}")
    reading = f" (reading its keys without the prefix {removed})" if removed else ""
    fix = fix or f"check that {_model()} and {option('model_kwargs')} build the architecture that was trained"
    raise CheckpointError(f"checkpoint '{path}' does not fit model {spec!r}{reading}: {' and '.join(parts)}; {fix}")


def _check_values(state: Mapping[str, Any], expected: Mapping[str, Any], path: Path, spec: str,
                  fix: str | None = None) -> None:
    """Raise naming the entries that are not tensors, or whose shape differs from the model's."""
    not_tensors = [f"{k!r} ({type(state[k]).__name__})" for k, v in expected.items()
                   if isinstance(v, torch.Tensor) and not isinstance(state[k], torch.Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"checkpoint '{path}' has {len(not_tensors)} state dict entries that should be tensors but are not: "
            f"{_listing(not_tensors)}; the file is malformed, re-save it with model.state_dict()"
        )
    mismatched = [f"{k!r}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
                  if isinstance(v, torch.Tensor) and state[k].shape != v.shape]
    if mismatched:
        raise CheckpointError(
            f"checkpoint '{path}' does not fit model {spec!r}: {len(mismatched)} shape mismatch(es) "
            f"{_listing(mismatched)}; {fix or 'check ' + option('model_kwargs') + ' (e.g. layer sizes)'}"
        )


# ---------------------------------------------------------------------------------------------------------- saving


def save_checkpoint(
    path: PathLike,
    model: nn.Module,
    *,
    step: int | None = None,
    model_spec: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    optimizer_state: dict | None = None,
    extra: Mapping[str, Any] | None = None,
) -> CheckpointInfo:
    """Write the toolkit's own checkpoint: a plain dict that a weights-only ``torch.load`` reads without trust.

    It carries ``model_spec`` and ``model_kwargs``, so loading it needs no ``--model``. The file is written to a
    temporary name in the same folder, synced and renamed, so a crash never leaves a half-written checkpoint.
    """
    path = Path(path)
    if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
        raise OptionError(f"step must be an int or None, got {step!r}; pass the training step as an integer")
    if model_spec is not None and not isinstance(model_spec, str):
        raise OptionError(f"model_spec must be a string such as 'mlp' or 'pkg.mod:factory', got {model_spec!r}")
    payload = {
        "format": _TOOLKIT_FORMAT,
        "format_version": _TOOLKIT_VERSION,
        "step": step,
        "model_spec": model_spec,
        "model_kwargs": dict(model_kwargs or {}),
        "state_dict": model.state_dict(),
        "optimizer": optimizer_state,
        "extra": dict(extra or {}),
    }
    for key, value in payload.items():
        _check_saveable(value, key, path)
    _write_atomically(path, payload)
    return _info(path, "landscape", step)


def _check_saveable(value: Any, where: str, path: Path) -> None:
    """Raise OptionError naming the first value a weights-only ``torch.load`` would refuse."""
    if type(value) in _SAVEABLE_CONTAINERS:
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            _check_saveable(key, f"{where} (a key)", path)
            _check_saveable(item, f"{where}[{key!r}]", path)
    elif not isinstance(value, _SAVEABLE_LEAVES):
        raise OptionError(
            f"cannot save {where} in checkpoint '{path}': a {type(value).__name__} would need code to load; store "
            "only tensors, numbers, strings, lists, tuples and dicts"
        )


def _write_atomically(path: Path, payload: dict) -> None:
    """``torch.save`` to a temporary file next to ``path`` under its lock, then rename it over ``path``
    (:func:`landscape.files.replacing`); a failed write, a full disk above all, is a CheckpointError saying that the
    previous file is unchanged."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"cannot write checkpoint '{path}': cannot create its folder ({err.strerror or err})") \
            from err
    with replacing(path, error=CheckpointError, what=f"checkpoint '{path}'") as tmp:
        with open(tmp, "wb") as f:
            torch.save(payload, f)


# ---------------------------------------------------------------------------------------------------------- helpers


def _info(path: Path, fmt: str, step: int | None, tensors: Iterable[Any] = ()) -> CheckpointInfo:
    """Provenance of a checkpoint file (of a save_pretrained folder: its weight files); the step falls back to the
    last integer in the file name, the saved precision is that of the floating-point ``tensors`` it holds."""
    name = _short_name(path)
    step = step if step is not None else _step_from_name(name)
    size = sum(f.stat().st_size for f in hf.weight_files(path)) if path.is_dir() else path.stat().st_size
    return CheckpointInfo(str(path.absolute()), name, fmt, size, file_sha256(path), step, _saved_dtype(tensors))


def _saved_dtype(tensors: Iterable[Any]) -> str | None:
    """The floating-point precisions among ``tensors``, joined by "+" (None without any)."""
    names = {dtype_name(t.dtype) for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()}
    return "+".join(sorted(names)) or None


def file_sha256(path: Path) -> str:
    """The sha256 of a checkpoint file, or of a save_pretrained folder's weight files (:func:`hf.folder_sha256`)."""
    if path.is_dir():
        return hf.folder_sha256(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _corrupt(path: Path, kind: str, err: BaseException) -> CheckpointError:
    """The error for a file its loader could not parse."""
    return CheckpointError(
        f"checkpoint '{path}' could not be read as a {kind} file ({type(err).__name__}: {_first_line(err)}); "
        "it is truncated or corrupt, re-save or re-download it"
    )


def _first_line(err: BaseException) -> str:
    """A short one-line reason from an exception, skipping torch's weights-only preamble."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    line = text.strip().splitlines()[0] if text.strip() else "no details"
    return line if len(line) <= 160 else line[:157] + "..."


def _listing(items: Sequence[str]) -> str:
    """Up to ``_MAX_LISTED`` items, comma separated, with a count of the rest."""
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")
