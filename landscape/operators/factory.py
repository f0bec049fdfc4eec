"""The curvature matrices by name: :func:`curvature_operator` builds the Hessian, the generalized Gauss-Newton matrix,
the Fisher or the empirical Fisher of a model, a loss and data; :func:`distributed_curvature_operator` builds it on
this rank's shard of the data and wraps it in a :class:`~landscape.operators.distributed.DistributedOperator`."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from landscape.errors import OptionError, option
from landscape.operators.distributed import DistributedOperator, shard_data
from landscape.operators.ggn import FisherOperator, GGNOperator
from landscape.operators.hessian import HessianOperator
from landscape.operators.model import ModelOperator

CURVATURES = ("hessian", "ggn", "fisher", "empirical-fisher")


def check_compile(kind: str, compile: bool) -> None:
    """``--compile`` compiles the Hessian's product; the other matrices have their own closed-form paths."""
    if compile and kind != "hessian":
        raise OptionError(f"{option('compile')} applies to {option('curvature')} hessian, not {kind}")


def curvature_operator(kind: str, model: nn.Module, loss: Any, data: Any, *, params: Optional[Sequence[str]] = None,
                       dtype: Optional[torch.dtype] = None, device: Optional[str] = None,
                       seed: int = 0, compile: bool = False) -> ModelOperator:
    """The Hessian, the generalized Gauss-Newton matrix, the Fisher (labels sampled from the model, one per sample)
    or the empirical Fisher (the data's labels) of the mean loss over ``data``, as an operator (``compile``: the
    Hessian's products through ``torch.compile``)."""
    check_compile(kind, compile)
    common = dict(params=params, dtype=dtype, device=device)
    if kind == "hessian":
        return HessianOperator(model, loss, data, compile=compile, **common)
    if kind == "ggn":
        return GGNOperator(model, loss, data, **common)
    if kind == "fisher":
        return FisherOperator(model, loss, data, kind="true", seed=seed, **common)
    if kind == "empirical-fisher":
        return FisherOperator(model, loss, data, kind="empirical", **common)
    raise OptionError(f"curvature must be one of {', '.join(CURVATURES)}, got {kind!r}")


def distributed_curvature_operator(kind: str, model: nn.Module, loss: Any, data: Any, *, group: Any = None,
                                   sharded: bool = False, params: Optional[Sequence[str]] = None,
                                   dtype: Optional[torch.dtype] = None, device: Optional[str] = None,
                                   seed: int = 0, compile: bool = False) -> DistributedOperator:
    """:func:`curvature_operator` of this rank's shard of ``data``, wrapped in a :class:`DistributedOperator` over
    ``group`` (the default process group when None). ``data`` is the whole data set (the same on every rank) unless
    ``sharded``. Collective: call on every rank of ``group`` alike."""
    check_compile(kind, compile)  # before the data is split, as in one process
    local = data if sharded else shard_data(data, group=group)
    op = curvature_operator(kind, model, loss, local, params=params, dtype=dtype, device=device, seed=seed,
                            compile=compile)
    return DistributedOperator(op, group=group)
