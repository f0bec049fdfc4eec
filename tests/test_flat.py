"""RS and SA (Ahn, Jadbabaie & Sra 2024): drift toward lower tr H against closed forms, SA's drift n times RS's on the
minimum manifold of a diagonal linear net, the threshold branch, per-sample gradients, resume, groups, arguments."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import make_data, make_mlp
from reference import per_sample_gradients
from torch import nn
from torch.func import grad, hessian, jacrev

from landscape.data import digits
from landscape.errors import OptionError
from landscape.models import mlp
from landscape.optim.flat import RandomPerturbation, SharpnessAwarePerturbation

DT = torch.float64


def ce_closure(model, opt, X, y):
    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(X), y)
        loss.backward()
        return loss
    return closure


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def set_flat(model: nn.Module, theta: torch.Tensor) -> None:
    with torch.no_grad():
        for p, part in zip(model.parameters(), theta.split([p.numel() for p in model.parameters()])):
            p.copy_(part.view_as(p))


def drift_samples(opt, model, theta0, step, draws):
    """−Δθ of ``draws`` steps from θ0 with lr = 0 and perturbation_lr = 1, i.e. draws of v (one row each)."""
    V = torch.empty(draws, theta0.numel(), dtype=theta0.dtype)
    for k in range(draws):
        set_flat(model, theta0)
        step(opt)
        assert opt.last_perturbed
        V[k] = theta0 - flat_params(model)
    return V


def assert_mean_within(V, expected, k=5.0):
    """Each component of V's row mean within k standard errors of ``expected``; returns the standard errors."""
    se = V.std(0) / V.shape[0] ** 0.5
    z = ((V.mean(0) - expected) / se).abs()
    assert z.max() < k, f"mean {V.mean(0)} vs {expected}, |z| {z}"
    return se


def test_rs_drift_is_projected_trace_gradient_on_a_cubic():
    """f = Σ aᵢθᵢ²/2 + cᵢθᵢ³/6: H = diag(a + cθ), ∇tr H = c, ∇f(θ + ρu) = g + ρHu + (ρ²/2) c⊙u² exactly, so the
    mean of v is P⊥ (ρ²/2n) c (ALGORITHMS.md) with no O(ρ³) term."""
    n, rho, draws = 8, 0.1, 4000
    a = torch.linspace(0.01, 0.04, n, dtype=DT)
    c = torch.linspace(1.0, 3.0, n, dtype=DT) * torch.tensor([1.0, -1.0] * (n // 2), dtype=DT)
    theta0 = torch.linspace(-0.005, 0.005, n, dtype=DT)
    p = nn.Parameter(theta0.clone())
    model = nn.ParameterList([p])

    def closure():
        with torch.no_grad():
            p.grad = a * p + c * p * p / 2
        return (a * p * p / 2 + c * p ** 3 / 6).sum()

    opt = RandomPerturbation([p], lr=0.0, perturbation_lr=1.0, rho=rho, grad_threshold=1.0, seed=3)
    V = drift_samples(opt, model, theta0, lambda o: o.step(closure), draws)
    g = a * theta0 + c * theta0 ** 2 / 2
    g_hat = g / g.norm()
    expected = rho ** 2 / (2 * n) * c
    expected = expected - (expected @ g_hat) * g_hat
    se = assert_mean_within(V, expected)
    assert (expected.abs() / se).min() > 10  # the signal is resolved, not lost in the noise
    assert (V @ g_hat).abs().max() < 1e-15 * V.norm(dim=1).max()


class DiagonalNet(nn.Module):
    """p(x) = xᵀ(u ⊙ w), n = 2d parameters; under the squared loss its minima u ⊙ w = β form a d-dimensional
    manifold on which each sample's Hessian ∇pᵢ∇pᵢᵀ has rank one and tr ∇²pᵢ = 0."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.u = nn.Parameter(torch.zeros(d, dtype=DT))
        self.w = nn.Parameter(torch.zeros(d, dtype=DT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.u * self.w)


def half_squared(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((output - target) ** 2).mean()


def test_sa_drift_is_n_times_rs_along_the_minimum_manifold():
    """Near a minimum, both drifts' components tangent to the minimum manifold (T = I − J⁺J, J = ∂p/∂θ) are, in
    expectation and exactly for this quartic loss, RS: (ρ²/2n) T∇tr H and SA: (ρ²/2) T∇tr H, so SA/RS = n.

    Derivation (fᵢ = ½rᵢ², rᵢ = pᵢ − yᵢ, ∇³pᵢ = 0): E_σ ∇fᵢ(θ + σρĝᵢ) = ∇fᵢ + (ρ²/2)∇³fᵢ[ĝᵢ, ĝᵢ] and, with
    ĝᵢ = ±∇pᵢ/‖∇pᵢ‖, ∇³fᵢ[ĝᵢ, ĝᵢ] = 2∇²pᵢ∇pᵢ + ∇pᵢ(ĝᵢᵀ∇²pᵢĝᵢ) = ∇tr ∇²fᵢ + (a term along ∇pᵢ, normal to the
    manifold). The normal term does not vanish: the trace-decrease rates ∇tr H·v differ by another factor.
    """
    d, N, rho = 4, 8, 0.1
    n = 2 * d
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(N, d, generator=gen, dtype=DT)
    beta = torch.tensor([1.0, -0.5, 0.8, 0.3], dtype=DT)
    y = X @ beta
    unbalance = torch.tensor([2.0, 0.5, 1.5, 0.7], dtype=DT)  # u ⊙ w = β with |u| ≠ |w|: not the flattest minimum
    theta0 = torch.cat([beta * unbalance, 1 / unbalance]) + 1e-5 * torch.randn(n, generator=gen, dtype=DT)

    def f(theta):
        return half_squared(X @ (theta[:d] * theta[d:]), y)

    grad_trace = grad(lambda th: torch.diagonal(hessian(f)(th)).sum())(theta0)
    J = jacrev(lambda th: X @ (th[:d] * th[d:]))(theta0)
    T = torch.eye(n, dtype=DT) - torch.linalg.pinv(J) @ J
    assert torch.linalg.matrix_rank(J) == d

    model = DiagonalNet(d)

    def closure():  # ∇f by hand: this test needs thousands of draws
        with torch.no_grad():
            r = (model(X) - y) / N
            model.u.grad, model.w.grad = (X * model.w).T @ r, (X * model.u).T @ r
        return torch.zeros((), dtype=DT)

    rs = RandomPerturbation(model.parameters(), lr=0.0, perturbation_lr=1.0, rho=rho, grad_threshold=1.0, seed=1)
    sa = SharpnessAwarePerturbation(model.parameters(), lr=0.0, perturbation_lr=1.0, rho=rho, grad_threshold=1.0,
                                    model=model, per_sample_loss=half_squared, seed=2)
    V_rs = drift_samples(rs, model, theta0, lambda o: o.step(closure), 4000) @ T
    V_sa = drift_samples(sa, model, theta0, lambda o: o.step((X, y)), 1000) @ T
    tangent = T @ grad_trace
    assert_mean_within(V_rs, rho ** 2 / (2 * n) * tangent)
    assert_mean_within(V_sa, rho ** 2 / 2 * tangent)
    ratio = (V_sa.mean(0) @ tangent) / (V_rs.mean(0) @ tangent)
    assert ratio == pytest.approx(n, rel=0.15)  # measured 8.12 with these seeds (7.66-8.12 over 6 seed pairs)


def test_above_threshold_rs_is_exactly_gd_and_below_v_is_orthogonal_to_g():
    model = make_mlp()
    X, y = make_data()
    theta0 = flat_params(model)
    reference = copy.deepcopy(model)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1)
    ce_closure(reference, sgd, X, y)()
    sgd.step()

    opt = RandomPerturbation(model.parameters(), lr=0.1, perturbation_lr=1.0, rho=0.05, grad_threshold=1e-8, seed=0)
    opt.step(ce_closure(model, opt, X, y))
    assert not opt.last_perturbed and opt.num_grad_evals == 1
    assert torch.equal(flat_params(model), flat_params(reference))

    set_flat(model, theta0)
    opt = RandomPerturbation(model.parameters(), lr=0.0, perturbation_lr=1.0, rho=0.05, grad_threshold=1e3, seed=0)
    opt.step(ce_closure(model, opt, X, y))
    assert opt.last_perturbed and opt.num_grad_evals == 2
    v = theta0 - flat_params(model)
    set_flat(model, theta0)
    ce_closure(model, opt, X, y)()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert v.norm() > 1e-3 and abs(v @ g) < 1e-15 * v.norm() * g.norm() * 10


def test_above_threshold_sa_is_exactly_gd_and_below_v_is_orthogonal_to_g():
    model = make_mlp()
    X, y = make_data()
    theta0 = flat_params(model)
    kwargs = dict(perturbation_lr=1.0, rho=0.05, model=model, per_sample_loss=F.cross_entropy, seed=0)
    opt = SharpnessAwarePerturbation(model.parameters(), lr=0.1, grad_threshold=1e-8, **kwargs)
    g = torch.cat([x.mean(0).reshape(-1) for x in opt.per_sample_gradients(X, y)[0]])
    opt.step((X, y))
    assert not opt.last_perturbed and opt.num_grad_evals == 1
    assert torch.equal(flat_params(model), theta0.add(g, alpha=-0.1))
    set_flat(model, theta0)
    ce_closure(model, opt, X, y)()
    torch.testing.assert_close(g, torch.cat([p.grad.reshape(-1) for p in model.parameters()]), rtol=0, atol=1e-14)

    set_flat(model, theta0)
    opt = SharpnessAwarePerturbation(model.parameters(), lr=0.0, grad_threshold=1e3, **kwargs)
    opt.step((X, y))
    assert opt.last_perturbed and opt.num_grad_evals == 2
    v = theta0 - flat_params(model)
    assert v.norm() > 1e-3 and abs(v @ g) < 1e-15 * v.norm() * g.norm() * 10


def bn_mlp() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).to(DT)
    model(torch.randn(16, 5, dtype=DT))  # non-trivial running statistics
    return model.eval()


@pytest.mark.parametrize("make_model", [make_mlp, bn_mlp], ids=["mlp", "batchnorm-eval"])
def test_sa_per_sample_gradients_and_v_match_a_python_loop(make_model):
    model = make_model()
    X, y = make_data(n=12)
    rho = 0.05
    reference = per_sample_gradients(model, X, y, F.cross_entropy)
    opt = SharpnessAwarePerturbation(model.parameters(), lr=0.0, perturbation_lr=1.0, rho=rho, grad_threshold=1e3,
                                     model=model, per_sample_loss=F.cross_entropy, seed=4)
    per_sample, losses = opt.per_sample_gradients(X, y)
    got = torch.cat([x.reshape(X.shape[0], -1) for x in per_sample], dim=1)
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-12)
    torch.testing.assert_close(losses, F.cross_entropy(model(X), y, reduction="none"), rtol=0, atol=1e-12)

    theta0 = flat_params(model)
    opt.step((X, y))
    v = theta0 - flat_params(model)
    g_hat = reference.mean(0) / reference.mean(0).norm()
    candidates = []  # P⊥ ∇fᵢ(θ + σρĝᵢ) for every sample i and sign σ: the step must have taken one of them
    for i in range(X.shape[0]):
        for sign in (1.0, -1.0):
            set_flat(model, theta0 + sign * rho * reference[i] / reference[i].norm())
            g_i = per_sample_gradients(model, X[i:i + 1], y[i:i + 1], F.cross_entropy)[0]
            candidates.append(g_i - (g_i @ g_hat) * g_hat)
    assert min(float((v - c).abs().max()) for c in candidates) < 1e-12


def small_digits(n=None):
    X, y = digits("train")
    return (X, y) if n is None else (X[:n], y[:n])


def test_rs_lowers_the_digits_mlp_loss():
    X, y = small_digits()
    torch.manual_seed(0)
    model = mlp((64, 32, 10))
    opt = RandomPerturbation(model.parameters(), lr=0.5, perturbation_lr=0.05, rho=0.05, grad_threshold=float("inf"),
                             seed=0)
    closure = ce_closure(model, opt, X, y)
    first = float(closure().detach())
    for _ in range(30):
        opt.step(closure)
    assert opt.last_perturbed and float(closure().detach()) < 0.5 * first


def test_sa_lowers_the_digits_mlp_loss():
    X, y = small_digits(256)
    torch.manual_seed(0)
    model = mlp((64, 32, 10))
    opt = SharpnessAwarePerturbation(model.parameters(), lr=0.5, perturbation_lr=0.05, rho=0.05,
                                     grad_threshold=float("inf"), model=model, per_sample_loss=F.cross_entropy, seed=0)
    first = float(opt.step((X, y)))
    for _ in range(30):
        loss = opt.step((X, y))
    assert opt.last_perturbed and float(loss) < 0.5 * first


def rs_factory(model):
    return RandomPerturbation(model.parameters(), lr=0.1, perturbation_lr=0.5, rho=0.05, grad_threshold=1e3, seed=7)


def sa_factory(model):
    return SharpnessAwarePerturbation(model.parameters(), lr=0.1, perturbation_lr=0.5, rho=0.05, grad_threshold=1e3,
                                      model=model, per_sample_loss=F.cross_entropy, seed=7)


def stepper(opt, model, X, y):
    if isinstance(opt, SharpnessAwarePerturbation):
        return lambda: opt.step((X, y))
    return lambda: opt.step(ce_closure(model, opt, X, y))


@pytest.mark.parametrize("factory", [rs_factory, sa_factory], ids=["RS", "SA"])
def test_state_dict_resumes_to_the_identical_next_step(factory):
    X, y = make_data()
    model = make_mlp()
    opt = factory(model)
    for _ in range(3):
        stepper(opt, model, X, y)()
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    stepper(opt, model, X, y)()

    fresh = make_mlp(seed=5)
    fresh.load_state_dict(saved_model)
    resumed = factory(fresh)
    resumed.load_state_dict(saved_opt)
    stepper(resumed, fresh, X, y)()
    assert opt.last_perturbed and torch.equal(flat_params(fresh), flat_params(model))
    assert resumed.num_grad_evals == opt.num_grad_evals == 8


@pytest.mark.parametrize("factory", [rs_factory, sa_factory], ids=["RS", "SA"])
def test_parameter_groups_take_their_own_step_sizes(factory):
    """Same seed and rho: one run with lr = 0, perturbation_lr = 1 gives v and g; two groups must then move by
    −lr_k g − perturbation_lr_k v each."""
    X, y = make_data()
    model = make_mlp()
    theta0 = flat_params(model)
    probe = factory(model)
    for group in probe.param_groups:
        group.update(lr=0.0, perturbation_lr=1.0)
    stepper(probe, model, X, y)()
    v = theta0 - flat_params(model)
    set_flat(model, theta0)
    ce_closure(model, probe, X, y)()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    set_flat(model, theta0)
    opt = factory(model)
    first, second = list(model.parameters())[:2], list(model.parameters())[2:]
    opt.param_groups.clear()
    opt.add_param_group({"params": first, "lr": 0.2, "perturbation_lr": 0.3, "rho": 0.05})
    opt.add_param_group({"params": second, "lr": 0.05, "perturbation_lr": 2.0, "rho": 0.05})
    stepper(opt, model, X, y)()
    split = sum(p.numel() for p in first)
    lr = torch.cat([torch.full((split,), 0.2, dtype=DT), torch.full((theta0.numel() - split,), 0.05, dtype=DT)])
    plr = torch.cat([torch.full((split,), 0.3, dtype=DT), torch.full((theta0.numel() - split,), 2.0, dtype=DT)])
    torch.testing.assert_close(flat_params(model), theta0 - lr * g - plr * v, rtol=0, atol=1e-14)


def test_a_group_with_rho_zero_is_not_perturbed():
    X, y = make_data()
    model = make_mlp()
    theta0 = flat_params(model)
    first, second = list(model.parameters())[:2], list(model.parameters())[2:]
    opt = RandomPerturbation([{"params": first}, {"params": second, "rho": 0.0}], lr=0.1, perturbation_lr=0.1,
                             rho=0.05, grad_threshold=1e3, seed=0)
    seen = []
    closure = ce_closure(model, opt, X, y)
    opt.step(lambda: seen.append(flat_params(model)) or closure())
    split = sum(p.numel() for p in first)
    moved = seen[1] - theta0
    assert torch.equal(moved[split:], torch.zeros_like(moved[split:]))
    assert 0 < moved[:split].norm() < 0.05  # ρ times part of a unit vector over all parameters


def test_grad_eval_counts():
    X, y = make_data()
    model = make_mlp()
    calls = []
    opt = RandomPerturbation(model.parameters(), lr=0.01, perturbation_lr=0.1, rho=0.05, grad_threshold=1e3, seed=0)
    closure = ce_closure(model, opt, X, y)
    for threshold, added in ((1e3, 2), (0.0, 1), (1e3, 2)):
        opt.grad_threshold = threshold
        before = opt.num_grad_evals
        opt.step(lambda: calls.append(1) or closure())
        assert opt.num_grad_evals - before == added
    assert opt.num_grad_evals == len(calls) == 5
    sa = sa_factory(model)
    sa.step((X, y))
    sa.grad_threshold = 0.0
    sa.step((X, y))
    assert sa.num_grad_evals == 3
    assert RandomPerturbation.grad_evals_per_step == SharpnessAwarePerturbation.grad_evals_per_step == 2


@pytest.mark.parametrize("name, value", [("lr", -0.1), ("perturbation_lr", -1.0), ("rho", -0.01),
                                         ("grad_threshold", -1.0), ("grad_threshold", "small"), ("rho", True)])
def test_bad_arguments_name_the_argument(name, value):
    model = make_mlp()
    kwargs = dict(lr=0.1, perturbation_lr=0.1, rho=0.05, grad_threshold=1.0)
    kwargs[name] = value
    with pytest.raises(OptionError, match=name):
        RandomPerturbation(model.parameters(), **kwargs)
    with pytest.raises(OptionError, match=name):
        SharpnessAwarePerturbation(model.parameters(), model=model, per_sample_loss=F.cross_entropy, **kwargs)


def test_bad_setups_raise_clear_errors():
    model = make_mlp()
    X, y = make_data()
    kwargs = dict(lr=0.1, perturbation_lr=0.1, rho=0.05, grad_threshold=1.0)
    with pytest.raises(OptionError, match="grad_threshold"):
        RandomPerturbation([{"params": model.parameters(), "grad_threshold": 0.1}], **kwargs)
    with pytest.raises(OptionError, match="rho"):
        RandomPerturbation([{"params": model.parameters(), "rho": -1.0}], **kwargs)
    with pytest.raises(OptionError, match="closure"):
        RandomPerturbation(model.parameters(), **kwargs).step()
    with pytest.raises(OptionError, match=r"params.*missing \['2.bias'\]"):
        SharpnessAwarePerturbation(list(model.parameters())[:3], model=model, per_sample_loss=F.cross_entropy, **kwargs)
    with pytest.raises(OptionError, match="model"):
        SharpnessAwarePerturbation(model.parameters(), model=lambda x: x, per_sample_loss=F.cross_entropy, **kwargs)
    with pytest.raises(OptionError, match="per_sample_loss"):
        SharpnessAwarePerturbation(model.parameters(), model=model, per_sample_loss="ce", **kwargs)
    sa = SharpnessAwarePerturbation(model.parameters(), model=model, per_sample_loss=F.cross_entropy, **kwargs)
    with pytest.raises(OptionError, match="batch"):
        sa.step(ce_closure(model, sa, X, y))


def test_sa_runs_a_dropout_model_in_train_mode():
    """Train-mode dropout draws a mask per sample inside vmap (randomness="different")."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.3), nn.Tanh(), nn.Linear(8, 3)).to(DT).train()
    X, y = make_data()
    opt = SharpnessAwarePerturbation(model.parameters(), lr=0.1, perturbation_lr=0.1, rho=0.05, grad_threshold=1e3,
                                     model=model, per_sample_loss=F.cross_entropy, seed=0)
    theta0 = flat_params(model)
    assert torch.isfinite(opt.step((X, y)))
    assert opt.last_perturbed and not torch.equal(flat_params(model), theta0)

