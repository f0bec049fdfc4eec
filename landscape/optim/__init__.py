"""Flatness-seeking optimizers, each a ``torch.optim.Optimizer``: SAM/ASAM, NSO, the random and sharpness-aware
perturbation methods of Ahn et al. (RS, SA), and SOFIM."""

from landscape.optim.base import FlatnessOptimizer, WrappingOptimizer
from landscape.optim.flat import RandomPerturbation, SharpnessAwarePerturbation
from landscape.optim.nso import NSO
from landscape.optim.sam import SAM, frozen_running_stats
from landscape.optim.sofim import SOFIM

__all__ = [
    "SAM",
    "NSO",
    "RandomPerturbation",
    "SharpnessAwarePerturbation",
    "SOFIM",
    "frozen_running_stats",
    "FlatnessOptimizer",
    "WrappingOptimizer",
]
