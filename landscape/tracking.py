"""Curvature measured during training, cheaply enough to leave on: λmax by Lanczos warm-started from the previous
top eigenvector, the trace by Hutch++, loss and accuracy on the train and test sets, the gradient norm, and on request
λmax of other curvature matrices (GGN, Fisher) and the input-output Jacobian norms over the training data."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from landscape.distributed import LOCAL, Runtime
from landscape.errors import OptionError, option
from landscape.jacobian import jacobian_norms
from landscape.linalg import hutchpp, lanczos
from landscape.linalg.operator import LinearOperator
from landscape.operators.evaluation import fit
from landscape.operators.factory import CURVATURES, check_compile


@dataclass(frozen=True)
class TrackerSettings:
    """What each curvature record measures."""

    top_k: int = 1
    tol: float = 1e-4  # Lanczos relative residual; λmax's own error is about residual²/gap, ≈1e-6 relative here
    trace_matvecs: int = 12  # Hutch++ products; 0 turns the trace off
    warm_start: bool = True
    curvature: str = "hessian"  # the matrix of lambda_max and the trace: hessian, ggn, fisher, empirical-fisher
    also_lambda_max: tuple[str, ...] = ()  # other matrices whose λmax is recorded as lambda_max_<name>
    jacobian: bool = False  # record the mean and max Jacobian norms over the training data
    compile: bool = False  # torch.compile the Hessian-vector product (forward-over-reverse)
    dtype: Optional[torch.dtype] = None
    device: Optional[str] = None
    seed: int = 0

    def __post_init__(self) -> None:
        """Refuse values no record could be made with, before any run file exists (named as the caller spells them:
        ``top_k`` here, ``--track-top-k`` on the command line)."""
        if self.top_k < 1:
            raise OptionError(f"{option('top_k', '--track-top-k')} must be a positive integer, got {self.top_k}")
        if not (self.tol > 0 and math.isfinite(self.tol)):
            raise OptionError(f"{option('tol', '--track-tol')} must be a positive number, got {self.tol}")
        if self.trace_matvecs < 0:
            raise OptionError(f"{option('trace_matvecs', '--track-trace-matvecs')} must be 0 (no trace) or more, "
                              f"got {self.trace_matvecs}")
        if self.seed < 0:
            raise OptionError(f"{option('seed')} must be 0 or more, got {self.seed}")


def _check(settings: TrackerSettings) -> None:
    for kind in (settings.curvature, *settings.also_lambda_max):
        if kind not in CURVATURES:
            raise OptionError(f"curvature {kind!r} is not one of {', '.join(CURVATURES)} "
                              f"({option('curvature')}, {option('also_lambda_max', '--track-also')})")
    check_compile(settings.curvature, settings.compile)


class CurvatureTracker:
    """Measures a model's curvature at chosen steps; keeps the last top eigenvector to warm-start the next Lanczos.

    Every random draw is seeded from ``(settings.seed, step)``, so a resumed run repeats the records of an
    uninterrupted one exactly (the warm-start vector travels in :meth:`state_dict`).

    ``runtime``: across processes, called on every rank of the process group with the whole data; each rank works on
    its shard, products and sums are all-reduced, and every rank gets the same record (rank 0 writes it).
    """

    def __init__(self, loss: Any, train_data: Any, test_data: Any = None,
                 settings: TrackerSettings = TrackerSettings(), *, runtime: Runtime = LOCAL) -> None:
        self.loss = loss
        self.train_data = train_data
        self.test_data = test_data
        _check(settings)
        self.settings = settings
        self.runtime = runtime
        self.previous: dict[str, torch.Tensor] = {}

    def _lambda_max(self, kind: str, model: nn.Module, step: int) -> tuple[Any, LinearOperator]:
        """Top eigenpairs of the ``kind`` matrix, warm-started from its previous top eigenvector."""
        s = self.settings
        op = self.runtime.curvature_operator(kind, model, self.loss, self.train_data, dtype=s.dtype, device=s.device,
                                             seed=_seed(s.seed, step), compile=s.compile and kind == "hessian")
        v0 = self.previous.get(kind) if s.warm_start else None
        k = min(s.top_k if kind == s.curvature else 1, op.shape[0])
        eig = lanczos(op, k, tol=s.tol, v0=v0, seed=_seed(s.seed, step), progress=False)
        self.previous[kind] = eig.vectors[0].detach().clone()
        return eig, op

    def measure(self, model: nn.Module, step: int) -> dict[str, Any]:
        """One record: λ1..λk, trace ± stderr, train/test loss and accuracy, gradient norm, products and seconds."""
        s = self.settings
        start = time.perf_counter()
        eig, op = self._lambda_max(s.curvature, model, step)
        record: dict[str, Any] = {"step": step, "eigenvalues": eig.values.copy(), "lambda_max": float(eig.values[0]),
                                  "eig_matvecs": op.num_matvecs}
        if s.trace_matvecs:
            tr = hutchpp(op, max(3, s.trace_matvecs), seed=_seed(s.seed, step) + 1)
            record.update(trace=tr.estimate, trace_stderr=tr.stderr)
        op.release()
        matvecs = op.num_matvecs
        for kind in s.also_lambda_max:
            other, other_op = self._lambda_max(kind, model, step)
            record[f"lambda_max_{kind.replace('-', '_')}"] = float(other.values[0])
            matvecs += other_op.num_matvecs
        record["train_loss"], record["train_accuracy"] = self._fit(model, self.train_data, op.dtype)
        if self.test_data is not None:
            record["test_loss"], record["test_accuracy"] = self._fit(model, self.test_data, op.dtype)
        record["grad_norm"] = float(op.gradient().norm())
        if s.jacobian:
            record.update(self._jacobian(model, op.dtype, step))
        record["matvecs"] = matvecs
        record["seconds"] = time.perf_counter() - start
        return {key: value for key, value in record.items() if value is not None}  # no accuracy for regression

    def _fit(self, model: nn.Module, data: Any, dtype: torch.dtype) -> tuple[float, Optional[float]]:
        """Mean loss and accuracy over ``data`` (over every rank's shard of it, across processes)."""
        local = self.runtime.shard(data)
        value, accuracy = fit(model, self.loss, local, dtype=dtype, device=self.settings.device)
        return self.runtime.mean_fit(value, accuracy, local, device=self.settings.device or "cpu")

    def _jacobian(self, model: nn.Module, dtype: torch.dtype, step: int) -> dict[str, float]:
        """Mean and max per-sample Jacobian norms over the training data (all ranks' shards, across processes)."""
        s = self.settings
        jac = jacobian_norms(model, self.runtime.shard(self.train_data), dtype=dtype, device=s.device,
                             seed=_seed(s.seed, step), progress=False)
        device = s.device or "cpu"
        spectral_mean, frobenius_mean = self.runtime.weighted_mean([jac.spectral_mean, jac.frobenius_mean],
                                                                   len(jac.spectral), device=device)
        return {"jacobian_mean": spectral_mean, "jacobian_max": self.runtime.max(jac.spectral_max, device=device),
                "jacobian_frobenius_mean": frobenius_mean}

    @property
    def top_vector(self) -> Optional[torch.Tensor]:
        """The top eigenvector of the latest record's main matrix (flat, in the model's parameter order), or None."""
        return self.previous.get(self.settings.curvature)

    def state_dict(self) -> dict[str, Any]:
        return {"previous": dict(self.previous)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.previous = dict(state.get("previous") or {})


def _seed(seed: int, step: int) -> int:
    """A seed for the draws at ``step``: distinct per step, the same in a resumed run."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])
