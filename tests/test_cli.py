"""The command line: ``python -m landscape``, the ``landscape`` script, the demo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from landscape.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY_DEMO = ["--steps", "30", "--track-every", "10", "--grid", "-1:1:5", "--density-steps", "10", "--quiet"]


def run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    # One thread per pool: on a shared 2-core machine torch's 2-thread OpenMP pool runs the demo's products
    # 10-50x slower when another process competes for the cores; the results are the same.
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


PYTHON_M = [sys.executable, "-m", "landscape"]


def test_module_help_mentions_demo():
    proc = run(PYTHON_M + ["--help"])
    assert proc.returncode == 0, proc.stderr
    assert "demo" in proc.stdout


@pytest.mark.parametrize("entry", ["python -m", "script"])
def test_demo_help(entry):
    if entry == "script":
        script = shutil.which("landscape")
        if script is None:
            pytest.skip("the `landscape` console script is not on PATH (package not pip-installed)")
        prefix = [script]
    else:
        prefix = PYTHON_M
    proc = run(prefix + ["demo", "--help"])
    assert proc.returncode == 0, proc.stderr
    for option in ("--out", "--steps", "--track-every", "--grid", "--seed", "--dtype", "--quiet"):
        assert option in proc.stdout


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_version():
    proc = run(PYTHON_M + ["--version"])
    assert proc.returncode == 0
    import landscape

    assert landscape.__version__ in proc.stdout


def test_steps_zero_exits_2_naming_it():
    proc = run(PYTHON_M + ["demo", "--steps", "0"])
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert lines and "--steps" in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("option", ["--steps", "--track-every", "--density-steps"])
def test_nonpositive_option_returns_2_naming_it(option, capsys):
    assert main(["demo", option, "-1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert option in captured.err and "error" in captured.err


def test_bad_choice_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", "--dtype", "float16"])
    assert info.value.code == 2
    assert "--dtype" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_demo_writes_every_file_and_figure(tmp_path):
    """The demo end to end at a reduced size: three tracked runs, the analysed minima, surfaces, all figures."""
    from landscape import store

    out = tmp_path / "demo"
    proc = run(PYTHON_M + ["demo", "--out", str(out)] + TINY_DEMO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    rows = [line.split()[0] for line in proc.stdout.splitlines()[2:]]
    assert rows == ["train_sgd.h5:run", "train_sam.h5:run", "train_nso.h5:run", "minima.h5:minimum_nso",
                    "minima.h5:minimum_sam", "minima.h5:minimum_sgd"]
    for name in ("sgd", "sam", "nso"):
        run_file = store.read_run(out / f"train_{name}.h5")
        assert run_file.attrs["final_step"] == 30 and list(run_file.tables["run/curvature"]["step"]) == [0, 10, 20, 30]
    minima = store.read_results(out / "minima.h5")
    assert all({"eigen", "trace", "density", "jacobian", "surface"} <= set(r.results) for r in minima.values())
    assert minima["minimum_sam"].results["surface"].loss.shape == (5, 5)
    for figure in ("sharpening", "curvature", "sam", "spectrum", "surface", "compare"):
        for suffix in ("png", "pdf"):
            assert (out / "figures" / f"{figure}.{suffix}").stat().st_size > 1000, figure
