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


def double_backward_hessian(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    loss: Callable = nn.functional.cross_entropy,
    names: Optional[Sequence[str]] = None,
) -> torch.Tensor:
    """Dense Hessian of ``loss(model(X), y)`` w.r.t. the named parameters (all by default), flattened in
    ``named_parameters`` order, by double backward: one ``torch.autograd.grad`` of each gradient entry, under the
    math attention kernel. The truth for models with a learnable LayerNorm or attention, where ``torch.func.hessian``
    (and ``jacrev(jacrev)``) give wrong Hessians on torch 2.13 and the fused attention kernels have no second
    derivative."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    named = dict(model.named_parameters())
    names = list(named) if names is None else list(names)
    leaves = [named[n].detach().clone().requires_grad_() for n in names]
    state = {k: v.detach() for k, v in list(model.named_parameters()) + list(model.named_buffers())}
    state.update(zip(names, leaves))
    with sdpa_kernel(SDPBackend.MATH):
        value = loss(functional_call(model, state, (X,)), y)
        grads = torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, leaves, create_graph=True)])
        rows = []
        for i in range(grads.numel()):
            row = torch.autograd.grad(grads[i], leaves, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(l) if r is None else r).reshape(-1)
                                   for r, l in zip(row, leaves)]))
    return torch.stack(rows).detach()


def double_backward_products(model: nn.Module, X: torch.Tensor, y: torch.Tensor, V: torch.Tensor,
                             loss: Callable = nn.functional.cross_entropy) -> torch.Tensor:
    """``V @ H`` for the Hessian H of ``loss(model(X), y)`` over all parameters (rows of V flattened in
    ``named_parameters`` order) by plain double backward under the math attention kernel, one backward per row: the
    rows of :func:`double_backward_hessian`'s matrix that V selects, for models too large to form it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = [n for n, _ in model.named_parameters()]
    leaves = [p.detach().clone().requires_grad_() for _, p in model.named_parameters()]
    state = {k: v.detach() for k, v in model.named_buffers()}
    state.update(zip(names, leaves))
    with sdpa_kernel(SDPBackend.MATH):
        grads = torch.autograd.grad(loss(functional_call(model, state, (X,)), y), leaves, create_graph=True)
        rows = []
        for v in V:
            parts = v.split([l.numel() for l in leaves])
            dot = sum((g * p.view_as(g)).sum() for g, p in zip(grads, parts))
            row = torch.autograd.grad(dot, leaves, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(l) if r is None else r).reshape(-1) for r, l in zip(row, leaves)]))
    return torch.stack(rows).detach()


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


def double_backward_ggn(model: nn.Module, X: torch.Tensor, y: torch.Tensor, loss: Callable) -> torch.Tensor:
    """Jᵀ H_out J over all parameters by plain autograd under the math attention kernel (no ``torch.func``, which is
    wrong on LayerNorm models): J one backward per output entry, H_out the double-backward Hessian of
    ``loss(·, y)`` in the outputs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    params = list(model.parameters())
    with sdpa_kernel(SDPBackend.MATH):
        out = model(X)
        flat = out.reshape(-1)
        J = torch.stack([torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(
            torch.autograd.grad(flat[i], params, retain_graph=True, allow_unused=True), params)])
            for i in range(flat.numel())])
    a = out.detach().requires_grad_()
    g = torch.autograd.grad(loss(a, y), a, create_graph=True)[0].reshape(-1)
    H = torch.stack([torch.autograd.grad(g[i], a, retain_graph=True)[0].reshape(-1) for i in range(g.numel())])
    return J.T @ H @ J


def per_token_gradients(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(B·(T−1), n): the gradient of each predicted token's own cross-entropy ``CE(logits[i, t], tokens[i, t+1])``
    (the rows of the per-token empirical Fisher of a language model), one backward each."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    params = list(model.parameters())
    rows = []
    with sdpa_kernel(SDPBackend.MATH):
        logits = model(tokens)
        for i in range(tokens.shape[0]):
            for t in range(tokens.shape[1] - 1):
                value = nn.functional.cross_entropy(logits[i, t], tokens[i, t + 1])
                grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
                rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                       for g, p in zip(grads, params)]))
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
