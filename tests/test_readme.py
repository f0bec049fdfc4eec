"""The README's examples run as written: the quick-start shell block, then every Python block, in one folder."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from landscape import store

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}[ \t]*\n(.*?)^```", README, re.S | re.M)


def shell_block(marker: str) -> str:
    """The first shell block after ``<!-- marker``."""
    after = README[README.index(f"<!-- {marker}"):]
    return re.search(r"^```bash[ \t]*\n(.*?)^```", after, re.S | re.M).group(1)


def environment(tmp_path: Path) -> dict[str, str]:
    """One thread per pool (a shared 2-core machine), and a `landscape` command even without a pip install."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if shutil.which("landscape") is None:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        script = bin_dir / "landscape"
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m landscape "$@"\n')
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env


@pytest.mark.slow
def test_quickstart_then_every_python_example(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(["bash", "-e", "-c", shell_block("quickstart")], cwd=work, env=environment(tmp_path),
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("ckpt_step")][:3] == [
        "ckpt_step100", "ckpt_step200", "ckpt_step300"]
    records = store.read_results(work / "results.h5")
    assert set(records) == {"ckpt_step100", "ckpt_step200", "ckpt_step300"}
    assert all({"eigen", "trace", "density"} <= set(r.results) for r in records.values())

    proc = subprocess.run(["bash", "-e", "-c", shell_block("figures-example")], cwd=work, env=environment(tmp_path),
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr
    assert "| source/name |" in proc.stdout  # the markdown comparison table
    for name in ("compare", "spectrum", "surface", "line"):
        assert (work / f"{name}.png").stat().st_size > 1000 and (work / f"{name}.pdf").exists(), name
    assert store.read_results(work / "surface.h5")["ckpt_step300"].results["surface"].loss.shape == (11, 11)

    monkeypatch.chdir(work)
    python_blocks = blocks("python")
    assert len(python_blocks) >= 2
    for number, code in enumerate(python_blocks):
        exec(compile(code, f"README.md python block {number}", "exec"), {"__name__": "__readme__"})
        assert capsys.readouterr().out.strip(), f"python block {number} printed nothing"


def test_train_example(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(["bash", "-e", "-c", shell_block("train-example")], cwd=work, env=environment(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    sharpness = [float(line.split()[3]) for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert len(sharpness) == 17 and sharpness[0] < 3.5 < 9 < sharpness[-1]  # progressive sharpening toward 2/lr
    records = store.read_run(work / "eos.h5")
    assert records.attrs["final_step"] == 4000
    minima = store.read_results(work / "eos_minima.h5")
    assert sorted(r.step for r in minima.values()) == [1000, 2000, 3000, 4000]
