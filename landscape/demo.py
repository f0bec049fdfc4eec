"""The main job on a built-in example: train a small MLP on digits, then measure its curvature."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from landscape.data import digits
from landscape.linalg import DensityResult, EigenResult, TraceResult, lanczos, spectral_density, trace
from landscape.models import mlp
from landscape.operators.hessian import HessianOperator


@dataclass(frozen=True)
class DemoReport:
    """Everything the demo measured, plus the trained model's fit."""

    top: EigenResult
    bottom: EigenResult
    trace: TraceResult
    density: DensityResult
    train_loss: float
    train_accuracy: float
    num_params: int
    seconds: float


def train_digits_mlp(*, steps: int = 200, lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """The W1 recipe: MLP 64-128-128-10 (tanh), full-batch Adam on the digits training split."""
    torch.manual_seed(seed)
    model = mlp((64, 128, 128, 10))
    X, y = digits("train")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return model.eval()


def run_demo(
    *,
    top_k: int = 5,
    trace_matvecs: int = 99,
    num_probes: int = 10,
    num_steps: int = 80,
    train_steps: int = 200,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: Optional[str] = None,
    progress: Optional[bool] = None,
) -> DemoReport:
    """Train the digits MLP, then compute its top eigenpairs, smallest eigenvalue, trace and spectral density."""
    start = time.perf_counter()
    model = train_digits_mlp(steps=train_steps, seed=seed)
    X, y = digits("train")
    op = HessianOperator(model, nn.functional.cross_entropy, (X, y), dtype=dtype, device=device)
    with torch.no_grad():
        out = model(X)
        loss = float(nn.functional.cross_entropy(out, y))
        acc = float((out.argmax(1) == y).float().mean())
    return DemoReport(
        top=lanczos(op, top_k, seed=seed, progress=progress),
        bottom=lanczos(op, 1, which="smallest", seed=seed, progress=progress),
        trace=trace(op, trace_matvecs, seed=seed),
        density=spectral_density(op, num_probes=num_probes, num_steps=num_steps, seed=seed, progress=progress),
        train_loss=loss,
        train_accuracy=acc,
        num_params=op.shape[0],
        seconds=time.perf_counter() - start,
    )


def format_report(report: DemoReport) -> str:
    """A plain-text table of the demo's results."""
    rows = [("quantity", "value", "how")]
    rows.append(("parameters", f"{report.num_params}", "MLP 64-128-128-10, tanh, digits train split"))
    rows.append(("train loss / accuracy", f"{report.train_loss:.4f} / {report.train_accuracy:.3f}", "cross-entropy"))
    k = len(report.top.values)
    for i, (value, res) in enumerate(zip(report.top.values, report.top.relative_residuals), 1):
        cost = f", {report.top.num_matvecs} HVPs for top-{k}" if i == 1 else ""
        rows.append((f"lambda_{i}", f"{value:.6g}", f"Lanczos, rel. residual {res:.1e}{cost}"))
    rows.append(("lambda_min", f"{report.bottom.values[0]:.6g}",
                 f"Lanczos, rel. residual {report.bottom.relative_residuals[0]:.1e}, "
                 f"{report.bottom.num_matvecs} HVPs"))
    t = report.trace
    rows.append(("trace", f"{t.estimate:.5g} ± {t.stderr:.2g}", f"{t.method}, {t.num_matvecs} HVPs"))
    rows.append(("trace / n", f"{t.normalized:.4g}", "normalized trace"))
    d = report.density
    negative = float(np.nansum(np.where(np.nan_to_num(d.nodes) < 0, d.weights, 0.0)) / d.num_probes)
    rows.append(("spectrum range", f"[{np.nanmin(d.nodes):.4g}, {np.nanmax(d.nodes):.4g}]",
                 f"SLQ {d.num_probes} probes x {d.num_steps} steps, {d.num_matvecs} HVPs"))
    rows.append(("negative mass", f"{negative:.3f}", "share of the spectral density below zero"))
    rows.append(("wall time", f"{report.seconds:.1f} s", "training and analysis"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
