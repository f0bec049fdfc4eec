"""Worst-case sharpness: max over ‖δ‖₂ ≤ ρ of L(θ+δ) − L(θ), by projected gradient ascent.

The perturbation is δ = s ⊙ u with ‖u‖₂ ≤ ρ: s = 1 for the plain measure (Keskar et al. 2017; Foret et al. 2021),
s = |θ| for the adaptive one (Kwon et al. 2021), whose ball stretches with each weight, so that rescaling a ReLU
network's layers (θ' = Dθ with the function unchanged) leaves every step in u, and the value, the same.

Each ascent takes normalized gradient steps in u, projected back onto the ball, starting with a step of length 2ρ
that halves whenever a step does not raise the loss (as in Auto-PGD, Croce and Hein 2020; Andriushchenko et al. 2023
use it for sharpness). The first start is SAM's: ρ along the (scaled) gradient at θ; the others are uniform on the
sphere. The value is the largest increase seen at any iterate of any start, so it is a lower bound on the true
maximum that tightens with ``steps`` and ``restarts``. On a quadratic at its minimum the iteration is a
power iteration and the value tends to ρ²λmax/2.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from landscape.flatness.objective import DataLoss, gaussian


def _on_sphere(u: torch.Tensor, rho: float) -> torch.Tensor:
    norm = u.norm()
    return u * (rho / norm) if norm > 0 else u


def _project(u: torch.Tensor, rho: float) -> torch.Tensor:
    norm = u.norm()
    return u * (rho / norm) if norm > rho else u


def worst_case(objective: DataLoss, rho: float, *, adaptive: bool, steps: int, restarts: int,
               generator: torch.Generator, tick: Optional[Callable[[], None]] = None,
               ) -> tuple[float, float, torch.Tensor, list[float]]:
    """L(θ), the largest increase L(θ+δ) − L(θ) found over ‖u‖ ≤ ρ (δ = s ⊙ u), the δ that gave it, and each
    start's best.

    ``steps`` gradient evaluations per start, ``restarts`` starts; ``tick()`` is called after each gradient."""
    theta = objective.theta
    scale = theta.abs() if adaptive else torch.ones_like(theta)
    base, gradient = objective.value_and_gradient(theta)
    best, best_delta, per_start = 0.0, torch.zeros_like(theta), []
    for start in range(restarts):
        direction = scale * gradient
        if start > 0 or not direction.norm() > 0:
            direction = gaussian(theta, generator)
        u, step, start_best = _on_sphere(direction, rho), 2.0 * rho, float("-inf")
        for step_index in range(steps):
            value, grad = objective.value_and_gradient(theta + scale * u)
            if tick:
                tick()
            increase = value - base
            if increase > start_best:
                start_best = increase
                if increase > best:
                    best, best_delta = increase, scale * u
            else:
                step /= 2
            ascent = scale * grad
            norm = ascent.norm()
            if step_index == steps - 1 or not norm > 0:
                break
            u = _project(u + ascent * (step / norm), rho)
        per_start.append(start_best)
    return base, best, best_delta, per_start
