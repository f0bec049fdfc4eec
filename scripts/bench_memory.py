"""Peak memory of top-k, trace and density on the W3 workload, for 1× and 4× the data and several kept vectors.

Each configuration runs in a fresh subprocess and reports that process's peak resident memory (``ru_maxrss``), so
the numbers include torch itself (the first row, "baseline", is the model and data alone). The data is streamed in
batches of 1797 samples, so memory should not grow with its size; Lanczos keeps at most ``max_basis`` vectors (thick
restart) and SLQ without reorthogonalization keeps three vectors per probe.

    python scripts/bench_memory.py --bench ../shared/bench       # a few minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

CONFIGS = [
    ("baseline", {}),
    ("top-5, max_basis 20", {"kind": "eigs", "max_basis": 20}),
    ("top-5, max_basis 40", {"kind": "eigs", "max_basis": 40}),
    ("top-5, max_basis 80", {"kind": "eigs", "max_basis": 80}),
    ("trace, 99 products", {"kind": "trace"}),
    ("density 10×30, reorthogonalized", {"kind": "density", "reorthogonalize": True}),
    ("density 10×30, no reorthogonalization", {"kind": "density", "reorthogonalize": False}),
]


def child(bench: Path, repeats: int, config: dict) -> None:
    """Build W3 on ``repeats``× the digits data (streamed in batches), run one algorithm, print peak RSS in MiB."""
    import numpy as np
    import torch
    from torch.nn import functional as F

    from landscape import HessianOperator, lanczos, spectral_density, trace
    from landscape.models import mlp

    torch.set_num_threads(2)
    model = mlp((64, 1000, 1000, 10))
    model.load_state_dict(torch.load(bench / "w3.pt", weights_only=True))
    arrays = np.load(bench / "digits.npz")
    X, y = torch.as_tensor(arrays["X"]), torch.as_tensor(arrays["y"])
    op = HessianOperator(model, F.cross_entropy, [(X, y)] * repeats)
    kind = config.get("kind")
    if kind == "eigs":
        lanczos(op, 5, tol=1e-6, max_basis=config["max_basis"], seed=0, progress=False)
    elif kind == "trace":
        trace(op, 99, seed=0)
    elif kind == "density":
        spectral_density(op, num_probes=10, num_steps=30, reorthogonalize=config["reorthogonalize"], seed=0,
                         progress=False)
    print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "matvecs": op.num_matvecs}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", default="../shared/bench", help="folder with w3.pt and digits.npz")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    bench = Path(args.bench)
    if args.child is not None:
        child(bench, args.repeats, json.loads(args.child))
        return 0
    if not (bench / "w3.pt").exists():
        parser.error(f"{bench / 'w3.pt'} not found; pass --bench with the reference workloads")
    print("| run | data 1× (1797 samples): peak MiB | data 4× (7188, streamed): peak MiB | products |")
    print("|---|---|---|---|")
    for name, config in CONFIGS:
        cells = []
        for repeats in (1, 4):
            out = subprocess.run([sys.executable, __file__, "--bench", str(bench), "--repeats", str(repeats),
                                  "--child", json.dumps(config)], capture_output=True, text=True, check=True)
            cells.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"| {name} | {cells[0]['peak_mib']:.0f} | {cells[1]['peak_mib']:.0f} | {cells[0]['matvecs']} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
