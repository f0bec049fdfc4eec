"""Random-perturbation flat-minimum methods of Ahn, Jadbabaie & Sra (2024), "How to escape sharp minima with random
perturbations" (ICML): near a stationary point they add to gradient descent a small step along the part of a
perturbed gradient orthogonal to ∇f, which drifts θ toward lower flatness tr(∇²f)/n.

Both take, per step, θ ← θ − η ∇f(θ) − η′ v when ‖∇f(θ)‖ ≤ ε0 and θ ← θ − η ∇f(θ) otherwise, with
``lr`` = η, ``perturbation_lr`` = η′, ``grad_threshold`` = ε0 (one value for the whole gradient, not per group)
and v = P⊥ ∇f(θ + perturbation), P⊥ = I − ĝĝᵀ projecting out ĝ = ∇f(θ)/‖∇f(θ)‖ (no projection when ∇f(θ) = 0):

- ``RandomPerturbation`` (RS): perturbation ρu, u uniform on the unit sphere of all n parameters;
  E_u ∇f(θ + ρu) = ∇f + (ρ²/2n) ∇tr H + O(ρ³), so the mean of v is P⊥ (ρ²/2n) ∇tr H.
- ``SharpnessAwarePerturbation`` (SA): for f = (1/N) Σ fᵢ, one sample i and a sign σ = ±1; perturbation
  σρ ∇fᵢ/‖∇fᵢ‖ and v = P⊥ ∇fᵢ(θ + σρ ∇fᵢ/‖∇fᵢ‖). Near a minimum where each Hessian ∇²fᵢ has rank one along ∇fᵢ,
  its drift along the minimum manifold is (ρ²/2) ∇tr H, n times RS's (their components normal to it differ).

``rho``, ``lr`` and ``perturbation_lr`` may differ per parameter group; each group's part of the perturbation
direction is scaled by its own ``rho`` (rho = 0 leaves that group unperturbed).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Sequence

import torch
from torch import nn
from torch.func import grad, grad_and_value, vmap

from landscape.operators.functional import loss_at
from landscape.optim.base import Closure, FlatnessOptimizer, check_option, require_closure

Tensors = list[torch.Tensor]


def _nonnegative(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _grad(p: torch.Tensor) -> torch.Tensor:
    """p.grad, or zeros for a parameter the loss does not reach."""
    return torch.zeros_like(p) if p.grad is None else p.grad


def _norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all ``tensors`` together, on the first one's device."""
    device = tensors[0].device
    return torch.stack([t.norm().to(device) for t in tensors]).norm()


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ aₖ·bₖ over all tensor pairs, on the first one's device."""
    device = a[0].device
    return torch.stack([(x * y).sum().to(device) for x, y in zip(a, b)]).sum()


def _project_out(v: Tensors, g: Tensors, g_norm: torch.Tensor) -> Tensors:
    """P⊥ v = v − (v·ĝ) ĝ with ĝ = g/‖g‖; ``v`` unchanged when g = 0."""
    inverse = torch.where(g_norm > 0, 1 / g_norm, torch.zeros_like(g_norm))
    g_hat = [y * inverse.to(y.device) for y in g]
    coef = _dot(v, g_hat)
    return [x - coef.to(x.device) * y for x, y in zip(v, g_hat)]


class _PerturbedDescent(FlatnessOptimizer):
    """What RS and SA share: the options, the threshold test and the update θ ← θ − η g − η′ v."""

    grad_evals_per_step = 2

    def __init__(self, params: Iterable, lr: float, *, perturbation_lr: float, rho: float, grad_threshold: float,
                 seed: Optional[int] = None, generator: Optional[torch.Generator] = None) -> None:
        check_option("lr", lr, _nonnegative(lr), "a number >= 0")
        check_option("perturbation_lr", perturbation_lr, _nonnegative(perturbation_lr), "a number >= 0")
        check_option("rho", rho, _nonnegative(rho), "a number >= 0")
        check_option("grad_threshold", grad_threshold, _nonnegative(grad_threshold), "a number >= 0 (or inf)")
        super().__init__(params, {"lr": lr, "perturbation_lr": perturbation_lr, "rho": rho}, seed=seed,
                         generator=generator)
        self.grad_threshold = float(grad_threshold)
        #: Whether the last ``step`` took the perturbed branch (‖∇f‖ ≤ grad_threshold).
        self.last_perturbed = False

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        check_option("grad_threshold", param_group.get("grad_threshold"), "grad_threshold" not in param_group,
                     "set once for the optimizer, not per parameter group: it bounds the norm of the whole gradient")
        for name in ("lr", "perturbation_lr", "rho"):
            if name in param_group:
                check_option(name, param_group[name], _nonnegative(param_group[name]), "a number >= 0")
        super().add_param_group(param_group)

    def _params(self) -> Tensors:
        return [p for group in self.param_groups for p in group["params"]]

    def _rhos(self) -> list[float]:
        return [group["rho"] for group in self.param_groups for _ in group["params"]]

    def _below_threshold(self, g_norm: torch.Tensor) -> bool:
        """The branch test ‖∇f(θ)‖ ≤ ε0 (the one host synchronization the algorithm needs); sets ``last_perturbed``."""
        self.last_perturbed = bool(g_norm <= self.grad_threshold)
        return self.last_perturbed

    def _descend(self, g: Tensors, v: Optional[Tensors]) -> None:
        """θ ← θ − η g, then θ ← θ − η′ v when ``v`` is given."""
        k = 0
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(g[k], alpha=-group["lr"])
                if v is not None:
                    p.add_(v[k], alpha=-group["perturbation_lr"])
                k += 1


class RandomPerturbation(_PerturbedDescent):
    """RS of Ahn, Jadbabaie & Sra (2024): gradient descent plus, once ‖∇f(θ)‖ ≤ ``grad_threshold``, a step of
    size ``perturbation_lr`` along v = P⊥ ∇f(θ + ρu), u uniform on the unit sphere of all the optimizer's parameters.

    ``step(closure)`` calls the closure (see ``landscape.optim.base``) at θ and, on the perturbed branch, once more at
    θ + ρu; θ is copied back exactly before the update. It returns the loss at θ. Afterwards ``p.grad`` holds the last
    gradient evaluated and ``last_perturbed`` tells which branch ran.
    """

    @torch.no_grad()
    def step(self, closure: Optional[Closure] = None) -> torch.Tensor:  # type: ignore[override]
        closure = require_closure(closure, type(self).__name__)
        loss = closure()
        self.count_grad_evals(1)
        params = self._params()
        g = [_grad(p).clone() for p in params]
        g_norm = _norm(g)
        v = self._perturbed_gradient(closure, params, g, g_norm) if self._below_threshold(g_norm) else None
        self._descend(g, v)
        return loss

    def _sphere(self, params: Tensors) -> Tensors:
        """u uniform on the unit sphere of all parameters: a Gaussian drawn per tensor on its device, normalized."""
        u = [torch.randn(p.shape, generator=self.generator_for(p.device), device=p.device, dtype=p.dtype)
             for p in params]
        u_norm = _norm(u)
        return [x / u_norm.to(x.device) for x in u]

    def _perturbed_gradient(self, closure: Closure, params: Tensors, g: Tensors, g_norm: torch.Tensor) -> Tensors:
        """v = P⊥ ∇f(θ + ρu) (each group's part of u scaled by its rho); θ is restored exactly."""
        saved = [p.clone() for p in params]
        for p, x, rho in zip(params, self._sphere(params), self._rhos()):
            p.add_(x, alpha=rho)
        closure()
        self.count_grad_evals(1)
        g_perturbed = [_grad(p) for p in params]
        for p, s in zip(params, saved):
            p.copy_(s)
        return _project_out(g_perturbed, g, g_norm)


class SharpnessAwarePerturbation(_PerturbedDescent):
    """SA of Ahn, Jadbabaie & Sra (2024) for the empirical risk f = (1/N) Σᵢ fᵢ of a mini-batch: gradient descent plus,
    once ‖∇f(θ)‖ ≤ ``grad_threshold``, a step of size ``perturbation_lr`` along v = P⊥ ∇fᵢ(θ + σρ ∇fᵢ/‖∇fᵢ‖) for one
    sample i and sign σ = ±1 drawn uniformly.

    It needs per-sample gradients, so it takes the ``model`` (whose parameters must be exactly the optimizer's) and
    ``per_sample_loss(output, target)``, called on a batch of one (output of shape (1, ...), target of shape (1, ...));
    any mean-reduced batch loss such as ``torch.nn.functional.cross_entropy`` works, and fᵢ is that loss on sample i.
    A :class:`~landscape.operators.functional.ModelLoss` ``fn(model, batch)`` is called on the batch of one instead.

    ``step((inputs, targets))`` computes all N per-sample gradients at once with ``torch.func.vmap`` (one gradient
    evaluation, memory N × n) and ∇f as their mean; on the perturbed branch one more single-sample gradient at the
    perturbed point, evaluated functionally so θ is never changed in place. It returns the mean loss at θ and leaves
    ``p.grad`` untouched.

    The model runs in its current mode. In eval mode everything is deterministic. In train mode, dropout draws one
    mask per sample from torch's global generator (vmap ``randomness="different"``), which ``seed`` does not control,
    and BatchNorm fails: a batch of one has no batch statistics; use ``model.eval()`` or a per-sample normalization.
    """

    def __init__(self, params: Iterable, lr: float, *, perturbation_lr: float, rho: float, grad_threshold: float,
                 model: nn.Module, per_sample_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 seed: Optional[int] = None, generator: Optional[torch.Generator] = None) -> None:
        super().__init__(params, lr, perturbation_lr=perturbation_lr, rho=rho, grad_threshold=grad_threshold,
                         seed=seed, generator=generator)
        check_option("model", model, isinstance(model, nn.Module), "a torch.nn.Module")
        check_option("per_sample_loss", per_sample_loss, callable(per_sample_loss), "a function (output, target)")
        self.model = model
        self.per_sample_loss = per_sample_loss
        self._param_names()

    def _param_names(self) -> list[str]:
        """The model's name of each parameter, in optimizer order; an error unless they are exactly the model's."""
        names = {id(p): name for name, p in self.model.named_parameters()}
        mine = {id(p) for p in self._params()}
        missing = sorted(names[k] for k in set(names) - mine)
        check_option("params", f"{len(mine)} tensors", mine == set(names),
                     f"exactly model.parameters() ({len(names)} tensors"
                     + (f"; missing {missing})" if missing else ")")
                     + ": SA evaluates per-sample gradients of the whole model")
        return [names[id(p)] for p in self._params()]

    def _batch_loss(self, params: dict[str, torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return loss_at(self.model, self.per_sample_loss, params, (inputs, targets))

    def _sample_loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._batch_loss(params, x.unsqueeze(0), y.unsqueeze(0))

    def per_sample_gradients(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[Tensors, torch.Tensor]:
        """(∇fᵢ(θ) for every i, one tensor (N, *p.shape) per parameter in optimizer order; the losses fᵢ(θ), (N,))."""
        names = self._param_names()
        params = {name: p.detach() for name, p in zip(names, self._params())}
        grads, losses = vmap(grad_and_value(self._sample_loss), in_dims=(None, 0, 0),
                             randomness="different")(params, inputs, targets)
        return [grads[name] for name in names], losses

    @torch.no_grad()
    def step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        check_option("batch", type(batch).__name__, isinstance(batch, (tuple, list)) and len(batch) == 2,
                     "the mini-batch (inputs, targets): SA computes per-sample gradients itself and takes no closure")
        inputs, targets = batch
        per_sample, losses = self.per_sample_gradients(inputs, targets)
        self.count_grad_evals(1)
        g = [x.mean(0) for x in per_sample]
        g_norm = _norm(g)
        v = self._perturbed_gradient(per_sample, inputs, targets, g, g_norm) if self._below_threshold(g_norm) else None
        self._descend(g, v)
        return losses.mean()

    def _perturbed_gradient(self, per_sample: Tensors, inputs: torch.Tensor, targets: torch.Tensor, g: Tensors,
                            g_norm: torch.Tensor) -> Tensors:
        """v = P⊥ ∇fᵢ(θ + σρ ∇fᵢ/‖∇fᵢ‖) (each group's part scaled by its rho) for a drawn sample i and sign σ."""
        gen = self.generator_for(inputs.device)
        i = torch.randint(inputs.shape[0], (1,), generator=gen, device=inputs.device)
        sign = torch.randint(2, (), generator=gen, device=inputs.device) * 2 - 1
        g_i = [x.index_select(0, i.to(x.device)).squeeze(0) for x in per_sample]
        g_i_norm = _norm(g_i)
        scale = sign.to(g_i_norm.device) / g_i_norm.clamp_min(torch.finfo(g_i_norm.dtype).tiny)  # g_i = 0: no move
        names = self._param_names()
        perturbed = {name: p + (rho * scale.to(p.device)) * x
                     for name, p, x, rho in zip(names, self._params(), g_i, self._rhos())}
        g_perturbed = grad(self._batch_loss)(perturbed, inputs.index_select(0, i),
                                             targets.index_select(0, i.to(targets.device)))
        self.count_grad_evals(1)
        return _project_out([g_perturbed[name] for name in names], g, g_norm)
