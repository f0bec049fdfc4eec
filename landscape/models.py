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


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with batch normalisation and a shortcut (a 1×1 convolution when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18(num_classes: int = 10, width: int = 64, in_channels: int = 3) -> nn.Sequential:
    """ResNet-18 for 32×32 images (CIFAR layout: a 3×3 stem, no max-pool; 11.2M parameters at width 64), the
    realistic-size workload of ``scripts/bench_engine.py --only resnet``."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    cin = width
    for stage, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
        for block in range(2):
            layers.append(BasicBlock(cin, cout, 2 if stage > 0 and block == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


BUILTIN_MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "cnn": cnn, "chebyshev": chebyshev_net,
                                                       "resnet18": resnet18}
