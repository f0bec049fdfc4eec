"""Flatness-seeking optimizers, each a ``torch.optim.Optimizer``."""

from landscape.optim.base import FlatnessOptimizer, WrappingOptimizer

__all__ = ["FlatnessOptimizer", "WrappingOptimizer"]
