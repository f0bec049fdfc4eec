"""The figures of realistic sizes: the built-in ResNet-18 (CIFAR layout, 11.2M parameters) on 32×32 images and the
built-in GPT-style model (9.0M parameters) on token sequences, random data, float32.

For each model: one Hessian-vector product of the default path (``HessianOperator(model, loss, data)``, one batch,
its gradient graph reused) against one gradient (``model.zero_grad(); loss(model(X), y).backward()``, eval mode),
the fastest of ``--repeats`` rounds that time them in turn;
the products Lanczos (default start, ``tol=1e-3``) needs for the top eigenvalue, with the true relative residual
checked by one more product; and the peak memory of top-5, trace and density, each run in a fresh process (resident
memory, with torch itself; on CUDA the device's peak allocation too). The memory of top-5 is that of
a whole run: Lanczos' basis fills after ``--max-basis`` products and thick restart keeps it there; the density's,
without reorthogonalization, does not grow with its steps; the trace's grows with its products (about 1.5 vectors
each). Prints a markdown table.

    python scripts/bench_models.py                          # 2 CPU threads: about 8 minutes
    python scripts/bench_models.py --device cuda --compile  # a GPU, adding the torch.compile'd product
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

import torch
from torch.nn import functional as F

from _common import fastest_seconds, fmt_time, limit_threads, log
from landscape import HessianOperator, lanczos, spectral_density, trace
from landscape.models import gpt, resnet18
from landscape.operators.next_token import next_token

MODELS = ("resnet18", "gpt")
MEMORY_RUNS = ("baseline", "top-5", "trace", "density")
TARGET_RATIO, TARGET_PRODUCTS = 2.0, 20


def workload(name: str, args: argparse.Namespace) -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor], Any]:
    """The model (eval mode, on ``--device``), one random batch and the loss; ``--tiny`` shrinks all (for tests)."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    device = torch.device(args.device)
    if name == "resnet18":
        model = resnet18(width=4) if args.tiny else resnet18()
        batch = 4 if args.tiny else args.resnet_batch
        X = torch.randn(batch, 3, 32, 32, generator=gen)
        data, loss = (X, torch.randint(0, 10, (batch,), generator=gen)), F.cross_entropy
    else:
        kwargs = dict(vocab_size=64, d_model=16, n_layers=1, n_heads=2, d_ff=32) if args.tiny else {}
        seq = 8 if args.tiny else args.seq_len
        model = gpt(seq_len=seq, **kwargs)
        batch = 2 if args.tiny else args.gpt_batch
        tokens = torch.randint(0, model.tok_emb.num_embeddings, (batch, seq), generator=gen)
        data, loss = (tokens, tokens), next_token
    return model.eval().to(device), (data[0].to(device), data[1].to(device)), loss


def shape_of(name: str, data: tuple[torch.Tensor, torch.Tensor]) -> str:
    X = data[0]
    return f"{X.shape[0]} images 32×32" if name == "resnet18" else f"{X.shape[0]} × {X.shape[1]} tokens"


def speed(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Gradient and default-path HVP times, the top eigenvalue's products, and (``--compile``) the compiled path."""
    model, data, loss = workload(name, args)
    device = torch.device(args.device)

    def gradient() -> None:
        model.zero_grad(set_to_none=True)
        loss(model(data[0]), data[1]).backward()

    out: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters()), "data": shape_of(name, data)}
    op = HessianOperator(model, loss, data)
    v = torch.randn(op.shape[0], generator=torch.Generator(device=device).manual_seed(1), device=device)
    out.update(fastest_seconds({"gradient": gradient, "hvp": lambda: op.matvec(v)}, args.repeats, device))
    out["product"] = op.product
    model.zero_grad(set_to_none=True)
    op = HessianOperator(model, loss, data)  # Lanczos counts every product from a fresh operator
    top = lanczos(op, 1, tol=1e-3, seed=0, max_matvecs=100, progress=False)
    vec = top.vectors[0]
    residual = float((op.matvec(vec) - top.values[0] * vec).norm() / abs(top.values[0]))
    out.update(top1_products=top.num_matvecs, top1=float(top.values[0]), top1_residual=residual)
    if args.compile:
        compiled = HessianOperator(model, loss, data, compile=True)
        start = time.perf_counter()
        compiled.matvec(v)
        out["compile_seconds"] = time.perf_counter() - start
        out.update(fastest_seconds({"compiled": lambda: compiled.matvec(v)}, args.repeats, device))
    return out


def memory_child(name: str, kind: str, args: argparse.Namespace) -> dict[str, float]:
    """Run one algorithm (or nothing but one product: ``baseline``) and report this process's peak memory."""
    model, data, loss = workload(name, args)
    op = HessianOperator(model, loss, data)
    if kind == "baseline":
        op.matvec(torch.ones(op.shape[0], device=op.device))
    elif kind == "top-5":
        lanczos(op, 5, tol=1e-3, max_basis=args.max_basis, max_matvecs=args.max_basis + 2, seed=0, progress=False)
    elif kind == "trace":
        trace(op, args.trace_matvecs, seed=0)
    else:
        spectral_density(op, num_probes=args.density_probes, num_steps=args.density_steps, reorthogonalize=False,
                         seed=0, progress=False)
    out = {"peak_mib": peak_resident_mib(), "products": op.num_matvecs}
    if op.device.type == "cuda":
        out["device_mib"] = torch.cuda.max_memory_allocated(op.device) / 2**20
    return out


def peak_resident_mib() -> float:
    """This process's peak resident memory: ``VmHWM`` (Linux: of this program only, where ``ru_maxrss`` keeps the
    peak of the parent process it was forked from), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory(name: str, kind: str, args: argparse.Namespace, argv: list[str]) -> dict[str, float]:
    """:func:`memory_child` in a fresh process (the same options)."""
    run = subprocess.run([sys.executable, __file__, *argv, "--child", json.dumps([name, kind])], capture_output=True,
                         text=True)
    if run.returncode != 0:
        raise SystemExit(f"{name} {kind}: the memory run failed:\n{run.stderr.strip()}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def mib(run: dict[str, float]) -> str:
    text = f"{run['peak_mib']:,.0f}"
    return text + (f" ({run['device_mib']:,.0f} on the device)" if "device_mib" in run else "")


def row(name: str, fast: dict[str, Any], runs: dict[str, dict[str, float]], compile: bool) -> str:
    ratio = fast["hvp"] / fast["gradient"]
    products = fast["top1_products"]
    cells = [name, f"{fast['params'] / 1e6:.1f}M", fast["data"], fmt_time(fast["gradient"]),
             f"{fmt_time(fast['hvp'])} ({fast['product']})",
             f"{ratio:.2f} ({'met' if ratio <= TARGET_RATIO else 'missed'})",
             f"{products} ({'met' if products <= TARGET_PRODUCTS else 'missed'}; residual {fast['top1_residual']:.1e})"]
    cells += [mib(runs[kind]) for kind in MEMORY_RUNS]
    if compile:
        cells.append(f"{fmt_time(fast['compiled'])} ({fast['hvp'] / fast['compiled']:.2f}× eager; compile "
                     f"{fast['compile_seconds']:.0f} s)")
    return "| " + " | ".join(cells) + " |"


def header(args: argparse.Namespace) -> str:
    cells = ["model", "parameters", "batch", "gradient", "HVP, default path",
             f"HVP / gradient (≤ {TARGET_RATIO:g})", f"top-1 to 1e-3: products (≤ {TARGET_PRODUCTS})",
             "peak MiB: one product", f"top-5 (max_basis {args.max_basis})",
             f"trace ({args.trace_matvecs} products)",
             f"density ({args.density_probes} probes, not reorthogonalized)"]
    if args.compile:
        cells.append("HVP, compiled")
    return "| " + " | ".join(cells) + " |\n|" + "---|" * len(cells)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds, the fastest reported (default: 5)")
    parser.add_argument("--resnet-batch", type=int, default=128, help="images per batch (default: 128)")
    parser.add_argument("--gpt-batch", type=int, default=16, help="sequences per batch (default: 16)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default: 128)")
    parser.add_argument("--max-basis", type=int, default=20, help="Lanczos basis of the top-5 memory run "
                        "(default: 20; analyze's default is 40)")
    parser.add_argument("--trace-matvecs", type=int, default=20, help="products of the trace memory run "
                        "(default: 20; analyze's default is 99)")
    parser.add_argument("--density-probes", type=int, default=10, help="probes of the density memory run (default: 10)")
    parser.add_argument("--density-steps", type=int, default=3, help="steps of the density memory run (default: 3; "
                        "its memory does not depend on them)")
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd product (on CPU, "
                        "compiling ResNet-18 takes minutes)")
    parser.add_argument("--tiny", action="store_true", help="tiny models and batches (a smoke test)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    limit_threads(args.threads)
    if args.child is not None:
        print(json.dumps(memory_child(*json.loads(args.child), args)))
        return 0
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise SystemExit(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    rows = []
    for name in names:
        log(f"{name}: timing the gradient, the HVP and top-1 ...")
        fast = speed(name, args)
        runs = {}
        for kind in MEMORY_RUNS:
            log(f"{name}: peak memory of {kind} (a fresh process) ...")
            runs[kind] = memory(name, kind, args, argv)
        rows.append(row(name, fast, runs, args.compile))
    log(f"\n{args.device}, {args.threads} threads, float32, torch {torch.__version__}\n")
    print(header(args))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
