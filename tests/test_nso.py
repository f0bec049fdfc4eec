"""NSO: exact on quadratics, the (σ²/2)∇tr H mean shift on a cubic, variance far below the one-point estimate's,
reproducible draws that resume from a state dict, groups, options, counts and training."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import make_data, make_mlp, mean_ce, mlp_closure
from reference import random_symmetric
from landscape.data import digits
from landscape.errors import OptionError
from landscape.models import mlp
from landscape.optim.nso import NSO

SHAPES = ((4,), (3, 2))  # θ split over two tensors: the noise is drawn per tensor
N = 10


class Recorder(torch.optim.Optimizer):
    """A base optimizer that records the gradient NSO hands it (flattened) and leaves θ where it is."""

    def __init__(self, params, lr: float = 0.0) -> None:
        super().__init__(params, {"lr": lr})
        self.grads: list[torch.Tensor] = []

    @torch.no_grad()
    def step(self, closure=None):
        self.grads.append(torch.cat([p.grad.reshape(-1) for g in self.param_groups for p in g["params"]]).clone())


class Objective:
    """A closure for f(flat θ) that records the point and the loss of every call."""

    def __init__(self, params: list[torch.Tensor], f) -> None:
        self.params, self.f = params, f
        self.points: list[torch.Tensor] = []
        self.losses: list[torch.Tensor] = []

    def __call__(self) -> torch.Tensor:
        for p in self.params:
            p.grad = None
        x = flat(self.params)
        loss = self.f(x)
        loss.backward()
        self.points.append(x.detach().clone())
        self.losses.append(loss.detach())
        return loss


def flat(params) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in params])


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in SHAPES]


def quadratic(seed: int = 0):
    """f = ½ θᵀAθ + bᵀθ with A dense symmetric; returns f and ∇f."""
    A = random_symmetric(N, seed=seed)
    b = torch.randn(N, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return (lambda x: 0.5 * x @ A @ x + b @ x), (lambda x: A @ x + b), A


def cubic(seed: int = 0):
    """f = Σ cᵢθᵢ³/6 + ½ θᵀAθ + bᵀθ: H = diag(cθ) + A, so ∇tr H = c; returns f, ∇f and c."""
    f_quad, grad_quad, A = quadratic(seed)
    c = torch.linspace(2.0, 6.0, N, dtype=torch.float64)
    return (lambda x: (c * x**3).sum() / 6 + f_quad(x)), (lambda x: c * x**2 / 2 + grad_quad(x)), c


def draws(opt: NSO, objective: Objective, n: int) -> torch.Tensor:
    """The gradients of ``n`` steps (θ does not move under the Recorder base), stacked (n, N)."""
    for _ in range(n):
        opt.step(objective)
    return torch.stack(opt.base_optimizer.grads)


def total_variance(g: torch.Tensor) -> float:
    return float((g - g.mean(dim=0)).square().sum(dim=1).mean())


@pytest.mark.parametrize("sigma,k,lam", [(0.5, 1, 0.0), (0.5, 3, 0.0), (0.01, 2, 0.3), (2.0, 1, 0.7)])
def test_two_point_gradient_is_exact_on_a_quadratic(sigma, k, lam):
    params = make_params()
    f, grad, _ = quadratic()
    theta = flat(params).detach().clone()
    objective = Objective(params, f)
    opt = NSO(params, Recorder, sigma=sigma, num_perturbations=k, lam=lam, seed=0)
    g = draws(opt, objective, 5)
    torch.testing.assert_close(g, grad(theta).expand(5, N), rtol=0, atol=1e-12)
    assert torch.equal(flat(params), theta)  # θ restored bitwise, not by subtracting U
    assert len(objective.points) == 5 * opt.grad_evals_per_step
    moved = torch.stack(objective.points) - theta
    assert moved.norm(dim=1).max() > sigma  # the gradients were taken away from θ (‖U‖ ≈ σ√10)


def test_sgd_base_with_unit_rate_steps_by_minus_the_gradient():
    params = make_params()
    f, grad, _ = quadratic()
    theta = flat(params).detach().clone()
    NSO(params, torch.optim.SGD, lr=1.0, sigma=0.5, seed=1).step(Objective(params, f))
    torch.testing.assert_close(flat(params).detach(), theta - grad(theta), rtol=0, atol=1e-12)


@pytest.mark.parametrize("k,lam", [(1, 0.0), (3, 0.0), (2, 0.4)])
def test_two_point_on_a_cubic_is_gradient_plus_the_even_term_pointwise(k, lam):
    # ∇f(θ ± U) = ∇f ± HU + ½c⊙U², so the pair averages to ∇f + ½c⊙U² for every draw
    params = make_params()
    f, grad, c = cubic()
    theta = flat(params).detach().clone()
    objective = Objective(params, f)
    opt = NSO(params, Recorder, sigma=0.3, num_perturbations=k, lam=lam, seed=2)
    opt.step(objective)
    points = torch.stack(objective.points[1:] if lam > 0 else objective.points) - theta
    if lam > 0:
        assert torch.equal(objective.points[0], theta)  # the ∇f(θ) evaluation comes first, at θ itself
    plus, minus = points[0::2], points[1::2]
    torch.testing.assert_close(minus, -plus, rtol=0, atol=1e-14)
    expected = grad(theta) + (1 - lam) * (c * plus**2 / 2).mean(dim=0)
    torch.testing.assert_close(opt.base_optimizer.grads[0], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("two_point", [True, False])
def test_mean_shift_on_a_cubic_is_half_sigma_squared_times_grad_trace(two_point):
    params = make_params()
    f, grad, c = cubic()
    theta = flat(params).detach().clone()
    sigma, n = 0.3, 2000
    opt = NSO(params, Recorder, sigma=sigma, two_point=two_point, seed=3)
    g = draws(opt, Objective(params, f), n)
    stderr = g.std(dim=0) / n**0.5
    truth = grad(theta) + sigma**2 / 2 * c  # E ∇f(θ + U) = ∇f + (σ²/2)∇tr H, exactly for a cubic
    assert torch.all((g.mean(dim=0) - truth).abs() <= 5 * stderr)
    if two_point:  # the shift (≈ 0.09..0.27) is resolved: ∇f itself lies far outside the error bars
        assert torch.all((g.mean(dim=0) - grad(theta)).abs() > 10 * stderr)


def test_one_point_variance_on_a_quadratic_is_sigma_squared_frobenius():
    params = make_params()
    f, grad, A = quadratic()
    theta = flat(params).detach().clone()
    sigma, n = 0.2, 1000
    g = draws(NSO(params, Recorder, sigma=sigma, two_point=False, seed=4), Objective(params, f), n)
    squared_dev = (g - grad(theta)).square().sum(dim=1)  # ‖AU‖², with E‖AU‖² = σ²‖A‖_F²
    truth = sigma**2 * A.square().sum()
    assert abs(squared_dev.mean() - truth) <= 5 * squared_dev.std() / n**0.5
    params = make_params()
    two_point = draws(NSO(params, Recorder, sigma=sigma, seed=4), Objective(params, f), 50)
    assert truth > 1.0 and total_variance(two_point) < 1e-24  # the two-point estimate does not vary at all


@pytest.mark.parametrize("sigma", [0.01, 0.05])
def test_two_point_variance_is_far_below_one_point_on_the_digits_mlp(sigma):
    X, y = digits("train")
    X = X.double()
    torch.manual_seed(0)
    model = mlp((64, 32, 10)).double()
    params = list(model.parameters())

    def closure():
        model.zero_grad(set_to_none=True)
        loss = mean_ce(model(X), y)
        loss.backward()
        return loss

    variances = {}
    for two_point in (True, False):
        opt = NSO(params, Recorder, sigma=sigma, two_point=two_point, seed=5)
        for _ in range(50):
            opt.step(closure)
        variances[two_point] = total_variance(torch.stack(opt.base_optimizer.grads))
    assert variances[True] < variances[False] / 10


def run(seed: int, steps: int, **kwargs) -> torch.Tensor:
    model = make_mlp()
    X, y = make_data()
    opt = NSO(model.parameters(), torch.optim.SGD, lr=0.1, sigma=0.1, seed=seed, **kwargs)
    for _ in range(steps):
        opt.step(mlp_closure(model, X, y))
    return flat(model.parameters()).detach()


def test_seed_makes_runs_reproducible_and_noise_is_fresh_each_step():
    assert torch.equal(run(7, 4), run(7, 4))
    assert not torch.equal(run(7, 4), run(8, 4))
    params = make_params()
    f, _, _ = quadratic()
    objective = Objective(params, f)
    draws(NSO(params, Recorder, sigma=0.1, seed=7), objective, 3)
    offsets = torch.stack(objective.points[0::2]) - flat(params).detach()
    assert not torch.equal(offsets[0], offsets[1]) and not torch.equal(offsets[1], offsets[2])


def make_nso(model, seed):
    return NSO(model.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9, sigma=0.05, num_perturbations=2,
               seed=seed)


def test_state_dict_round_trip_resumes_to_the_identical_next_step():
    X, y = make_data()
    model = make_mlp()
    opt = make_nso(model, seed=11)
    for _ in range(3):
        opt.step(mlp_closure(model, X, y))
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    opt.step(mlp_closure(model, X, y))
    expected = flat(model.parameters()).detach()

    def resumed(state: dict) -> torch.Tensor:
        fresh = make_mlp(seed=5)
        fresh.load_state_dict(saved_model)
        fresh_opt = make_nso(fresh, seed=99)
        fresh_opt.load_state_dict(state)
        fresh_opt.step(mlp_closure(fresh, X, y))
        assert fresh_opt.num_grad_evals == opt.num_grad_evals == 4 * 4
        return flat(fresh.parameters()).detach()

    assert torch.equal(resumed(saved_opt), expected)
    # the generator's state is what makes it identical: without it the fresh optimizer draws other noise
    without_generators = copy.deepcopy(saved_opt)
    without_generators["landscape"]["generators"] = {}
    assert not torch.equal(resumed(without_generators), expected)


def test_parameter_groups_take_their_own_sigma_and_learning_rate():
    X, y = make_data()
    model = make_mlp()
    first, second = model[0], model[2]
    opt = NSO([{"params": first.parameters(), "sigma": 0.0, "lr": 0.0},
               {"params": second.parameters(), "lr": 0.1}], torch.optim.SGD, sigma=0.2, seed=0)
    start = [p.detach().clone() for p in model.parameters()]
    seen = []
    closure = mlp_closure(model, X, y)

    def recording_closure():
        seen.append([p.detach().clone() for p in model.parameters()])
        return closure()

    opt.step(recording_closure)
    offsets = [torch.cat([(q - p).reshape(-1) for p, q in zip(start[i:i + 2], point[i:i + 2])])
               for point in seen for i in (0, 2)]
    assert all(torch.equal(o, torch.zeros_like(o)) for o in offsets[0::2])  # σ = 0: the first layer never moves
    second_offsets = torch.cat(offsets[1::2])  # 2 × 27 entries of ±U with σ = 0.2
    assert 0.1 < float(second_offsets.std()) < 0.3
    after = list(model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(after[:2], start[:2]))  # lr = 0 for the first group
    assert not any(torch.equal(a, b) for a, b in zip(after[2:], start[2:]))


@pytest.mark.parametrize("kwargs,name", [
    ({"sigma": -0.1}, "sigma"), ({"sigma": "big"}, "sigma"), ({"num_perturbations": 0}, "num_perturbations"),
    ({"num_perturbations": 1.5}, "num_perturbations"), ({"lam": 1.5}, "lam"), ({"lam": -0.1}, "lam"),
    ({"two_point": 1}, "two_point"), ({"lr": -1.0}, "lr"), ({"base_optimizer": object}, "base_optimizer"),
])
def test_bad_arguments_raise_option_error_naming_them(kwargs, name):
    with pytest.raises(OptionError, match=name):
        NSO(make_params(), **{"lr": 0.1, **kwargs})


def test_bad_group_sigma_raises_option_error():
    params = make_params()
    with pytest.raises(OptionError, match="sigma"):
        NSO([{"params": params[:1], "sigma": -1.0}, {"params": params[1:]}], lr=0.1)


def test_missing_closure_raises_option_error():
    with pytest.raises(OptionError, match="closure"):
        NSO(make_params(), lr=0.1).step()


@pytest.mark.parametrize("k,two_point,lam,per_step", [
    (1, True, 0.0, 2), (3, True, 0.0, 6), (3, False, 0.0, 3), (2, True, 0.5, 5), (2, False, 0.5, 3),
])
def test_gradient_evaluation_counts(k, two_point, lam, per_step):
    params = make_params()
    f, _, _ = quadratic()
    objective = Objective(params, f)
    opt = NSO(params, lr=0.01, sigma=0.1, num_perturbations=k, two_point=two_point, lam=lam, seed=0)
    assert opt.grad_evals_per_step == per_step
    for _ in range(3):
        opt.step(objective)
    assert opt.num_grad_evals == len(objective.points) == 3 * per_step


def test_returned_loss_is_at_theta_when_lambda_is_positive_else_the_perturbed_mean():
    params = make_params()
    f, _, _ = quadratic()
    theta = flat(params).detach().clone()
    objective = Objective(params, f)
    loss = NSO(params, Recorder, sigma=0.3, num_perturbations=2, lam=0.2, seed=0).step(objective)
    assert float(loss) == float(f(theta))
    objective = Objective(params, f)
    loss = NSO(params, Recorder, sigma=0.3, num_perturbations=2, seed=0).step(objective)
    assert float(loss) == pytest.approx(float(torch.stack(objective.losses).mean()), rel=1e-15)
    assert float(loss) > float(f(theta)) + 1e-3 or float(loss) < float(f(theta)) - 1e-3  # not f(θ)


def test_unused_parameter_keeps_no_gradient():
    params = make_params()
    unused = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    f, _, _ = quadratic()
    opt = NSO(params + [unused], lr=0.1, sigma=0.1, seed=0)
    opt.step(Objective(params, f))
    assert unused.grad is None and torch.equal(unused.detach(), torch.ones(3, dtype=torch.float64))


def test_lowers_the_digits_mlp_training_loss():
    X, y = digits("train")
    torch.manual_seed(0)
    model = mlp((64, 32, 10))
    closure = mlp_closure(model, X, y)
    initial = float(mean_ce(model(X), y).detach())
    opt = NSO(model.parameters(), torch.optim.SGD, lr=0.5, momentum=0.9, sigma=0.01, seed=0)
    for _ in range(30):
        opt.step(closure)
    final = float(mean_ce(model(X), y).detach())
    assert final < 0.3 * initial
