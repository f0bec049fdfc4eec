"""`landscape train`: exact resume after SIGKILL, warm-started λmax, the edge of stability, divergence, targets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from landscape import lanczos, store
from landscape.checkpoints import load_checkpoint, load_training_state
from landscape.cli import main
from landscape.data import digits
from landscape.operators import HessianOperator
from landscape.results import RunRecord

ROOT = Path(__file__).resolve().parents[1]
RUN = ["train", "--model", "mlp", "--model-kwargs", '{"sizes": [64, 12, 10]}', "--data", "digits", "--subset", "300",
       "--optimizer", "nso", "--hparam", "sigma=0.05", "--lr", "0.2", "--batch-size", "64", "--steps", "300",
       "--track-every", "20", "--track-trace-matvecs", "6", "--save-every", "25", "--quiet"]


def environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def comparable(run: RunRecord) -> dict[str, np.ndarray]:
    """Every recorded column except wall times, which differ between runs by nature."""
    return {f"{table}/{column}": values for table, columns in run.tables.items()
            for column, values in columns.items() if column != "seconds"}


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_identical_result(tmp_path):
    torch.set_num_threads(1)  # the subprocesses run single-threaded; equal results need equal reductions
    whole = tmp_path / "whole.h5"
    assert main(RUN + ["-o", str(whole)]) == 0

    killed = tmp_path / "killed.h5"
    command = [sys.executable, "-m", "landscape", *RUN, "-o", str(killed)]
    proc = subprocess.Popen(command, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoints = tmp_path / "killed_checkpoints"
    deadline = time.monotonic() + 120
    while not (checkpoints / "step_100.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    partial = store.read_run(killed)  # the file opens and holds every record up to the kill
    steps = partial.tables["run"]["step"]
    assert 100 <= len(steps) < 300 and np.array_equal(steps, np.arange(1, len(steps) + 1))

    assert main(RUN + ["-o", str(killed), "--resume"]) == 0
    np.testing.assert_equal(comparable(store.read_run(killed)), comparable(store.read_run(whole)))
    a = load_training_state(tmp_path / "whole_checkpoints" / "step_300.pt")
    b = load_training_state(checkpoints / "step_300.pt")
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name


def test_warm_started_lambda_max_equals_a_cold_tight_lanczos(tmp_path, capsys):
    out = tmp_path / "run.h5"
    args = ["train", "--model", "mlp", "--model-kwargs", '{"sizes": [64, 10, 10]}', "--data", "digits", "--subset",
            "200", "--loss", "squared", "--lr", "0.5", "--steps", "60", "--track-every", "20", "--track-tol", "1e-10",
            "--track-trace-matvecs", "0", "--dtype", "float64", "--quiet", "-o", str(out)]
    assert main(args) == 0
    curvature = store.read_run(out).tables["run/curvature"]
    assert list(curvature["step"]) == [0, 20, 40, 60]
    final = load_checkpoint(tmp_path / "run_checkpoints" / "step_60.pt")
    from landscape.data import load_data
    from landscape.losses import squared_loss

    data = load_data("digits", subset=200, seed=0).batches
    op = HessianOperator(final.model, squared_loss, data, dtype=torch.float64)
    cold = lanczos(op, 1, tol=1e-12, seed=123).values[0]
    assert curvature["lambda_max"][-1] == pytest.approx(cold, rel=1e-6)
    assert op.product == "layerwise"  # the squared loss takes the fast path


def test_warm_start_needs_fewer_products_than_cold_start():
    X, y = digits("train")
    torch.manual_seed(0)
    from landscape.models import mlp
    from landscape.tracking import CurvatureTracker, TrackerSettings

    model = mlp((64, 32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    warm = CurvatureTracker(F.cross_entropy, (X, y), settings=TrackerSettings(trace_matvecs=0))
    cold = CurvatureTracker(F.cross_entropy, (X, y), settings=TrackerSettings(trace_matvecs=0, warm_start=False))
    counts = {"warm": [], "cold": []}
    for step in range(0, 200):
        if step % 20 == 0:
            w, c = warm.measure(model, step), cold.measure(model, step)
            assert w["lambda_max"] == pytest.approx(c["lambda_max"], rel=1e-4)
            counts["warm"].append(w["eig_matvecs"])
            counts["cold"].append(c["eig_matvecs"])
        optimizer.zero_grad()
        F.cross_entropy(model(X), y).backward()
        optimizer.step()
    assert np.mean(counts["warm"][1:]) < np.mean(counts["cold"][1:])


@pytest.mark.slow
def test_chebyshev_toy_reaches_the_edge_of_stability(tmp_path):
    out = tmp_path / "eos.h5"
    args = ["train", "--model", "chebyshev", "--data", "chebyshev", "--loss", "squared", "--lr", "0.2", "--steps",
            "4500", "--track-every", "250", "--track-trace-matvecs", "0", "--quiet", "-o", str(out)]
    assert main(args) == 0
    sharpness = store.read_run(out).tables["run/curvature"]["lambda_max"]
    assert sharpness[0] == pytest.approx(2.9, abs=0.3)  # ALGORITHMS.md: from about 2.9 at initialisation
    assert sharpness.max() >= 0.9 * 2 / 0.2


def test_divergence_stops_with_one_line_and_keeps_the_records(tmp_path, capsys):
    out = tmp_path / "run.h5"
    args = ["train", "--model", "chebyshev", "--data", "chebyshev", "--loss", "squared", "--lr", "50", "--steps",
            "200", "--track-every", "5", "--track-trace-matvecs", "0", "--save-every", "1", "--quiet", "-o", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diverged at step" in err[0] and "--lr" in err[0]
    run = store.read_run(out)
    assert len(run.tables["run"]["step"]) >= 1 and "diverged" in run.attrs["stop_reason"]
    good = sorted((tmp_path / "run_checkpoints").glob("step_*.pt"))
    assert good and all(torch.isfinite(t).all() for t in load_training_state(good[0])["state_dict"].values())


def test_target_loss_stops_the_run_and_existing_output_is_refused(tmp_path, capsys):
    out = tmp_path / "run.h5"
    args = ["train", "--model", "mlp", "--model-kwargs", '{"sizes": [64, 16, 10]}', "--data", "digits", "--optimizer",
            "momentum", "--lr", "0.5", "--steps", "500", "--track-every", "10", "--track-trace-matvecs", "0",
            "--target-loss", "0.3", "--quiet", "-o", str(out)]
    assert main(args) == 0
    run = store.read_run(out)
    assert run.attrs["final_step"] < 500 and "target" in run.attrs["stop_reason"]
    assert run.tables["run/curvature"]["train_loss"][-1] <= 0.3
    assert "test_accuracy" in run.tables["run/curvature"]  # digits has a test split, evaluated at every record
    capsys.readouterr()
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "run.h5"
    base = ["train", "--model", "chebyshev", "--data", "chebyshev", "--loss", "squared", "--steps", "20",
            "--track-every", "10", "--quiet", "-o", str(out)]
    assert main(base + ["--lr", "0.1"]) == 0
    capsys.readouterr()
    assert main(base + ["--lr", "0.2", "--resume"]) == 2
    assert "lr" in capsys.readouterr().err
    assert main(["info", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "run: sgd lr 0.1, 20 steps recorded; reached 20 steps" in shown and "3 curvature records" in shown


def test_tracker_records_ggn_lambda_max_and_jacobian_norms_exactly():
    from landscape import GGNOperator, jacobian_norms
    from landscape.models import mlp
    from landscape.tracking import CurvatureTracker, TrackerSettings

    X, y = digits("train")
    X, y = X[:200].double(), y[:200]
    torch.manual_seed(0)
    model = mlp((64, 12, 10)).double()
    settings = TrackerSettings(tol=1e-10, trace_matvecs=0, also_lambda_max=("ggn",), jacobian=True)
    record = CurvatureTracker(F.cross_entropy, (X, y), settings=settings).measure(model, 0)
    cold = lanczos(GGNOperator(model, F.cross_entropy, (X, y)), 1, tol=1e-12, seed=9).values[0]
    assert record["lambda_max_ggn"] == pytest.approx(cold, rel=1e-8)
    norms = jacobian_norms(model, (X, y))
    assert record["jacobian_max"] == pytest.approx(norms.spectral_max, rel=1e-10)
    assert record["jacobian_mean"] == pytest.approx(norms.spectral_mean, rel=1e-10)


def test_unknown_curvature_is_refused(tmp_path, capsys):
    args = ["train", "--model", "chebyshev", "--data", "chebyshev", "--loss", "squared", "--steps", "5",
            "--track-also", "hessian,bogus", "--quiet", "-o", str(tmp_path / "r.h5")]
    assert main(args) == 2
    assert "bogus" in capsys.readouterr().err
    assert not (tmp_path / "r.h5").exists()


def test_top_projection_is_the_iterate_along_the_last_recorded_top_eigenvector(tmp_path):
    out = tmp_path / "run.h5"
    args = ["train", "--model", "chebyshev", "--data", "chebyshev", "--loss", "squared", "--optimizer", "sam",
            "--lr", "0.2", "--steps", "15", "--track-every", "10", "--track-trace-matvecs", "0", "--dtype", "float64",
            "--quiet", "-o", str(out)]
    assert main(args) == 0
    rows = store.read_run(out).tables["run"]
    assert "top_projection" in rows and len(rows["top_projection"]) == 15  # from step 1: step 0 was recorded first
    state = load_training_state(tmp_path / "run_checkpoints" / "step_15.pt")
    theta = torch.cat([t.reshape(-1) for t in state["state_dict"].values()])
    v = state["extra"]["tracker"]["previous"]["hessian"]  # the record at step 10
    assert rows["top_projection"][-1] == pytest.approx(float(theta @ v), rel=1e-12)
