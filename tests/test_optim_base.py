"""What every flatness optimizer inherits: seeds, groups added later, resumable state."""

from __future__ import annotations

import pytest
import torch

from landscape.errors import OptionError
from landscape.optim import NSO, SAM


def test_default_seed_follows_manual_seed_without_consuming_the_global_stream():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = NSO([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    assert torch.equal(torch.rand(3), expected_next)  # building the optimizer drew nothing
    torch.manual_seed(123)
    assert NSO([torch.nn.Parameter(torch.zeros(2))], lr=0.1).seed == first.seed


def test_a_group_added_later_reaches_the_base_optimizer_with_defaults():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    opt = SAM([a], torch.optim.SGD, rho=0.1, lr=0.5, momentum=0.9)
    opt.add_param_group({"params": [b], "lr": 0.25})
    assert opt.param_groups is opt.base_optimizer.param_groups and len(opt.param_groups) == 2
    group = opt.param_groups[1]
    assert (group["lr"], group["momentum"], group["rho"]) == (0.25, 0.9, 0.1)

    def closure():
        opt.zero_grad()
        loss = (a**2).sum() + (b**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert not torch.equal(b.detach(), torch.ones(3))


def test_seed_and_generator_are_exclusive_and_bad_base_is_named():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(OptionError, match="seed or generator"):
        NSO(p, lr=0.1, seed=1, generator=torch.Generator())
    with pytest.raises(OptionError, match="base_optimizer"):
        SAM(p, base_optimizer=object, lr=0.1)
    with pytest.raises(ValueError):  # OptionError is a ValueError too, as torch's own optimizers raise
        SAM(p, rho=-1.0, lr=0.1)
