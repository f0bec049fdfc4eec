"""Importable data and loss callables for the ``package.module:function`` specs in test_data.py and test_losses.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

NUM_SAMPLES = 30
NOT_CALLABLE = 3


class Pairs(Dataset):
    """``size`` items ``(x, y)``: x float32 (4,) = [i, i+1, i+2, i+3] / 10, y = i mod 3."""

    def __init__(self, size: int = NUM_SAMPLES) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not 0 <= i < self.size:
            raise IndexError(i)
        return torch.arange(i, i + 4, dtype=torch.float32) / 10, i % 3


class Stream(IterableDataset):
    def __iter__(self):
        return iter([(torch.zeros(4), 0)])


class Dicts(Pairs):
    def __getitem__(self, i: int) -> dict:
        return {"x": torch.zeros(4), "y": 0}


def make_dataset() -> Pairs:
    return Pairs()


def make_empty_dataset() -> Pairs:
    return Pairs(0)


def make_loader() -> DataLoader:
    return DataLoader(Pairs(), batch_size=8)


def make_empty_loader() -> DataLoader:
    return DataLoader(Pairs(0), batch_size=8)


def make_stream() -> Stream:
    return Stream()


def make_dicts() -> Dicts:
    return Dicts()


def make_number() -> int:
    return 3


def cross_entropy_model_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``F.cross_entropy(model(X), y)`` written as a model loss."""
    X, y = batch
    return F.cross_entropy(model(X), y)
