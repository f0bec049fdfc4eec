"""Benchmark the curvature engine on the reference workloads W1, W2, W3 and print the issue's target figures.

    python scripts/bench_engine.py --bench ../shared/bench [--repeats 5] [--threads 2] [--device cpu]
        [--only hvp,eigen,trace,density,compile,resnet]

Reads digits.npz, w1.pt, w2.pt, w3.pt and the exact spectra w1_truth.npz, w2_truth.npz from ``--bench``.
Timings are medians over ``--repeats`` runs, float32, ``--threads`` CPU threads, full digits data as one batch.
``compile`` compares the torch.compile'd forward-over-reverse product with the eager paths on W1-W3; ``resnet``
times a ResNet-18 (11.2M parameters) on synthetic 32×32 images (``--resnet-batch``, 512 by default on CUDA): gradient,
one HVP per product path, a 16-column block, and Lanczos top-1/top-5 (the GPU figures of issue 8).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from _common import W3_TOP5, fmt_time, load_workload
from landscape import HessianOperator, hutchinson, hutchpp, krylov_hutchinson, lanczos, spectral_density
from landscape.models import resnet18

DEVICE = torch.device("cpu")  # set by --device


def synchronize() -> None:
    """Wait for queued GPU work, so that a timing covers it."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def operator(model: nn.Module, data, **kw) -> HessianOperator:
    return HessianOperator(model, nn.functional.cross_entropy, data, **kw)


def bench_hvp(bench: Path, repeats: int) -> None:
    print("\n## 1. One HVP over one gradient, and a 16-column matmat (float32, full data as one batch)\n")
    print("The gradient is a training step's: `model.zero_grad(); loss(model(X), y).backward()`.\n")
    print("| workload | gradient | HVP, default path | ratio | target | reverse (graph reused) | ratio "
          "| forward (jvp∘grad) | ratio | 16-col matmat / 16 matvecs | same, data in 4 batches |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, target in (("w1", 1.5), ("w2", 2.0), ("w3", 2.0)):
        model, (X, y) = load_workload(bench, name, DEVICE)
        reps = repeats * (10 if name == "w1" else 4 if name == "w2" else 1)

        def gradient() -> None:
            model.zero_grad()
            nn.functional.cross_entropy(model(X), y).backward()

        t_grad = median_time(gradient, reps, warmup=3)
        op = operator(model, (X, y))
        gen = torch.Generator().manual_seed(0)
        V = torch.randn(16, op.shape[0], generator=gen).to(DEVICE)
        t_hvp = median_time(lambda: op.matvec(V[0]), reps, warmup=3)
        rev = operator(model, (X, y), product="reverse")
        t_rev = median_time(lambda: rev.matvec(V[0]), reps, warmup=3)
        fwd = operator(model, (X, y), product="forward")
        t_fwd = median_time(lambda: fwd.matvec(V[0]), max(3, reps // 2), warmup=1)
        t_mm = median_time(lambda: op.matmat(V), max(3, repeats), warmup=1)
        t_mv = median_time(lambda: [op.matvec(v) for v in V], max(3, repeats), warmup=1)
        streamed = operator(model, list(zip(X.chunk(4), y.chunk(4))))
        t_smm = median_time(lambda: streamed.matmat(V), max(3, repeats // 2), warmup=1)
        t_smv = median_time(lambda: [streamed.matvec(v) for v in V], max(3, repeats // 2), warmup=1)
        ok = "met" if t_hvp / t_grad <= target else "missed"
        print(f"| {name.upper()} | {fmt_time(t_grad)} | {fmt_time(t_hvp)} ({op.product}) | {t_hvp / t_grad:.2f} "
              f"| ≤ {target} ({ok}) | {fmt_time(t_rev)} | {t_rev / t_grad:.2f} | {fmt_time(t_fwd)} "
              f"| {t_fwd / t_grad:.2f} | {t_mm / t_mv:.2f} (≤ 0.7: {'met' if t_mm / t_mv <= 0.7 else 'missed'}) "
              f"| {t_smm / t_smv:.2f} |")


def true_relative_residuals(op: HessianOperator, values: np.ndarray, vectors: torch.Tensor) -> np.ndarray:
    HV = op.matmat(vectors)
    lam = torch.as_tensor(values, dtype=vectors.dtype, device=vectors.device)
    res = (HV - lam[:, None] * vectors).norm(dim=1) / vectors.norm(dim=1)
    return res.double().cpu().numpy() / np.abs(values)


def bench_eigen(bench: Path, repeats: int) -> None:
    print("\n## 2. Top eigenvalues by Lanczos to relative residual 1e-6 (float32, new operator each run)\n")
    print("| workload | k | HVPs | time (median) | target | max rel. error of values | true max rel. residual |")
    print("|---|---|---|---|---|---|---|")
    targets = {("w1", 1): (20, 0.060), ("w1", 5): (45, 0.300)}
    for name in ("w1", "w2", "w3"):
        model, data = load_workload(bench, name, DEVICE)
        truth = W3_TOP5 if name == "w3" else np.load(bench / f"{name}_truth.npz")["eigenvalues"][::-1][:5]
        for k in (1, 5):
            runs = []

            def run() -> None:
                op = operator(model, data)
                runs.append(lanczos(op, k, tol=1e-6, seed=0))

            t = median_time(run, repeats if name != "w3" else 1, warmup=0 if name == "w3" else 1)
            result = runs[-1]
            err = np.max(np.abs(result.values - truth[:k]) / truth[:k])
            true_res = true_relative_residuals(operator(model, data), result.values, result.vectors).max()
            goal = targets.get((name, k))
            if goal:
                met = "met" if result.num_matvecs <= goal[0] and t <= goal[1] else "missed"
                goal_text = f"≤ {goal[0]} HVPs, ≤ {fmt_time(goal[1])} ({met})"
            else:
                goal_text = "same accuracy"
            ref = " (vs eigsh float64)" if name == "w3" else ""
            print(f"| {name.upper()} | {k} | {result.num_matvecs} | {fmt_time(t)} | {goal_text} | {err:.1e}{ref} "
                  f"| {true_res:.1e} |")


def bench_trace(bench: Path, seeds: int) -> None:
    print(f"\n## 3. Trace with 99 HVPs over {seeds} seeds (float32)\n")
    print("| workload | method | mean abs rel. error | max | median time | time / 99 sequential HVPs | target |")
    print("|---|---|---|---|---|---|---|")
    for name, target in (("w1", 0.005), ("w2", 0.002)):
        model, data = load_workload(bench, name, DEVICE)
        exact = float(np.load(bench / f"{name}_truth.npz")["trace"])
        op = operator(model, data)
        v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(1)).to(DEVICE)
        sequential = 99 * median_time(lambda: op.matvec(v), 10, warmup=2)
        for method in (krylov_hutchinson, hutchpp, hutchinson):
            errors, times = [], []
            for seed in range(seeds):
                start = time.perf_counter()
                est = method(operator(model, data), 99, seed=seed).estimate
                times.append(time.perf_counter() - start)
                errors.append(abs(est - exact) / exact)
            mean = float(np.mean(errors))
            t = statistics.median(times)
            goal = f"≤ {target:.1%}, ≤ 0.5× time ({'met' if mean <= target and t <= 0.5 * sequential else 'missed'})"
            print(f"| {name.upper()} | {method.__name__} | {mean:.2%} | {max(errors):.2%} | {fmt_time(t)} "
                  f"| {t / sequential:.2f} | {goal if method is krylov_hutchinson else ''} |")


def bench_density(bench: Path, repeats: int) -> None:
    print("\n## 4. Spectral density, 10 probes × 80 steps on W1 (float32)\n")
    model, data = load_workload(bench, "w1", DEVICE)
    truth = np.load(bench / "w1_truth.npz")["eigenvalues"]
    results = []

    def lockstep() -> None:
        results.append(spectral_density(operator(model, data), num_probes=10, num_steps=80, seed=0))

    def one_at_a_time() -> None:
        for p in range(10):
            spectral_density(operator(model, data), num_probes=1, num_steps=80, seed=p)

    t_lock = median_time(lockstep, repeats, warmup=1)
    t_single = median_time(one_at_a_time, max(1, repeats // 2), warmup=0)
    d = results[-1]
    mean_est = float(np.nansum(d.weights * np.nan_to_num(d.nodes)) / d.num_probes)
    print("| run | HVPs | time (median) | target | mean eigenvalue est. / true |")
    print("|---|---|---|---|---|")
    met = "met" if t_lock <= 1.8 else "missed"
    print(f"| lockstep (one 10-column block per step) | {d.num_matvecs} | {fmt_time(t_lock)} | ≤ 1.8 s ({met}) "
          f"| {mean_est:.6f} / {truth.mean():.6f} |")
    ratio = t_single / t_lock
    print(f"| one probe at a time | 800 | {fmt_time(t_single)} | lockstep ≥ 2× faster "
          f"({'met' if ratio >= 2 else 'missed'}: {ratio:.2f}×) | |")


def first_call(fn: Callable[[], object]) -> float:
    """Seconds of one call (the first product of a compiled operator: mostly its compilation)."""
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


def bench_compile(bench: Path, repeats: int) -> None:
    print("\n## 5. torch.compile of the forward-over-reverse product (float32, full data as one batch)\n")
    print("| workload | default path | forward, eager | forward, compiled | compile time | 16-col block per column, "
          "eager / compiled |")
    print("|---|---|---|---|---|---|")
    for name in ("w1", "w2", "w3"):
        model, data = load_workload(bench, name, DEVICE)
        reps = repeats * (4 if name != "w3" else 1)
        default = operator(model, data)
        eager = operator(model, data, product="forward")
        compiled = operator(model, data, compile=True)
        V = torch.randn(16, default.shape[0], generator=torch.Generator().manual_seed(0)).to(DEVICE)
        first = first_call(lambda: compiled.matvec(V[0]))
        t_default = median_time(lambda: default.matvec(V[0]), reps, warmup=2)
        t_eager = median_time(lambda: eager.matvec(V[0]), reps, warmup=2)
        t_compiled = median_time(lambda: compiled.matvec(V[0]), reps, warmup=2)
        first_call(lambda: compiled.matmat(V))  # the 16-column block compiles once more
        t_block_eager = median_time(lambda: eager.matmat(V), max(3, repeats // 2), warmup=1) / 16
        t_block_compiled = median_time(lambda: compiled.matmat(V), max(3, repeats // 2), warmup=1) / 16
        print(f"| {name.upper()} | {fmt_time(t_default)} ({default.product}) | {fmt_time(t_eager)} "
              f"| {fmt_time(t_compiled)} ({t_eager / t_compiled:.2f}× eager) | {first:.1f} s "
              f"| {fmt_time(t_block_eager)} / {fmt_time(t_block_compiled)} |")


def bench_resnet(batch: int, width: int, repeats: int) -> None:
    model = resnet18(width=width).eval().to(DEVICE)
    n = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(batch, 3, 32, 32, generator=gen).to(DEVICE)
    y = torch.randint(0, 10, (batch,), generator=gen).to(DEVICE)
    data = (X, y)
    print(f"\n## 6. ResNet-18 ({n / 1e6:.1f}M parameters, width {width}) on {batch} synthetic 32×32 images, "
          f"float32, {DEVICE}\n")

    def gradient() -> None:
        model.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()

    t_grad = median_time(gradient, repeats, warmup=2)
    v = torch.randn(n, generator=gen).to(DEVICE)
    V = torch.randn(16, n, generator=gen).to(DEVICE)
    print("| product | one HVP | HVP / gradient | 16-col block: columns per second |")
    print("|---|---|---|---|")
    print(f"| gradient (fwd+bwd) | {fmt_time(t_grad)} | 1 | |")
    rows = {"reverse (default)": operator(model, data), "forward (jvp∘grad)": operator(model, data, product="forward"),
            "forward, compiled": operator(model, data, compile=True)}
    for label, op in rows.items():
        extra = ""
        if op is rows["forward, compiled"]:
            extra = f" (compile {first_call(lambda: op.matvec(v)) + first_call(lambda: op.matmat(V)):.0f} s)"
        t = median_time(lambda: op.matvec(v), repeats, warmup=1)
        t_block = median_time(lambda: op.matmat(V), max(2, repeats // 2), warmup=1)
        print(f"| {label}{extra} | {fmt_time(t)} | {t / t_grad:.2f} | {16 / t_block:.1f} |")
    print("\n| Lanczos (default product) | HVPs | time | top eigenvalue | max rel. residual |")
    print("|---|---|---|---|---|")
    for k, tol in ((1, 1e-3), (5, 1e-3)):
        op = operator(model, data)
        synchronize()
        start = time.perf_counter()
        result = lanczos(op, k, tol=tol, seed=0, progress=False)
        synchronize()
        seconds = time.perf_counter() - start
        print(f"| top-{k}, tol {tol:g} | {result.num_matvecs} | {fmt_time(seconds)} | {result.values[0]:.5g} "
              f"| {result.residuals.max():.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "bench",
                        help="folder with digits.npz, w1.pt, w2.pt, w3.pt and the *_truth.npz files")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per figure (median reported)")
    parser.add_argument("--seeds", type=int, default=10, help="seeds for the trace accuracy figure")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--only", default="hvp,eigen,trace,density", help="comma-separated subset of sections: "
                        "hvp, eigen, trace, density, compile, resnet (default: the first four)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--resnet-batch", type=int, help="images per batch for --only resnet (default: 512 on CUDA, "
                        "32 on CPU)")
    parser.add_argument("--resnet-width", type=int, default=64, help="ResNet-18 base width (default: 64)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else f"{args.threads} threads"
    print(f"# landscape engine benchmark — torch {torch.__version__}, {DEVICE} ({where}), float32")
    sections = set(args.only.split(","))
    if "hvp" in sections:
        bench_hvp(args.bench, args.repeats)
    if "eigen" in sections:
        bench_eigen(args.bench, args.repeats)
    if "trace" in sections:
        bench_trace(args.bench, args.seeds)
    if "density" in sections:
        bench_density(args.bench, args.repeats)
    if "compile" in sections:
        bench_compile(args.bench, args.repeats)
    if "resnet" in sections:
        batch = args.resnet_batch or (512 if DEVICE.type == "cuda" else 32)
        bench_resnet(batch, args.resnet_width, args.repeats)


if __name__ == "__main__":
    main()
