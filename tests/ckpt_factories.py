"""Helpers for test_checkpoints: an importable model factory and class, and writers for every checkpoint format.

Each writer saves the weights of one ``landscape.models.mlp(sizes=SIZES)`` the way some tool in the wild does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from landscape.checkpoints import save_checkpoint

SIZES = [4, 8, 3]
MLP_KWARGS = {"sizes": SIZES}


def tiny_net(width: int = 8) -> nn.Sequential:
    """A factory for ``--model ckpt_factories:tiny_net``."""
    return nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, 3))


class TinyNet(nn.Module):
    """An nn.Module subclass, for ``--model ckpt_factories:TinyNet`` and for pickling a whole model."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.body = tiny_net(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class RunConfig:
    """A plain object some training scripts pickle next to the weights (unpickling it runs this module's code)."""

    def __init__(self, lr: float = 0.1) -> None:
        self.lr = lr


def _prefixed(model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in model.state_dict().items()}


def _torch_save(build: Callable[[nn.Module], object]) -> Callable[[nn.Module, Path], None]:
    return lambda model, path: torch.save(build(model), path)


def _lightning(model: nn.Module) -> dict:
    return {
        "epoch": 2, "global_step": 40, "pytorch-lightning_version": "2.4.0", "state_dict": _prefixed(model, "model."),
        "loops": {}, "callbacks": {}, "optimizer_states": [], "lr_schedulers": [], "hyper_parameters": {"lr": 0.1},
    }


def _save_script(model: nn.Module, path: Path) -> None:
    torch.jit.save(torch.jit.script(model), str(path))


def _save_trace(model: nn.Module, path: Path) -> None:
    torch.jit.save(torch.jit.trace(model, torch.randn(2, SIZES[0])), str(path))


def _save_export(model: nn.Module, path: Path) -> None:
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (torch.randn(2, SIZES[0]),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


def _save_safetensors(model: nn.Module, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={"step": "12"})


def _save_toolkit(model: nn.Module, path: Path) -> None:
    save_checkpoint(path, model, step=7, model_spec="mlp", model_kwargs=MLP_KWARGS)


def _save_legacy(model: nn.Module, path: Path) -> None:
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=False)


# name -> (file name, writer, format load_checkpoint reports)
WRITERS: dict[str, tuple[str, Callable[[nn.Module, Path], None], str]] = {
    "bare": ("bare.pt", _torch_save(lambda m: m.state_dict()), "state_dict"),
    "legacy": ("legacy.pt", _save_legacy, "state_dict"),
    "state_dict": ("wrapped.pth", _torch_save(lambda m: {"state_dict": m.state_dict(), "lr": 0.1}), "state_dict"),
    "model": ("wrapped.pth", _torch_save(lambda m: {"model": m.state_dict(), "epoch": 3}), "state_dict"),
    "model_state_dict": (
        "wrapped.pth", _torch_save(lambda m: {"model_state_dict": m.state_dict(), "optimizer_state_dict": {}}),
        "state_dict",
    ),
    "net": ("wrapped.bin", _torch_save(lambda m: {"net": m.state_dict()}), "state_dict"),
    "module": ("wrapped.bin", _torch_save(lambda m: {"module": m.state_dict()}), "state_dict"),
    "nested": ("nested.pt", _torch_save(lambda m: {"model": {"state_dict": m.state_dict()}}), "state_dict"),
    "lightning": ("last.ckpt", _torch_save(_lightning), "lightning"),
    "ddp": ("ddp.pt", _torch_save(lambda m: _prefixed(m, "module.")), "state_dict"),
    "compile": ("compiled.pt", _torch_save(lambda m: _prefixed(m, "_orig_mod.")), "state_dict"),
    "ddp_compile": ("both.pt", _torch_save(lambda m: {"model": _prefixed(m, "module._orig_mod.")}), "state_dict"),
    "safetensors": ("model.safetensors", _save_safetensors, "safetensors"),
    "script": ("scripted.ts", _save_script, "torchscript"),
    "trace": ("traced.pt", _save_trace, "torchscript"),
    "export": ("exported.pt2", _save_export, "export"),
    "toolkit": ("toolkit.pt", _save_toolkit, "landscape"),
}
