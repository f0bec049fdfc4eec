"""Average-case sharpness: E L(θ+δ) − L(θ) for Gaussian δ, by Monte Carlo with antithetic pairs.

δ ~ N(0, ρ²I) for the plain measure; δ = ρ |θ| ⊙ z with z ~ N(0, I), that is N(0, ρ² diag(θ²)), for the adaptive one
(Andriushchenko et al. 2023), which rescaling a ReLU network's layers leaves unchanged. Each draw z is used as +δ and
−δ: the pair's mean increase [L(θ+δ) + L(θ−δ)]/2 − L(θ) has the same expectation (δ is symmetric), and the odd terms
of the Taylor series (the gradient's among them, when θ is not an exact minimum) cancel, which leaves ½δᵀHδ on a
quadratic: the mean is then ρ² tr(H)/2 exactly in expectation, with the standard error of the pairs' mean.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from landscape.flatness.objective import DataLoss, gaussian


def average_case(objective: DataLoss, rho: float, *, adaptive: bool, samples: int, generator: torch.Generator,
                 tick: Optional[Callable[[], None]] = None) -> tuple[float, list[float]]:
    """L(θ) and the increase of each of ``samples`` antithetic draws; ``tick()`` is called after each draw."""
    theta = objective.theta
    scale = theta.abs() if adaptive else torch.ones_like(theta)
    base = objective.value(theta)
    increases = []
    for _ in range(samples):
        delta = rho * scale * gaussian(theta, generator)
        pair = objective.values(torch.stack([theta + delta, theta - delta]))  # both in one pass over the data
        increases.append(float(pair.mean()) - base)
        if tick:
            tick()
    return base, increases
