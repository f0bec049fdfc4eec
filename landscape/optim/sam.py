"""Sharpness-aware minimization (SAM; Foret, Kleiner, Mobahi, Neyshabur, "Sharpness-Aware Minimization for
Efficiently Improving Generalization", ICLR 2021) and its scale-invariant variant ASAM (Kwon, Kim, Park, Choi,
"ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning of Deep Neural Networks", ICML 2021).

SAM minimizes max_{‖ε‖≤ρ} f(θ + ε): it moves to the first-order worst case θ + ε̂ and takes the base optimizer's step
from θ with the gradient measured there. On f = ½ xᵀ diag(λ) x with ηλ₁ < 2, full-batch SAM with SGD settles on the
2-cycle ±x* e₁, x* = ηρλ₁/(2 − ηλ₁) (Bartlett, Long, Bousquet 2023); on other losses the bouncing drifts toward lower
λmax.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterable, Iterator, Optional

import torch
from torch import nn

from landscape.errors import LandscapeError, OptionError
from landscape.optim.base import Closure, WrappingOptimizer, check_option, require_closure

_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


@contextlib.contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[None]:
    """Leave the running statistics of ``model``'s normalization layers (BatchNorm, InstanceNorm with
    ``track_running_stats``) as they were before the block: they are copied and written back afterwards.

    SAM's second pass runs at the perturbed point θ + ε; its batch statistics should not enter the running averages
    used at evaluation time, so they are updated by the first pass (at θ) only. Nothing in the forward pass changes:
    train-mode normalization uses the batch statistics either way, and no module attribute is touched (so
    ``torch.compile`` does not recompile).
    """
    saved = [(buf, buf.clone()) for module in model.modules() for name, buf in module.named_buffers(recurse=False)
             if name in _RUNNING_STATS]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)


class SAM(WrappingOptimizer):
    """Sharpness-aware minimization around a base optimizer; ASAM with ``adaptive=True``.

    Each step perturbs θ by (Foret et al., eq. 2; Kwon et al., eq. 8 with T_θ = |θ| elementwise)

        SAM:  ε = ρ g / ‖g‖,        ASAM:  ε = ρ T² g / ‖T g‖,    g = ∇f(θ),

    the norm taken over all parameters of all groups (``‖·‖ + eps`` guards a zero gradient) and ρ (``rho``, also
    ``adaptive``) taken per group; then it evaluates the gradient at θ + ε, restores θ exactly (copied back) and
    hands that gradient to the base optimizer (``base_optimizer`` built with ``base_kwargs``; SGD by default).
    ``rho=0`` is the base optimizer itself. SAM draws no random numbers; ``seed`` is kept for uniformity only.

    Full step with a closure (``grad_evals_per_step`` = 2); ``model=`` keeps BatchNorm running statistics from the
    second pass (see :func:`frozen_running_stats`); returns the loss at θ::

        def closure():
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss
        loss = optimizer.step(closure, model=model)

    Mixed precision with ``torch.amp.GradScaler``: ε does not depend on the scale of g, so :meth:`first_step` uses
    the scaled gradient as it is, and ``scaler.step(optimizer)`` performs :meth:`second_step` (restore θ, unscale,
    base step)::

        for x, y in loader:
            with torch.autocast("cuda", dtype=torch.float16):
                loss = loss_fn(model(x), y)
            scaler.scale(loss).backward()
            optimizer.first_step(zero_grad=True)               # θ → θ + ε
            with torch.autocast("cuda", dtype=torch.float16), frozen_running_stats(model):
                scaler.scale(loss_fn(model(x), y)).backward()
            scaler.step(optimizer)                             # θ restored; base step unless inf/nan
            scaler.update()
            optimizer.zero_grad()

    When the second gradient has an inf/nan, θ is restored, the base step is skipped and ``scaler.update()`` lowers
    the scale (GradScaler hands this optimizer its scale and inf flag: ``_step_supports_amp_scaling``). When the
    first has one, θ is not perturbed, so the second pass repeats the overflow at θ and the same happens.
    ``scaler.unscale_(optimizer)`` (to clip gradients) goes between the second backward and ``scaler.step``, never
    before :meth:`first_step`.
    """

    grad_evals_per_step = 2
    _step_supports_amp_scaling = True  # GradScaler.step then always calls step(), with grad_scale and found_inf set

    def __init__(self, params: Iterable, base_optimizer: Optional[type] = torch.optim.SGD, *, rho: float = 0.05,
                 adaptive: bool = False, eps: float = 1e-12, seed: Optional[int] = None, **base_kwargs) -> None:
        _check_rho(rho)
        _check_adaptive(adaptive)
        check_option("eps", eps, _is_real(eps) and eps >= 0, "a number >= 0")
        super().__init__(params, {"rho": rho, "adaptive": adaptive}, base_optimizer, base_kwargs, seed=seed)
        for group in self.param_groups:
            _check_rho(group["rho"])
            _check_adaptive(group["adaptive"])
        self.eps = float(eps)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """θ ← θ + ε from the gradients in ``.grad`` (scaled or not), keeping θ to restore; parameters without a
        gradient stay put. A gradient with an inf/nan gives ε = 0."""
        if self.state:
            raise LandscapeError("first_step was called twice: second_step (or step(), or scaler.step) restores θ "
                                 "between them")
        params = [(p, group) for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            raise LandscapeError("first_step found no gradients: call backward() on the loss first")
        directions = [p.abs() * p.grad if group["adaptive"] else p.grad for p, group in params]
        norm = _global_norm(directions)
        finite = torch.isfinite(norm)
        inv_norm = torch.where(finite, 1.0 / (norm + self.eps), 0.0)
        for (p, group), direction in zip(params, directions):
            factor = (inv_norm * group["rho"]).to(p.device, p.dtype)
            e_w = (p.abs() * direction if group["adaptive"] else direction) * factor
            self.state[p]["theta"] = p.detach().clone()
            p.add_(torch.where(finite.to(p.device), e_w, 0.0))
        self.count_grad_evals(1)
        if zero_grad:
            self.zero_grad()

    def second_step(self, zero_grad: bool = False) -> None:
        """Restore θ, then the base optimizer's step with the gradient in ``.grad`` (computed at θ + ε)."""
        self._finish(grad_scale=None, found_inf=None)
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Optional[Closure] = None, *, model: Optional[nn.Module] = None) -> Optional[torch.Tensor]:
        """A full SAM step with ``closure`` (see the class docstring), returning the loss at θ; without a closure,
        :meth:`second_step` (what ``GradScaler.step`` calls). ``model``: keep its BatchNorm running statistics from
        the second pass."""
        if closure is None:
            self._finish(getattr(self, "grad_scale", None), getattr(self, "found_inf", None))
            return None
        closure = require_closure(closure, "SAM")
        loss = closure()
        self.first_step()
        with frozen_running_stats(model) if model is not None else contextlib.nullcontext():
            closure()
        self.second_step()
        return loss

    @torch.no_grad()
    def _finish(self, grad_scale: Optional[torch.Tensor], found_inf: Optional[torch.Tensor]) -> None:
        """Restore θ; unless ``found_inf`` (GradScaler's flag) is set, unscale by ``grad_scale`` and take the base
        step."""
        if not self.state:
            raise OptionError("SAM.step needs a closure, or first_step() before it (the GradScaler loop)")
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state:
                    p.copy_(self.state.pop(p)["theta"])
        self.count_grad_evals(1)
        if found_inf is not None and found_inf.item():
            return
        if grad_scale is not None:
            _unscale(self.param_groups, grad_scale)
        self.base_optimizer.step()


def _global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """‖(t₁, …, t_k)‖₂ on the first tensor's device, accumulated in at least float32 (half-precision squares of
    scaled gradients overflow)."""
    norms = [torch.linalg.vector_norm(t, dtype=torch.promote_types(t.dtype, torch.float32)) for t in tensors]
    dtype = functools.reduce(torch.promote_types, [n.dtype for n in norms])
    return torch.linalg.vector_norm(torch.stack([n.to(tensors[0].device, dtype) for n in norms]))


def _unscale(param_groups: list[dict], grad_scale: torch.Tensor) -> None:
    """Divide every gradient by GradScaler's scale, as ``GradScaler.unscale_`` does (multiplying by 1/scale)."""
    inv_scale = grad_scale.double().reciprocal().float()
    for group in param_groups:
        for p in group["params"]:
            if p.grad is not None:
                p.grad.mul_(inv_scale.to(p.grad.device))


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _check_rho(rho: object) -> None:
    check_option("rho", rho, _is_real(rho) and 0 <= rho < float("inf"), "a finite number >= 0")


def _check_adaptive(adaptive: object) -> None:
    check_option("adaptive", adaptive, isinstance(adaptive, bool), "True or False")
