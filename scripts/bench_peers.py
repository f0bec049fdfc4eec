"""Benchmark landscape side by side with PyHessian, hessian-eigenthings and curvlinops on the reference workloads.

    python scripts/bench_peers.py --bench ../shared/bench -o bench_peers.h5
    python scripts/bench_peers.py --quick                     # smoke run: W1 float32, tiny settings
    python scripts/bench_peers.py --model mlp --model-kwargs '{"sizes": [64, 32, 10]}' --checkpoint ckpt.pt \\
        --data digits --loss cross-entropy --dtypes float64 -o custom.h5

Tasks: top-1 and top-5 eigenvalues, the trace at an equal product budget over several seeds, and the spectral
density. Each peer runs with its defaults and with settings matched to ours; every Hessian-vector product is counted
(each library's product function is wrapped for the call and restored after) and every call is timed from the
operator's construction to the answer. Errors are against the exact float64 spectra of ``--bench`` (W1, W2), the
float64 eigsh values of W3 in its README, or, for a custom workload, scipy eigsh (float64, tol 0) on our operator.

Install the peers with ``pip install ".[peers]" torch==<the version you have>`` (curvlinops pulls torchvision, and
without the pin pip may replace torch); a peer that is not installed is skipped. A markdown table per task
and a verdict per workload × dtype × task are printed; the raw rows go to the ``/peers`` group of an HDF5 file
(``landscape plot FILE --kind peers`` draws error against time). Run on an idle machine: a second CPU-bound process
on the same cores slows every figure several-fold.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import importlib.metadata
import importlib.util
import itertools
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn

from _common import W3_TOP5, fmt_time, load_workload
from landscape import HessianOperator, lanczos, spectral_density, store, trace
from landscape.devices import dtype_name
from landscape.errors import OptionError

HERE = Path(__file__).resolve().parent
OURS = "landscape"
#: import name, distribution name and row label of each peer
PEERS = {
    "pyhessian": ("pyhessian", "pyhessian", "pyhessian"),
    "eigenthings": ("hessian_eigenthings", "hessian-eigenthings", "hessian-eigenthings"),
    "curvlinops": ("curvlinops", "curvlinops-for-pytorch", "curvlinops"),
}
TASKS = ("top1", "top5", "trace", "density")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
COLUMNS = ("workload", "dtype", "task", "library", "method", "settings", "seed", "seconds", "products", "error",
           "error_kind", "values", "note")
#: relative precision of the W3 values quoted in the README (7 significant digits)
W3_PRECISION = 1e-6


@dataclass
class Workload:
    """A model (float32, eval mode), one full batch, its criterion, and what is known exactly about its Hessian."""

    name: str
    model: nn.Module
    X: torch.Tensor
    y: torch.Tensor
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    top: Optional[np.ndarray] = None  # top eigenvalues, descending
    eigenvalues: Optional[np.ndarray] = None  # the whole spectrum (for the density)
    exact_trace: Optional[float] = None
    truth: str = ""  # where the reference values come from
    precision: float = 0.0  # relative precision of the reference top eigenvalues


@dataclass
class Settings:
    """What to run: the tasks and libraries, the trace budget and seeds, and the sizes of matched runs."""

    tasks: tuple[str, ...] = TASKS
    peers: tuple[str, ...] = tuple(PEERS)
    seeds: int = 5
    budget: int = 99
    density_shapes: tuple[tuple[int, int], ...] = ((10, 80), (1, 100))  # (probes, steps) of the matched runs
    density_seeds: int = 3  # SLQ's error is random too: every library's density runs this many seeds
    matched_tol: float = 1e-6
    max_iter: int = 1000  # matched iteration cap of the peers' power iterations


@dataclass
class Row:
    """One timed call (one seed of a trace estimate); NaN error where there is no reference or the call failed."""

    workload: str
    dtype: str
    task: str
    library: str
    method: str
    settings: str  # "defaults" or "matched" (ours: "ours")
    seed: int
    seconds: float
    products: int
    error: float
    error_kind: str
    values: str
    note: str = ""


@dataclass
class Case:
    """A workload in one dtype: the model and data converted once, shared by every library."""

    workload: Workload
    dtype: torch.dtype
    model: nn.Module = field(init=False)
    X: torch.Tensor = field(init=False)
    y: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.model = copy.deepcopy(self.workload.model).to(self.dtype).eval()
        X, y = self.workload.X, self.workload.y
        self.X = X.to(self.dtype) if X.is_floating_point() else X
        self.y = y.to(self.dtype) if y.is_floating_point() else y

    @property
    def model_size(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    def operator(self) -> HessianOperator:
        return HessianOperator(self.model, self.workload.criterion, (self.X, self.y))

    def clear_grads(self) -> None:
        """PyHessian leaves graph-carrying gradients in ``p.grad``; a later backward would add to them."""
        for p in self.model.parameters():
            p.grad = None

    def row(self, task: str, library: str, method: str, settings: str, **kw: Any) -> Row:
        return Row(self.workload.name, self.dtype_name, task, library, method, settings, **kw)


# -- counting and timing ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def counting(owner: Any, name: str, columns: Callable[..., int] = lambda *a, **k: 1) -> Iterator[list[int]]:
    """Count the products made through ``owner.name`` (a module function or a method), restoring it afterwards."""
    own = not isinstance(owner, type) or name in owner.__dict__  # else inherited: delete the patch afterwards
    original = getattr(owner, name)
    count = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        count[0] += columns(*args, **kwargs)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)
    try:
        yield count
    finally:
        if own:
            setattr(owner, name, original)
        else:
            delattr(owner, name)


def timed(call: Callable[[], Any], counter: Optional[Callable[[], Any]] = None) -> tuple[Any, float, int]:
    """``call()``'s result, its wall time and the products counted by ``counter`` (a context manager factory)."""
    with counter() if counter is not None else contextlib.nullcontext([-1]) as count:
        start = time.perf_counter()
        out = call()
        seconds = time.perf_counter() - start
    return out, seconds, count[0]


@contextlib.contextmanager
def torch_eig_shim() -> Iterator[None]:
    """``torch.eig`` (removed in torch 2) rebuilt from ``eigh`` for PyHessian's symmetric tridiagonal, only here."""
    missing = object()
    before = getattr(torch, "eig", missing)

    def eig(A: torch.Tensor, eigenvectors: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        values, vectors = torch.linalg.eigh(A)
        return torch.stack([values, torch.zeros_like(values)], dim=1), vectors

    torch.eig = eig
    try:
        yield
    finally:
        if before is missing:
            del torch.eig
        else:
            torch.eig = before


def failed(case: Case, task: str, library: str, method: str, note: str) -> Row:
    """The row of a call that raised: no time, no products, no error; the exception in the note."""
    return case.row(task, library, method, "defaults", seed=0, seconds=math.nan, products=-1, error=math.nan,
                    error_kind="failed", values="", note=note)


def first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"


# -- errors against the truth ----------------------------------------------------------------------------------------
def eigen_error(values: Sequence[float], top: Optional[np.ndarray]) -> float:
    """Largest relative error of the values (sorted descending) against the reference top eigenvalues."""
    values = np.sort(np.asarray(values, dtype=float))[::-1]
    if top is None or len(top) < len(values):
        return math.nan
    ref = top[: len(values)]
    return float(np.max(np.abs(values - ref) / np.abs(ref)))


def trace_error(estimate: float, exact: Optional[float]) -> float:
    return math.nan if exact is None else abs(estimate - exact) / abs(exact)


def density_error(nodes: np.ndarray, weights: np.ndarray, eigenvalues: Optional[np.ndarray]) -> float:
    """1-Wasserstein distance between the weighted nodes and the true eigenvalue distribution."""
    from scipy.stats import wasserstein_distance

    nodes, weights = np.asarray(nodes, dtype=float).ravel(), np.asarray(weights, dtype=float).ravel()
    keep = np.isfinite(nodes) & (weights > 0)
    if eigenvalues is None or not keep.any():
        return math.nan
    return float(wasserstein_distance(nodes[keep], eigenvalues, u_weights=weights[keep]))


def mean_text(nodes: np.ndarray, weights: np.ndarray, eigenvalues: Optional[np.ndarray]) -> str:
    nodes, weights = np.asarray(nodes, dtype=float).ravel(), np.asarray(weights, dtype=float).ravel()
    keep = np.isfinite(nodes) & (weights > 0)
    mean = float(np.sum(nodes[keep] * weights[keep]) / np.sum(weights[keep]))
    return f"mean {mean:.4g}" + (f" / true {eigenvalues.mean():.4g}" if eigenvalues is not None else "")


def values_text(values: Sequence[float]) -> str:
    """Descending, to 12 digits: enough to recompute the error from the stored text."""
    return ", ".join(f"{v:.12g}" for v in sorted((float(v) for v in values), reverse=True))


# -- workloads -------------------------------------------------------------------------------------------------------
def reference_workload(bench: Path, name: str) -> Workload:
    """W1, W2 or W3 of ``bench`` with the exact spectrum (W1, W2) or W3's eigsh top-5."""
    model, (X, y) = load_workload(bench, name)
    work = Workload(name, model, X, y, nn.functional.cross_entropy)
    truth = bench / f"{name}_truth.npz"
    if truth.is_file():
        exact = np.load(truth)
        work.eigenvalues = np.asarray(exact["eigenvalues"], dtype=float)
        work.top = work.eigenvalues[::-1][:5].copy()
        work.exact_trace = float(exact["trace"])
        work.truth = "dense float64 Hessian"
    elif name == "w3":
        work.top, work.truth, work.precision = W3_TOP5, "scipy eigsh float64 (README, 7 digits)", W3_PRECISION
    return work


def one_batch(batches: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The data as one (X, y) batch: every library then sees the same full-batch mean loss."""
    if isinstance(batches, tuple):
        return batches
    parts = list(batches)
    return torch.cat([b[0] for b in parts]), torch.cat([b[1] for b in parts])


def custom_workload(args: argparse.Namespace) -> Workload:
    """The user's model, checkpoint, data and loss, with a float64 eigsh reference for the top eigenvalues."""
    from scipy.sparse.linalg import eigsh

    from landscape.checkpoints import load_checkpoint, parse_model_kwargs
    from landscape.data import load_data
    from landscape.losses import resolve_loss
    from landscape.operators.functional import ModelLoss

    kwargs = parse_model_kwargs(args.model_kwargs) if args.model_kwargs is not None else None
    model = load_checkpoint(args.checkpoint, model_spec=args.model, model_kwargs=kwargs).model.eval()
    data = load_data(args.data, split=args.split)
    criterion = resolve_loss(args.loss, data.task)
    if isinstance(criterion, ModelLoss):
        raise OptionError("the peers take a criterion(outputs, targets); give --loss cross-entropy, mse or squared")
    X, y = one_batch(data.batches)
    work = Workload(Path(args.checkpoint).stem, model, X, y, criterion)
    op = HessianOperator(model, criterion, (X, y), dtype=torch.float64)
    k = min(5, op.shape[0] - 1)
    work.top = np.sort(eigsh(op.to_scipy(), k=k, which="LA", tol=0, return_eigenvectors=False))[::-1]
    work.truth = "scipy eigsh float64 tol 0 on our operator (no exact trace or spectrum)"
    return work


# -- ours ------------------------------------------------------------------------------------------------------------
def eigen_tols(dtype: torch.dtype) -> tuple[float, ...]:
    """Tolerances for our rows: loose, matched, and (float64) tight enough to reach the exact values."""
    return (1e-3, 1e-6, 1e-10) if dtype == torch.float64 else (1e-3, 1e-6)


def ours_eigen(case: Case, task: str, k: int) -> list[Row]:
    rows = []
    for tol in eigen_tols(case.dtype):
        result, seconds, _ = timed(lambda: lanczos(case.operator(), k, tol=tol, seed=0))
        rows.append(case.row(task, OURS, f"lanczos(k={k}, tol={tol:g})", "ours", seed=0, seconds=seconds,
                             products=result.num_matvecs, error=eigen_error(result.values, case.workload.top),
                             error_kind="max rel. err", values=values_text(result.values),
                             note="" if result.converged.all() else "not converged"))
    return rows


def ours_trace(case: Case, settings: Settings) -> list[Row]:
    rows = []
    for method in ("krylov", "hutch++", "hutchinson"):
        for seed in range(settings.seeds):
            result, seconds, _ = timed(lambda: trace(case.operator(), settings.budget, method=method, seed=seed))
            rows.append(case.row("trace", OURS, f"trace({settings.budget}, method={method})", "ours", seed=seed,
                                 seconds=seconds, products=result.num_matvecs,
                                 error=trace_error(result.estimate, case.workload.exact_trace),
                                 error_kind="abs rel. err", values=f"{result.estimate:.6g}"))
    return rows


def ours_density(case: Case, settings: Settings) -> list[Row]:
    rows = []
    for (probes, steps), seed in itertools.product(settings.density_shapes, range(settings.density_seeds)):
        result, seconds, _ = timed(lambda: spectral_density(case.operator(), num_probes=probes, num_steps=steps,
                                                            seed=seed))
        rows.append(case.row("density", OURS, f"spectral_density({probes} probes x {steps} steps)", "ours", seed=seed,
                             seconds=seconds, products=result.num_matvecs,
                             error=density_error(result.nodes, result.weights, case.workload.eigenvalues),
                             error_kind="W1 distance",
                             values=mean_text(result.nodes, result.weights, case.workload.eigenvalues)))
    return rows


# -- PyHessian -------------------------------------------------------------------------------------------------------
class PyHessian:
    """PyHessian 0.1: power iteration, Hutchinson and SLQ on a stored gradient graph (single batch, cuda=False)."""

    label = "pyhessian"
    NOTE = ("cuda=False (the default cuda=True needs a GPU); normalization divides by ‖v‖ + 1e-6, which biases the "
            "Rayleigh quotient by about 2e-6/λ relative")

    def __init__(self, case: Case) -> None:
        self.case = case
        # the module, not the class of the same name that the package's __init__ exports as pyhessian.hessian
        self.module = importlib.import_module("pyhessian.hessian")

    def warm_up(self) -> None:
        self._run(0, lambda h: self.module.hessian_vector_product(h.gradsH, h.params, h.params))

    def counter(self) -> Any:
        return counting(self.module, "hessian_vector_product")

    def _run(self, seed: int, method: Callable[[Any], Any]) -> tuple[Any, float, int]:
        """Build the hessian object (its gradient pass is timed) and call ``method`` on it, grads cleared around."""
        case = self.case
        case.clear_grads()
        torch.manual_seed(seed)
        try:
            return timed(lambda: method(self.module.hessian(case.model, case.workload.criterion,
                                                            data=(case.X, case.y), cuda=False)), self.counter)
        finally:
            case.clear_grads()

    def eigen(self, task: str, k: int, settings: Settings) -> list[Row]:
        rows = []
        for kind, kw in (("defaults", {}), ("matched", {"maxIter": settings.max_iter, "tol": settings.matched_tol})):
            (values, _), seconds, products = self._run(0, lambda h: h.eigenvalues(top_n=k, **kw))
            extra = "".join(f", {key}={value:g}" for key, value in kw.items())
            rows.append(self.case.row(task, self.label, f"eigenvalues(top_n={k}{extra})", kind, seed=0,
                                      seconds=seconds, products=products,
                                      error=eigen_error(values, self.case.workload.top), error_kind="max rel. err",
                                      values=values_text(values), note=self.NOTE))
        return rows

    def trace(self, settings: Settings) -> list[Row]:
        rows = []
        for kind, kw in (("defaults", {}), ("matched", {"maxIter": settings.budget, "tol": 0.0})):
            for seed in range(settings.seeds):
                samples, seconds, products = self._run(seed, lambda h: h.trace(**kw))
                estimate = float(np.mean(samples))
                extra = f"maxIter={settings.budget}, tol=0" if kw else "maxIter=100, tol=1e-3"
                rows.append(self.case.row("trace", self.label, f"trace({extra}) [Hutchinson]", kind, seed=seed,
                                          seconds=seconds, products=products,
                                          error=trace_error(estimate, self.case.workload.exact_trace),
                                          error_kind="abs rel. err", values=f"{estimate:.6g}",
                                          note="stops when the running mean moves < tol" if not kw else ""))
        return rows

    def density(self, settings: Settings) -> list[Row]:
        """As shipped (torch.eig is gone in torch 2: the failure is recorded), then with the eigh shim."""
        eigenvalues = self.case.workload.eigenvalues
        try:
            self._run(0, lambda h: h.density(iter=100, n_v=1))
            shipped = "ran as shipped"
        except Exception as err:  # noqa: BLE001 - the failure itself is the measurement
            shipped = first_line(err)
        rows = [failed(self.case, "density", self.label, "density(iter=100, n_v=1), as shipped", shipped)]
        for seed in range(settings.density_seeds):
            with torch_eig_shim():
                (nodes, weights), seconds, products = self._run(seed, lambda h: h.density(iter=100, n_v=1))
            nodes, weights = np.asarray(nodes, dtype=float), np.asarray(weights, dtype=float)
            rows.append(self.case.row("density", self.label, "density(iter=100, n_v=1), torch.eig shimmed via eigh",
                                      "defaults", seed=seed, seconds=seconds, products=products,
                                      error=density_error(nodes, weights, eigenvalues), error_kind="W1 distance",
                                      values=mean_text(nodes, weights, eigenvalues),
                                      note="torch.eig rebuilt from torch.linalg.eigh for this call only"))
        return rows


# -- hessian-eigenthings ---------------------------------------------------------------------------------------------
class Eigenthings:
    """hessian-eigenthings 1.0: a fresh forward and double backward on every matvec."""

    label = "hessian-eigenthings"

    def __init__(self, case: Case) -> None:
        import hessian_eigenthings as he

        self.case = case
        self.he = he

    def _run(self, call: Callable[[Any], Any]) -> tuple[Any, float, int]:
        he, case = self.he, self.case

        def build_and_call() -> Any:
            op = he.HessianOperator(case.model, [(case.X, case.y)], he.supervised_loss(case.workload.criterion))
            return call(op)

        return timed(build_and_call, lambda: counting(he.HessianOperator, "matvec"))

    def warm_up(self) -> None:
        self._run(lambda op: op.matvec(torch.ones(op.size, dtype=op.dtype)))

    def _eigen_row(self, task: str, method: str, kind: str, call: Callable[[Any], Any], note: str = "") -> Row:
        result, seconds, products = self._run(call)
        values = result.eigenvalues.double().numpy()
        if not bool(result.converged.all()):
            note = (note + "; " if note else "") + "converged=False on some pairs"
        return self.case.row(task, self.label, method, kind, seed=0, seconds=seconds, products=products,
                             error=eigen_error(values, self.case.workload.top), error_kind="max rel. err",
                             values=values_text(values), note=note)

    def eigen(self, task: str, k: int, settings: Settings, steps: int) -> list[Row]:
        """Defaults (lanczos: 2k steps, no restart), then lanczos with as many steps as ours used at the matched tol
        and deflated power iteration at the matched tol."""
        he, tol, cap = self.he, settings.matched_tol, settings.max_iter
        steps = max(steps, k)
        return [
            self._eigen_row(task, f"lanczos(k={k}) [max_iter=2k={2 * k}, which=LM]", "defaults",
                            lambda op: he.lanczos(op, k=k, seed=0)),
            self._eigen_row(task, f"deflated_power_iteration(k={k}) [max_iter=100, tol=1e-4]", "defaults",
                            lambda op: he.deflated_power_iteration(op, k=k, seed=0)),
            self._eigen_row(task, f"lanczos(k={k}, max_iter={steps}, reorthogonalize=True, which=LA)", "matched",
                            lambda op: he.lanczos(op, k=k, max_iter=steps, reorthogonalize=True, which="LA", seed=0),
                            note="max_iter = our products at the matched tol"),
            self._eigen_row(task, f"deflated_power_iteration(k={k}, max_iter={cap}, tol={tol:g})", "matched",
                            lambda op: he.deflated_power_iteration(op, k=k, max_iter=cap, tol=tol, seed=0)),
        ]

    def trace(self, settings: Settings) -> list[Row]:
        he, budget = self.he, settings.budget
        calls = (
            ("trace() [hutch++, num_matvecs=100]", "defaults", lambda op, s: he.trace(op, seed=s)),
            (f"hutchinson(num_samples={budget})", "matched", lambda op, s: he.hutchinson(op, num_samples=budget,
                                                                                         seed=s)),
            (f"hutch_plus_plus(num_matvecs={budget})", "matched", lambda op, s: he.hutch_plus_plus(
                op, num_matvecs=budget, seed=s)),
        )
        rows = []
        for method, kind, call in calls:
            for seed in range(settings.seeds):
                result, seconds, products = self._run(lambda op: call(op, seed))
                rows.append(self.case.row("trace", self.label, method, kind, seed=seed, seconds=seconds,
                                          products=products,
                                          error=trace_error(result.estimate, self.case.workload.exact_trace),
                                          error_kind="abs rel. err", values=f"{result.estimate:.6g}"))
        return rows

    def density(self, settings: Settings) -> list[Row]:
        """Its defaults (10 runs × 80 steps), and each matched shape that differs from them."""
        he, eigenvalues = self.he, self.case.workload.eigenvalues
        calls = [("spectral_density() [10 runs x 80 steps]", "defaults", {})]
        calls += [(f"spectral_density(num_runs={probes}, lanczos_steps={steps})", "matched",
                   {"num_runs": probes, "lanczos_steps": steps})
                  for probes, steps in settings.density_shapes if (probes, steps) != (10, 80)]
        rows = []
        for (method, kind, kw), seed in itertools.product(calls, range(settings.density_seeds)):
            result, seconds, products = self._run(lambda op: he.spectral_density(op, seed=seed, **kw))
            nodes, weights = result.raw_eigenvalues.double().numpy(), result.raw_weights.double().numpy()
            rows.append(self.case.row("density", self.label, method, kind, seed=seed, seconds=seconds,
                                      products=products, error=density_error(nodes, weights, eigenvalues),
                                      error_kind="W1 distance", values=mean_text(nodes, weights, eigenvalues)))
        return rows


# -- curvlinops ------------------------------------------------------------------------------------------------------
class Curvlinops:
    """curvlinops 3: a vmapped jvp∘jacrev Hessian operator, scipy eigsh, Hutchinson/Hutch++ and Papyan's SLQ."""

    label = "curvlinops"
    LOSSES = {nn.functional.cross_entropy: nn.CrossEntropyLoss, nn.functional.mse_loss: nn.MSELoss}

    def __init__(self, case: Case) -> None:
        import curvlinops

        self.case = case
        self.cl = curvlinops

    def loss_module(self) -> nn.Module:
        """The criterion as the module curvlinops needs (it reads ``reduction``); others wrapped with mean."""
        criterion = self.case.workload.criterion
        if criterion in self.LOSSES:
            return self.LOSSES[criterion]()

        class MeanCriterion(nn.Module):
            reduction = "mean"

            def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
                return criterion(outputs, targets)

        return MeanCriterion()

    def _run(self, call: Callable[[Any], Any], check: bool, seed: int = 0) -> tuple[Any, float, int]:
        case, cl = self.case, self.cl
        params = [p for p in case.model.parameters() if p.requires_grad]

        def build_and_call() -> Any:
            A = cl.HessianLinearOperator(case.model, self.loss_module(), params, [(case.X, case.y)],
                                         check_deterministic=check)
            return call(A)

        torch.manual_seed(seed)
        return timed(build_and_call, lambda: counting(cl.HessianLinearOperator, "_matmat",
                                                      lambda _self, M: int(M[0].shape[-1])))

    def warm_up(self) -> None:
        self._run(lambda A: A @ torch.ones(A.shape[1], dtype=self.case.dtype), check=False)

    def eigen(self, task: str, k: int, settings: Settings) -> list[Row]:
        from scipy.sparse.linalg import eigsh

        tol = settings.matched_tol
        v0 = np.random.default_rng(0).standard_normal(self.case.model_size)
        calls = (
            ("defaults", f"HessianLinearOperator + scipy eigsh(k={k}) [which=LM, tol=0, check_deterministic]", True,
             lambda A: eigsh(A.to_scipy(), k=k, which="LM")),
            ("matched", f"HessianLinearOperator + scipy eigsh(k={k}, which=LA, tol={tol:g}, seeded v0)", False,
             lambda A: eigsh(A.to_scipy(), k=k, which="LA", tol=tol, v0=v0)),
        )
        rows = []
        for kind, method, check, call in calls:
            (values, _), seconds, products = self._run(call, check)
            rows.append(self.case.row(task, self.label, method, kind, seed=0, seconds=seconds, products=products,
                                      error=eigen_error(values, self.case.workload.top), error_kind="max rel. err",
                                      values=values_text(values),
                                      note="check_deterministic=True: 2 extra grads and matvecs" if check else ""))
        return rows

    def trace(self, settings: Settings) -> list[Row]:
        cl, budget = self.cl, settings.budget
        calls = (
            ("defaults", f"hutchpp_trace(A, {budget}) [check_deterministic=True]", True, cl.hutchpp_trace),
            ("matched", f"hutchinson_trace(A, {budget}) [check_deterministic=False]", False, cl.hutchinson_trace),
            ("matched", f"hutchpp_trace(A, {budget}) [check_deterministic=False]", False, cl.hutchpp_trace),
        )
        rows = []
        for kind, method, check, estimator in calls:
            for seed in range(settings.seeds):
                estimate, seconds, products = self._run(lambda A: float(estimator(A, budget)), check, seed)
                rows.append(self.case.row("trace", self.label, method, kind, seed=seed, seconds=seconds,
                                          products=products,
                                          error=trace_error(estimate, self.case.workload.exact_trace),
                                          error_kind="abs rel. err", values=f"{estimate:.6g}",
                                          note="one A @ G with all columns under vmap"))
        return rows

    def density(self, settings: Settings) -> list[Row]:
        """Papyan's SLQ returns a smoothed density on a grid (no nodes): the distance is taken from the grid."""
        eigenvalues = self.case.workload.eigenvalues
        rows = []
        for (kind, check), seed in itertools.product((("defaults", True), ("matched", False)),
                                                     range(settings.density_seeds)):
            (grid, density), seconds, products = self._run(
                lambda A: self.cl.lanczos_approximate_spectrum(A, ncv=100), check, seed)
            grid, density = grid.double().numpy(), np.clip(density.double().numpy(), 0, None)
            rows.append(self.case.row("density", self.label,
                                      f"lanczos_approximate_spectrum(ncv=100) [+eigsh boundaries tol=1e-2, "
                                      f"check_deterministic={check}]", kind, seed=seed, seconds=seconds,
                                      products=products, error=density_error(grid, density, eigenvalues),
                                      error_kind="W1 distance (from grid)",
                                      values=mean_text(grid, density, eigenvalues),
                                      note="grid density, not nodes and weights: not directly comparable"))
        return rows


PEER_CLASSES = {"pyhessian": PyHessian, "eigenthings": Eigenthings, "curvlinops": Curvlinops}


# -- the benchmark ---------------------------------------------------------------------------------------------------
def installed_peers(names: Sequence[str]) -> dict[str, str]:
    """The requested peers that are installed, with their versions; one printed line for each one skipped."""
    found = {}
    for name in names:
        module, dist, _ = PEERS[name]
        if importlib.util.find_spec(module) is None:
            pin = torch.__version__.split("+")[0]
            print(f"skipping {name}: package {dist} is not installed (pip install '.[peers]' torch=={pin})",
                  file=sys.stderr)
            continue
        found[name] = importlib.metadata.version(dist)
    return found


def run_case(case: Case, settings: Settings, peers: Sequence[str], log: Callable[[Row], None]) -> list[Row]:
    """Every task of one workload × dtype: ours first (the matched eigenthings Lanczos takes our product count)."""
    rows: list[Row] = []

    def add(new: list[Row]) -> None:
        for row in new:
            log(row)
        rows.extend(new)

    def guarded(library: str, task: str, method: Callable[[], list[Row]]) -> None:
        try:
            add(method())
        except Exception as err:  # noqa: BLE001 - a peer failing is a result, the benchmark goes on
            add([failed(case, task, library, "(call failed)", first_line(err))])
        finally:
            case.clear_grads()

    case.operator().matvec(torch.ones(case.model_size, dtype=case.dtype))  # one-time costs out of the first row
    adapters = []
    for name in peers:
        try:
            adapter = PEER_CLASSES[name](case)
            adapter.warm_up()
            adapters.append(adapter)
        except Exception as err:  # noqa: BLE001 - recorded as a row, the other libraries go on
            add([failed(case, settings.tasks[0], PEERS[name][2], "(set-up failed)", first_line(err))])
        finally:
            case.clear_grads()
    for task in settings.tasks:
        if task in ("top1", "top5"):
            k = int(task[3:])
            ours = ours_eigen(case, task, k)
            add(ours)
            matched = next((r.products for r in ours if f"tol={settings.matched_tol:g}" in r.method), 2 * k)
            for peer in adapters:
                extra = (matched,) if isinstance(peer, Eigenthings) else ()
                guarded(peer.label, task, lambda p=peer, e=extra: p.eigen(task, k, settings, *e))
        elif task == "trace":
            add(ours_trace(case, settings))
            for peer in adapters:
                guarded(peer.label, task, lambda p=peer: p.trace(settings))
        else:
            add(ours_density(case, settings))
            for peer in adapters:
                guarded(peer.label, task, lambda p=peer: p.density(settings))
    return rows


@dataclass
class Summary:
    """Rows of one method aggregated over seeds: mean seconds, products and error, the error's standard error over
    the seeds (0 for one seed), and the largest error."""

    workload: str
    dtype: str
    task: str
    library: str
    method: str
    settings: str
    seconds: float
    products: float
    error: float
    max_error: float
    values: str
    note: str
    seeds: int
    error_se: float = 0.0


def summarize(rows: Sequence[Row]) -> list[Summary]:
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        groups.setdefault((row.workload, row.dtype, row.task, row.library, row.method, row.settings), []).append(row)
    out = []
    for key, group in groups.items():
        errors = [r.error for r in group]
        values = group[0].values
        if len(group) > 1:
            with contextlib.suppress(ValueError):
                values = f"mean {np.mean([float(r.values) for r in group]):.6g}"
        out.append(Summary(*key, seconds=float(np.mean([r.seconds for r in group])),
                           products=float(np.mean([r.products for r in group])),
                           error=float(np.mean(errors)), max_error=float(np.max(errors)), values=values,
                           note=group[0].note, seeds=len(group),
                           error_se=float(np.std(errors, ddof=1) / math.sqrt(len(errors))) if len(errors) > 1
                           else 0.0))
    return out


def floor_for(task: str, dtype: str, precision: float) -> float:
    """Errors below this are not told apart: 10 ulp of the dtype for eigenvalues, and the reference's precision."""
    if task not in ("top1", "top5"):
        return 0.0
    return max(10 * float(torch.finfo(DTYPES[dtype]).eps), precision)


@dataclass(frozen=True)
class Verdict:
    """Our fastest row at least as accurate as the best peer (up to ``floor``) against the fastest such peer.

    For seeded estimators (trace, density) "as accurate" means a mean error over the seeds no larger than the best
    peer's mean plus two of its standard errors: closer than that, the seeds cannot tell the two apart.
    """

    status: str  # "met", "missed (time)", "missed (accuracy)" or "no verdict"
    floor: float
    best_error: float = math.nan  # the most accurate peer's (mean) error
    reach: float = math.nan  # the error our row has to reach
    peer: Optional[Summary] = None  # the fastest peer at that accuracy
    ours: Optional[Summary] = None  # ours at that accuracy (missed (accuracy): our most accurate row)
    reason: str = ""  # why there is no verdict

    @property
    def speedup(self) -> float:
        return self.peer.seconds / self.ours.seconds if self.peer and self.ours else math.nan


def judge(group: Sequence[Summary], floor: float) -> Verdict:
    """The :class:`Verdict` of one workload × dtype × task."""
    peers = [s for s in group if s.library != OURS and math.isfinite(s.error)]
    ours = [s for s in group if s.library == OURS and math.isfinite(s.error)]
    if not peers or not ours:
        return Verdict("no verdict", floor, reason="no peer row with an error" if ours else
                       "no reference to measure errors against")
    most_accurate = min(peers, key=lambda s: s.error)
    best = most_accurate.error
    reach = max(best + 2 * most_accurate.error_se, floor)
    peer = min((s for s in peers if s.error <= reach), key=lambda s: s.seconds)
    mine = [s for s in ours if s.error <= reach]
    if not mine:
        return Verdict("missed (accuracy)", floor, best, reach, peer, min(ours, key=lambda s: s.error))
    me = min(mine, key=lambda s: s.seconds)
    return Verdict("met" if me.seconds <= peer.seconds else "missed (time)", floor, best, reach, peer, me)


def verdict(group: Sequence[Summary], floor: float) -> str:
    """:func:`judge` as one line of text."""
    v = judge(group, floor)
    if v.status == "no verdict":
        return f"no verdict: {v.reason}"
    peer, me = v.peer, v.ours
    peer_text = f"{peer.library} {peer.method} ({peer.settings}): err {peer.error:.1e}, {fmt_time(peer.seconds)}, " \
                f"{peer.products:.0f} products"
    floor_text = f" (errors below {v.floor:.0e} count as equal)" if v.floor > v.best_error else (
        f" (errors up to {v.reach:.1e}, the best peer's mean + 2 standard errors, count as equal)"
        if v.reach > v.best_error else "")
    if v.status == "missed (accuracy)":
        return (f"missed (accuracy): our most accurate {me.method} err {me.error:.1e} "
                f"({me.products:.0f} products) vs best peer {peer_text}{floor_text}")
    per_product = [fmt_time(s.seconds / max(s.products, 1)) for s in (me, peer)]
    why = "" if v.status == "met" else f"; per product {per_product[0]} vs {per_product[1]}"
    return (f"{v.status}: ours {me.method} err {me.error:.1e}, {fmt_time(me.seconds)}, {me.products:.0f} products "
            f"vs {peer_text}: {v.speedup:.2f}x{floor_text}{why}")


def summary_table(rows: Sequence[Row], precision: dict[str, float]) -> str:
    """One line per workload × dtype × task: the best peer accuracy, the fastest peer and our fastest row there."""
    summaries = summarize(rows)
    lines = ["| workload | dtype | task | best peer error (counts as equal up to) | fastest peer at that error "
             "| ours at that error | speed-up | verdict |", "|---|---|---|---|---|---|---|---|"]
    order = {task: i for i, task in enumerate(TASKS)}
    for key in sorted(dict.fromkeys((s.workload, s.dtype, s.task) for s in summaries),
                      key=lambda k: (k[0], k[1], order.get(k[2], len(order)))):
        group = [s for s in summaries if (s.workload, s.dtype, s.task) == key]
        v = judge(group, floor_for(key[2], key[1], precision.get(key[0], 0.0)))
        if v.status == "no verdict":
            lines.append(f"| {key[0].upper()} | {key[1]} | {key[2]} | - | - | - | - | {v.reason} |")
            continue

        def cell(s: Summary) -> str:
            return f"{s.library} {s.method}: {s.error:.1e} in {fmt_time(s.seconds)} ({s.products:.0f} products)"

        speedup = f"{v.speedup:.2f}×" if v.status != "missed (accuracy)" else "-"
        best = f"{v.best_error:.1e}" + (f" ({v.reach:.1e})" if v.reach > v.best_error else "")
        lines.append(f"| {key[0].upper()} | {key[1]} | {key[2]} | {best} | {cell(v.peer)} "
                     f"| {cell(v.ours)} | {speedup} | {v.status} |")
    return "\n".join(lines)


def read_rows(path: Path) -> tuple[list[Row], dict[str, Any]]:
    """The rows and the attributes stored by :func:`write_hdf5` (for ``--report``)."""
    import h5py

    with store.open_results(path) as handle:
        if "peers" not in handle:
            raise OptionError(f"--report {path}: the file has no /peers group (write it with this script)")
        group = handle["peers"]
        columns = {f.name: (group[f.name].asstr()[()] if h5py.check_string_dtype(group[f.name].dtype)
                            else group[f.name][()]) for f in fields(Row)}
        attrs = store.get_attrs(group)
    kinds = {"str": str, "int": int, "float": float}
    rows = [Row(**{f.name: kinds[f.type](columns[f.name][i]) for f in fields(Row)})
            for i in range(len(columns["task"]))]
    return rows, attrs


def markdown(rows: Sequence[Row], precision: dict[str, float]) -> str:
    """The summary table, then one table per task, each followed by its verdict lines."""
    summaries = summarize(rows)
    lines = ["\n### summary: our fastest row at the most accurate peer's accuracy\n", summary_table(rows, precision)]
    for task in TASKS:
        part = [s for s in summaries if s.task == task]
        if not part:
            continue
        lines += [f"\n### {task}\n",
                  "| workload | dtype | library | method | settings | products | seconds | values | error | note |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for s in part:
            seconds = fmt_time(s.seconds) if math.isfinite(s.seconds) else "-"
            error = "-" if not math.isfinite(s.error) else (
                f"mean {s.error:.1e}, max {s.max_error:.1e} ({s.seeds} seeds)" if s.seeds > 1 else f"{s.error:.1e}")
            products = f"{s.products:.0f}" if s.products >= 0 else "-"
            lines.append(f"| {s.workload} | {s.dtype} | {s.library} | {s.method} | {s.settings} | {products} "
                         f"| {seconds} | {s.values} | {error} | {s.note} |")
        lines.append("")
        for key in dict.fromkeys((s.workload, s.dtype) for s in part):
            group = [s for s in part if (s.workload, s.dtype) == key]
            floor = floor_for(task, key[1], precision.get(key[0], 0.0))
            lines.append(f"- {key[0]} {key[1]} {task}: {verdict(group, floor)}")
    return "\n".join(lines)


def write_hdf5(path: Path, rows: Sequence[Row], attrs: dict[str, Any]) -> None:
    """The rows as one dataset per column under /peers (replacing any earlier /peers), attributes on the group."""
    import h5py

    text = h5py.string_dtype("utf-8")
    with store.update_results(path) as handle:
        if "peers" in handle:
            del handle["peers"]
        group = handle.create_group("peers")
        for column in fields(Row):
            data = [getattr(row, column.name) for row in rows]
            if column.type == "str":
                group.create_dataset(column.name, data=np.array(data, dtype=object), dtype=text)
            else:
                group.create_dataset(column.name, data=np.array(data, dtype=float if column.type == "float" else
                                                                np.int64))
        store.set_attrs(group, attrs)
        store.set_attrs(handle, {"peers_command": attrs["command"]})


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", type=Path, default=HERE.parents[1] / "shared" / "bench",
                        help="folder with digits.npz, w1.pt, w2.pt, w3.pt and w1/w2_truth.npz "
                             "(default: ../shared/bench next to the repository)")
    parser.add_argument("--workloads", default="w1,w2,w3", help="reference workloads (default: w1,w2,w3)")
    parser.add_argument("--dtypes", default="float32,float64", help="float32,float64; W3 runs float32 only")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"subset of {','.join(TASKS)}")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per trace estimator (default: 5)")
    parser.add_argument("--density-seeds", type=int, default=3, help="seeds per spectral density (default: 3)")
    parser.add_argument("--budget", type=int, default=99, help="products per trace estimate (default: 99)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--peers", default=",".join(PEERS), help="peers to run, comma-separated; '' for ours only "
                        f"(default: {','.join(PEERS)}); one not installed is skipped")
    parser.add_argument("-o", "--output", type=Path, help="HDF5 file for the raw rows, group /peers (default: "
                        "bench_peers.h5); with --report, where the merged rows are written (default: nowhere)")
    parser.add_argument("--report", type=Path, nargs="+", metavar="FILE", help="print the tables again from the rows "
                        "earlier runs stored, measuring nothing; a task a later FILE holds replaces the earlier one's")
    parser.add_argument("--quick", action="store_true", help="smoke run: W1 float32 only (unless a custom workload "
                        "is given), 2 seeds, budget 21, matched densities of 2x20 and 1x25 products")
    custom = parser.add_argument_group("custom workload (instead of --workloads)")
    custom.add_argument("--model", metavar="SPEC", help="built-in name or package.module:factory")
    custom.add_argument("--model-kwargs", metavar="JSON", help="keyword arguments of the model factory")
    custom.add_argument("--checkpoint", metavar="PATH", help="the weights to analyse")
    custom.add_argument("--data", metavar="SPEC", help="built-in data set, .npz/.pt/.h5 file or package.module:fn")
    custom.add_argument("--split", default="train", help="train, test or all (default: train)")
    custom.add_argument("--loss", metavar="SPEC", help="cross-entropy, mse or squared (default: by the labels)")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) != (args.data is None):
        parser.error("a custom workload needs both --checkpoint and --data (and --model for a state dict)")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    tasks = tuple(t for t in args.tasks.split(",") if t)
    peers = tuple(p for p in args.peers.split(",") if p)
    for name, given, known in (("task", tasks, TASKS), ("peer", peers, tuple(PEERS))):
        unknown = [g for g in given if g not in known]
        if unknown:
            raise OptionError(f"unknown {name} {unknown[0]!r}; choose from {', '.join(known)}")
    if args.quick:
        return Settings(tasks=tasks, peers=peers, seeds=2, budget=21, density_shapes=((2, 20), (1, 25)),
                        density_seeds=1)
    return Settings(tasks=tasks, peers=peers, seeds=args.seeds, budget=args.budget, density_seeds=args.density_seeds)


def report(paths: Sequence[Path], output: Optional[Path] = None) -> int:
    """Print the tables again from the HDF5 rows of finished (or stopped) runs, measuring nothing. A workload ×
    dtype × task that a later file also holds is taken from the later file (e.g. a rerun of one task); ``output``
    receives the merged rows."""
    rows: list[Row] = []
    attrs: dict[str, Any] = {}
    precision: dict[str, float] = {}
    commands = []
    for path in paths:
        new, new_attrs = read_rows(path)
        replaced = {(r.workload, r.dtype, r.task) for r in new}
        rows = [r for r in rows if (r.workload, r.dtype, r.task) not in replaced] + new
        attrs.update(new_attrs)
        commands.append(str(new_attrs.get("command", "")))
        precision.update({name: float(value) for name, value in new_attrs.get("precision", {}).items()})
    print(f"# landscape vs peers — from {', '.join(map(str, paths))}: {attrs.get('machine', '')}, torch "
          f"{attrs.get('torch_version', '')}, " + ", ".join(f"{key[:-8]} {value}" for key, value in attrs.items()
                                                           if key.endswith("_version") and key != "torch_version"))
    print(markdown(rows, precision))
    if output is not None:
        write_hdf5(output, rows, {**attrs, "precision": precision,
                                  "command": " ; ".join(commands) + " (merged by --report, later rows win)"})
        print(f"\nmerged rows: {output} (group /peers, {len(rows)} rows)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        return report(args.report, args.output)
    args.output = args.output or Path("bench_peers.h5")
    torch.set_num_threads(args.threads)
    settings = settings_from(args)
    store.check_writable(args.output)
    dtypes = [d for d in args.dtypes.split(",") if d]
    if any(d not in DTYPES for d in dtypes):
        raise OptionError(f"--dtypes takes {', '.join(DTYPES)}, got {args.dtypes!r}")
    if args.checkpoint is not None:
        workloads = [custom_workload(args)]
    else:
        names = ["w1"] if args.quick else [w for w in args.workloads.split(",") if w]
        dtypes = ["float32"] if args.quick else dtypes
        workloads = [reference_workload(args.bench, name) for name in names]
    versions = installed_peers(settings.peers)
    peers = list(versions)
    print(f"# landscape vs peers — torch {torch.__version__}, {args.threads} threads, "
          + ", ".join(f"{PEERS[p][1]} {v}" for p, v in versions.items()))

    def log(row: Row) -> None:
        took = fmt_time(row.seconds) if math.isfinite(row.seconds) else row.note
        print(f"  {row.workload} {row.dtype} {row.task} {row.library} {row.method} [{row.settings}, seed "
              f"{row.seed}]: {row.products} products, {took}, error {row.error:.1e}", file=sys.stderr, flush=True)

    attrs = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        **{f"{PEERS[p][1]}_version": v for p, v in versions.items()},
        "machine": f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                   f"{args.threads} torch threads",
        "threads": args.threads,
        "truth": {w.name: w.truth for w in workloads},
        "precision": {w.name: w.precision for w in workloads},
        "settings": {"seeds": settings.seeds, "budget": settings.budget, "matched_tol": settings.matched_tol,
                     "density_shapes": [list(s) for s in settings.density_shapes],
                     "density_seeds": settings.density_seeds, "quick": args.quick},
    }
    rows: list[Row] = []
    for work in workloads:
        for dtype in dtypes:
            if work.name == "w3" and dtype != "float32":
                continue
            rows += run_case(Case(work, DTYPES[dtype]), settings, peers, log)
            write_hdf5(args.output, rows, attrs)  # after every case: a run stopped later keeps what it measured
    print(markdown(rows, {w.name: w.precision for w in workloads}))
    print(f"\nraw rows: {args.output} (group /peers, {len(rows)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
