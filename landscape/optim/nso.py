"""Noise stability optimization (NSO; Ju, Li, Zhang, "Noise stability optimization for finding flat minima:
a Hessian-based regularization approach"): descend the noise-averaged loss E f(θ + U).

With U ~ N(0, σ²I), E f(θ + U) ≈ f(θ) + (σ²/2) tr H, so following its gradient biases training toward flat minima
(low Hessian trace). The two-point ("symmetric") estimate averages ∇f(θ + U) and ∇f(θ − U): the terms odd in U
cancel pointwise, so on a quadratic it equals ∇f exactly and in general it has far lower variance than the one-point
estimate ∇f(θ + U), while keeping the same mean.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch

from landscape.optim.base import Closure, WrappingOptimizer, check_option, require_closure


class NSO(WrappingOptimizer):
    """Noise stability optimization: a noise-averaged gradient handed to a base optimizer.

    The gradient written to ``.grad`` before the base optimizer's step is (Ju, Li, Zhang, the NSO update)

        g = λ∇f(θ) + (1 − λ)/(2k) Σ_{j≤k} [∇f(θ + Uⱼ) + ∇f(θ − Uⱼ)],   Uⱼ ~ N(0, σ²I), fresh each step,

    or, with ``two_point=False``, the one-point baseline g = λ∇f(θ) + (1 − λ)/k Σ_{j≤k} ∇f(θ + Uⱼ). Each Uⱼ is
    drawn per tensor in the parameter's dtype and device, σ taken from the parameter's group (``sigma`` may differ
    between groups; 0 means no noise for that group). ``closure`` is called once per gradient:
    ``grad_evals_per_step`` = 2k (two-point) or k, plus 1 when λ > 0. θ is restored exactly (copied back) before
    the base step.

    ``step`` returns the loss at θ when λ > 0 (it is computed then), otherwise the mean of the perturbed losses,
    which estimates E f(θ + U) rather than f(θ).
    """

    def __init__(self, params: Iterable, base_optimizer: Optional[type] = torch.optim.SGD, *, sigma: float = 0.01,
                 num_perturbations: int = 1, lam: float = 0.0, two_point: bool = True, seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, **base_kwargs) -> None:
        check_option("sigma", sigma, _is_real(sigma) and sigma >= 0, "a number >= 0")
        check_option("num_perturbations", num_perturbations,
                     isinstance(num_perturbations, int) and not isinstance(num_perturbations, bool)
                     and num_perturbations >= 1, "an integer >= 1")
        check_option("lam", lam, _is_real(lam) and 0 <= lam <= 1, "a number in [0, 1]")
        check_option("two_point", two_point, isinstance(two_point, bool), "True or False")
        super().__init__(params, {"sigma": sigma}, base_optimizer, base_kwargs, seed=seed, generator=generator)
        for group in self.param_groups:
            check_option("sigma", group["sigma"], _is_real(group["sigma"]) and group["sigma"] >= 0, "a number >= 0")
        self.num_perturbations = num_perturbations
        self.lam = float(lam)
        self.two_point = two_point
        self.grad_evals_per_step = num_perturbations * (2 if two_point else 1) + (1 if lam > 0 else 0)

    @torch.no_grad()
    def step(self, closure: Optional[Closure] = None) -> torch.Tensor:
        """One NSO step; ``closure`` (required) clears the gradients, computes the mini-batch loss and backprops."""
        closure = require_closure(closure, "NSO")
        params = [(p, group["sigma"]) for group in self.param_groups for p in group["params"]]
        clean = [p.detach().clone() for p, _ in params]
        sums: list[Optional[torch.Tensor]] = [None] * len(params)
        loss_at_theta = None
        if self.lam > 0:
            loss_at_theta = self._add_gradient(closure, params, sums, self.lam)
        signs = (1.0, -1.0) if self.two_point else (1.0,)
        weight = (1.0 - self.lam) / (self.num_perturbations * len(signs))
        perturbed_losses = []
        for _ in range(self.num_perturbations):
            noise = [self._draw(p, sigma) for p, sigma in params]
            for sign in signs:
                for (p, _), theta, u in zip(params, clean, noise):
                    p.copy_(theta).add_(u, alpha=sign)
                perturbed_losses.append(self._add_gradient(closure, params, sums, weight))
        for (p, _), theta, total in zip(params, clean, sums):
            p.copy_(theta)
            p.grad = total
        self.base_optimizer.step()
        return loss_at_theta if loss_at_theta is not None else torch.stack(perturbed_losses).mean()

    def _draw(self, p: torch.Tensor, sigma: float) -> torch.Tensor:
        """U ~ N(0, σ²I) shaped, typed and placed like ``p``, from this optimizer's generator for its device."""
        noise = torch.randn(p.shape, generator=self.generator_for(p.device), dtype=p.dtype, device=p.device)
        return noise.mul_(sigma)

    def _add_gradient(self, closure: Closure, params: list, sums: list, weight: float) -> torch.Tensor:
        """Evaluate the gradient at the current θ and add ``weight`` times it to ``sums``; return the loss."""
        loss = closure()
        self.count_grad_evals(1)
        for i, (p, _) in enumerate(params):
            if p.grad is None:  # a parameter the loss does not touch keeps grad None, as torch's optimizers expect
                continue
            if sums[i] is None:
                sums[i] = torch.zeros_like(p)
            sums[i].add_(p.grad, alpha=weight)
        return loss.detach()


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
