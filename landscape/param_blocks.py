"""The parameter blocks of a model, for per-block spectra (``--per-layer``): what each block is and what it holds.

A block is what "Why Transformers Need Adam: A Hessian Perspective" (Zhang et al. 2024) calls a parameter block: one
weight matrix with its bias. Parameters are grouped by the module that owns them (``"0"``: ``0.weight, 0.bias``),
and each block gets a kind from the module's type and name: ``embedding``; an attention's ``query``, ``key``,
``value`` and ``output`` projections; ``mlp`` (each linear layer of a feed-forward block separately, as the paper
treats each weight matrix as a block; the MLP's curvature as a whole is the sum of its layers' blocks and the
cross terms, which no block-diagonal view shows); ``norm``; ``head``; ``attention`` (a packed projection whose
query/key/value rows are interleaved per head, e.g. GPT-NeoX's ``query_key_value``, kept whole); ``other``.

Packed projections are split into query, key and value blocks that are *slices* of a parameter:
``nn.MultiheadAttention``'s ``in_proj_weight`` (3d, d) and ``in_proj_bias`` by rows, Hugging Face GPT-2's ``c_attn``
(a ``Conv1D`` with weight (d, 3d)) by columns, and a linear ``qkv``/``Wqkv``/``qkv_proj`` (3d, d) by rows. A
parameter directly on a module that also has submodules (a ViT's ``pos_embed``) is a block of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from torch import nn

KINDS = ("embedding", "query", "key", "value", "output", "attention", "mlp", "norm", "head", "other")
ROLES = ("query", "key", "value")

PACKED = {"c_attn", "qkv", "wqkv", "qkv_proj"}  # query, key, value contiguous along the output dimension
QUERY = {"q", "q_proj", "query", "q_lin", "wq", "to_q"}
KEY = {"k", "k_proj", "key", "k_lin", "wk", "to_k"}
VALUE = {"v", "v_proj", "value", "v_lin", "wv", "to_v"}
OUTPUT = {"o", "o_proj", "out_proj", "c_proj", "dense", "out_lin", "wo", "to_out", "proj", "out"}
MLP = ("mlp", "ffn", "feed_forward", "feedforward", "intermediate", "densereludense")
FEED_FORWARD = {"linear1", "linear2", "fc1", "fc2", "c_fc", "gate_proj", "up_proj", "down_proj", "w1", "w2", "w3"}
HEADS = {"head", "lm_head", "classifier", "score", "embed_out", "fc_out", "cls"}


@dataclass(frozen=True)
class Part:
    """A parameter of a block, or a slice ``[start:stop]`` of it along dimension ``dim`` (``dim`` None: whole)."""

    param: str
    dim: Optional[int] = None
    start: int = 0
    stop: int = 0

    @property
    def label(self) -> str:
        """The slice in Python's notation (``"[0:8]"``, ``"[:, 8:16]"``), empty for the whole parameter."""
        return "" if self.dim is None else "[" + ":, " * self.dim + f"{self.start}:{self.stop}]"


@dataclass(frozen=True)
class Block:
    """One parameter block: its name (a module path, ``".q"``/``".k"``/``".v"`` added for a slice of a packed
    projection), its kind (one of :data:`KINDS`), its parts and its size."""

    name: str
    kind: str
    parts: tuple[Part, ...]
    numel: int

    @property
    def params(self) -> list[str]:
        """The names of the parameters the block touches, in the model's order."""
        return [part.param for part in self.parts]

    @property
    def sliced(self) -> bool:
        """Whether some part is a slice (the block's curvature then needs the restricted operator)."""
        return any(part.dim is not None for part in self.parts)

    def attrs(self, order: int) -> dict[str, Any]:
        """The block as results-file attributes (``order``: its position in the model)."""
        return {"params": self.params, "slices": [part.label for part in self.parts], "kind": self.kind,
                "numel": self.numel, "order": order}


def model_blocks(model: nn.Module) -> list[Block]:
    """The blocks of ``model``'s trainable parameters, in ``named_parameters()`` order; together they hold every
    trainable parameter entry exactly once (a parameter shared by two modules belongs to the first)."""
    canonical = {id(p): name for name, p in model.named_parameters()}
    seen: set[str] = set()
    blocks: list[Block] = []
    modules = dict(model.named_modules())
    for path, module in modules.items():
        own = [(canonical[id(p)], p) for p in module.parameters(recurse=False)
               if p.requires_grad and canonical[id(p)] not in seen]
        if not own:
            continue
        seen.update(name for name, _ in own)
        params = dict(own)
        if isinstance(module, nn.MultiheadAttention):
            blocks += _attention_blocks(path, params)
        elif _packed_dim(path, module) is not None:
            blocks += _packed_blocks(path, module, params)
        elif next(module.children(), None) is not None:  # parameters beside submodules: each its own block
            blocks += [Block(name, _loose_kind(name), (Part(name),), p.numel()) for name, p in own]
        else:
            kind = _kind(path, module, modules)
            blocks.append(Block(path or "model", kind, tuple(Part(n) for n in params),
                                sum(p.numel() for p in params.values())))
    return blocks


def _attention_blocks(path: str, params: dict[str, nn.Parameter]) -> list[Block]:
    """``nn.MultiheadAttention``'s query, key and value blocks (its ``out_proj`` is a module of its own): rows of
    the packed ``in_proj_weight``, or the separate ``q/k/v_proj_weight``, with their rows of ``in_proj_bias`` and
    ``bias_k``/``bias_v``."""
    prefix = f"{path}." if path else ""
    blocks = []
    for i, (role, short) in enumerate(zip(ROLES, "qkv")):
        parts = []
        for name, p in params.items():
            local = name[len(prefix):]
            size = p.shape[0] // 3
            if local in ("in_proj_weight", "in_proj_bias"):
                parts.append(Part(name, 0, i * size, (i + 1) * size))
            elif local in (f"{short}_proj_weight", f"bias_{short}"):
                parts.append(Part(name))
        blocks.append(_block(f"{prefix}{short}", role, parts, params))
    return [b for b in blocks if b.parts]


def _packed_dim(path: str, module: nn.Module) -> Optional[int]:
    """The dimension of a packed query/key/value weight that holds the three (equal) projections, or None."""
    weight = getattr(module, "weight", None)
    if path.rpartition(".")[2].lower() not in PACKED or getattr(weight, "ndim", 0) != 2:
        return None
    dim = 1 if type(module).__name__ == "Conv1D" else 0  # transformers' Conv1D stores (in, out)
    return dim if weight.shape[dim] == 3 * weight.shape[1 - dim] else None  # grouped queries: unequal, kept whole


def _packed_blocks(path: str, module: nn.Module, params: dict[str, nn.Parameter]) -> list[Block]:
    dim = _packed_dim(path, module)
    size = module.weight.shape[dim] // 3
    blocks = []
    for i, (role, short) in enumerate(zip(ROLES, "qkv")):
        parts = [Part(name, dim if p.ndim == 2 else 0, i * size, (i + 1) * size) for name, p in params.items()]
        blocks.append(_block(f"{path}.{short}", role, parts, params))
    return blocks


def _block(name: str, kind: str, parts: list[Part], params: dict[str, nn.Parameter]) -> Block:
    numel = 0
    for part in parts:
        shape = params[part.param].shape
        numel += shape.numel() if part.dim is None else shape.numel() // shape[part.dim] * (part.stop - part.start)
    return Block(name, kind, tuple(parts), numel)


def _kind(path: str, module: nn.Module, modules: dict[str, nn.Module]) -> str:
    """The kind of a module's block, from its type, its name and where it sits."""
    words = [w.lower() for w in path.split(".")] if path else []
    leaf, parents = (words[-1] if words else ""), words[:-1]
    parent = modules.get(path.rpartition(".")[0])
    if isinstance(module, nn.Embedding) or "embed" in type(module).__name__.lower():
        return "embedding"
    if "norm" in type(module).__name__.lower():
        return "norm"
    if isinstance(parent, nn.MultiheadAttention):
        return "output"
    if words and words[0] in HEADS or _last_of_sequential(path, modules):
        return "head"
    if any("embed" in w for w in words):  # a patch embedding's convolution, BERT's embeddings.*
        return "embedding"
    linear = isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
    if any("attn" in w or "attention" in w for w in parents) and not any(w.startswith(MLP) for w in parents):
        for kind, names in (("query", QUERY), ("key", KEY), ("value", VALUE), ("output", OUTPUT)):
            if leaf in names:
                return kind
        return "attention" if linear else "other"
    if linear and (leaf in FEED_FORWARD or any(w.startswith(MLP) or w.isdigit() for w in parents)):
        return "mlp"  # a linear layer inside a repeated block that is not attention: the feed-forward part
    return "other"


def _last_of_sequential(path: str, modules: dict[str, nn.Module]) -> bool:
    """Whether ``path`` is the last parametrised layer of a model that is an ``nn.Sequential`` (its output)."""
    root = modules[""]
    if not isinstance(root, nn.Sequential) or "." in path or not path:
        return False
    with_params = [name for name, child in root.named_children() if next(child.parameters(), None) is not None]
    return with_params[-1] == path


def _loose_kind(name: str) -> str:
    """A parameter set directly on a container module: an embedding by its name (``pos_embed``, ``cls_token``)."""
    return "embedding" if re.search(r"emb|pos|token", name.rsplit(".", 1)[-1], re.IGNORECASE) else "other"
