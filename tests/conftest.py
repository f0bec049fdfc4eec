"""Shared fixtures: a small float64 MLP with data, its dense Hessian and matrices with a chosen spectrum (the dense
references themselves are in ``reference.py``)."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn

from reference import dense_hessian, spectrum_matrix


def pytest_configure(config):
    # torch's forward-AD decompositions call the deprecated torch.jit.script on first use; not ours to fix
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(scope="session", autouse=True)
def single_threaded_blas():
    """Run torch's OpenMP pool and numpy's OpenBLAS pool with one thread each.

    The algorithms alternate small torch products with small numpy ``eigh`` calls; on a 2-core machine the two
    busy-waiting thread pools then contend and each Lanczos step costs ~10-20 ms instead of ~0.2 ms (measured:
    70-100x). The numbers computed are the same; only the wall time of the suite changes.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    threads = torch.get_num_threads()
    with threadpool_limits(limits=1):
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(threads)


def make_mlp(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """Linear(5, 8) - Tanh - Linear(8, 3), seeded (75 parameters)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def make_data(seed: int = 1, n: int = 40, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """X (n, 5) and integer labels in {0, 1, 2}."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=gen, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=gen)
    return X, y


def mean_ce(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(output, target)


@pytest.fixture
def mlp() -> nn.Sequential:
    return make_mlp()


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return make_data()


@pytest.fixture
def mlp_hessian(mlp, data) -> torch.Tensor:
    X, y = data
    return dense_hessian(mlp, X, y)


@pytest.fixture
def make_spectrum():
    """The ``spectrum_matrix`` helper as a fixture."""
    return spectrum_matrix


def mlp_closure(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> Callable[[], torch.Tensor]:
    """An optimizer closure: clear the gradients, mean cross-entropy on (X, y), backward, return the loss."""
    def closure() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        loss = mean_ce(model(X), y)
        loss.backward()
        return loss
    return closure
