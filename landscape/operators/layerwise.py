"""Exact Hessian-vector products for plain feed-forward nets, written out layer by layer (Pearlmutter's R-op).

For an ``nn.Sequential`` of Linear layers and elementwise activations under cross-entropy or mean squared error,
the forward pass, the gradient and every activation derivative are computed once per batch and cached. Each tangent
column is then pushed forward and back with plain matrix products written into preallocated buffers: no autograd
graph, no vmap, no fresh allocation per product (on CPU, page faults on fresh large tensors cost as much as the
arithmetic). Measured on CPU: 1.2-1.4x a gradient on the digits MLP against 1.7-2.2x for the reused autograd graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F

ELEMENTWISE = (nn.Tanh, nn.Sigmoid, nn.ReLU, nn.LeakyReLU)
PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Flatten)


def leaf_layers(model: nn.Module) -> Optional[list[tuple[str, nn.Module]]]:
    """The (name prefix, module) chain of a plain (possibly nested) ``nn.Sequential``, or None if unsupported."""
    if type(model) is not nn.Sequential:
        return None
    chain: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if type(child) is nn.Sequential:
            inner = leaf_layers(child)
            if inner is None:
                return None
            chain.extend((f"{name}.{sub}", m) for sub, m in inner)
        elif isinstance(child, (nn.Linear, *ELEMENTWISE, *PASS_THROUGH)) and type(child) in (
            nn.Linear, *ELEMENTWISE, *PASS_THROUGH
        ):
            chain.append((name, child))
        else:
            return None
    return chain


def loss_kind(loss: Callable) -> Optional[str]:
    """'cross_entropy' or 'mse' when ``loss`` is the plain mean-reduced functional or module, else None."""
    if loss is F.cross_entropy:
        return "cross_entropy"
    if loss is F.mse_loss:
        return "mse"
    if type(loss) is nn.CrossEntropyLoss and loss.reduction == "mean" and loss.weight is None \
            and loss.label_smoothing == 0.0:
        return "cross_entropy"
    if type(loss) is nn.MSELoss and loss.reduction == "mean":
        return "mse"
    return None


def supports(model: nn.Module, loss: Callable) -> bool:
    """Whether the layerwise path computes this model's and loss's Hessian exactly."""
    chain = leaf_layers(model)
    return chain is not None and loss_kind(loss) is not None and any(isinstance(m, nn.Linear) for _, m in chain)


@dataclass
class _Linear:
    weight_name: str
    bias_name: Optional[str]
    weight: torch.Tensor
    a: torch.Tensor  # input activations (B, d_in)
    delta: torch.Tensor = None  # gradient of the loss w.r.t. the output (B, d_out)


@dataclass
class _Elementwise:
    d1: torch.Tensor  # σ'(z)
    d2: Optional[torch.Tensor]  # σ''(z), None where it vanishes (ReLU)
    d2_delta: Optional[torch.Tensor] = None  # σ''(z) ⊙ ∂loss/∂a, the curvature of the activation


def _derivatives(module: nn.Module, z: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    if isinstance(module, nn.Tanh):
        d1 = 1 - a * a
        return d1, -2 * a * d1
    if isinstance(module, nn.Sigmoid):
        d1 = a * (1 - a)
        return d1, d1 * (1 - 2 * a)
    if isinstance(module, nn.ReLU):
        return (z > 0).to(z.dtype), None
    slope = module.negative_slope  # LeakyReLU
    return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, slope)), None


class Unsupported(Exception):
    """This batch does not fit the layerwise path (e.g. class probabilities as targets); use autograd instead."""


class LayerwiseHVP:
    """Cached forward/backward quantities of one batch; :meth:`product_into` writes H v for one column.

    ``state`` maps every parameter name to its tensor (already on the operator's device and dtype); ``selected``
    are the names the Hessian is taken with respect to. Layers before the first Linear only transform the inputs.
    """

    def __init__(self, model: nn.Module, loss: Callable, state: dict[str, torch.Tensor], selected: list[str],
                 batch: Any) -> None:
        self.kind = loss_kind(loss)
        self.selected = set(selected)
        a, targets = batch[0], batch[1]
        self.layers: list[Any] = []
        for name, module in leaf_layers(model):
            if isinstance(module, nn.Linear):
                if a.ndim != 2:
                    raise Unsupported(f"Linear layer {name} receives a {a.ndim}-D input")
                bias = f"{name}.bias" if module.bias is not None else None
                layer = _Linear(f"{name}.weight", bias, state[f"{name}.weight"], a)
                self.layers.append(layer)
                a = F.linear(a, layer.weight, state[bias] if bias else None)
            elif isinstance(module, ELEMENTWISE) and self.layers:
                out = module(a)
                self.layers.append(_Elementwise(*_derivatives(module, a, out)))
                a = out
            else:  # Identity, Dropout (eval), Flatten, or an activation on the raw inputs
                a = module(a)
        self.output = a
        self.batch = a.shape[0]
        if self.kind == "cross_entropy":
            if a.ndim != 2 or targets.ndim != 1 or targets.is_floating_point():
                raise Unsupported("cross-entropy with class-index targets and (batch, classes) outputs only")
            self.probs = torch.softmax(a, dim=-1)
            grad = self.probs.clone()
            grad[torch.arange(self.batch, device=a.device), targets] -= 1
            grad /= self.batch
        else:
            if targets.numel() != a.numel():
                raise Unsupported("mean squared error needs targets of the output's size")
            grad = 2 * (a - targets.reshape(a.shape)) / a.numel()
        # Backward pass: cache each Linear layer's output gradient and each activation's curvature term.
        delta = grad
        for layer in reversed(self.layers):
            if isinstance(layer, _Linear):
                layer.delta = delta
                delta = delta @ layer.weight
            else:
                if layer.d2 is not None:
                    layer.d2_delta = layer.d2 * delta
                delta = delta * layer.d1
        # Work buffers, reused by every product: the tangent activations going up and the tangent gradients down.
        self.up = [torch.empty_like(l.delta if isinstance(l, _Linear) else l.d1) for l in self.layers]
        self.down = [torch.empty_like(l.a) if isinstance(l, _Linear) else None for l in self.layers]

    def _output_curvature(self, r_out: torch.Tensor) -> torch.Tensor:
        """R(∂loss/∂output): the loss Hessian w.r.t. the network output applied to the tangent output."""
        if self.kind == "cross_entropy":
            p = self.probs
            return (p * r_out - p * (r_out * p).sum(-1, keepdim=True)) / self.batch
        return 2 * r_out / self.output.numel()

    def product_into(self, tangent: dict[str, torch.Tensor], dest: dict[str, torch.Tensor]) -> None:
        """Write H v into ``dest`` (one contiguous tensor per selected parameter) for the tangent ``{name: v}``."""
        r = None
        inputs: list[Optional[torch.Tensor]] = []  # each layer's input tangent (None below every tangent)
        for layer, buf in zip(self.layers, self.up):
            inputs.append(r)
            if isinstance(layer, _Elementwise):
                r = None if r is None else torch.mul(r, layer.d1, out=buf)
                continue
            vw = tangent.get(layer.weight_name)
            vb = tangent.get(layer.bias_name) if layer.bias_name else None
            if r is None and vw is None and vb is None:
                continue
            if r is not None:
                torch.mm(r, layer.weight.T, out=buf)
                if vw is not None:
                    buf.addmm_(layer.a, vw.T)
            elif vw is not None:
                torch.mm(layer.a, vw.T, out=buf)
            else:
                buf.zero_()
            if vb is not None:
                buf.add_(vb)
            r = buf
        rd = self._output_curvature(r)
        for depth in range(len(self.layers) - 1, -1, -1):
            layer, r_in = self.layers[depth], inputs[depth]
            if isinstance(layer, _Elementwise):
                rd.mul_(layer.d1)
                if layer.d2_delta is not None and r_in is not None:
                    rd.addcmul_(layer.d2_delta, r_in)
                continue
            if layer.weight_name in self.selected:
                gw = torch.mm(rd.T, layer.a, out=dest[layer.weight_name])
                if r_in is not None:
                    gw.addmm_(layer.delta.T, r_in)
            if layer.bias_name in self.selected:
                torch.sum(rd, dim=0, out=dest[layer.bias_name])
            if depth == 0:
                break
            lower = torch.mm(rd, layer.weight, out=self.down[depth])
            vw = tangent.get(layer.weight_name)
            if vw is not None:
                lower.addmm_(layer.delta, vw)
            rd = lower
