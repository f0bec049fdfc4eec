"""Sharpness records in the HDF5 store: every field comes back exactly (values, the optional δ, absent fields as
None), and the compare rows read them under their labels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import landscape as L
from landscape import store
from landscape.results import FlatnessRow, SharpnessResult

from conftest import make_data, make_mlp, mean_ce


@pytest.fixture(scope="module")
def measures():
    """Each kind the record holds, as the functions produce them (float64 MLP, 40 samples), plus a record of a
    measure without ρ or standard error (as the Fisher-Rao norm and exact relative flatness are)."""
    model, data = make_mlp(), make_data()
    common = dict(rho=0.05, steps=3, restarts=2, seed=4, progress=False)
    made = [
        L.sharpness(model, mean_ce, data, kind="worst", return_delta=True, **common),
        L.sharpness(model, mean_ce, data, kind="average", samples=6, **common),
        L.sharpness(model, mean_ce, data, kind="worst", adaptive=True, chunk_size=16, **common),
        SharpnessResult(kind="relative_flatness", value=0.25, stderr=None, values=np.array([0.25]), loss=1.1,
                        adaptive=False, num_gradients=24, num_losses=1, seed=None, seconds=0.01, dimension=24,
                        dtype="float64", layer="2.weight"),
    ]
    return {result.key: result for result in made}


def assert_same(a, b):
    assert type(a) is type(b)
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x.cpu(), y), field.name
        elif isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray) and x.dtype == y.dtype, field.name
            np.testing.assert_array_equal(x, y, err_msg=field.name)
        else:
            assert type(x) is type(y) and x == y, field.name


def test_every_sharpness_record_round_trips_exactly(tmp_path, measures):
    assert set(measures) == {"sharpness_worst", "sharpness_average", "sharpness_worst_adaptive",
                             "sharpness_relative_flatness"}
    assert measures["sharpness_worst"].delta is not None and measures["sharpness_average"].stderr is not None
    path = tmp_path / "r.h5"
    with store.update_results(path) as handle:
        store.write_checkpoint(handle, "m", measures, attrs={"path": "/ckpts/m.pt", "loss": 1.0})
    record = store.read_results(path)["m"]
    assert set(record.results) == set(measures)
    for key, result in measures.items():
        assert_same(result, record.results[key])
    back = record.results["sharpness_relative_flatness"]
    assert back.rho is None and back.stderr is None and back.delta is None and back.chunk_size is None


def test_the_delta_is_a_point_of_the_ball_it_was_found_in(measures):
    """The stored δ is the one the value was measured at: ‖δ‖ ≤ ρ and L(θ+δ) − L(θ) is the value (the best start)."""
    worst = measures["sharpness_worst"]
    model, (X, y) = make_mlp(), make_data()
    assert float(worst.delta.norm()) <= 0.05 * (1 + 1e-12)
    theta = nn.utils.parameters_to_vector(model.parameters()).detach()
    with torch.no_grad():
        nn.utils.vector_to_parameters(theta + worst.delta, model.parameters())
        moved = float(mean_ce(model(X), y))
    assert moved - worst.loss == pytest.approx(worst.value, rel=1e-9, abs=1e-14)


def test_compare_rows_carry_each_measure_under_its_label(tmp_path, measures):
    path = tmp_path / "r.h5"
    with store.update_results(path) as handle:
        store.write_checkpoint(handle, "m", measures, attrs={"path": "/ckpts/m.pt"})
    (row,) = store.flatness_rows([path])
    assert list(row.sharpness) == ["worst ρ=0.05", "worst-adaptive ρ=0.05 m=16", "average ρ=0.05",
                                   "relative-flatness"]  # by kind, plain before adaptive
    for result in measures.values():
        assert row.sharpness[result.label] == (result.value, result.stderr)
    assert FlatnessRow.of_checkpoint("x", store.read_results(path)["m"]).sharpness == row.sharpness
