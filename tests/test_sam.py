"""SAM / ASAM: the 2-cycle of Bartlett, Long, Bousquet (2023) on quadratics, the drift toward flat regions, GradScaler
and BatchNorm handling, and the common optimizer contract."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from landscape.errors import OptionError
from landscape.optim.sam import SAM, frozen_running_stats
from conftest import make_data, make_mlp, mean_ce


def closure_for(optimizer, loss_fn):
    def closure():
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss
    return closure


def quadratic_run(lam, eta, rho, max_steps, floor=1e-250):
    """Full-batch SAM+SGD on f = ½ xᵀ diag(λ) x from 0.5·(1, …, 1); stops early when a coordinate nears underflow
    (the per-step ratios are exact for tiny coordinates in float64). Returns the iterates."""
    lam = torch.tensor(lam, dtype=torch.float64)
    x = torch.full_like(lam, 0.5).requires_grad_()
    opt = SAM([x], rho=rho, lr=eta)
    closure = closure_for(opt, lambda: 0.5 * (lam * x * x).sum())
    history = [x.detach().clone()]
    for _ in range(max_steps):
        opt.step(closure)
        history.append(x.detach().clone())
        if history[-1].abs().min() < floor or not torch.isfinite(history[-1]).all():
            break
    return torch.stack(history)


EXAMPLES = [  # λ, η, ρ, x* from ALGORITHMS.md
    ((1.0, 0.5, 0.1), 0.5, 0.05, 0.016667),
    ((10.0, 3.0, 1.0, 0.1), 0.1, 0.01, 0.01),
    ((10.0, 9.9, 1.0), 0.15, 0.02, 0.06),
    ((4.0, 1.0), 0.45, 0.1, 0.9),
]


@pytest.mark.parametrize("lam, eta, rho, amplitude", EXAMPLES)
def test_quadratic_two_cycle_amplitude_and_transverse_rates(lam, eta, rho, amplitude):
    xs = quadratic_run(lam, eta, rho, max_steps=3000)
    closed_form = eta * rho * lam[0] / (2 - eta * lam[0])
    assert closed_form == pytest.approx(amplitude, abs=5e-7)
    last, before = xs[-1], xs[-2]
    assert abs(last[0].abs().item() - closed_form) < 1e-9
    assert abs(last[0].item() + before[0].item()) < 1e-9  # +x*, −x*, +x*, …
    assert (last[1:].abs() < 1e-5).all()
    for i in range(1, len(lam)):  # m_i = 1 − ηλ_i − (2 − ηλ_1)(λ_i/λ_1)²
        rate = 1 - eta * lam[i] - (2 - eta * lam[0]) * (lam[i] / lam[0]) ** 2
        assert abs((last[i] / before[i]).item() - rate) < 1e-6


def test_quadratic_diverges_beyond_two_over_eta():
    xs = quadratic_run((1.0, 0.5), eta=2.1, rho=0.05, max_steps=100)
    amplitude = xs[:, 0].abs()
    assert (amplitude[1:] > amplitude[:-1]).all() and amplitude[-1] > 1e3


def run_valley(rho, steps, marks):
    """SAM+SGD (η = .2) on f(x, y) = ½(1 + y²)x²; y after each step count in ``marks``."""
    p = torch.tensor([0.3, 1.0], dtype=torch.float64, requires_grad=True)
    opt = SAM([p], rho=rho, lr=0.2)
    closure = closure_for(opt, lambda: 0.5 * (1 + p[1] ** 2) * p[0] ** 2)
    ys = {}
    for step in range(1, steps + 1):
        opt.step(closure)
        if step in marks:
            ys[step] = p[1].item()
    return ys


def test_sam_drifts_to_lower_sharpness_where_gd_stalls():
    # ALGORITHMS.md states the start (1, 1), but its numbers are those of the start (0.3, 1): from (1, 1) the first
    # GD steps already take y to .697 (both GD and SAM), and the SAM drift then gives .678, .615, .405 instead.
    expected = {100: 0.957, 1000: 0.859, 5000: 0.552, 10000: 0.330, 20000: 0.122}
    ys = run_valley(0.02, 20000, expected)
    for step, y in expected.items():
        assert ys[step] == pytest.approx(y, rel=0.05)
    gd = run_valley(0.0, 1000, (100, 1000))  # rho = 0: SAM is plain GD
    assert gd[100] == pytest.approx(0.97, rel=0.01) and gd[1000] == pytest.approx(0.97, rel=0.01)


def test_perturbation_closed_forms_sam_and_asam_with_group_rho():
    a = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([-3.0], dtype=torch.float64, requires_grad=True)
    a.grad = torch.tensor([3.0, 2.0], dtype=torch.float64)
    b.grad = torch.tensor([-4.0], dtype=torch.float64)
    # ASAM, T = |θ|: T g = (3, −4, 12)·sign, ‖T g‖ = 13, ε = ρ θ² g / 13
    opt = SAM([{"params": [a]}, {"params": [b], "rho": 0.26}], rho=0.13, adaptive=True, eps=0.0, lr=0.1)
    opt.first_step()
    torch.testing.assert_close(a.detach(), torch.tensor([1.03, -1.92], dtype=torch.float64), rtol=0, atol=1e-15)
    torch.testing.assert_close(b.detach(), torch.tensor([-3.72], dtype=torch.float64), rtol=0, atol=1e-15)
    opt.second_step()
    assert a.tolist() == [1.0 - 0.1 * 3.0, -2.0 - 0.1 * 2.0] and b.tolist() == [-3.0 + 0.1 * 4.0]
    # plain SAM: g = (3, 2, −4), ‖g‖ = √29, ε = ρ_group g / √29, θ restored exactly
    theta = [a.detach().clone(), b.detach().clone()]
    a.grad, b.grad = torch.tensor([3.0, 2.0], dtype=torch.float64), torch.tensor([-4.0], dtype=torch.float64)
    opt = SAM([{"params": [a]}, {"params": [b], "rho": 0.26}], rho=0.13, lr=0.1)
    opt.first_step()
    torch.testing.assert_close(a - theta[0], 0.13 * torch.tensor([3.0, 2.0], dtype=torch.float64) / math.sqrt(29))
    torch.testing.assert_close(b - theta[1], 0.26 * torch.tensor([-4.0], dtype=torch.float64) / math.sqrt(29))
    opt.base_optimizer.step = lambda: None  # only the restore
    opt.second_step()
    assert torch.equal(a, theta[0]) and torch.equal(b, theta[1])


def mlp_problem(dtype=torch.float64):
    model = make_mlp(dtype=dtype)
    X, y = make_data(dtype=dtype)
    return model, (lambda: mean_ce(model(X), y))


@pytest.mark.parametrize("base, kwargs", [(torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
                                          (torch.optim.Adam, {"lr": 0.01})])
def test_rho_zero_is_the_base_optimizer_exactly(base, kwargs):
    model, loss_fn = mlp_problem()
    reference = copy.deepcopy(model)
    opt = SAM(model.parameters(), base, rho=0.0, **kwargs)
    base_opt = base(reference.parameters(), **kwargs)
    X, y = make_data()
    for _ in range(3):
        opt.step(closure_for(opt, loss_fn))
        base_opt.step(closure_for(base_opt, lambda: mean_ce(reference(X), y)))
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)


def test_state_dict_round_trip_resumes_bitwise():
    model, loss_fn = mlp_problem()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, adaptive=True, lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.step(closure_for(opt, loss_fn))
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    opt.step(closure_for(opt, loss_fn))

    fresh, fresh_loss = mlp_problem()
    fresh.load_state_dict(saved_model)
    fresh_opt = SAM(fresh.parameters(), torch.optim.SGD, rho=0.05, adaptive=True, lr=0.1, momentum=0.9)
    fresh_opt.load_state_dict(saved_opt)
    assert fresh_opt.num_grad_evals == 6
    fresh_opt.step(closure_for(fresh_opt, fresh_loss))
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(p, q)


def test_parameter_groups_with_their_own_rho_adaptive_and_lr():
    model, loss_fn = mlp_problem()
    first, last = model[0], model[2]
    groups = [{"params": first.parameters(), "rho": 0.0, "lr": 0.0},
              {"params": last.parameters(), "rho": 0.1, "adaptive": True, "lr": 0.2}]
    opt = SAM(groups, rho=0.05, lr=0.1)
    assert [g["rho"] for g in opt.param_groups] == [0.0, 0.1] and [g["lr"] for g in opt.param_groups] == [0.0, 0.2]
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(closure_for(opt, loss_fn))
    after = list(model.parameters())
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])  # lr 0: unchanged
    assert not torch.equal(after[2], before[2])
    assert opt.base_optimizer.param_groups is opt.param_groups


def test_bad_arguments_raise_option_error_naming_them():
    p = [nn.Parameter(torch.zeros(2))]
    for kwargs, name in [({"rho": -0.1}, "rho"), ({"rho": float("nan")}, "rho"), ({"eps": -1.0}, "eps"),
                         ({"adaptive": 1}, "adaptive"), ({"base_optimizer": 3}, "base_optimizer"),
                         ({"lr": -1.0}, "SGD")]:
        with pytest.raises(OptionError, match=name):
            SAM(p, **{"lr": 0.1, **kwargs})
    with pytest.raises(OptionError, match="rho"):
        SAM([{"params": p, "rho": -1.0}], lr=0.1)
    with pytest.raises(OptionError, match="first_step"):
        SAM(p, lr=0.1).step()


def test_lowers_digits_mlp_training_loss():
    from landscape.data import digits
    from landscape.models import mlp

    torch.manual_seed(0)
    X, y = digits("train")
    model = mlp((64, 32, 10))
    opt = SAM(model.parameters(), rho=0.05, lr=0.5, momentum=0.9)
    closure = closure_for(opt, lambda: nn.functional.cross_entropy(model(X), y))
    losses = [opt.step(closure).item() for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]


def test_grad_eval_counts():
    model, loss_fn = mlp_problem()
    opt = SAM(model.parameters(), lr=0.1)
    assert SAM.grad_evals_per_step == 2
    calls = []

    def closure():
        calls.append(1)
        return closure_for(opt, loss_fn)()

    for _ in range(3):
        opt.step(closure)
    assert len(calls) == 6 and opt.num_grad_evals == 6
    loss_fn().backward()
    opt.first_step(zero_grad=True)
    loss_fn().backward()
    opt.second_step(zero_grad=True)
    assert opt.num_grad_evals == 8


# --- GradScaler -------------------------------------------------------------------------------------------------

def scaled_sam_step(opt, scaler, loss_fn, unscale_before_step=False):
    """The loop of the class docstring (float32 on CPU, no autocast); ``loss_fn(pass_index)``."""
    scaler.scale(loss_fn(0)).backward()
    opt.first_step(zero_grad=True)
    scaler.scale(loss_fn(1)).backward()
    if unscale_before_step:
        scaler.unscale_(opt)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad()


@pytest.mark.parametrize("unscale_before_step", [False, True])
def test_grad_scaler_matches_unscaled_sam_in_float32(unscale_before_step):
    model, loss_fn = mlp_problem(torch.float32)
    scaled_model = copy.deepcopy(model)
    X, y = make_data(dtype=torch.float32)
    opt = SAM(model.parameters(), rho=0.05, lr=0.1, momentum=0.9)
    scaled_opt = SAM(scaled_model.parameters(), rho=0.05, lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    for _ in range(5):
        opt.step(closure_for(opt, loss_fn))
        scaled_sam_step(scaled_opt, scaler, lambda _: mean_ce(scaled_model(X), y), unscale_before_step)
    assert scaler.get_scale() == 2.0 ** 10 and scaled_opt.num_grad_evals == 10
    for p, q in zip(model.parameters(), scaled_model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("overflowing_passes", [(0, 1), (1,)])
def test_grad_scaler_skips_the_step_on_overflow_and_restores_theta(overflowing_passes):
    model, _ = mlp_problem(torch.float32)
    X, y = make_data(dtype=torch.float32)
    before = [p.detach().clone() for p in model.parameters()]
    opt = SAM(model.parameters(), rho=0.05, lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)

    def loss_fn(pass_index):  # 1e36 · 2^10 overflows float32 in the backward pass
        return mean_ce(model(X), y) * (1e36 if pass_index in overflowing_passes else 1.0)

    scaled_sam_step(opt, scaler, loss_fn)
    assert scaler.get_scale() == 2.0 ** 9
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert not opt.state and not opt.base_optimizer.state  # no perturbation kept, no momentum buffer made
    scaled_sam_step(opt, scaler, lambda _: mean_ce(model(X), y))  # the next step goes through
    assert not any(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_overflow_in_the_first_pass_only_gives_an_unperturbed_base_step():
    model, _ = mlp_problem(torch.float32)
    reference = copy.deepcopy(model)
    X, y = make_data(dtype=torch.float32)
    opt = SAM(model.parameters(), rho=0.05, lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    scaled_sam_step(opt, scaler, lambda i: mean_ce(model(X), y) * (1e36 if i == 0 else 1.0))
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1)
    sgd.step(closure_for(sgd, lambda: mean_ce(reference(X), y)))
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


# --- BatchNorm ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_running_stats_are_updated_by_the_first_pass_only(momentum):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8, momentum=momentum), nn.Tanh(),
                          nn.Linear(8, 3)).double().train()
    X, y = make_data()
    one_forward = copy.deepcopy(model)
    one_forward(X)
    unfrozen = copy.deepcopy(model)
    results = []
    for net, kwargs in [(model, {"model": model}), (unfrozen, {})]:
        opt = SAM(net.parameters(), rho=0.5, lr=0.1)
        opt.step(closure_for(opt, lambda: mean_ce(net(X), y)), **kwargs)
        results.append(net)
    for name, buf in one_forward[1].named_buffers():
        assert torch.equal(model[1].get_buffer(name), buf), name
    assert unfrozen[1].num_batches_tracked.item() == 2  # without model=, the second pass counts too
    assert not torch.equal(unfrozen[1].running_mean, model[1].running_mean)
    for p, q in zip(model.parameters(), unfrozen.parameters()):  # freezing does not change the gradients
        assert torch.equal(p, q)


def test_frozen_running_stats_restores_even_on_error():
    bn = nn.BatchNorm1d(3).train()
    with pytest.raises(RuntimeError, match="boom"):
        with frozen_running_stats(bn):
            bn(torch.randn(4, 3))
            raise RuntimeError("boom")
    assert bn.num_batches_tracked.item() == 0 and torch.equal(bn.running_mean, torch.zeros(3))
