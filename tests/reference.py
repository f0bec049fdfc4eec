"""Every dense truth the tests check landscape against, computed independently of it (torch.func, torch.linalg and
plain loops, in float64): Hessians, GGNs, per-sample gradients (the empirical Fisher), input-output Jacobians,
eigenpairs, the SOFIM direction, and the symmetric matrices with known spectra the algorithms are tried on.

Fixtures stay in ``conftest.py`` (which calls these); nothing here imports ``landscape``.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev

# -- matrices with a known spectrum --------------------------------------------------------------------------------


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


def dense_pairs(A: torch.Tensor, which: str, k: int) -> tuple[np.ndarray, torch.Tensor]:
    """Reference eigenpairs (``torch.linalg.eigh``) in the order lanczos reports them."""
    evals, evecs = torch.linalg.eigh(A)
    order = torch.arange(A.shape[0])
    if which == "largest":
        idx = order.flip(0)[:k]
    elif which == "smallest":
        idx = order[:k]
    else:  # ⌈k/2⌉ from the top (descending), then ⌊k/2⌋ from the bottom, the smallest last
        idx = torch.cat([order.flip(0)[: (k + 1) // 2], order[: k // 2].flip(0)])
    return evals[idx].numpy(), evecs[:, idx].T


def true_residuals(A: torch.Tensor, result) -> np.ndarray:
    """‖A v − λ v‖ of each eigenpair of ``result`` (an EigenResult with vectors), from the dense matrix."""
    V = result.vectors
    return ((V @ A.T) - torch.as_tensor(result.values)[:, None] * V).norm(dim=1).numpy()


# -- curvature of a model ------------------------------------------------------------------------------------------


def dense_hessian(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    loss: Callable = nn.functional.cross_entropy,
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


def as_function(model: nn.Module, X: torch.Tensor, names: Optional[Sequence[str]] = None):
    """``flat ↦ model(X)`` over the named parameters (all by default) and the flat starting point."""
    named = dict(model.named_parameters())
    names = list(named) if names is None else list(names)
    shapes = [named[n].shape for n in names]
    fixed = {k: v.detach() for k, v in list(model.named_parameters()) + list(model.named_buffers()) if k not in names}

    def f(flat: torch.Tensor) -> torch.Tensor:
        state = dict(fixed)
        state.update({n: t.view(s) for n, t, s in zip(names, flat.split([s.numel() for s in shapes]), shapes)})
        return functional_call(model, state, (X,))

    return f, torch.cat([named[n].detach().reshape(-1) for n in names])


def dense_ggn(model: nn.Module, X: torch.Tensor, y: torch.Tensor, loss: Callable = nn.functional.cross_entropy,
              names: Optional[Sequence[str]] = None) -> torch.Tensor:
    """Jᵀ H_out J with J = jacrev of the outputs and H_out = torch.func.hessian of the loss in the outputs."""
    f, flat0 = as_function(model, X, names)
    J = jacrev(f)(flat0).reshape(-1, flat0.numel())
    out = f(flat0).detach()
    H = hessian(lambda a: loss(a, y))(out).reshape(out.numel(), out.numel())
    return J.T @ H @ J


def per_sample_gradients(model: nn.Module, X: torch.Tensor, y: torch.Tensor, loss: Callable) -> torch.Tensor:
    """(N, n): the gradient of each sample's own loss ``loss(model(x_i[None]), y_i[None])``, one
    ``torch.autograd.grad`` call per sample (the rows of the empirical Fisher GᵀG / N)."""
    rows = []
    for i in range(X.shape[0]):
        value = loss(model(X[i:i + 1]), y[i:i + 1])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, list(model.parameters()))]))
    return torch.stack(rows)


# -- input-output Jacobians ----------------------------------------------------------------------------------------


def dense_jacobians(fn, X: torch.Tensor) -> torch.Tensor:
    """(N, C, n): each sample's Jacobian by torch.func.jacrev, one sample at a time."""
    rows = [jacrev(lambda x: fn(x.unsqueeze(0))[0].reshape(-1))(x).reshape(-1, x.numel()) for x in X]
    return torch.stack(rows).detach()


def dense_norms(fn, X: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The Frobenius and spectral norms of each sample's dense Jacobian."""
    J = dense_jacobians(fn, X)
    return torch.linalg.matrix_norm(J).numpy(), torch.linalg.matrix_norm(J, 2).numpy()


# -- SOFIM ---------------------------------------------------------------------------------------------------------


def momentum_hat(grads: list[torch.Tensor], beta: float) -> torch.Tensor:
    """m̂ = (1 − β) Σ_s β^(t−s) g_s / (1 − βᵗ), summed from the gradient history."""
    t = len(grads)
    return sum((1 - beta) * beta ** (t - s) * g for s, g in enumerate(grads, start=1)) / (1 - beta**t)


def dense_direction(grads: list[torch.Tensor], beta: float, rho: float) -> torch.Tensor:
    """Solve (m̂m̂ᵀ + ρI) d = m̂ densely."""
    m_hat = momentum_hat(grads, beta)
    F = torch.outer(m_hat, m_hat) + rho * torch.eye(m_hat.numel(), dtype=m_hat.dtype)
    return torch.linalg.solve(F, m_hat)
