"""Optimizers by name: every name builds, trains the digits MLP at its stated cost, and refuses unknown options."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from landscape.data import digits
from landscape.errors import OptionError
from landscape.models import mlp
from landscape.optim.registry import OPTIMIZER_NAMES, build_optimizer, training_step

COST = {"sgd": 1, "momentum": 1, "adam": 1, "sam": 2, "nso": 2, "rs": 2, "sa": 2, "sofim": 1}


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_every_optimizer_lowers_the_loss_at_its_stated_cost(name):
    X, y = digits("train")
    X, y = X[:256], y[:256]
    torch.manual_seed(0)
    model = mlp((64, 32, 10))
    lr = {"adam": 1e-2, "sofim": 1.0}.get(name, 0.2)
    optimizer = build_optimizer(name, model, lr=lr, seed=0, loss=F.cross_entropy)
    with torch.no_grad():
        start = F.cross_entropy(model(X), y).item()
    for _ in range(20):
        before, used = training_step(optimizer, model, F.cross_entropy, (X, y))
        assert used == COST[name]  # rs and sa perturb every step under the default threshold (inf)
    with torch.no_grad():
        end = F.cross_entropy(model(X), y).item()
    assert end < 0.7 * start


def test_loss_returned_is_the_loss_before_the_update():
    X, y = digits("train")
    torch.manual_seed(0)
    model = mlp((64, 16, 10))
    optimizer = build_optimizer("sam", model, lr=0.1)
    with torch.no_grad():
        expected = F.cross_entropy(model(X), y).item()
    assert training_step(optimizer, model, F.cross_entropy, (X, y))[0] == pytest.approx(expected, rel=1e-6)


def test_unknown_names_and_options_are_refused_by_name():
    model = mlp((4, 3))
    with pytest.raises(OptionError, match="unknown optimizer 'lbfgs'"):
        build_optimizer("lbfgs", model, lr=0.1)
    with pytest.raises(OptionError, match="takes no option sigma"):
        build_optimizer("sam", model, lr=0.1, sigma=0.1)
    with pytest.raises(OptionError, match="needs the loss"):
        build_optimizer("sa", model, lr=0.1)
