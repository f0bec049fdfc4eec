"""Optimizers by name, with their hyperparameters, and one training step that drives every kind of optimizer.

The training loop, the comparison script and the command line all build optimizers here, so each name means the
same optimizer and the same defaults everywhere.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from landscape.errors import OptionError, option
from landscape.operators.functional import training_loss
from landscape.optim.base import FlatnessOptimizer
from landscape.optim.flat import RandomPerturbation, SharpnessAwarePerturbation
from landscape.optim.nso import NSO
from landscape.optim.sam import SAM
from landscape.optim.sofim import SOFIM


def not_data_parallel() -> str:
    """Why ``sa`` cannot train data-parallel (its per-sample gradients never pass through ``.grad``)."""
    return (f"{option('optimizer')} sa computes per-sample gradients itself and cannot average them across "
            "processes; run it in one process")


#: Each name's hyperparameters (besides ``lr``) and their defaults.
HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "sgd": {},
    "momentum": {"momentum": 0.9},
    "adam": {},
    "sam": {"rho": 0.05, "adaptive": False, "momentum": 0.0},
    "nso": {"sigma": 0.01, "num_perturbations": 1, "lam": 0.0, "momentum": 0.0},
    "rs": {"perturbation_lr": None, "rho": 0.5, "grad_threshold": float("inf")},
    "sa": {"perturbation_lr": None, "rho": 0.05, "grad_threshold": float("inf")},
    "sofim": {"beta": 0.9, "rho": 1.0},
}
OPTIMIZER_NAMES = tuple(HYPERPARAMETERS)

#: ``loss(outputs, targets)``, or a :class:`~landscape.operators.functional.ModelLoss` ``fn(model, batch)``.
Loss = Callable[..., torch.Tensor]


def resolve_hyperparameters(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The defaults of ``name`` updated by ``options``; unknown options are refused by name."""
    if name not in HYPERPARAMETERS:
        raise OptionError(f"unknown optimizer {name!r}: expected one of {', '.join(OPTIMIZER_NAMES)}")
    unknown = sorted(set(options) - set(HYPERPARAMETERS[name]))
    if unknown:
        allowed = ", ".join(HYPERPARAMETERS[name]) or "none besides lr"
        raise OptionError(f"optimizer {name!r} takes no option {', '.join(unknown)}; its options: {allowed}")
    return {**HYPERPARAMETERS[name], **options}


def build_optimizer(name: str, model: nn.Module, *, lr: float, seed: Optional[int] = 0, loss: Optional[Loss] = None,
                    **options: Any) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``model``'s trainable parameters.

    ``perturbation_lr`` of RS and SA defaults to ``lr``; SA needs ``loss`` (applied per sample; an output loss or a
    model loss).
    """
    hp = resolve_hyperparameters(name, options)
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=hp["momentum"])
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sam":
        return SAM(params, torch.optim.SGD, rho=hp["rho"], adaptive=hp["adaptive"], seed=seed, lr=lr,
                   momentum=hp["momentum"])
    if name == "nso":
        return NSO(params, torch.optim.SGD, sigma=hp["sigma"], num_perturbations=hp["num_perturbations"],
                   lam=hp["lam"], seed=seed, lr=lr, momentum=hp["momentum"])
    if name == "sofim":
        return SOFIM(params, lr=lr, beta=hp["beta"], rho=hp["rho"], seed=seed)
    perturbation_lr = lr if hp["perturbation_lr"] is None else hp["perturbation_lr"]
    common = dict(perturbation_lr=perturbation_lr, rho=hp["rho"], grad_threshold=hp["grad_threshold"], seed=seed)
    if name == "rs":
        return RandomPerturbation(params, lr, **common)
    if loss is None:
        raise OptionError("optimizer 'sa' needs the loss, to apply it per sample")
    return SharpnessAwarePerturbation(params, lr, model=model, per_sample_loss=loss, **common)


def training_step(optimizer: torch.optim.Optimizer, model: nn.Module, loss: Loss, batch: tuple, *,
                  reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> tuple[float, int]:
    """One update on ``batch``; returns the loss at the parameters before it and the gradients it evaluated.

    Every gradient of a multi-pass step sees the same mini-batch; SAM's second pass leaves BatchNorm running
    statistics as the first pass set them. ``reduce`` runs after every backward pass and returns the loss to report
    (data-parallel training: the reduction of :meth:`landscape.distributed.Runtime.split_batch` averages gradients
    across processes).
    """
    inputs, targets = batch
    before = optimizer.num_grad_evals if isinstance(optimizer, FlatnessOptimizer) else 0
    if isinstance(optimizer, SharpnessAwarePerturbation):
        if reduce is not None:
            raise OptionError(not_data_parallel())
        value = optimizer.step((inputs, targets))
    else:

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            result = training_loss(model, loss, (inputs, targets))
            result.backward()
            return result if reduce is None else reduce(result)

        value = optimizer.step(closure, model=model) if isinstance(optimizer, SAM) else optimizer.step(closure)
    used = optimizer.num_grad_evals - before if isinstance(optimizer, FlatnessOptimizer) else 1
    return float(value.detach()), used
