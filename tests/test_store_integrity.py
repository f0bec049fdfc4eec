"""The results store under stress: concurrent writers and readers, killed and failed writes, permissions, symlinks,
files of a newer format, a full disk, and damaged attributes read by every command (one line, exit 2)."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import shutil
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from landscape import store
from landscape.checkpoints import save_checkpoint
from landscape.cli import main
from landscape.errors import CheckpointError, StoreError
from landscape.models import mlp
from landscape.results import TraceResult

FORK = multiprocessing.get_context("fork")  # the children only write HDF5 files: no torch thread pools involved
SIZES = [64, 6, 10]
RUN_ATTRS = {"settings": json.dumps({"optimizer": "sgd", "lr": 0.1}), "num_params": 10}
FULL = "Can't synchronously write data (file write failed: errno = 28, error message = 'No space left on device')"


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Run in the test's folder, so that anything a command writes to the working folder shows in its listing."""
    monkeypatch.chdir(tmp_path)


def trace(value: float) -> TraceResult:
    return TraceResult(estimate=value, stderr=0.1, samples=np.arange(3.0), exact_part=0.0, method="hutchinson",
                       num_matvecs=3, seed=0, seconds=0.01, dimension=5)


def add(path: Path, name: str, value: float = 1.0, step: int = 1) -> None:
    """What `landscape analyze` does for one checkpoint: add its group in one locked, atomic write."""
    with store.update_results(path) as handle:
        store.write_checkpoint(handle, name, {"trace": trace(value)}, attrs={"path": f"/ckpts/{name}.pt",
                                                                             "step": step})


def hidden(folder: Path) -> list[str]:
    """Temporaries and lock files left in ``folder``."""
    return sorted(name for name in os.listdir(folder) if name.startswith("."))


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- concurrent writers lose nothing --------------------------------------------------------------------------------
def _add_after(path: Path, names: list[str], start: Any) -> None:
    start.wait()
    for name in names:
        add(path, name)


def _run_together(processes: list, start: Any) -> list[int]:
    """Start the processes, let them go at once, and return their exit codes."""
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(60)
    return [process.exitcode for process in processes]


def test_two_writers_keep_both_results_in_every_trial(tmp_path):
    """Two processes add their checkpoint to the same new file at the same moment, 20 times over (the old
    copy-and-rename without a lock kept only one of the two in most trials)."""
    trials, complete = 20, 0
    for trial in range(trials):
        path = tmp_path / f"trial{trial}.h5"
        start = FORK.Event()
        writers = [FORK.Process(target=_add_after, args=(path, [name], start)) for name in ("a", "b")]
        assert _run_together(writers, start) == [0, 0]
        complete += set(store.read_results(path)) == {"a", "b"}
    assert complete == trials
    assert hidden(tmp_path) == []


def _append_rows(path: Path, rows: int, start: Any) -> None:
    with store.RunWriter(path, RUN_ATTRS, resume=True) as writer:
        start.wait()
        for step in range(rows):
            writer.append("run", {"step": step, "loss": 1.0 / (step + 1), "lr": 0.1})


def test_writers_and_a_training_run_in_one_file_keep_every_record(tmp_path):
    """Three `analyze`-like writers add 10 checkpoints each while a training run appends 150 rows to the same file."""
    path = tmp_path / "shared.h5"
    store.RunWriter(path, RUN_ATTRS).close()
    start = FORK.Event()
    processes = [FORK.Process(target=_append_rows, args=(path, 150, start))]
    processes += [FORK.Process(target=_add_after, args=(path, [f"w{w}_{i}" for i in range(10)], start))
                  for w in range(3)]
    assert _run_together(processes, start) == [0, 0, 0, 0]
    assert set(store.read_results(path)) == {f"w{w}_{i}" for w in range(3) for i in range(10)}
    table = store.read_run(path).tables["run"]
    np.testing.assert_array_equal(table["step"], np.arange(150))
    assert len(table["loss"]) == len(table["lr"]) == 150
    assert hidden(tmp_path) == []


def test_a_waiting_writer_says_once_that_it_waits(tmp_path, monkeypatch, capsys):
    from landscape import files

    monkeypatch.setattr(files, "WAIT_NOTE_AFTER", 0.05)
    said = threading.Event()
    say = files._say_waiting
    monkeypatch.setattr(files, "_say_waiting", lambda *args: (say(*args), said.set()))
    path = tmp_path / "r.h5"
    add(path, "a")
    held = threading.Event()

    def hold() -> None:
        with files.locked(path):
            held.set()
            said.wait(30)  # until the other writer has waited long enough to say so
            time.sleep(0.1)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    add(path, "b")
    holder.join()
    note = one_line(capsys.readouterr().err)
    assert "waiting" in note and str(path) in note
    add(path, "c")  # nobody holds the lock: no note
    assert capsys.readouterr().err == ""
    assert set(store.read_results(path)) == {"a", "b", "c"} and hidden(tmp_path) == []


# -- readers during a training run's appends never fail -------------------------------------------------------------
def _append_until(path: Path, stop: Any) -> None:
    with store.RunWriter(path, RUN_ATTRS, resume=True) as writer:
        step = 0
        while not stop.is_set():
            writer.append("run", {"step": step, "loss": 1.0 / (step + 1), "lr": 0.1})
            if step % 2 == 0:
                writer.append("run/curvature", {"step": step, "lambda_max": 2.0, "trace": 3.0,
                                                "top": np.linspace(0, 1, 8)})
            step += 1


def test_reads_while_a_run_appends_never_fail(tmp_path, capsys):
    """About 1 read in 200 failed with an unwrapped OSError or RuntimeError before reads were retried."""
    path = tmp_path / "run.h5"
    store.RunWriter(path, RUN_ATTRS).close()
    stop = FORK.Event()
    writer = FORK.Process(target=_append_until, args=(path, stop))
    writer.start()
    reads, deadline = 0, time.monotonic() + 3.0
    try:
        while time.monotonic() < deadline:
            store.read_run(path)
            store.root_attributes(path)
            store.read_results(path)
            reads += 1
            if reads % 50 == 0:
                assert main(["info", str(path)]) == 0
                assert main(["compare", str(path), "--no-figure"]) == 0
    finally:
        stop.set()
        writer.join(60)
    capsys.readouterr()
    assert writer.exitcode == 0
    assert reads > 100 and len(store.read_run(path).tables["run"]["step"]) > 100


# -- what a write leaves behind -------------------------------------------------------------------------------------
def test_the_next_write_removes_what_killed_writers_left(tmp_path):
    path = tmp_path / "r.h5"
    add(path, "a")
    stale = [".r.h5.0badc0de.tmp", ".r.h5.k3j_x9q2.tmp"]  # this version's names, and mkstemp's of earlier ones
    others = [".r.h5.backup.tmp", ".other.h5.0badc0de.tmp", ".r.h5.b.0badc0de.tmp", "notes.tmp"]
    for name in stale + others:
        (tmp_path / name).write_bytes(b"half a file")
    add(path, "b")
    assert sorted(os.listdir(tmp_path)) == sorted(["r.h5", *others])
    assert set(store.read_results(path)) == {"a", "b"}


def _killed_midway(path: Path) -> None:
    with store.update_results(path) as handle:
        store.write_checkpoint(handle, "lost", {"trace": trace(9.0)}, attrs={"path": "/ckpts/lost.pt"})
        handle.flush()
        os._exit(9)  # as SIGKILL: no clean-up runs


def test_a_killed_write_leaves_the_file_intact_and_its_temporary_is_removed_next_time(tmp_path):
    path = tmp_path / "r.h5"
    add(path, "a")
    before = path.read_bytes()
    killed = FORK.Process(target=_killed_midway, args=(path,))
    killed.start()
    killed.join(60)
    assert killed.exitcode == 9
    assert path.read_bytes() == before
    assert any(name.endswith(".tmp") for name in hidden(tmp_path))  # what the killed writer left
    add(path, "b")
    assert hidden(tmp_path) == [] and set(store.read_results(path)) == {"a", "b"}


def test_checkpoint_temporaries_of_killed_writers_are_removed(tmp_path):
    (tmp_path / ".c.pt.1234abcd.tmp").write_bytes(b"half a checkpoint")
    save_checkpoint(tmp_path / "c.pt", mlp(SIZES), model_spec="mlp", model_kwargs={"sizes": SIZES})
    assert os.listdir(tmp_path) == ["c.pt"]


@pytest.fixture
def umask():
    """Set the process umask for a test, and restore it."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_new_files_get_the_mode_the_umask_gives(tmp_path, umask, mask, mode):
    umask(mask)
    add(tmp_path / "r.h5", "a")
    store.RunWriter(tmp_path / "run.h5", RUN_ATTRS).close()
    save_checkpoint(tmp_path / "c.pt", mlp(SIZES), model_spec="mlp", model_kwargs={"sizes": SIZES})
    for name in ("r.h5", "run.h5", "c.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_an_existing_file_keeps_its_mode(tmp_path, umask):
    path, checkpoint = tmp_path / "r.h5", tmp_path / "c.pt"
    add(path, "a")
    save_checkpoint(checkpoint, mlp(SIZES), model_spec="mlp", model_kwargs={"sizes": SIZES})
    path.chmod(0o640)
    checkpoint.chmod(0o600)
    add(path, "b")
    save_checkpoint(checkpoint, mlp(SIZES), step=2, model_spec="mlp", model_kwargs={"sizes": SIZES})
    assert path.stat().st_mode & 0o777 == 0o640 and checkpoint.stat().st_mode & 0o777 == 0o600


def test_a_symlinked_output_is_written_through_to_its_target(tmp_path):
    (tmp_path / "store").mkdir()
    target, link = tmp_path / "store" / "real.h5", tmp_path / "results.h5"
    link.symlink_to(target)  # dangling until the first write creates the target
    add(link, "a")
    add(link, "b")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert set(store.read_results(target)) == {"a", "b"}
    assert os.listdir(tmp_path / "store") == ["real.h5"] and hidden(tmp_path) == []
    save_link = tmp_path / "last.pt"
    save_link.symlink_to(tmp_path / "store" / "step_1.pt")
    save_checkpoint(save_link, mlp(SIZES), step=1, model_spec="mlp", model_kwargs={"sizes": SIZES})
    assert save_link.is_symlink() and (tmp_path / "store" / "step_1.pt").is_file()


def test_a_file_of_a_newer_format_is_refused_for_writing_and_read_with_a_warning(tmp_path):
    path = tmp_path / "r.h5"
    add(path, "a")
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = store.FORMAT_VERSION + 1
    before = path.read_bytes()
    for write in (lambda: add(path, "b"), lambda: store.check_writable(path),
                  lambda: store.RunWriter(path, RUN_ATTRS, resume=True)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # refused, without a warning about reading it first
            with pytest.raises(StoreError, match=f"format_version {store.FORMAT_VERSION + 1}, newer .*refusing"):
                write()
    assert path.read_bytes() == before and hidden(tmp_path) == []
    with pytest.warns(UserWarning, match="newer than this landscape knows"):
        assert set(store.read_results(path)) == {"a"}


# -- a full disk ----------------------------------------------------------------------------------------------------
def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_copying_keeps_the_previous_file_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "r.h5"
    add(path, "a")
    before = path.read_bytes()
    monkeypatch.setattr(shutil, "copyfile", _disk_full)
    with pytest.raises(StoreError) as caught:
        add(path, "b")
    message = str(caught.value)
    assert str(path) in message and "disk is full" in message and "unchanged" in message
    assert path.read_bytes() == before and hidden(tmp_path) == []


def test_a_full_disk_while_hdf5_writes_keeps_the_previous_file(tmp_path):
    path = tmp_path / "r.h5"
    add(path, "a")
    before = path.read_bytes()
    with pytest.raises(StoreError, match="disk is full .*unchanged"):
        with store.update_results(path) as handle:
            store.write_checkpoint(handle, "b", {"trace": trace(2.0)}, attrs={"path": "/ckpts/b.pt"})
            raise OSError(errno.ENOSPC, FULL)  # as h5py raises it
    assert path.read_bytes() == before and hidden(tmp_path) == []


class _FailsWhenReleased:
    """Stands for an h5py object whose buffered write fails only when it is released: h5py can only print that."""

    def __del__(self) -> None:
        raise RuntimeError(f"Can't decrement id ref count ({FULL})")


def test_a_write_error_h5py_only_prints_is_not_renamed_into_place(tmp_path, capsys):
    path = tmp_path / "r.h5"
    add(path, "a")
    before = path.read_bytes()
    with pytest.raises(StoreError, match="disk is full .*unchanged"):
        with store.update_results(path) as handle:
            store.write_checkpoint(handle, "b", {"trace": trace(2.0)}, attrs={"path": "/ckpts/b.pt"})
            _FailsWhenReleased()
    assert path.read_bytes() == before and hidden(tmp_path) == []
    assert "Exception ignored" not in capsys.readouterr().err


def test_a_full_disk_on_fsync_leaves_no_new_file(tmp_path, monkeypatch):
    path = tmp_path / "new.h5"
    monkeypatch.setattr(os, "fsync", _disk_full)
    with pytest.raises(StoreError, match=f"disk is full .*{path} was not created"):
        add(path, "a")
    assert os.listdir(tmp_path) == []


def test_a_full_disk_during_an_append_keeps_every_earlier_row(tmp_path, monkeypatch):
    path = tmp_path / "run.h5"
    real = h5py.Dataset.__setitem__
    with store.RunWriter(path, RUN_ATTRS) as writer:
        for step in range(5):
            writer.append("run", {"step": step, "loss": 0.5, "lr": 0.1})
        calls = []

        def full_on_the_second_column(dataset, key, value):
            calls.append(dataset.name)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, FULL)
            return real(dataset, key, value)

        monkeypatch.setattr(h5py.Dataset, "__setitem__", full_on_the_second_column)
        with pytest.raises(StoreError) as caught:
            writer.append("run", {"step": 5, "loss": 0.5, "lr": 0.1, "new_column": 1.0})
        monkeypatch.undo()
    message = str(caught.value)
    assert str(path) in message and "disk is full" in message and "records written before are kept" in message
    table = store.read_run(path).tables["run"]
    assert set(table) == {"step", "loss", "lr"} and all(len(column) == 5 for column in table.values())


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "step_1.pt"
    save_checkpoint(path, mlp(SIZES), step=1, model_spec="mlp", model_kwargs={"sizes": SIZES})
    before = path.read_bytes()

    def save_as_torch_does(*args, **kwargs):
        try:
            _disk_full()
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", save_as_torch_does)
    with pytest.raises(CheckpointError, match="disk is full .*unchanged"):
        save_checkpoint(path, mlp(SIZES), step=1, model_spec="mlp", model_kwargs={"sizes": SIZES})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["step_1.pt"]


# -- damaged attributes: one line, exit 2, for every command that reads them --------------------------------------
@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """A real results file: `landscape analyze` of one small checkpoint (eigenvalues and a spectral density)."""
    folder = tmp_path_factory.mktemp("analysed")
    torch.manual_seed(0)
    checkpoint = save_checkpoint(folder / "step_0.pt", mlp(SIZES), step=0, model_spec="mlp",
                                 model_kwargs={"sizes": SIZES}).path
    output = folder / "results.h5"
    code = main(["analyze", str(checkpoint), "--data", "digits", "--subset", "100", "--metrics", "eigs,density",
                 "--top-k", "2", "--density-probes", "2", "--density-steps", "8", "--quiet", "-o", str(output)])
    assert code == 0
    return checkpoint, output


DAMAGE = {  # where, which attribute (or dataset), what: each read by every command below
    "json": ("checkpoints/step_0", "model_kwargs", "json:{"),
    "bytes-for-an-int": ("checkpoints/step_0", "step", b"7"),
    "undecodable-bytes": ("checkpoints/step_0", "loss", b"\xff\xfe"),
    "bytes-for-a-float": ("checkpoints/step_0/eigen", "tol", b"1e-3"),
    "strings-for-numbers": ("checkpoints/step_0/eigen", "values", None),
}


def _commands(checkpoint: Path, results: Path, out: Path) -> dict[str, list[str]]:
    inputs = [str(checkpoint), "--data", "digits", "--subset", "100", "--quiet", "-o", str(results)]
    return {"info": ["info", str(results)], "compare": ["compare", str(results), "--figure", str(out / "compare")],
            "plot": ["plot", str(results), "-o", str(out / "figure")],
            "analyze --resume": ["analyze", *inputs, "--metrics", "eigs", "--top-k", "2", "--resume"],
            "surface": ["surface", *inputs, "--grid", "-1:1:3"]}


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("command", ["info", "compare", "plot", "analyze --resume", "surface"])
def test_a_damaged_attribute_is_one_line_for_every_command(analysed, tmp_path, capsys, command, damage):
    checkpoint, original = analysed
    results = tmp_path / "results.h5"
    shutil.copyfile(original, results)
    where, name, value = DAMAGE[damage]
    with h5py.File(results, "a") as f:
        if value is None:
            del f[where][name]
            f[where][name] = np.array([b"big", b"small"])
        else:
            f[where].attrs[name] = value
    before = results.read_bytes()
    capsys.readouterr()
    assert main(_commands(checkpoint, results, tmp_path)[command]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(results) in line and (repr(name) in line or f"/{name} " in line) and "damaged" in line, line
    assert results.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["results.h5"]


def test_a_damaged_run_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "run.h5"
    with store.RunWriter(path, RUN_ATTRS) as writer:
        writer.append("run/curvature", {"step": 0, "lambda_max": 1.0, "trace": 2.0})
    with h5py.File(path, "a") as f:
        f["run"].attrs["settings"] = "{not json"
    for argv in (["info", str(path)], ["compare", str(path), "--no-figure"],
                 ["plot", str(path), "-o", str(tmp_path / "fig")]):
        assert main(argv) == 2
        line = one_line(capsys.readouterr().err)
        assert str(path) in line and "'settings'" in line and "JSON" in line
    with h5py.File(path, "a") as f:
        f["run"].attrs["settings"] = RUN_ATTRS["settings"]
        del f["run/curvature/trace"]
        f["run/curvature/trace"] = np.array([b"2.0"])
    assert main(["compare", str(path), "--no-figure"]) == 2
    assert "run/curvature/trace should hold numbers" in one_line(capsys.readouterr().err)


def test_a_full_disk_in_analyze_is_one_line_and_keeps_the_results(analysed, tmp_path, capsys, monkeypatch):
    checkpoint, original = analysed
    results = tmp_path / "results.h5"
    shutil.copyfile(original, results)
    before = results.read_bytes()
    monkeypatch.setattr(os, "fsync", _disk_full)
    code = main(["analyze", str(checkpoint), "--data", "digits", "--subset", "100", "--metrics", "trace",
                 "--trace-matvecs", "4", "--quiet", "-o", str(results)])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and "disk is full" in line and f"previous {results} is unchanged" in line
    assert results.read_bytes() == before and os.listdir(tmp_path) == ["results.h5"]
