"""Two gloo processes against one on the W3 workload: Lanczos top-5 of the Hessian, wall time and agreement.

W3 is ``mlp((64, 1000, 1000, 10))`` (1,076,010 parameters) with the weights of ``--checkpoint`` (a state dict) on
``--data`` (arrays X, y; 1797 samples), float32, Lanczos top-5 at tol 1e-6. Runs, each in a fresh process:

- ``1 proc × T threads``: the single-process operator, ``torch.set_num_threads(T)`` for each T in ``--single-threads``;
- ``2 procs × 1 thread``: ``python -m torch.distributed.run --nproc-per-node 2`` of this script, gloo, each rank
  on its shard with one thread, products all-reduced (:class:`landscape.operators.distributed.DistributedOperator`).

The time is the operator's construction plus Lanczos (not the interpreter start, imports or data loading), best of
``--repeat``; prints a markdown table with the speed-up over each single-process run and the largest relative
difference of the eigenvalues from the first single-process run.

    python scripts/bench_distributed.py --checkpoint ../shared/bench/w3.pt --data ../shared/bench/digits.npz
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = (64, 1000, 1000, 10)


def measure(args: argparse.Namespace) -> None:
    """One process of one run (a single process, or a rank of the torchrun job): writes its JSON to ``args.out``."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from landscape.operators.factory import curvature_operator
    from landscape.linalg import lanczos
    from landscape.models import mlp
    from landscape.operators.distributed import DistributedOperator, shard_data

    distributed = args.role == "rank"
    if distributed:
        torch.distributed.init_process_group("gloo")
    model = mlp(SIZES)
    model.load_state_dict(torch.load(args.checkpoint, weights_only=True))
    arrays = np.load(args.data)
    data = (torch.as_tensor(arrays["X"], dtype=torch.float32), torch.as_tensor(arrays["y"]))
    local = shard_data(data) if distributed else data
    times, values, matvecs = [], None, 0
    for _ in range(args.repeat):
        if distributed:
            torch.distributed.barrier()
        start = time.perf_counter()
        op = curvature_operator("hessian", model, torch.nn.functional.cross_entropy, local, dtype=torch.float32)
        if distributed:
            op = DistributedOperator(op)
        eig = lanczos(op, 5, tol=1e-6, seed=0, return_vectors=False)
        times.append(time.perf_counter() - start)
        values, matvecs = [float(v) for v in eig.values], op.num_matvecs
        op.release()
    rank = torch.distributed.get_rank() if distributed else 0
    record = {"seconds": min(times), "values": values, "matvecs": matvecs, "threads": torch.get_num_threads(),
              "samples": int(local[0].shape[0])}
    Path(args.out, f"{args.role}{rank}.json").write_text(json.dumps(record))
    if distributed:
        torch.distributed.destroy_process_group()


def run(command: list[str], threads: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    subprocess.run(command, check=True, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT.parent / "shared/bench/w3.pt"))
    parser.add_argument("--data", default=str(ROOT.parent / "shared/bench/digits.npz"))
    parser.add_argument("--repeat", type=int, default=1, help="timed repetitions per run, best kept (default: 1)")
    parser.add_argument("--single-threads", default="2,1", help="thread counts of the single-process runs")
    parser.add_argument("--role", choices=("main", "single", "rank"), default="main", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role != "main":
        measure(args)
        return

    me = [sys.executable, str(Path(__file__).resolve()), "--checkpoint", args.checkpoint, "--data", args.data,
          "--repeat", str(args.repeat)]
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for threads in (int(t) for t in args.single_threads.split(",")):
            run([*me, "--role", "single", "--threads", str(threads), "--out", out], threads)
            record = json.loads(Path(out, "single0.json").read_text())
            rows.append((f"1 proc × {threads} thread{'s' if threads > 1 else ''}", [record]))
        run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
             *me[1:], "--role", "rank", "--threads", "1", "--out", out], 1)
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(2)]
        rows.append(("2 procs × 1 thread (gloo)", ranks))

    reference = rows[0][1][0]["values"]
    print(f"W3 {SIZES}, float32, Lanczos top-5 tol 1e-6; time = operator + Lanczos, best of {args.repeat}\n")
    header = "| run | seconds | matvecs | " + " | ".join(f"speed-up vs {name}" for name, _ in rows[:-1])
    print(header + " | max rel. diff of eigenvalues vs first row | ranks identical |")
    print("|" + "---|" * (len(rows) + 4))
    for name, records in rows:
        seconds = max(r["seconds"] for r in records)  # the run ends with its slowest rank
        speedups = " | ".join(f"{single[0]['seconds'] / seconds:.2f}×" for _, single in rows[:-1])
        diff = max(abs(a - b) / abs(b) for a, b in zip(records[0]["values"], reference))
        same = "yes" if all(r["values"] == records[0]["values"] for r in records) else "no"
        print(f"| {name} | {seconds:.2f} | {records[0]['matvecs']} | {speedups} | {diff:.1e} | "
              f"{same if len(records) > 1 else '—'} |")
    print("\neigenvalues (first row):", ", ".join(f"{v:.7g}" for v in reference))


if __name__ == "__main__":
    main()
