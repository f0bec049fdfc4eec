"""`landscape compare` shows the test split's loss and accuracy that analyze records, and picks checkpoints
(--last per file, --checkpoint patterns)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from landscape import save_checkpoint
from landscape.cli import main
from landscape.compare import compare
from landscape.data import digits
from landscape.models import mlp
from landscape.store import read_results


def checkpoints(folder, steps=(10, 30)):
    """Toolkit checkpoints of the digits MLP at a few steps of full-batch gradient descent."""
    torch.manual_seed(0)
    model = mlp(sizes=(64, 16, 10))
    X, y = digits("train")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    paths, step = [], 0
    for target in steps:
        while step < target:
            opt.zero_grad()
            F.cross_entropy(model(X), y).backward()
            opt.step()
            step += 1
        path = folder / f"step_{step}.pt"
        save_checkpoint(path, model, step=step, model_spec="mlp", model_kwargs={"sizes": [64, 16, 10]})
        paths.append(path)
    return paths


def analyze(paths, output, *extra):
    args = ["analyze", *map(str, paths), "--data", "digits", "--metrics", "trace", "--trace-matvecs", "3",
            "-o", str(output), "--quiet", *extra]
    assert main(args) == 0


def test_analyze_records_the_test_split_and_compare_shows_it(tmp_path, capsys):
    paths = checkpoints(tmp_path)
    analyze(paths, tmp_path / "r.h5")
    X, y = digits("test")
    for record in read_results(tmp_path / "r.h5").values():
        model = mlp(sizes=(64, 16, 10))
        model.load_state_dict(torch.load(record.attrs["path"], weights_only=True)["state_dict"])
        with torch.no_grad():
            out = model(X)
        assert record.attrs["test_loss"] == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-5)
        assert record.attrs["test_accuracy"] == pytest.approx(float((out.argmax(1) == y).double().mean()), rel=1e-12)
        assert "test" in record.attrs["test_data"]
    capsys.readouterr()
    rows = compare([tmp_path / "r.h5"], say=lambda line: None)
    assert all(row.test_loss is not None and row.test_accuracy is not None for row in rows)
    assert all(row.train_loss is not None for row in rows)


def test_no_test_records_none(tmp_path):
    paths = checkpoints(tmp_path, steps=(5,))
    analyze(paths, tmp_path / "r.h5", "--no-test")
    (record,) = read_results(tmp_path / "r.h5").values()
    assert "test_loss" not in record.attrs
    (row,) = compare([tmp_path / "r.h5"], say=lambda line: None)
    assert row.test_loss is None and row.train_loss is not None


def test_last_keeps_each_files_latest_checkpoint_and_patterns_pick(tmp_path, capsys):
    paths = checkpoints(tmp_path, steps=(5, 10, 20))
    analyze(paths[:2], tmp_path / "a.h5", "--no-test")
    analyze(paths, tmp_path / "b.h5", "--no-test")
    capsys.readouterr()
    rows = compare([tmp_path / "a.h5", tmp_path / "b.h5"], last=True, say=lambda line: None)
    assert [(row.source.endswith("a.h5"), row.step) for row in rows] == [(True, 10), (False, 20)]
    picked = compare([tmp_path / "b.h5"], checkpoints=["step_1*", "step_5"], say=lambda line: None)
    assert sorted(row.step for row in picked) == [5, 10]
    assert main(["compare", str(tmp_path / "a.h5"), "--last", "--no-figure"]) == 0
    table = capsys.readouterr().out
    assert "step_10" in table and "step_5 " not in table
    assert main(["compare", str(tmp_path / "a.h5"), "--checkpoint", "nope", "--no-figure"]) == 2
    err = capsys.readouterr().err
    assert "--checkpoint nope" in err and "step_5" in err
