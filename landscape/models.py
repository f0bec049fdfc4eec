"""Small built-in models used by the demo, the tests and the docs, by name for ``--model``."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F


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


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate query, key, value and output projections."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.n_heads = n_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.o = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *lead, t, d = x.shape
        heads = [p(x).reshape(*lead, t, self.n_heads, d // self.n_heads).transpose(-3, -2)
                 for p in (self.q, self.k, self.v)]
        out = F.scaled_dot_product_attention(*heads, is_causal=True)
        return self.o(out.transpose(-3, -2).reshape(*lead, t, d))


class GPTBlock(nn.Module):
    """A pre-LayerNorm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))`` with a GELU MLP."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict(fc=nn.Linear(d_model, d_ff), act=nn.GELU(),
                                             proj=nn.Linear(d_ff, d_model)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A small GPT-style decoder-only transformer: (B, T) int64 tokens → (B, T, vocab_size) next-token logits.

    Token and learned position embeddings, ``n_layers`` pre-LayerNorm blocks of causal self-attention
    (``F.scaled_dot_product_attention``) and a GELU MLP, a final LayerNorm and an untied linear head. Weights start
    as in GPT-2 (normal, std 0.02; zero biases).
    """

    def __init__(self, vocab_size: int, seq_len: int, d_model: int, n_layers: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(GPTBlock(d_model, n_heads, d_ff) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[-1]
        if t > self.seq_len:
            raise ValueError(f"sequence of {t} tokens is longer than the model's seq_len ({self.seq_len})")
        x = self.tok_emb(tokens) + self.pos_emb(torch.arange(t, device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def gpt(vocab_size: int = 8192, seq_len: int = 256, d_model: int = 256, n_layers: int = 6, n_heads: int = 4,
        d_ff: int = 1024) -> GPT:
    """A small GPT-style language model (9.0M parameters at the defaults; ``vocab_size=11, d_model=8, n_layers=1,
    n_heads=2, d_ff=16`` gives a few hundred, for tests). ``seq_len`` is the number of learned positions."""
    return GPT(vocab_size, seq_len, d_model, n_layers, n_heads, d_ff)


BUILTIN_MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "cnn": cnn, "chebyshev": chebyshev_net,
                                                       "resnet18": resnet18, "gpt": gpt}
