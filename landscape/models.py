"""Small built-in models used by the demo, the tests and the docs, by name for ``--model``."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn


def mlp(sizes: Sequence[int] = (64, 128, 128, 10), activation: str = "tanh") -> nn.Sequential:
    """A fully connected net ``Linear(sizes[0], sizes[1]) → act → … → Linear(…, sizes[-1])``."""
    acts = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}
    if activation not in acts:
        raise ValueError(f"activation must be one of {sorted(acts)}, got {activation!r}")
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least an input and an output size, got {list(sizes)}")
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


def chebyshev_net(width: int = 100, gain: float = 1.9) -> nn.Sequential:
    """The edge-of-stability toy's net: 1 → width tanh → 1, Xavier-uniform first layer, zero bias, no output bias.

    Under the squared loss ½(f − y)² (``--loss squared``) its initial λmax on ``chebyshev`` data is ≈ 2.9, as in
    ALGORITHMS.md; under ``F.mse_loss`` (no ½) it is twice that.
    """
    net = nn.Sequential(nn.Linear(1, width), nn.Tanh(), nn.Linear(width, 1, bias=False))
    with torch.no_grad():
        nn.init.xavier_uniform_(net[0].weight, gain=gain)
        net[0].bias.zero_()
    return net


BUILTIN_MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "cnn": cnn, "chebyshev": chebyshev_net}
