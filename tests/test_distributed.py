"""Distributed curvature: two gloo processes give the single-process numbers, and the same numbers on every rank.

The multi-process checks run this file as a torchrun script (``python -m torch.distributed.run --nproc-per-node 2
tests/test_distributed.py OUT``): each rank writes its results to ``OUT/rank{r}.npz``, and the test compares them
with each other and with the same computations run here, in one process, on all the data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SIZES = [64, 8, 10]
NUM_SAMPLES = 101  # odd: the two shards differ in size
RTOL = 1e-10

pytestmark = pytest.mark.distributed


def gloo_available() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_gloo_available()


needs_gloo = pytest.mark.skipif(not gloo_available(), reason="torch.distributed with the gloo backend is unavailable")


def problem():
    """The model, loss and all the data, built the same way on every rank and in the reference process."""
    from landscape.data import digits
    from landscape.models import mlp

    torch.manual_seed(0)
    model = mlp(SIZES).double()
    X, y = digits("train")
    return model, torch.nn.functional.cross_entropy, (X[:NUM_SAMPLES].double(), y[:NUM_SAMPLES])


def metrics(op) -> dict[str, np.ndarray]:
    """Everything compared across ranks and with the single-process run."""
    from landscape.linalg import lanczos, spectral_density, trace

    eig = lanczos(op, 3, tol=1e-8, seed=0, return_vectors=False)
    hpp = trace(op, 30, method="hutch++", seed=1)
    kry = trace(op, 30, method="krylov", seed=2)
    density = spectral_density(op, num_probes=2, num_steps=20, seed=3)
    return {
        "eigs": np.asarray(eig.values, dtype=np.float64),
        "trace_hutchpp": np.array([hpp.estimate]),
        "trace_krylov": np.array([kry.estimate]),
        "nodes": np.asarray(density.nodes, dtype=np.float64),
        "weights": np.asarray(density.weights, dtype=np.float64),
        "gradient": op.gradient().numpy(),
        "num_matvecs": np.array([op.num_matvecs]),
    }


def worker(out: Path) -> None:
    """One rank of the torchrun job: the distributed operators' metrics, written to ``out/rank{r}.npz``."""
    from landscape.operators import HessianOperator
    from landscape.operators.distributed import DistributedOperator, distributed_gradient, shard_data
    from landscape.operators.factory import distributed_curvature_operator

    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    model, loss, data = problem()
    op = distributed_curvature_operator("hessian", model, loss, data, dtype=torch.float64)
    assert op.num_samples == NUM_SAMPLES
    results = metrics(op)
    # A list of uneven batches, sharded by samples, through the wrapper directly, with the GGN.
    X, y = data
    batches = [(X[:40], y[:40]), (X[40:47], y[40:47]), (X[47:], y[47:])]
    from landscape.operators.factory import curvature_operator

    ggn = DistributedOperator(curvature_operator("ggn", model, loss, shard_data(batches), dtype=torch.float64))
    v = torch.linspace(-1, 1, ggn.shape[0], dtype=torch.float64)
    results["ggn_matvec"] = ggn.matvec(v).numpy()
    results["ggn_matmat"] = ggn.matmat(torch.stack([v, v.flip(0)])).numpy()
    local = HessianOperator(model, loss, shard_data(data), dtype=torch.float64)
    results["gradient2"] = distributed_gradient(local).numpy()
    # A non-finite loss on rank 1's shard alone: both ranks raise (no rank is left waiting in the collective).
    from landscape.errors import LossError

    Xs, ys = shard_data(data)
    if rank == 1:
        Xs = Xs.clone()
        Xs[0, 0] = float("nan")
    bad = DistributedOperator(HessianOperator(model, loss, (Xs, ys), dtype=torch.float64))
    try:
        bad.matvec(v[: bad.shape[0]])
        results["failure_raised"] = np.array([0])
    except LossError:
        results["failure_raised"] = np.array([1])
    np.savez(out / f"rank{rank}.npz", **results)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def launch(args, tmp_path: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *map(str, args)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done


# -- sharding ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, w", [(0, 1), (1, 1), (7, 1), (7, 2), (101, 2), (10, 3), (11, 4), (5, 5), (3, 8)])
def test_shards_cover_every_sample_once(n, w):
    from landscape.operators.distributed import shard

    seen = np.concatenate([np.arange(n)[shard(n, r, w)] for r in range(w)])
    assert np.array_equal(seen, np.arange(n))
    sizes = [len(range(n)[shard(n, r, w)]) for r in range(w)]
    assert max(sizes) - min(sizes) <= 1


def test_shard_data_pairs_lists_and_iterables():
    from landscape.errors import DataError
    from landscape.operators.distributed import shard_data

    X, y = torch.arange(11.0).reshape(11, 1), torch.arange(11)
    parts = [shard_data((X, y), r, 3) for r in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), X) and torch.equal(torch.cat([p[1] for p in parts]), y)
    batches = [(X[:2], y[:2]), (X[2:9], y[2:9]), (X[9:], y[9:])]
    for w in (1, 2, 3, 4):
        got = [b for r in range(w) for b in shard_data(batches, r, w)]
        assert torch.equal(torch.cat([b[0] for b in got]), X) and torch.equal(torch.cat([b[1] for b in got]), y)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=3)
    got = sorted(int(v) for r in range(2) for b in shard_data(loader, r, 2) for v in b[1])
    assert got == list(range(11))
    assert shard_data((X, y)) is not None and shard_data((X, y))[0] is X  # no process group: all the data
    with pytest.raises(DataError):
        shard_data((X[:1], y[:1]), 0, 2)


def test_operator_needs_a_process_group():
    from landscape.errors import OptionError
    from landscape.operators import DenseOperator
    from landscape.operators.distributed import DistributedOperator

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    with pytest.raises(OptionError, match="process group"):
        DistributedOperator(DenseOperator(torch.eye(3)))


# -- two processes -------------------------------------------------------------------------------------------------

@needs_gloo
def test_two_ranks_match_one_process_and_each_other(tmp_path):
    from landscape.operators.factory import curvature_operator

    launch([Path(__file__).resolve(), tmp_path], tmp_path)
    ranks = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(2)]
    for key in ranks[0]:
        assert np.array_equal(ranks[0][key], ranks[1][key], equal_nan=True), f"ranks differ in {key}"

    model, loss, data = problem()
    single = metrics(curvature_operator("hessian", model, loss, data, dtype=torch.float64))
    got = ranks[0]
    for key in ("eigs", "trace_hutchpp", "trace_krylov", "nodes", "weights", "gradient", "gradient2"):
        want = single["gradient" if key == "gradient2" else key]
        np.testing.assert_allclose(got[key], want, rtol=RTOL, atol=RTOL * np.nanmax(np.abs(want)), err_msg=key)
    assert got["num_matvecs"][0] == single["num_matvecs"][0]
    assert got["failure_raised"][0] == 1  # and on rank 1 too (the ranks' arrays are equal)
    ggn = curvature_operator("ggn", model, loss, data, dtype=torch.float64)
    v = torch.linspace(-1, 1, ggn.shape[0], dtype=torch.float64)
    np.testing.assert_allclose(got["ggn_matvec"], ggn.matvec(v).numpy(), rtol=RTOL, atol=1e-14)
    np.testing.assert_allclose(got["ggn_matmat"], ggn.matmat(torch.stack([v, v.flip(0)])).numpy(), rtol=RTOL,
                               atol=1e-14)


@needs_gloo
def test_analyze_under_torchrun_matches_one_process(tmp_path, capsys):
    from landscape import store
    from landscape.cli import main
    from landscape.models import mlp

    torch.manual_seed(0)
    torch.save(mlp(SIZES).state_dict(), tmp_path / "ckpt.pt")
    common = ["analyze", "ckpt.pt", "--model", "mlp", "--model-kwargs", json.dumps({"sizes": SIZES}), "--data",
              "digits", "--subset", str(NUM_SAMPLES), "--metrics", "eigs,trace", "--dtype", "float64", "--quiet"]
    done = launch(["-m", "landscape", *common, "-o", "two.h5"], tmp_path)
    assert done.stdout.count("results: two.h5") == 1  # rank 0 alone prints

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main([*common, "-o", "one.h5"]) == 0
    finally:
        os.chdir(cwd)
    capsys.readouterr()
    two, one = store.read_results(tmp_path / "two.h5"), store.read_results(tmp_path / "one.h5")
    assert len(two) == len(one) == 1  # written once
    (r2,), (r1,) = two.values(), one.values()
    assert r2.attrs["world_size"] == 2 and "world_size" not in r1.attrs
    assert r2.attrs["num_samples"] == NUM_SAMPLES
    np.testing.assert_allclose(r2.results["eigen"].values, r1.results["eigen"].values, rtol=RTOL)
    np.testing.assert_allclose(r2.results["trace"].estimate, r1.results["trace"].estimate, rtol=RTOL)
    np.testing.assert_allclose(r2.attrs["loss"], r1.attrs["loss"], rtol=RTOL)
    np.testing.assert_allclose(r2.attrs["accuracy"], r1.attrs["accuracy"], rtol=RTOL)
    assert not list(tmp_path.glob(".two.h5*"))  # no stray temporary files from another rank


@needs_gloo
def test_train_under_torchrun_matches_one_process_and_resumes(tmp_path, capsys):
    """Data-parallel SAM on mini-batches split 16/16 over two ranks, killed at step 12 and resumed to 24: every
    recorded column (losses, λmax, trace, Jacobian norms, test accuracy) and the final parameters equal a one-process
    run's (float64)."""
    from landscape import store
    from landscape.checkpoints import load_training_state
    from landscape.cli import main

    common = ["train", "--model", "mlp", "--model-kwargs", json.dumps({"sizes": SIZES}), "--data", "digits",
              "--subset", str(NUM_SAMPLES), "--dtype", "float64", "--optimizer", "sam", "--lr", "0.1",
              "--batch-size", "32", "--track-every", "5", "--track-jacobian", "--track-trace-matvecs", "6",
              "--save-every", "6", "--quiet"]
    first = launch(["-m", "landscape", *common, "--steps", "12", "-o", "two.h5"], tmp_path)
    assert first.stdout.count("run: two.h5") == 1  # rank 0 alone prints
    launch(["-m", "landscape", *common, "--steps", "24", "-o", "two.h5", "--resume"], tmp_path)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main([*common, "--steps", "24", "-o", "one.h5"]) == 0
    finally:
        os.chdir(cwd)
    capsys.readouterr()
    two, one = store.read_run(tmp_path / "two.h5"), store.read_run(tmp_path / "one.h5")
    assert two.attrs["world_size"] == 2
    for table in ("run", "run/curvature"):
        assert set(two.tables[table]) == set(one.tables[table])
        for column, want in one.tables[table].items():
            if column != "seconds":
                np.testing.assert_allclose(two.tables[table][column], want, rtol=1e-9, atol=1e-12,
                                           err_msg=f"{table}/{column}")
    assert len(one.tables["run"]["step"]) == 24 and len(one.tables["run/curvature"]["step"]) == 5
    got = load_training_state(tmp_path / "two_checkpoints" / "step_24.pt")["state_dict"]
    want = load_training_state(tmp_path / "one_checkpoints" / "step_24.pt")["state_dict"]
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-10, atol=1e-13)


def test_data_parallel_refuses_what_it_cannot_split():
    from landscape.distributed import Runtime
    from landscape.errors import OptionError
    from landscape.models import mlp
    from landscape.train import Trainer, TrainSettings

    runtime = Runtime(rank=0, world_size=4)  # no process group is needed to refuse
    with pytest.raises(OptionError, match="use batch_size of at least 4"):
        runtime.split_batch((torch.zeros(3, 64), torch.zeros(3)), mlp(SIZES))
    with pytest.raises(OptionError, match="^optimizer sa"):
        Trainer(mlp(SIZES), torch.nn.functional.cross_entropy, (torch.zeros(4, 64), torch.zeros(4).long()), None,
                TrainSettings(optimizer="sa"), output="unused.h5", runtime=runtime)


if __name__ == "__main__":  # a rank of the torchrun job started by the tests above
    worker(Path(sys.argv[1]))
