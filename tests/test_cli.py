"""The command line: ``python -m landscape``, the ``landscape`` script, the demo."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from landscape.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY_DEMO = ["--train-steps", "5", "--trace-matvecs", "9", "--probes", "2", "--steps", "10", "--top-k", "2", "--quiet"]


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
    for option in ("--top-k", "--trace-matvecs", "--probes", "--steps", "--seed", "--dtype", "--quiet"):
        assert option in proc.stdout


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_version():
    proc = run(PYTHON_M + ["--version"])
    assert proc.returncode == 0
    import landscape

    assert landscape.__version__ in proc.stdout


def test_top_k_zero_exits_2_naming_it():
    proc = run(PYTHON_M + ["demo", "--top-k", "0"])
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert lines and "--top-k" in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("option", ["--trace-matvecs", "--probes", "--steps", "--train-steps"])
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


def test_tiny_demo_prints_table():
    proc = run(PYTHON_M + ["demo"] + TINY_DEMO, timeout=240)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for word in ("lambda_1", "lambda_2", "lambda_min", "trace", "spectrum range"):
        assert word in out
    assert "lambda_3" not in out  # --top-k 2
    assert "9 HVPs" in out  # --trace-matvecs 9
    assert "2 probes x 10 steps, 20 HVPs" in out
    assert "Traceback" not in proc.stderr
    # the eigenvalues in the table are ordered
    values = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(lambda_\w+)\s+(\S+)", out, re.M)}
    assert values["lambda_1"] >= values["lambda_2"] > values["lambda_min"]
