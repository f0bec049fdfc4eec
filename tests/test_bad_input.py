"""Bad input on the command line: one line on stderr, exit code 2, no traceback and no file left behind, before any
work. Devices that do not exist, bad option values, grids too large, --top-k / --density-steps beyond the dimension,
demo --out onto a file, and `info` on a file with a huge attribute."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from landscape import store
from landscape.cli import main
from landscape.devices import check_device
from landscape.errors import OptionError
from landscape.models import mlp
from landscape.surface import MAX_GRID_CELLS, evaluate_surface, random_direction

TINY = [64, 1, 10]  # digits in, 10 classes out: 85 parameters
TINY_PARAMS = 64 * 1 + 1 + 1 * 10 + 10


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"landscape {command}: error:"), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def tiny(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.save(mlp(TINY).state_dict(), path)
    return path


def made_files(folder, before):
    return sorted(set(os.listdir(folder)) - set(before))


# -- --device: checked once, up front, on every command that takes it -----------------------------------------------
def missing_devices():
    """Device strings this machine does not have (on a CPU-only machine: cuda too)."""
    devices = ["foo", "meta"]
    if not torch.cuda.is_available():
        devices.append("cuda")
    if torch.cuda.device_count() <= 3:
        devices.append("cuda:3")
    return devices


def device_commands(tmp_path, tiny):
    inputs = [tiny, "--model", "mlp", "--model-kwargs", f'{{"sizes": {TINY}}}', "--data", "digits", "--quiet"]
    return {
        "analyze": ["analyze", *inputs, "-o", tmp_path / "r.h5"],
        "surface": ["surface", *inputs, "--grid", "-1:1:3", "-o", tmp_path / "s.h5"],
        "train": ["train", "--model", "mlp", "--model-kwargs", f'{{"sizes": {TINY}}}', "--data", "digits",
                  "--steps", "2", "--track-every", "0", "-o", tmp_path / "run.h5", "--quiet"],
        "demo": ["demo", "--out", tmp_path / "demo", "--steps", "2", "--quiet"],
    }


@pytest.mark.parametrize("device", missing_devices())
@pytest.mark.parametrize("command", ["analyze", "surface", "train", "demo"])
def test_a_device_this_machine_lacks_is_one_line_before_any_file(tmp_path, capsys, tiny, command, device):
    before = os.listdir(tmp_path)
    code, out, err = run(device_commands(tmp_path, tiny)[command] + ["--device", device], capsys)
    assert code == 2 and out == ""
    line = one_line_error(err, command)
    assert f"--device {device!r}" in line and ("cpu" in line), line
    assert made_files(tmp_path, before) == []


def test_check_device_passes_what_exists_and_names_what_does():
    assert check_device(None) is None
    assert check_device("cpu") == "cpu" and check_device("cpu:0") == "cpu:0"
    if torch.cuda.is_available():
        assert check_device("cuda") == "cuda"
        assert check_device(f"cuda:{torch.cuda.device_count() - 1}") == f"cuda:{torch.cuda.device_count() - 1}"
        with pytest.raises(OptionError, match=f"cuda:{torch.cuda.device_count() - 1}"):
            check_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(OptionError, match="no CUDA device is available on this machine; use device cpu"):
            check_device("cuda")


@pytest.mark.skipif(torch.cuda.device_count() > 3, reason="this machine has a cuda:3")
def test_torchrun_rank_without_its_gpu_is_an_option_error(monkeypatch):
    """Under torchrun, --device cuda becomes cuda:LOCAL_RANK: a rank whose GPU does not exist is told so."""
    from landscape.distributed import init_from_env

    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(OptionError, match="cuda:3"):
        init_from_env("cuda")


# -- bad option values: one line, not the usage ---------------------------------------------------------------------
BAD_VALUES = [
    (["analyze", "x.pt", "--data", "digits", "--dtype", "float16"], "--dtype", "(choose from float32, float64)"),
    (["surface", "x.pt", "--data", "digits", "--dtype", "float16"], "--dtype", "(choose from float32, float64)"),
    (["train", "--model", "mlp", "--data", "digits", "--dtype", "float16"], "--dtype", "float16"),
    (["demo", "--dtype", "float16"], "--dtype", "float16"),
    (["analyze", "x.pt", "--data", "digits", "--top-k", "ten"], "--top-k", "invalid int value: 'ten'"),
    (["train", "--model", "mlp", "--data", "digits", "--lr", "fast"], "--lr", "invalid float value: 'fast'"),
    (["surface", "x.pt", "--data", "digits", "--dims", "3"], "--dims", "(choose from 1, 2)"),
]


@pytest.mark.parametrize("argv, option, words", BAD_VALUES, ids=[f"{a[0]}{o}" for a, o, _ in BAD_VALUES])
def test_a_bad_option_value_is_one_line(tmp_path, capsys, monkeypatch, argv, option, words):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    line = one_line_error(capsys.readouterr().err, argv[0])
    assert line.startswith(f"landscape {argv[0]}: error: argument {option}: ") and words in line, line
    assert line.endswith(f"; see landscape {argv[0]} --help"), line
    assert os.listdir(tmp_path) == []


def test_unknown_options_keep_the_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "x.pt", "--data", "digits", "--no-such-option", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage:") and "unrecognized arguments: --no-such-option 1" in err


# -- grids too large: refused before any checkpoint or data is read -------------------------------------------------
GRIDS = [
    (["--grid", "-1:1:100000000"], "100,000,000"),
    (["--directions", "line", "--grid", "-1:1:100000000"], "100,000,000"),
    (["--directions", "line", "--grid", "-1:1:2000000"], "2,000,000"),
    (["--grid", "-1:1:2000"], "2000×2000 grid has 4,000,000 cells"),
    (["--grid", "-1:1:21", "--grid-y", "-1:1:100000"], "21×100000 grid has 2,100,000 cells"),
]


@pytest.mark.parametrize("extra, words", GRIDS, ids=[" ".join(e) for e, _ in GRIDS])
def test_a_grid_too_large_is_refused_before_any_work(tmp_path, capsys, extra, words):
    # neither the checkpoints nor the data exist: the grid must be refused before either is looked at
    missing = [tmp_path / "a.pt", tmp_path / "b.pt"][: 2 if "line" in extra else 1]
    out = tmp_path / "s.h5"
    code, _, err = run(["surface", *missing, "--data", "no_such_data", *extra, "-o", out, "--quiet"], capsys)
    assert code == 2
    line = one_line_error(err, "surface")
    assert "--grid" in line and words in line and f"{MAX_GRID_CELLS:,}" in line, line
    assert os.listdir(tmp_path) == []


def test_evaluate_surface_refuses_a_grid_too_large_before_evaluating():
    torch.manual_seed(0)
    model = mlp(TINY)
    directions = random_direction(model, dims=1)
    data = (torch.zeros(2, 64), torch.zeros(2, dtype=torch.long))
    with pytest.raises(OptionError, match=f"{MAX_GRID_CELLS + 1:,} cells"):
        evaluate_surface(model, torch.nn.functional.cross_entropy, data, directions,
                         np.linspace(-1, 1, MAX_GRID_CELLS + 1))


# -- --top-k and --density-steps beyond the number of parameters: clipped, with a note, before any work -------------
def test_top_k_and_density_steps_beyond_the_dimension_are_clipped_with_a_note(tmp_path, capsys, tiny):
    out = tmp_path / "r.h5"
    code, _, err = run(["analyze", tiny, "--model", "mlp", "--model-kwargs", f'{{"sizes": {TINY}}}', "--data",
                        "digits", "--subset", "30", "--dtype", "float64", "--metrics", "eigs,density",
                        "--top-k", "500", "--density-steps", "400", "--density-probes", "1", "-o", out], capsys)
    assert code == 0, err
    lines = err.strip().splitlines()
    notes = [i for i, line in enumerate(lines) if line.startswith("note: ")]
    assert len(notes) == 2, err
    assert f"--top-k 500 is more than the {TINY_PARAMS} parameters" in lines[notes[0]]
    assert f"--density-steps 400 is more than the {TINY_PARAMS} parameters" in lines[notes[1]]
    analysing = next(i for i, line in enumerate(lines) if "analysing" in line)
    assert max(notes) < analysing  # before any work
    record = next(iter(store.read_results(out).values()))
    assert record.attrs["top_k"] == TINY_PARAMS and record.attrs["density_steps"] == TINY_PARAMS
    assert len(record.attrs["notes"]) == 2
    assert len(record.results["eigen"].values) == TINY_PARAMS
    assert record.results["density"].num_steps == TINY_PARAMS


@pytest.mark.parametrize("option, value", [("--top-k", "0"), ("--density-steps", "-3")])
def test_nonpositive_top_k_and_density_steps_are_refused_by_name(tmp_path, capsys, tiny, option, value):
    out = tmp_path / "r.h5"
    code, _, err = run(["analyze", tiny, "--model", "mlp", "--model-kwargs", f'{{"sizes": {TINY}}}', "--data",
                        "digits", option, value, "-o", out, "--quiet"], capsys)
    assert code == 2
    assert option in one_line_error(err, "analyze")
    assert not out.exists()


# -- demo --out -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["notes.txt", "notes.txt/demo"])
def test_demo_out_onto_an_existing_file_is_one_line_and_leaves_it_alone(tmp_path, capsys, target):
    existing = tmp_path / "notes.txt"
    existing.write_text("my notes\n")
    code, out, err = run(["demo", "--out", tmp_path / target, "--quiet"], capsys)
    assert code == 2 and out == ""
    assert "--out" in one_line_error(err, "demo")
    assert existing.read_text() == "my notes\n"
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_demo_grid_too_large_is_refused_before_the_folder_is_made(tmp_path, capsys):
    code, _, err = run(["demo", "--out", tmp_path / "demo", "--grid", "-1:1:5000", "--quiet"], capsys)
    assert code == 2
    assert "--grid" in one_line_error(err, "demo")
    assert os.listdir(tmp_path) == []


# -- info on a file with a huge attribute --------------------------------------------------------------------------
def test_info_shortens_a_huge_attribute(tmp_path, capsys):
    path = tmp_path / "big.h5"
    size = 5_000_000
    with store.update_results(path) as handle:
        store.write_checkpoint(handle, "step_1", {}, attrs={"path": "p" * size, "step": 1, "data": "d" * size})
        handle.attrs["created"] = "c" * size
    code, out, err = run(["info", path], capsys)
    assert code == 0, err
    assert len(out) < 5000, len(out)
    assert out.count(f"... ({size:,} characters)") == 3, out
    assert "c" * 200 in out and "c" * 201 not in out
