"""Small built-in models used by the demo, the tests and the docs."""

from __future__ import annotations

from typing import Sequence

from torch import nn


def mlp(sizes: Sequence[int] = (64, 128, 128, 10), activation: str = "tanh") -> nn.Sequential:
    """A fully connected net ``Linear(sizes[0], sizes[1]) → act → … → Linear(…, sizes[-1])``."""
    acts = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(acts[activation]())
    return nn.Sequential(*layers)


def cnn(num_classes: int = 10) -> nn.Sequential:
    """The small CNN of the reference workload W2, for 1×8×8 images."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(128, num_classes),
    )
