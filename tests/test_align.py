"""Weight matching (Ainsworth et al. 2023): a permutation of hidden units leaves the function unchanged, a randomly
permuted copy of a network is aligned back exactly (barrier 0), and what is not supported is refused by name."""

from __future__ import annotations

import argparse
import contextlib
import io

import numpy as np
import pytest
import torch
from torch import nn

from conftest import mean_ce
from landscape import store
from landscape.align import match_permutations, permute_model, random_permutations, weight_matching
from landscape.checkpoints import save_checkpoint
from landscape.data import load_data
from landscape.cli import join_grid_values
from landscape.cli import surface as cli_surface
from landscape.errors import OptionError, command_line_names
from landscape.models import resnet18
from landscape.surface import checkpoint_line, evaluate_surface, flat_parameters


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 12), nn.ReLU(), nn.Dropout(0.1),
                         nn.Linear(12, 8), nn.GELU(), nn.Linear(8, 3)).double().eval()


def _cnn() -> nn.Sequential:
    """Conv-BN-ReLU twice, pooling, Flatten into Linear layers; BatchNorm with non-trivial statistics."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 6, 3), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Sequential(nn.Conv2d(6, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU()),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(5 * 3 * 3, 7), nn.ReLU(), nn.Linear(7, 3))
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=gen))
            module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
            module.weight.data.copy_(torch.randn(module.num_features, generator=gen))
            module.bias.data.copy_(torch.randn(module.num_features, generator=gen))
    return model.double().eval()


CASES = {"mlp": (_mlp, (10, 5)), "cnn": (_cnn, (4, 2, 8, 8))}


@pytest.mark.parametrize("name", CASES)
def test_a_permuted_copy_computes_the_same_function_and_is_aligned_back_exactly(name):
    factory, shape = CASES[name]
    model = factory()
    inputs = torch.randn(*shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    perms = random_permutations(model, seed=3)
    assert any(not np.array_equal(p, np.arange(len(p))) for p in perms)
    permuted = permute_model(model, perms)
    state, other = model.state_dict(), permuted.state_dict()
    assert any(not torch.equal(state[k], other[k]) for k in state)  # the copy differs, the model is untouched
    with torch.no_grad():
        assert torch.allclose(permuted(inputs), model(inputs), rtol=0, atol=1e-12)  # the same function
    aligned = weight_matching(model, permuted, seed=0)
    for key, value in aligned.state_dict().items():  # every parameter and BatchNorm statistic back in place
        assert torch.equal(value, state[key]), key
    found = match_permutations(model, permuted)
    assert all(np.array_equal(np.asarray(p)[q], np.arange(len(p))) for p, q in zip(perms, found))  # q = p⁻¹


def test_barrier_to_the_aligned_copy_is_zero():
    model = _mlp()
    X = torch.randn(30, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(5))
    permuted = permute_model(model, random_permutations(model, seed=6))
    grid = np.linspace(0, 1, 11)
    a = flat_parameters(model)
    before = evaluate_surface(model, mean_ce, (X, y), checkpoint_line(a, flat_parameters(permuted)), grid,
                              dtype=torch.float64, progress=False)
    after = evaluate_surface(model, mean_ce, (X, y), checkpoint_line(a, flat_parameters(
        weight_matching(model, permuted))), grid, dtype=torch.float64, progress=False)
    assert before.barrier > 1e-3 and abs(after.barrier) <= 1e-12
    assert np.allclose(after.loss, after.loss[0], rtol=0, atol=1e-12)  # the whole path is one network


def test_matching_two_different_networks_keeps_the_function_and_raises_the_objective():
    a, b = _cnn(), _cnn()
    torch.manual_seed(9)
    for p in b.parameters():
        p.data.normal_()
    inputs = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    aligned = weight_matching(a, b, seed=1)
    with torch.no_grad():
        assert torch.allclose(aligned(inputs), b(inputs), rtol=0, atol=1e-12)

    def similarity(model: nn.Module) -> float:  # Σ ⟨W_A, W⟩ over the parameters, what weight matching maximizes
        with torch.no_grad():
            return sum(float((p * q).sum()) for p, q in zip(a.parameters(), model.parameters()))

    assert similarity(aligned) > similarity(b)


def test_unsupported_networks_are_refused_by_name():
    with pytest.raises(OptionError, match="BasicBlock"):
        weight_matching(resnet18(width=4), resnet18(width=4))
    with pytest.raises(OptionError, match="LayerNorm"):
        model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
        weight_matching(model, model)
    with pytest.raises(OptionError, match="groups=2"):
        model = nn.Sequential(nn.Conv2d(2, 4, 1, groups=2), nn.Conv2d(4, 2, 1))
        weight_matching(model, model)
    with pytest.raises(OptionError, match="supports nn.Sequential"):
        weight_matching(nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.raises(OptionError, match="one architecture"):
        weight_matching(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), nn.Sequential(nn.Linear(3, 5),
                                                                                        nn.Linear(5, 2)))


def test_cli_align_records_the_barrier_before_and_after(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 10))
    X, y = load_data("digits", subset=60, seed=0).batches
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(100):  # a minimum: the path to a permuted copy of it rises above the chord
        optimizer.zero_grad()
        mean_ce(model(X), y).backward()
        optimizer.step()
    a = save_checkpoint(tmp_path / "a.pt", model, model_spec="mlp", model_kwargs={"sizes": [64, 6, 10]}).path
    permuted = permute_model(model, random_permutations(model, seed=1))
    b = save_checkpoint(tmp_path / "b.pt", permuted, model_spec="mlp", model_kwargs={"sizes": [64, 6, 10]}).path
    output = tmp_path / "aligned.h5"
    argv = join_grid_values(["surface", str(a), str(b), "--data", "digits", "--subset", "60", "--quiet", "--dtype",
                             "float64", "--directions", "line", "--align", "--grid", "-0.5:1.5:9", "-o", str(output)])
    parser = argparse.ArgumentParser()
    cli_surface.add_parser(parser.add_subparsers(dest="command"))
    printed = io.StringIO()
    with command_line_names(), contextlib.redirect_stdout(printed):
        assert cli_surface.run(parser.parse_args(argv), argv) == 0
    stored = store.read_results(output)["a"].results["surface"]
    assert stored.aligned is True and abs(stored.barrier) <= 1e-12 and stored.barrier_unaligned > 1e-3
    assert np.allclose(stored.loss, stored.loss[0], rtol=0, atol=1e-12)
    assert f"before aligning B to A: {stored.barrier_unaligned:.4g}" in printed.getvalue()
