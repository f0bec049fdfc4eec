"""Which torch device a ``--device`` value names, checked against the devices this machine has; the precision
computed in by default and the name a dtype is recorded under."""

from __future__ import annotations

import os
from typing import Optional

import torch

from landscape.errors import OptionError
from landscape.errors import option as option_name

#: device types with a ``torch.<type>`` module that says whether (and how many of) them exist
ACCELERATORS = ("cuda", "xpu", "mps")


def _count(kind: str) -> int:
    """How many devices of an accelerator type this machine (and this build of torch) offers."""
    module = getattr(torch, kind, None)
    if module is None or not module.is_available():
        return 0
    return module.device_count()


def _available() -> str:
    """The devices that exist here, for messages: ``cpu`` and, e.g., ``cuda:0 … cuda:1``."""
    names = ["cpu"]
    for kind in ACCELERATORS:
        count = _count(kind)
        if count == 1:
            names.append(f"{kind} ({kind}:0)")
        elif count > 1:
            names.append(f"{kind}:0 … {kind}:{count - 1}")
    return ", ".join(names)


def check_device(device: Optional[str], option: Optional[str] = None) -> Optional[str]:
    """``device`` unchanged when this machine has it (None, the default CPU, too); else an :class:`OptionError`
    that names ``option`` (default ``device``, ``--device`` in the CLI), what was given and what exists."""
    if device is None:
        return None
    option = option or option_name("device")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise OptionError(f"{option} {device!r} is not a torch device; this machine has {_available()}") from None
    if parsed.type == "cpu":
        return device
    if parsed.type not in ACCELERATORS:
        raise OptionError(f"{option} {device!r}: {parsed.type} devices are not supported; this machine has "
                          f"{_available()}")
    count = _count(parsed.type)
    if count == 0:
        raise OptionError(f"{option} {device!r}: no {parsed.type.upper()} device is available on this machine; "
                          f"use {option} cpu")
    if parsed.index is not None and parsed.index >= count:
        raise OptionError(f"{option} {device!r}: there is no such device; this machine has {_available()}")
    return device


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision products are computed in when none is asked for: the model's own, except that half
    precision (a checkpoint saved in bfloat16 or float16) is computed in float32, since Lanczos and the trace
    estimators lose every digit beyond the third in it."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def dtype_name(dtype: torch.dtype) -> str:
    """The name a dtype is recorded under in results and provenance: ``torch.float32`` → ``"float32"``."""
    return str(dtype).replace("torch.", "")


def memory_bytes(device: Optional[str] = None) -> int:
    """The memory that vectors on ``device`` live in: a CUDA device's total memory, else the machine's physical
    memory (0 when it cannot be told)."""
    if device is not None and torch.device(device).type == "cuda":
        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0
