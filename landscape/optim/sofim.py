"""SOFIM (Sen et al. 2024, "SOFIM: stochastic optimization using regularized Fisher information matrix"):
a natural-gradient step with the rank-one empirical Fisher of the momentum.

The Fisher is approximated by F = m̂m̂ᵀ + ρI, m̂ the bias-corrected gradient momentum, and the step solves F d = m̂.
Sherman–Morrison gives d = m̂/ρ − m̂ (m̂ᵀm̂)/(ρ(ρ + ‖m̂‖²)) = m̂/(ρ + ‖m̂‖²), so a step costs O(n) time and memory.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch

from landscape.optim.base import Closure, FlatnessOptimizer, check_option


class SOFIM(FlatnessOptimizer):
    """Second-order Fisher information method: θ ← θ − η (m̂m̂ᵀ + ρI)⁻¹ m̂ (Sen et al. 2024).

    Per step, with g the gradient: m ← βm + (1 − β)g, m̂ = m/(1 − βᵗ), d = m̂/(ρ + ‖m̂‖²), θ ← θ − ηd.

    The Fisher is taken per parameter group: m̂ is the concatenation of the bias-corrected momenta of all the
    group's parameters that have a gradient, so ‖m̂‖² sums over the group (one group, the default, means one
    Fisher over the whole model). Parameters whose ``.grad`` is None are skipped, as in torch's optimizers.
    ``lr``, ``beta`` and ``rho`` may differ between groups. State per parameter: ``momentum`` and ``step`` (t).

    ``closure`` is optional; one gradient is used per step and counted in ``num_grad_evals`` whether the closure or
    the caller computed it. Without randomness, ``seed`` only fixes the base class's seed.
    """

    grad_evals_per_step = 1

    def __init__(self, params: Iterable, lr: float = 0.01, *, beta: float = 0.9, rho: float = 1.0,
                 seed: Optional[int] = None) -> None:
        super().__init__(params, {"lr": lr, "beta": beta, "rho": rho}, seed=seed)
        for group in self.param_groups:
            _check_group(group)

    @torch.no_grad()
    def step(self, closure: Optional[Closure] = None) -> Optional[torch.Tensor]:
        """One SOFIM step; returns the closure's loss (at θ before the step) when a closure is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.count_grad_evals(1)
        for group in self.param_groups:
            self._update_group(group)
        return loss

    def _update_group(self, group: dict) -> None:
        """Update the momenta of the group's parameters and take the Sherman–Morrison step on their concatenation."""
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        lr, beta, rho = group["lr"], group["beta"], group["rho"]
        m_hats = [self._bias_corrected_momentum(p, beta) for p in params]
        device = params[0].device
        squared_norm = torch.stack([m.square().sum().to(device) for m in m_hats]).sum()
        scale = -lr / (rho + squared_norm)  # −η/(ρ + ‖m̂‖²), a 0-d tensor: no host synchronization
        for p, m_hat in zip(params, m_hats):
            p.addcmul_(m_hat, scale.to(p.device))

    def _bias_corrected_momentum(self, p: torch.Tensor, beta: float) -> torch.Tensor:
        """m ← βm + (1 − β)g in the parameter's state (t ← t + 1); return m̂ = m/(1 − βᵗ)."""
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["momentum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        momentum = state["momentum"]
        momentum.mul_(beta).add_(p.grad, alpha=1 - beta)
        return momentum / (1 - beta ** state["step"])


def _check_group(group: dict) -> None:
    lr, beta, rho = group["lr"], group["beta"], group["rho"]
    check_option("lr", lr, _is_real(lr) and lr > 0, "a number > 0")
    check_option("beta", beta, _is_real(beta) and 0 <= beta < 1, "a number in [0, 1)")
    check_option("rho", rho, _is_real(rho) and rho > 0, "a number > 0 (F = m̂m̂ᵀ + ρI must be invertible)")


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
