"""SOFIM: the Sherman–Morrison step equals a dense solve of (m̂m̂ᵀ + ρI) d = m̂, bias correction, per-group Fisher,
O(n) memory, state dict resume, options, counts and training."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import make_data, make_mlp, mean_ce, mlp_closure
from reference import dense_direction, momentum_hat
from landscape.data import digits
from landscape.errors import OptionError
from landscape.models import mlp
from landscape.optim.sofim import SOFIM


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def make_params(seed: int = 0, shapes=((3, 4), (5,))) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in shapes]


def random_grads(params, gen: torch.Generator, scale: float) -> None:
    for p in params:
        p.grad = scale * torch.randn(p.shape, generator=gen, dtype=p.dtype)


@pytest.mark.parametrize("beta,rho,scale", [(0.9, 1.0, 0.7), (0.5, 0.05, 0.3), (0.0, 2.0, 1.5)])
def test_step_equals_a_dense_solve_of_the_rank_one_fisher(beta, rho, scale):
    params = make_params()
    lr = 1.0
    opt = SOFIM(params, lr=lr, beta=beta, rho=rho)
    gen = torch.Generator().manual_seed(1)
    grads = []
    for _ in range(6):
        random_grads(params, gen, scale)
        grads.append(flat(p.grad for p in params))
        before = flat(params).detach().clone()
        opt.step()
        d = (before - flat(params).detach()) / lr
        torch.testing.assert_close(d, dense_direction(grads, beta, rho), rtol=0, atol=1e-12)
    # the rank-one term matters here: d is not just m̂/ρ
    assert (d - momentum_hat(grads, beta) / rho).norm() > 0.05 * d.norm()


def test_first_step_is_bias_corrected_gradient_over_rho_plus_its_squared_norm():
    X, y = make_data()
    model = make_mlp()
    lr, rho = 0.3, 0.5
    opt = SOFIM(model.parameters(), lr=lr, beta=0.9, rho=rho)
    g = flat(torch.autograd.grad(mean_ce(model(X), y), list(model.parameters())))
    before = flat(model.parameters()).detach().clone()

    def closure():
        opt.zero_grad()
        loss = mean_ce(model(X), y)
        loss.backward()
        return loss

    opt.step(closure)
    expected = before - lr * g / (rho + g.square().sum())  # m̂₁ = (1 − β)g / (1 − β) = g
    torch.testing.assert_close(flat(model.parameters()).detach(), expected, rtol=0, atol=1e-14)


def test_each_group_has_its_own_fisher_and_hyperparameters():
    first, second = make_params(0), make_params(1, shapes=((6,), (2, 2)))
    settings = [{"lr": 0.5, "beta": 0.8, "rho": 0.3}, {"lr": 0.2, "beta": 0.95, "rho": 2.0}]
    opt = SOFIM([{"params": first, **settings[0]}, {"params": second, **settings[1]}], lr=1.0)
    gen = torch.Generator().manual_seed(2)
    history: list[list[torch.Tensor]] = [[], []]
    for _ in range(4):
        before = [flat(group).detach().clone() for group in (first, second)]
        for i, group in enumerate((first, second)):
            random_grads(group, gen, 0.8)
            history[i].append(flat(p.grad for p in group))
        opt.step()
    for i, group in enumerate((first, second)):
        s = settings[i]
        d = (before[i] - flat(group).detach()) / s["lr"]
        torch.testing.assert_close(d, dense_direction(history[i], s["beta"], s["rho"]), rtol=0, atol=1e-12)
        assert all(opt.state[p]["step"] == 4 for p in group)
    # one Fisher over both groups would give another direction for the first group
    joint = dense_direction([torch.cat(pair) for pair in zip(*history)], 0.8, 0.3)[: before[0].numel()]
    assert (joint - dense_direction(history[0], 0.8, 0.3)).norm() > 1e-3


def test_step_is_linear_in_memory_for_a_million_parameters():
    p = torch.nn.Parameter(torch.zeros(2_000_000))
    p.grad = torch.full_like(p, 1e-3)  # ‖g‖² = 2: a dense n×n Fisher would need 16 TB
    opt = SOFIM([p], lr=1.0, rho=2.0)
    opt.step()
    assert set(opt.state[p]) == {"step", "momentum"} and opt.state[p]["momentum"].shape == p.shape
    torch.testing.assert_close(p.detach(), torch.full_like(p, -1e-3 / 4), rtol=1e-5, atol=0)


def test_state_dict_round_trip_resumes_to_the_identical_next_step():
    X, y = make_data()
    model = make_mlp()
    opt = SOFIM(model.parameters(), lr=0.2, beta=0.9, rho=0.5)
    for _ in range(3):
        opt.step(mlp_closure(model, X, y))
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    opt.step(mlp_closure(model, X, y))
    fresh = make_mlp(seed=5)
    fresh.load_state_dict(saved_model)
    fresh_opt = SOFIM(fresh.parameters(), lr=0.2, beta=0.9, rho=0.5)
    fresh_opt.load_state_dict(saved_opt)
    fresh_opt.step(mlp_closure(fresh, X, y))
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    assert fresh_opt.num_grad_evals == 4 and all(fresh_opt.state[p]["step"] == 4 for p in fresh.parameters())


@pytest.mark.parametrize("kwargs,name", [
    ({"lr": 0.0}, "lr"), ({"lr": -1.0}, "lr"), ({"beta": 1.0}, "beta"), ({"beta": -0.1}, "beta"),
    ({"rho": 0.0}, "rho"), ({"rho": -1.0}, "rho"), ({"lr": "fast"}, "lr"),
])
def test_bad_arguments_raise_option_error_naming_them(kwargs, name):
    with pytest.raises(OptionError, match=name):
        SOFIM(make_params(), **kwargs)


def test_bad_group_argument_raises_option_error():
    params = make_params()
    with pytest.raises(OptionError, match="beta"):
        SOFIM([{"params": params[:1], "beta": 1.5}, {"params": params[1:]}])


def test_gradient_evaluation_counts_with_and_without_closure():
    X, y = make_data()
    model = make_mlp()
    calls = []
    closure = mlp_closure(model, X, y)

    def counting_closure():
        calls.append(1)
        return closure()

    opt = SOFIM(model.parameters(), lr=0.1)
    assert SOFIM.grad_evals_per_step == opt.grad_evals_per_step == 1
    for _ in range(3):
        loss = opt.step(counting_closure)
    assert opt.num_grad_evals == len(calls) == 3 and loss.ndim == 0
    closure()
    assert opt.step() is None and opt.num_grad_evals == 4


def test_parameters_without_gradient_are_skipped():
    params = make_params()
    params[1].grad = None
    params[0].grad = torch.ones_like(params[0])
    before = params[1].detach().clone()
    opt = SOFIM(params, lr=0.1, rho=1.0)
    opt.step()
    assert torch.equal(params[1].detach(), before) and params[1] not in opt.state
    assert opt.state[params[0]]["step"] == 1


def test_lowers_the_digits_mlp_training_loss():
    X, y = digits("train")
    torch.manual_seed(0)
    model = mlp((64, 32, 10))
    closure = mlp_closure(model, X, y)
    initial = float(closure().detach())
    opt = SOFIM(model.parameters(), lr=0.5, beta=0.9, rho=1.0)
    for _ in range(30):
        opt.step(closure)
    final = float(closure().detach())
    assert final < 0.3 * initial
