"""Training can always continue: stray files beside the checkpoints, a run killed or stopped by a full disk before
its first checkpoint, options refused before any file exists, and no run file left by a run that never took a step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from landscape import store
from landscape.checkpoints import load_training_state
from landscape.cli import main
from landscape.errors import CheckpointError, StoreError
from landscape.train import latest_checkpoint

RUN = ["train", "--model", "mlp", "--model-kwargs", '{"sizes": [64, 8, 10]}', "--data", "digits", "--subset", "120",
       "--lr", "0.2", "--batch-size", "32", "--steps", "30", "--track-every", "10", "--track-trace-matvecs", "3",
       "--quiet"]


class Killed(Exception):
    """Stands for SIGKILL: the run stops between two steps and nothing of landscape's sees it coming."""


def comparable(path: Path) -> dict[str, np.ndarray]:
    """Every recorded column except wall times, which differ between runs by nature."""
    run = store.read_run(path)
    return {f"{table}/{column}": values for table, columns in run.tables.items()
            for column, values in columns.items() if column != "seconds"}


def assert_same_run(a: Path, b: Path, step: int) -> None:
    """Equal records, and equal final weights in ``step_<step>.pt`` of both runs' checkpoint folders."""
    np.testing.assert_equal(comparable(a), comparable(b))
    first = load_training_state(a.with_name(f"{a.stem}_checkpoints") / f"step_{step}.pt")["state_dict"]
    second = load_training_state(b.with_name(f"{b.stem}_checkpoints") / f"step_{step}.pt")["state_dict"]
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    """The uninterrupted run (checkpoints every 10 steps) every interrupted one must end up equal to."""
    out = tmp_path_factory.mktemp("whole") / "whole.h5"
    assert main(RUN + ["--save-every", "10", "-o", str(out)]) == 0
    return out


def kill_at_step(monkeypatch, step: int) -> None:
    """Make the training step that would reach ``step`` raise :class:`Killed` (the rows before it are on disk)."""
    import landscape.train

    real = landscape.train.training_step
    calls = []

    def step_or_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(landscape.train, "training_step", step_or_die)


def fail_save_at_step(monkeypatch, step: int) -> None:
    """Make the checkpoint write of ``step`` fail as a full disk does (the error the checkpoint writer raises)."""
    import landscape.train

    real = landscape.train.save_checkpoint

    def save_or_fail(path, *args, **kwargs):
        if kwargs.get("step") == step:
            raise CheckpointError(f"cannot write checkpoint '{path}': no space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(landscape.train, "save_checkpoint", save_or_fail)


def fail_append_at_step(monkeypatch, step: int) -> None:
    """Make appending row ``step`` to the run table fail as a full disk does."""
    real = store.RunWriter.append

    def append_or_fail(self, table, row):
        if table == "run" and row["step"] == step:
            raise StoreError(f"cannot write {self.path}: no space left on device")
        return real(self, table, row)

    monkeypatch.setattr(store.RunWriter, "append", append_or_fail)


def leftovers(folder: Path) -> list[str]:
    """What is in ``folder``, but for a results file's lock file (kept by design, for the writers that follow)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# -- stray files ---------------------------------------------------------------------------------------------------
def test_latest_checkpoint_counts_only_step_integer_files(tmp_path):
    for name in ("step_2.pt", "step_10.pt", "step_best.pt", "step_final.pt", "notes.pt", "step_3.pt.bak",
                 "step_-4.pt", "step_99"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "step_50.pt").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "step_10.pt"  # by step, not by name
    assert latest_checkpoint(tmp_path / "empty") is None


def test_stray_files_beside_the_checkpoints_do_not_break_resume(tmp_path, whole, monkeypatch, capsys):
    out = tmp_path / "run.h5"
    kill_at_step(monkeypatch, 25)
    with pytest.raises(Killed):
        main(RUN + ["--save-every", "10", "-o", str(out)])
    monkeypatch.undo()
    folder = tmp_path / "run_checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step_10.pt", "step_20.pt"]
    (folder / "step_best.pt").write_bytes((folder / "step_10.pt").read_bytes())  # what a user might keep there
    (folder / "step_final.pt").write_bytes(b"not a checkpoint")
    (folder / "notes.pt").write_text("lr sweep")
    assert main(RUN + ["--save-every", "10", "-o", str(out), "--resume"]) == 0, capsys.readouterr().err
    assert_same_run(out, whole, 30)


# -- before the first checkpoint -----------------------------------------------------------------------------------
def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_0(tmp_path, whole, monkeypatch, capsys):
    out = tmp_path / "run.h5"
    kill_at_step(monkeypatch, 8)
    with pytest.raises(Killed):
        main(RUN + ["--save-every", "10", "-o", str(out)])
    monkeypatch.undo()
    partial = store.read_run(out)
    assert list(partial.tables["run"]["step"]) == list(range(1, 8))
    assert list(partial.tables["run/curvature"]["step"]) == [0]
    assert latest_checkpoint(tmp_path / "run_checkpoints") is None

    assert main(RUN + ["--save-every", "10", "-o", str(out), "--resume"]) == 0, capsys.readouterr().err
    assert_same_run(out, whole, 30)  # the partial records were replaced, not kept twice
    assert store.read_run(out).attrs["command"] == partial.attrs["command"]  # the run's attributes stay


def test_resume_before_the_first_checkpoint_still_checks_the_settings(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run.h5"
    kill_at_step(monkeypatch, 5)
    with pytest.raises(Killed):
        main(RUN + ["-o", str(out)])
    monkeypatch.undo()
    capsys.readouterr()
    assert main([*RUN[:RUN.index("--lr")], "--lr", "0.3", *RUN[RUN.index("--lr") + 2:], "-o", str(out),
                 "--resume"]) == 2
    assert "lr" in one_error_line(capsys)
    assert len(store.read_run(out).tables["run"]["step"]) == 4  # refused before anything was dropped


def test_resume_without_a_run_file_says_so_in_one_line(tmp_path, capsys):
    assert main(RUN + ["-o", str(tmp_path / "never.h5"), "--resume"]) == 2
    line = one_error_line(capsys)
    assert "never.h5" in line and "without --resume" in line


# -- refused before any file ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("option, value", [
    ("--track-top-k", "0"), ("--track-tol", "0"), ("--track-tol", "nan"), ("--track-trace-matvecs", "-1"),
    ("--lr", "inf"), ("--seed", "-1"),
])
def test_impossible_training_options_are_refused_before_any_file(tmp_path, capsys, option, value):
    out = tmp_path / "run.h5"
    assert main(RUN + [option, value, "-o", str(out)]) == 2
    line = one_error_line(capsys)
    assert option in line and value in line
    assert leftovers(tmp_path) == []


def test_a_model_that_does_not_fit_the_data_is_refused_before_any_file(tmp_path, capsys):
    out = tmp_path / "run.h5"
    args = RUN + ["-o", str(out)]
    args[args.index("--model-kwargs") + 1] = '{"sizes": [10, 8, 10]}'  # digits have 64 features
    assert main(args) == 2
    line = one_error_line(capsys)
    assert "the model fails on the training data" in line and "--model-kwargs" in line
    assert leftovers(tmp_path) == []


# -- no run file from a run that never took a step -----------------------------------------------------------------
def test_a_full_disk_at_the_first_step_leaves_no_run_file(tmp_path, monkeypatch, capsys):
    fail_append_at_step(monkeypatch, 1)
    assert main(RUN + ["--save-every", "10", "-o", str(tmp_path / "run.h5")]) == 2
    assert "no space left on device" in one_error_line(capsys)
    assert leftovers(tmp_path) == []


def test_a_failed_first_curvature_record_leaves_no_run_file_but_a_resumed_run_keeps_its_own(tmp_path, monkeypatch,
                                                                                            capsys):
    from landscape.errors import DataError
    from landscape.tracking import CurvatureTracker

    def fail(self, model, step):
        raise DataError("the tracker cannot measure this model")

    out = tmp_path / "run.h5"
    folder = tmp_path / "run_checkpoints"
    folder.mkdir()  # made by the user: an empty folder this run did not create stays
    monkeypatch.setattr(CurvatureTracker, "measure", fail)
    assert main(RUN + ["-o", str(out)]) == 2
    assert "cannot measure" in one_error_line(capsys)
    assert leftovers(tmp_path) == ["run_checkpoints"] and list(folder.iterdir()) == []

    monkeypatch.undo()
    kill_at_step(monkeypatch, 3)
    with pytest.raises(Killed):
        main(RUN + ["-o", str(out)])
    monkeypatch.undo()
    monkeypatch.setattr(CurvatureTracker, "measure", fail)
    assert main(RUN + ["-o", str(out), "--resume"]) == 2
    assert out.exists()  # --resume never removes the run it continues


# -- a full disk, then --resume --------------------------------------------------------------------------------------
def test_a_full_disk_at_the_first_checkpoint_stops_in_one_line_and_resume_starts_again(tmp_path, whole, monkeypatch,
                                                                                       capsys):
    out = tmp_path / "run.h5"
    fail_save_at_step(monkeypatch, 10)
    assert main(RUN + ["--save-every", "10", "-o", str(out)]) == 2
    assert "no space left on device" in one_error_line(capsys)
    assert len(store.read_run(out).tables["run"]["step"]) == 10  # the records so far are kept
    assert latest_checkpoint(tmp_path / "run_checkpoints") is None
    monkeypatch.undo()
    assert main(RUN + ["--save-every", "10", "-o", str(out), "--resume"]) == 0, capsys.readouterr().err
    assert_same_run(out, whole, 30)


def test_a_full_disk_while_appending_records_stops_in_one_line_and_resume_continues(tmp_path, whole, monkeypatch,
                                                                                   capsys):
    out = tmp_path / "run.h5"
    fail_append_at_step(monkeypatch, 7)
    assert main(RUN + ["--save-every", "10", "-o", str(out)]) == 2
    assert "no space left on device" in one_error_line(capsys)
    monkeypatch.undo()
    assert main(RUN + ["--save-every", "10", "-o", str(out), "--resume"]) == 0, capsys.readouterr().err
    assert_same_run(out, whole, 30)
