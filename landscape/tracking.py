"""Curvature measured during training, cheaply enough to leave on: λmax by Lanczos warm-started from the previous
top eigenvector, the trace by Hutch++, loss and accuracy on the train and test sets, and the gradient norm."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from landscape.analysis import fit
from landscape.linalg import hutchpp, lanczos
from landscape.operators.hessian import HessianOperator


@dataclass(frozen=True)
class TrackerSettings:
    """What each curvature record measures."""

    top_k: int = 1
    tol: float = 1e-4  # Lanczos relative residual; λmax's own error is about residual²/gap, ≈1e-6 relative here
    trace_matvecs: int = 12  # Hutch++ products; 0 turns the trace off
    warm_start: bool = True
    dtype: Optional[torch.dtype] = None
    device: Optional[str] = None
    seed: int = 0


class CurvatureTracker:
    """Measures a model's curvature at chosen steps; keeps the last top eigenvector to warm-start the next Lanczos.

    Every random draw is seeded from ``(settings.seed, step)``, so a resumed run repeats the records of an
    uninterrupted one exactly (the warm-start vector travels in :meth:`state_dict`).
    """

    def __init__(self, loss: Any, train_data: Any, test_data: Any = None,
                 settings: TrackerSettings = TrackerSettings()) -> None:
        self.loss = loss
        self.train_data = train_data
        self.test_data = test_data
        self.settings = settings
        self.previous: Optional[torch.Tensor] = None

    def measure(self, model: nn.Module, step: int) -> dict[str, Any]:
        """One record: λ1..λk, trace ± stderr, train/test loss and accuracy, gradient norm, products and seconds."""
        s = self.settings
        start = time.perf_counter()
        op = HessianOperator(model, self.loss, self.train_data, dtype=s.dtype, device=s.device)
        v0 = self.previous if s.warm_start and self.previous is not None else None
        eig = lanczos(op, min(s.top_k, op.shape[0]), tol=s.tol, v0=v0, seed=_seed(s.seed, step), progress=False)
        self.previous = eig.vectors[0].detach().clone()
        eig_matvecs = op.num_matvecs
        record: dict[str, Any] = {"step": step, "eigenvalues": eig.values.copy(), "lambda_max": float(eig.values[0]),
                                  "eig_matvecs": eig_matvecs}
        if s.trace_matvecs:
            tr = hutchpp(op, max(3, s.trace_matvecs), seed=_seed(s.seed, step) + 1)
            record.update(trace=tr.estimate, trace_stderr=tr.stderr)
        op.release()
        record["train_loss"], record["train_accuracy"] = fit(model, self.loss, self.train_data,
                                                             dtype=op.dtype, device=s.device)
        if self.test_data is not None:
            record["test_loss"], record["test_accuracy"] = fit(model, self.loss, self.test_data,
                                                               dtype=op.dtype, device=s.device)
        record["grad_norm"] = float(op.gradient().norm())
        record["matvecs"] = op.num_matvecs
        record["seconds"] = time.perf_counter() - start
        return {key: value for key, value in record.items() if value is not None}  # no accuracy for regression

    def state_dict(self) -> dict[str, Any]:
        return {"previous": self.previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.previous = state.get("previous")


def _seed(seed: int, step: int) -> int:
    """A seed for the draws at ``step``: distinct per step, the same in a resumed run."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])
