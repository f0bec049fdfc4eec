"""What every flatness-seeking optimizer here shares: argument checks, seeded draws, a wrapped base optimizer,
a count of gradient evaluations, and a state dict that resumes to the identical next step.

Closure convention (as ``torch.optim.LBFGS``): ``closure()`` clears the gradients, computes the loss on the current
mini-batch, calls ``backward()`` and returns the loss. Optimizers that need several gradients per step call it
once per gradient, so every gradient of a step sees the same mini-batch.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch

from landscape.errors import OptionError

Closure = Callable[[], torch.Tensor]


def check_option(name: str, value: Any, ok: bool, expected: str) -> None:
    """Raise an OptionError (a ValueError too) naming the argument, its value and what was expected."""
    if not ok:
        raise OptionError(f"{name} must be {expected}, got {value!r}")


def require_closure(closure: Optional[Closure], name: str) -> Closure:
    """``closure`` wrapped to run with gradients enabled, or a clear error when it is missing."""
    if closure is None:
        raise OptionError(f"{name}.step needs a closure that clears the gradients, computes the loss on the "
                          "mini-batch, calls backward() and returns the loss")
    return torch.enable_grad()(closure)


class FlatnessOptimizer(torch.optim.Optimizer):
    """Base class: a ``torch.optim.Optimizer`` with a seeded generator per device and a gradient-evaluation count.

    ``seed`` (or ``generator``, a CPU generator whose state seeds the per-device ones) makes every random draw
    reproducible; the generators' states and the count travel in ``state_dict()``.
    """

    #: Gradient evaluations one ``step`` costs (the most it can cost, for optimizers where it varies).
    grad_evals_per_step: int = 1

    def __init__(self, params: Iterable, defaults: dict[str, Any], *, seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__(params, defaults)
        if seed is not None and generator is not None:
            raise OptionError("give either seed or generator, not both")
        if seed is None:  # follow torch.manual_seed without consuming a draw from the global random stream
            seed = int(torch.randint(0, 2**62, (1,), generator=generator).item()) if generator is not None \
                else torch.initial_seed()
        self.seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}
        self.num_grad_evals = 0

    def generator_for(self, device: torch.device) -> torch.Generator:
        """The generator for draws on ``device``, created from the seed on first use."""
        key = str(torch.device(device))
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def count_grad_evals(self, number: int = 1) -> None:
        self.num_grad_evals += number

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["landscape"] = {
            "seed": self.seed,
            "num_grad_evals": self.num_grad_evals,
            "generators": {key: gen.get_state() for key, gen in self._generators.items()},
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("landscape", None)
        super().load_state_dict(state_dict)
        if extra is not None:
            self.seed = int(extra["seed"])
            self.num_grad_evals = int(extra["num_grad_evals"])
            self._generators = {}
            for key, gen_state in extra["generators"].items():
                self.generator_for(torch.device(key)).set_state(gen_state.cpu())


class WrappingOptimizer(FlatnessOptimizer):
    """A flatness optimizer that computes a gradient its own way and hands it to a base optimizer for the update.

    ``base_optimizer`` is an optimizer class (built on the same parameter groups with ``base_kwargs``, so learning
    rate schedulers and parameter groups work on either) or ``None`` for plain SGD with ``lr``.
    """

    def __init__(self, params: Iterable, defaults: dict[str, Any], base_optimizer: Optional[type],
                 base_kwargs: dict[str, Any], *, seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__(params, {**base_kwargs, **defaults}, seed=seed, generator=generator)
        base_optimizer = base_optimizer or torch.optim.SGD
        check_option("base_optimizer", base_optimizer, isinstance(base_optimizer, type)
                     and issubclass(base_optimizer, torch.optim.Optimizer), "a torch.optim.Optimizer class")
        try:
            self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        except (TypeError, ValueError) as err:
            raise OptionError(f"{base_optimizer.__name__} rejected its arguments {base_kwargs}: {err}") from None
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Groups added after construction go to the base optimizer too, with this optimizer's defaults."""
        base = getattr(self, "base_optimizer", None)
        if base is None:  # during construction, before the base optimizer exists
            super().add_param_group(param_group)
            return
        for key, value in self.defaults.items():
            param_group.setdefault(key, value)
        base.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["base_optimizer"] = self.base_optimizer.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        if "base_optimizer" not in state_dict:
            raise OptionError(f"this state dict has no 'base_optimizer' entry: {type(self).__name__} did not save it")
        base = state_dict.pop("base_optimizer")
        super().load_state_dict(state_dict)
        self.base_optimizer.load_state_dict(base)
        self.param_groups = self.base_optimizer.param_groups
