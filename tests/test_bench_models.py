"""scripts/bench_models.py with tiny models (a smoke test: the figures themselves are the script's, not a test's):
one table row per model, whose top-1 residual is checked by the script with one more product."""

from __future__ import annotations

import re

import pytest

import bench_models


@pytest.mark.slow  # eight seconds: four fresh processes import torch
def test_the_benchmark_prints_a_row_per_model_with_every_figure(capsys):
    assert bench_models.main(["--tiny", "--models", "gpt", "--repeats", "1"]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert table[0].startswith("| model | parameters |") and len(table) == 3
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[0] == "gpt" and cells[4].endswith("(reverse)") and len(cells) == len(table[0].strip("|").split("|"))
    products, residual = re.match(r"(\d+) \((?:met|missed); residual (\S+)\)", cells[6]).groups()
    assert 1 <= int(products) <= 100 and float(residual) <= 1e-3
    assert all(float(c.replace(",", "")) > 0 for c in cells[7:11])  # peak MiB of each memory run
