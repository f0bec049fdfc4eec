"""A command line that guides: misspelt options and commands get the nearest one, progress shows in a log as plain
lines, `info` names a run file as a run, `train` says where it stopped, and --threads."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from landscape import store
from landscape.checkpoints import load_checkpoint, save_checkpoint
from landscape.cli import main
from landscape.cli.options import choose_threads
from landscape.data import load_data
from landscape.errors import OptionError
from landscape.linalg import DenseOperator, lanczos
from landscape.models import mlp
from landscape.progress import ProgressLines, log_lines, progress_bar

from reference import dense_hessian, random_symmetric

SIZES = [64, 4, 10]
TRAIN = ["train", "--model", "chebyshev", "--data", "chebyshev", "--loss", "squared", "--steps", "20",
         "--track-every", "10", "--track-trace-matvecs", "0", "--quiet"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("guidance") / "tiny.pt"
    save_checkpoint(path, mlp(SIZES), step=3, model_spec="mlp", model_kwargs={"sizes": SIZES})
    return path


def usage_error(argv, capsys) -> list[str]:
    """The lines of stderr of a command line argparse refuses (exit code 2)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.splitlines()


# -- misspelt options and commands ---------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["analyze", "x.pt", "--topk", "3"],  # --data is left out too: the typo comes first
                                  ["analyze", "x.pt", "--data", "digits", "--topk", "3"],
                                  ["analyze", "x.pt", "--data", "digits", "--topk=3"]])
def test_a_misspelt_option_names_the_nearest_one_after_a_short_usage(capsys, argv):
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    options = capsys.readouterr().out
    assert "--top-k K" in options and "--topk" not in options
    usage, error = usage_error(argv, capsys)
    assert usage == "usage: landscape analyze [options] --data SPEC CHECKPOINT [CHECKPOINT ...]"
    assert error.startswith("landscape analyze: error: unrecognized arguments: --topk")
    assert error.endswith("; did you mean --top-k?")


def test_an_option_like_no_other_points_to_help(capsys):
    usage, error = usage_error(["train", "--model", "mlp", "--data", "digits", "--zzz", "1"], capsys)
    assert usage.startswith("usage: landscape train [options]")
    assert error == "landscape train: error: unrecognized arguments: --zzz 1; see landscape train --help"


@pytest.mark.parametrize("typed, meant", [("anlyze", "analyze"), ("analysi", "analyze"), ("plto", "plot"),
                                          ("tarin", "train")])
def test_a_misspelt_command_names_the_nearest_one(capsys, typed, meant):
    usage, error = usage_error([typed, "x.pt"], capsys)
    assert usage.startswith("usage: landscape ")
    assert error.startswith(f"landscape: error: unknown command '{typed}'; did you mean {meant}? (commands: analyze,")


def test_analyse_is_analyze(tmp_path, capsys, checkpoint):
    """`landscape analyse` runs `analyze` (its top eigenvalue is the dense Hessian's) and is listed beside it."""
    assert main([]) == 2 and "analyze (analyse)" in capsys.readouterr().out  # no command: the help
    out = tmp_path / "r.h5"
    code = main(["analyse", str(checkpoint), "--data", "digits", "--subset", "100", "--metrics", "eigs", "--top-k",
                 "1", "--tol", "1e-10", "--dtype", "float64", "--quiet", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    model = copy.deepcopy(load_checkpoint(checkpoint).model).double()
    X, y = load_data("digits", split="train", subset=100, seed=0).batches  # the analysed samples
    truth = torch.linalg.eigvalsh(dense_hessian(model, X.double(), y))[-1].item()
    np.testing.assert_allclose(store.read_results(out)["tiny"].results["eigen"].values, [truth], rtol=1e-8)


# -- progress: a bar in a terminal, lines in a log, nothing from a library call or with --quiet --------------------
def logged(total, seconds_per_update, updates, capsys, **kwargs) -> list[str]:
    """The lines of a :class:`ProgressLines` counting ``updates`` units, the clock advancing by
    ``seconds_per_update`` before each."""
    now = [0.0]
    bar = ProgressLines(total, "lanczos", clock=lambda: now[0], **kwargs)
    for _ in range(updates):
        now[0] += seconds_per_update
        bar.update(1)
    bar.close()
    return capsys.readouterr().err.splitlines()


def test_progress_lines_come_every_tenth_and_every_ten_seconds(capsys):
    lines = logged(100, 0.5, 100, capsys)  # a tenth every 5 s: a line at each tenth, then the final one
    assert [line.split()[1] for line in lines] == [f"{n}/100" for n in range(10, 101, 10)]
    assert lines[3] == "lanczos: 40/100 matvec (40%) 20.0 s"
    assert lines[-1] == "lanczos: 100/100 matvec (100%) 50.0 s, done"
    lines = logged(100, 2.0, 100, capsys)  # a tenth every 20 s: a line every 10 s (5 units) instead
    assert [line.split()[1] for line in lines] == [f"{n}/100" for n in range(5, 101, 5)]
    lines = logged(None, 3.0, 8, capsys)  # no total: a line once 10 s have passed since the last (at 12 s and 24 s)
    assert lines[:2] == ["lanczos: 4 matvec 12.0 s", "lanczos: 8 matvec 24.0 s"] and lines[2].endswith(", done")
    lines = logged(100, 1 / 16, 100, capsys)  # a tenth every 0.625 s: a line at most once a second (16 units)
    assert [line.split()[1] for line in lines] == ["16/100", "32/100", "48/100", "64/100", "80/100", "96/100",
                                                   "100/100"]


def test_a_library_call_stays_silent_outside_a_terminal(capsys):
    op = DenseOperator(random_symmetric(30, seed=2))
    lanczos(op, 2, seed=0)  # progress=None: no terminal here (capsys), no command line
    assert capsys.readouterr().err == ""
    with log_lines():  # what the command line does
        lanczos(op, 2, seed=0)
    assert capsys.readouterr().err.splitlines()[-1].startswith("lanczos top-2: ")
    lanczos(op, 2, seed=0, progress=True)
    assert capsys.readouterr().err.endswith(", done\n")
    with log_lines():
        lanczos(op, 2, seed=0, progress=False)
    assert capsys.readouterr().err == ""
    assert progress_bar(10, "x").disable  # a disabled tqdm bar: same interface


def test_a_cli_run_logs_progress_lines_unless_quiet(tmp_path, capsys, checkpoint):
    argv = ["analyze", str(checkpoint), "--data", "digits", "--subset", "100", "--metrics", "eigs,trace", "--top-k",
            "2", "--trace-matvecs", "20", "-o", str(tmp_path / "r.h5")]
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("lanczos top-2: ") and line.endswith(", done") for line in err), err
    assert any(line.startswith("trace (krylov): 20/20 matvec (100%) ") for line in err), err
    assert main([*argv, "--quiet", "--resume"]) == 0
    assert capsys.readouterr().err == ""


# -- info on a run file, train's closing line ----------------------------------------------------------------------
def test_train_says_where_it_stopped_and_info_names_the_run(tmp_path, capsys):
    out = tmp_path / "run.h5"
    assert main([*TRAIN, "-o", str(out)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("stopped at step 20 of 20 in ") and first.endswith(" s")
    assert main(["info", str(out)]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[0].startswith(f"{out}: landscape run file, a training run of 20 steps, format version")
    assert any(line.startswith("  model chebyshev, ") for line in shown)
    early = tmp_path / "early.h5"
    assert main([*TRAIN, "--target-loss", "1e9", "-o", str(early)]) == 0  # met by the record at step 0
    assert capsys.readouterr().out.startswith("stopped at step 0 of 20 (train loss ")
    assert main(["info", str(early)]) == 0
    assert "a training run of 0 steps (of 20 planned)" in capsys.readouterr().out.splitlines()[0]


# -- threads -------------------------------------------------------------------------------------------------------
def test_threads_are_chosen_within_what_torch_offers_and_restored(capsys, monkeypatch):
    assert choose_threads(3) == 3
    with pytest.raises(OptionError, match="--threads"):
        choose_threads(0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert 1 <= choose_threads(None) <= torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert choose_threads(None) == torch.get_num_threads()
    before = torch.get_num_threads()
    assert main(["demo", "--threads", str(before + 1), "--steps", "0"]) == 2  # refused after the threads were set
    assert torch.get_num_threads() == before
    assert main(["train", "--model", "mlp", "--data", "digits", "--threads", "0"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == \
        "landscape train: error: --threads must be a positive integer, got 0"
