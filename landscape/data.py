"""Built-in datasets. For now: scikit-learn's 8×8 digits, standardized, with a fixed train/test split."""

from __future__ import annotations

import numpy as np
import torch

from landscape.errors import OptionError

SPLITS = ("train", "test", "all")


def digits(split: str = "train", *, test_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)``: X float32 (N, 64), each feature standardized over all 1797 samples; y int64 labels.

    The split is a fixed seeded permutation, so "train" and "test" never overlap and never change.
    """
    if split not in SPLITS:
        raise OptionError(f"split must be one of {SPLITS}, got {split!r}")
    from sklearn.datasets import load_digits

    raw = load_digits()
    X = raw.data.astype(np.float64)
    X = (X - X.mean(axis=0)) / np.where(X.std(axis=0) > 0, X.std(axis=0), 1.0)
    y = raw.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(round(len(y) * (1 - test_fraction)))
    index = {"train": order[:cut], "test": order[cut:], "all": np.arange(len(y))}[split]
    return torch.as_tensor(X[index], dtype=torch.float32), torch.as_tensor(y[index])
