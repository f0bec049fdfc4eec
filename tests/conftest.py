"""Shared fixtures: a small float64 MLP with data, dense Hessian references and matrices with a chosen spectrum."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian


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


def dense_hessian(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    loss: Callable = mean_ce,
    names: Optional[Sequence[str]] = None,
) -> torch.Tensor:
    """Dense Hessian of ``loss(model(X), y)`` w.r.t. the named parameters (all by default), flattened in
    ``named_parameters`` order, computed independently of ``landscape`` with ``torch.func.hessian``.

    The model runs in whatever mode it is in (call ``model.eval()`` first for BatchNorm / Dropout models).
    """
    named = dict(model.named_parameters())
    names = list(named) if names is None else list(names)
    shapes = [named[n].shape for n in names]
    sizes = [s.numel() for s in shapes]
    fixed = {k: v.detach() for k, v in list(model.named_parameters()) + list(model.named_buffers()) if k not in names}
    flat0 = torch.cat([named[n].detach().reshape(-1) for n in names])

    def f(flat: torch.Tensor) -> torch.Tensor:
        state = dict(fixed)
        for name, part, shape in zip(names, flat.split(sizes), shapes):
            state[name] = part.view(shape)
        return loss(functional_call(model, state, (X,)), y)

    H = hessian(f)(flat0)
    return H.detach()


def spectrum_matrix(eigenvalues, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Q diag(eigenvalues) Qᵀ with Q a seeded random orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    lam = torch.as_tensor(np.asarray(eigenvalues, dtype=np.float64), dtype=torch.float64)
    n = lam.shape[0]
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(n, n, generator=gen, dtype=torch.float64)
    Q, R = torch.linalg.qr(G)
    Q = Q * torch.sign(torch.diagonal(R))
    A = (Q * lam) @ Q.T
    A = 0.5 * (A + A.T)
    return A.to(dtype)


def random_symmetric(n: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A dense random symmetric (Wigner-like) matrix."""
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return ((G + G.T) / 2).to(dtype)


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
