"""Hugging Face ``save_pretrained`` folders as checkpoints (the optional extra: ``pip install "landscape[hf]"``).

A folder holding ``config.json`` and weights (``model.safetensors``, shards ``model-0000x-of-0000y.safetensors``
listed by ``model.safetensors.index.json``, or the same as ``pytorch_model*.bin``) is one checkpoint. This module
knows such a folder's files, builds the empty architecture its config describes through transformers' Auto classes,
fits the saved keys to the model's the way transformers does (tied weights, base-model prefix, keys it ignores), and
makes the model return its logits. :mod:`landscape.checkpoints` reads the weights with its own loaders and checks.

transformers is imported only here, inside functions, so everything else works without it. Nothing is ever
downloaded: files are local only and the Hub is offline while a model is built. A config naming code of its own
(``auto_map``) is built only when trusted (``trust=True``, ``--trust-checkpoint``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.errors import CheckpointError, option

__all__ = ["build_pretrained", "fit_state_dict", "folder_sha256", "is_pretrained_folder",
           "is_transformers_model", "logits_only", "weight_files"]

CONFIG = "config.json"
# (single file, index of shards) for each weight format, in the order transformers prefers them
_WEIGHTS = (("model.safetensors", "model.safetensors.index.json"), ("pytorch_model.bin", "pytorch_model.bin.index.json"))
_INSTALL = 'pip install "landscape[hf]"'
# what a loss needs of the config: no cache of keys and values (it serves generation), a ModelOutput (not a tuple)
_SETTINGS = {"use_cache": False, "return_dict": True}
_BUILD_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError, RuntimeError)


# ------------------------------------------------------------------------------------------------------- the folder


def is_pretrained_folder(path: Path) -> bool:
    """True for a folder holding ``config.json`` and a weights file or index of a known name."""
    return path.is_dir() and (path / CONFIG).is_file() and any((path / n).is_file() for pair in _WEIGHTS for n in pair)


def weight_files(folder: Path) -> list[Path]:
    """The folder's weight files, as transformers picks them: ``model.safetensors``, else the shards its index lists
    (in name order), else the same for ``pytorch_model.bin``."""
    for single, index in _WEIGHTS:
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            return _shards(folder / index)
    raise CheckpointError(f"checkpoint folder '{folder}' holds no weights ({', '.join(n for p in _WEIGHTS for n in p)})"
                          "; save the model with save_pretrained")


def _shards(index: Path) -> list[Path]:
    """The shard files an index's ``weight_map`` names, each checked to be a file beside it."""
    try:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"checkpoint index '{index}' is not a save_pretrained index (a JSON object whose "
                              f"weight_map names the shards: {type(err).__name__}); re-save the model") from err
    if not names or not all(isinstance(n, str) and n and Path(n).name == n for n in names):
        raise CheckpointError(f"checkpoint index '{index}' names no shards, or names files outside its folder; "
                              "re-save the model with save_pretrained")
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint folder '{index.parent}' lacks {len(missing)} of the {len(names)} shards "
                              f"its index lists ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); "
                              "copy every shard into the folder")
    return [index.parent / n for n in names]


def folder_sha256(folder: Path) -> str:
    """The sha256 of the folder's weight files read one after the other (:func:`weight_files` order), so that of a
    single ``model.safetensors`` is its own and ``cat model-*.safetensors | sha256sum`` gives that of shards."""
    digest = hashlib.sha256()
    for path in weight_files(folder):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# -------------------------------------------------------------------------------------------------------- the model


def build_pretrained(folder: Path, *, trust: bool = False) -> nn.Module:
    """The model ``folder/config.json`` describes, in float32 and eval mode, with freshly initialised weights.

    Built through transformers' own classes: the one the config's ``architectures`` names, else
    ``AutoModelForCausalLM``. A config with ``auto_map`` (code in the folder) is built only when ``trust`` is set.
    The attention is transformers' default (``sdpa`` where the model has it, else ``eager``): the operators run
    ``sdpa`` with its math kernel, which every derivative passes through (:mod:`landscape.operators.attention`).
    """
    auto_map = _read_config(folder).get("auto_map")
    if auto_map and not trust:
        names = ", ".join(sorted(map(str, auto_map))) if isinstance(auto_map, Mapping) else repr(auto_map)[:80]
        raise CheckpointError(
            f"refused to load checkpoint '{folder}': its config.json names code of its own (auto_map: {names}), "
            "which building the model would import and run; pass "
            f"{option('trust', '--trust-checkpoint')}, but only for folders you trust")
    elsewhere = sorted(str(ref) for ref in _references(auto_map) if "--" in str(ref))
    if elsewhere:
        raise CheckpointError(
            f"checkpoint '{folder}': its config.json's auto_map names code in another repository ({elsewhere[0]}), "
            "and landscape never downloads; copy those files into the folder and name them without 'repo--'")
    transformers = _transformers(folder)
    try:
        with _offline():
            config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True,
                                                             trust_remote_code=trust)
            for name, value in _SETTINGS.items():
                if hasattr(config, name):
                    setattr(config, name, value)
            model = _instantiate(transformers, config, trust)
    except _BUILD_ERRORS as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint '{folder}': transformers {transformers.__version__} cannot build the model its config.json "
            f"describes ({reason[:200]}); upgrade transformers, or check config.json") from err
    return model.to(torch.float32).eval()


def _read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` as a dict."""
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint folder '{folder}' has an unreadable config.json ({type(err).__name__}: "
                              f"{str(err)[:120]}); re-save the model with save_pretrained") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"checkpoint folder '{folder}' has a config.json that is not a JSON object; re-save it")
    return config


def _references(auto_map: Any) -> list[Any]:
    """Every class reference an ``auto_map`` holds (a tokenizer's entry is a list of them)."""
    if not isinstance(auto_map, Mapping):
        return []
    return [r for ref in auto_map.values() for r in (ref if isinstance(ref, (list, tuple)) else [ref]) if r]


def _transformers(folder: Path) -> Any:
    """The transformers module, or a CheckpointError saying how to install it."""
    try:
        import transformers
    except ImportError as err:
        raise CheckpointError(f"checkpoint '{folder}' is a Hugging Face folder, which needs transformers: "
                              f'{_INSTALL}') from err
    return transformers


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """The Hugging Face Hub offline (``HF_HUB_OFFLINE``) for the block: no request leaves the machine."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _instantiate(transformers: Any, config: Any, trust: bool) -> nn.Module:
    """The model of ``config``: the folder's own class (trusted ``auto_map``), else the transformers class its
    ``architectures`` names, else ``AutoModelForCausalLM``."""
    architectures = list(getattr(config, "architectures", None) or [])
    auto_map = dict(getattr(config, "auto_map", None) or {})
    if trust and auto_map:
        models = [key for key in auto_map if key.startswith("AutoModel") and hasattr(transformers, key)]
        named = [key for key in models if str(auto_map[key]).rpartition(".")[2] in architectures]
        causal = [key for key in models if key == "AutoModelForCausalLM"]
        preferred = named + causal + models
        if preferred:
            return getattr(transformers, preferred[0]).from_config(config, trust_remote_code=True)
    for name in architectures:
        cls = getattr(transformers, name, None) if isinstance(name, str) and name.isidentifier() else None
        if (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)
                and isinstance(config, cls.config_class)):
            return cls._from_config(config)
    return transformers.AutoModelForCausalLM.from_config(config)


# ------------------------------------------------------------------------------------------------------- the weights


def fit_state_dict(model: nn.Module, state: Mapping[str, Any]) -> dict[str, Any]:
    """The saved tensors named as ``model`` names them, as transformers reads them: the base model's prefix added
    when the file holds the base model alone, the keys the model class declares ignorable dropped, and the entries
    save_pretrained leaves out because they share a tensor with one it kept (a head tied to the embedding) filled.
    What still differs is for the caller's key checks to report."""
    own = model.state_dict(keep_vars=True)
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    if prefix != "." and not any(k.startswith(prefix) for k in state):
        added = {prefix + k: v for k, v in state.items()}
        state = added if len(own.keys() & added) > len(own.keys() & state) else state
    ignored = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ()]
    fitted = {k: v for k, v in state.items() if k in own or not any(p.search(k) for p in ignored)}
    aliases: dict[int, list[str]] = {}
    for name, tensor in own.items():
        aliases.setdefault(id(tensor), []).append(name)
    for names in aliases.values():
        kept = next((n for n in names if n in fitted), None)
        if kept is not None:
            for name in names:
                fitted.setdefault(name, fitted[kept])
    return fitted


def is_transformers_model(model: nn.Module) -> bool:
    """True for a model whose class comes from transformers (or derives from one of its classes)."""
    return any(cls.__module__.partition(".")[0] == "transformers" for cls in type(model).__mro__)


def logits_only(model: nn.Module) -> nn.Module:
    """Make ``model(...)`` return a tensor, the logits of the ``ModelOutput`` it returns, wherever it is called (a
    forward hook: the model and its parameter names stay transformers' own)."""
    if _logits not in model._forward_hooks.values():
        model.register_forward_hook(_logits)
    return model


def _logits(module: nn.Module, args: Any, output: Any) -> Any:
    """A forward hook: a ``ModelOutput``'s logits in place of it."""
    if isinstance(output, torch.Tensor):
        return output
    logits = output.get("logits") if isinstance(output, Mapping) else None
    if not isinstance(logits, torch.Tensor):
        raise CheckpointError(
            f"the model {type(module).__name__} returns a {type(output).__name__} without logits; landscape analyses "
            "models that output logits: save a model with a head (e.g. ...ForCausalLM)")
    return logits
