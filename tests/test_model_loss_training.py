"""Model losses (``--loss package.module:function`` taking ``(model, batch)``) in training, tracking and surfaces,
exactly as in ``analyze``: a model loss equal to cross-entropy gives the records of the built-in cross-entropy."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from landscape import store
from landscape.operators import ModelLoss
from landscape.optim.registry import OPTIMIZER_NAMES
from landscape.surface import evaluate_surface, random_direction
from landscape.tracking import TrackerSettings
from landscape.train import TrainSettings, train
from conftest import make_data, make_mlp, mean_ce

MODULE = "model_loss_for_training"


@pytest.fixture
def model_loss_module(tmp_path, monkeypatch):
    """``model_loss_for_training:ce`` (cross-entropy as a model loss) in a module of the current folder."""
    (tmp_path / f"{MODULE}.py").write_text(textwrap.dedent("""
        from torch.nn import functional as F

        def ce(model, batch):
            return F.cross_entropy(model(batch[0]), batch[1])
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # whatever the import adds is undone
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    yield f"{MODULE}:ce"
    sys.modules.pop(MODULE, None)


@pytest.mark.parametrize("optimizer", OPTIMIZER_NAMES)
def test_training_with_a_model_loss_gives_the_records_of_the_plain_loss(optimizer, model_loss_module, tmp_path):
    settings = TrainSettings(optimizer=optimizer, lr=0.1, steps=4, batch_size=20, track_every=2,
                             tracker=TrackerSettings(trace_matvecs=3, tol=1e-10), seed=3)
    runs = {}
    for name, spec in (("plain", "cross-entropy"), ("model", model_loss_module)):
        train("mlp", "digits", settings, output=tmp_path / f"{name}.h5", model_kwargs={"sizes": [64, 6, 10]},
              loss_spec=spec, subset=60, dtype=torch.float64, progress=False)
        runs[name] = store.read_run(tmp_path / f"{name}.h5").tables
    plain, model = runs["plain"], runs["model"]
    assert list(model["run"]["step"]) == [1, 2, 3, 4] and list(model["run/curvature"]["step"]) == [0, 2, 4]
    assert {"lambda_max", "trace", "train_loss", "grad_norm"} <= set(model["run/curvature"])
    for table in ("run", "run/curvature"):
        columns = set(model[table]) - {"seconds"}
        assert columns <= set(plain[table])  # the plain loss adds accuracy, which a model loss cannot define
        for column in columns:
            np.testing.assert_allclose(model[table][column], plain[table][column], rtol=1e-9, atol=1e-12,
                                       err_msg=f"{table}/{column}")


def test_a_surface_with_a_model_loss_equals_the_plain_loss():
    model, (X, y) = make_mlp(), make_data()
    directions = random_direction(model, seed=1)
    grid = np.linspace(-1, 1, 3)
    plain = evaluate_surface(model, mean_ce, (X, y), directions, grid, grid, dtype=torch.float64, progress=False)
    wrapped = ModelLoss(lambda m, batch: F.cross_entropy(m(batch[0]), batch[1]))
    other = evaluate_surface(model, wrapped, (X, y), directions, grid, grid, dtype=torch.float64, progress=False)
    np.testing.assert_allclose(other.loss, plain.loss, rtol=1e-13)
