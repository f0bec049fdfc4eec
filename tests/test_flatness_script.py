"""scripts/flatness_vs_generalization.py: its Kendall τ-b against a brute-force count of pairs (and scipy's), its
granulated Ψ on a grid whose answer is known by construction, and a --tiny run (a smoke test: the correlations
themselves are the script's findings, not a test's)."""

from __future__ import annotations

import csv
import itertools
import math
import re

import numpy as np
import pytest
from scipy import stats

import flatness_vs_generalization as script


def brute_force_tau_b(x: list[float], y: list[float]) -> float:
    """τ-b from its definition, one pair at a time: (concordant − discordant) / √((P − T_x)(P − T_y))."""
    concordant = discordant = tied_x = tied_y = pairs = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        pairs += 1
        dx, dy = x[i] - x[j], y[i] - y[j]
        tied_x += dx == 0
        tied_y += dy == 0
        if dx * dy > 0:
            concordant += 1
        elif dx * dy < 0:
            discordant += 1
    return (concordant - discordant) / math.sqrt((pairs - tied_x) * (pairs - tied_y))


def test_kendall_tau_counts_pairs_as_its_definition_and_scipy_do():
    x = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]  # a tie in x
    y = [2.0, 7.0, 1.0, 8.0, 2.0, 8.0, 1.0, 8.0]  # ties in y
    # 28 pairs, by hand on the first three: (0,1) discordant, (0,2) discordant, (1,2) discordant
    assert script.kendall_tau(x[:3], y[:3]) == pytest.approx(-1.0)
    assert script.kendall_tau(x, y) == pytest.approx(brute_force_tau_b(x, y), abs=1e-12)
    assert script.kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, 15).astype(float), rng.integers(0, 4, 15).astype(float)
    assert script.kendall_tau(a, b) == pytest.approx(brute_force_tau_b(list(a), list(b)), abs=1e-12)
    assert script.kendall_tau(a, -a) == pytest.approx(-1.0) and script.kendall_tau(a, a) == pytest.approx(1.0)
    assert math.isnan(script.kendall_tau([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]))  # no untied pair in y: undefined


def test_granulated_psi_is_the_mean_over_hyperparameters_of_within_group_tau():
    # A 2×2 grid; the gap rises with a and falls with b; the measure rises with both (so it tracks a, not b).
    rows = [{"a": a, "b": b, "gap": a - 2 * b, "m": a + b} for a, b in itertools.product((0, 1), (0, 1))]
    psi_all, psi = script.granulated(rows, "m", "gap", ["a", "b"])
    assert psi == {"a": 1.0, "b": -1.0} and psi_all == 0.0
    # a group whose gap is all ties has no τ-b and is left out of the mean
    for row in rows:
        if row["b"] == 1:
            row["gap"] = 0.0
    _, psi = script.granulated(rows, "m", "gap", ["a", "b"])
    assert psi["a"] == 1.0


@pytest.mark.slow  # about 10 s: trains and measures 8 tiny networks, then reads their CSV back
def test_the_tiny_run_writes_a_row_per_network_and_correlations_in_range(tmp_path, capsys):
    output, figure = tmp_path / "rows.csv", tmp_path / "fig"
    assert script.main(["--tiny", "-o", str(output), "--figure", str(figure)]) == 0
    with open(output, newline="") as handle:
        rows = list(csv.DictReader(handle))
    grid = script.PRESETS["tiny"]
    networks = len(grid["batch_sizes"]) * len(grid["lrs"]) * len(grid["widths"]) * len(grid["weight_decays"]) \
        * len(grid["optimizers"])
    assert len(rows) == networks * len(grid["datasets"])
    for row in rows:
        if row["reached"] == "True":
            assert float(row["train_loss"]) <= grid["target_loss"]
            assert float(row["error_gap"]) == pytest.approx(float(row["test_error"]) - float(row["train_error"]))
            for name in script.MEASURES:
                assert math.isfinite(float(row[name]))
            assert float(row["worst"]) >= 0 and float(row["trace"]) > 0
    out = capsys.readouterr().out
    table_rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| data set")]
    assert len(table_rows) == len(script.GAPS) * len(grid["datasets"]) * len(script.MEASURES)
    for line in table_rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 6  # data set, measure, τ, Ψ, and ψ of the two varied hyperparameters (lr, optimizer)
        for cell in cells[2:]:
            assert cell == "—" or -1.0 <= float(cell) <= 1.0
    assert re.search(r"wall time: \d+ s", out)
    assert script.main(["--from-csv", str(output)]) == 0  # the same tables again, from the CSV alone
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")] == \
        [line for line in out.splitlines() if line.startswith("| ")]
    assert (tmp_path / "fig.png").stat().st_size > 0 and (tmp_path / "fig.pdf").stat().st_size > 0
