"""Nothing in a checkpoint file runs code unless the user passes --trust-checkpoint (trust=True in Python): not a model
spec the file names, not a TorchScript or torch.export program, not a pickle of any protocol; and every such refusal
says so, naming --trust-checkpoint, while corrupt files still say corrupt."""

from __future__ import annotations

import os
import pickletools
from pathlib import Path

import pytest
import torch
from ckpt_factories import MLP_KWARGS, SIZES, WRITERS, tiny_net
from torch import nn

from landscape.checkpoints import load_checkpoint, save_checkpoint
from landscape.cli import main
from landscape.errors import CheckpointError
from landscape.models import mlp

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning",
                                        "ignore:Detected pickle protocol:UserWarning")
SYSTEM = f"{os.system.__module__}.system"  # posix.system on Linux: what a pickle of os.system references


class RunsCommand:
    """Unpickling this runs a shell command, as a hostile checkpoint would."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return os.system, (self.command,)


class WritesAFile(nn.Module):
    """A TorchScript-able model whose forward creates a file (``torch.from_file(..., shared=True)``)."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + torch.from_file(self.marker, shared=True, size=1).sum()


@pytest.fixture
def model() -> nn.Sequential:
    torch.manual_seed(0)
    return mlp(sizes=SIZES)


def refusal(call, *words: str) -> str:
    """Assert ``call()`` raises a one-line CheckpointError naming every word (and not "corrupt"); return it."""
    with pytest.raises(CheckpointError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and "corrupt" not in message, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


def cli(args: list, capsys) -> tuple[int, str]:
    """``landscape ARGS`` in this process: the exit code and stderr, which must be one line when the code is 2."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    if code == 2:
        assert len(err.strip().splitlines()) == 1, err
    return code, err


def same_weights(loaded: nn.Module, original: nn.Module) -> bool:
    got, want = loaded.state_dict(), original.state_dict()
    return list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)


# --------------------------------------------------------------------------------- a model spec named by the file


def hostile_toolkit_checkpoint(path: Path, marker: Path, model: nn.Module) -> Path:
    """A weights-only loadable toolkit checkpoint whose model spec is ``os:system`` with a command in its kwargs."""
    save_checkpoint(path, model, step=1, model_spec="os:system", model_kwargs={"command": f"touch {marker}"})
    return path


def test_a_spec_read_from_a_file_is_built_only_if_it_is_a_built_in_model(model, tmp_path):
    marker = tmp_path / "pwned"
    path = hostile_toolkit_checkpoint(tmp_path / "hostile.pt", marker, model)
    refusal(lambda: load_checkpoint(path), "hostile.pt", "'os:system'", "pass model_spec", "pass trust,")
    assert not marker.exists()
    explicit = load_checkpoint(path, model_spec="mlp", model_kwargs=MLP_KWARGS)  # the user's choice: no trust needed
    assert same_weights(explicit.model, model) and not marker.exists()
    for spec in ("mlp", "landscape.models:mlp"):  # a built-in model, by name or import path, needs no trust
        save_checkpoint(tmp_path / "own.pt", model, model_spec=spec, model_kwargs=MLP_KWARGS)
        assert same_weights(load_checkpoint(tmp_path / "own.pt").model, model)


def test_a_users_factory_named_by_the_file_needs_model_or_trust(tmp_path):
    net = tiny_net()
    save_checkpoint(tmp_path / "tiny.pt", net, model_spec="ckpt_factories:tiny_net")
    refusal(lambda: load_checkpoint(tmp_path / "tiny.pt"), "'ckpt_factories:tiny_net'", "not a built-in model",
            "pass model_spec", "pass trust,")
    assert same_weights(load_checkpoint(tmp_path / "tiny.pt", model_spec="ckpt_factories:tiny_net").model, net)
    trusted = load_checkpoint(tmp_path / "tiny.pt", trust=True)
    assert trusted.model_spec == "ckpt_factories:tiny_net" and same_weights(trusted.model, net)


@pytest.mark.parametrize("command", ["analyze", "surface"])
def test_the_cli_never_runs_a_spec_read_from_a_file(command, model, tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = hostile_toolkit_checkpoint(tmp_path / "hostile.pt", marker, model)
    out = tmp_path / "out.h5"
    code, err = cli([command, path, "--data", "digits", "--subset", "20", "-o", out, "--quiet"], capsys)
    assert code == 2 and not marker.exists() and not out.exists()
    assert err.startswith(f"landscape {command}: error:") and "--model" in err and "--trust-checkpoint" in err, err


# ------------------------------------------------------------------------------------ TorchScript and torch.export


def test_a_torchscript_program_runs_only_when_trusted(tmp_path, capsys):
    marker = tmp_path / "written"
    torch.jit.save(torch.jit.script(WritesAFile(str(marker))), str(tmp_path / "program.ts"))
    message = refusal(lambda: load_checkpoint(tmp_path / "program.ts"), "TorchScript", "pass trust,",
                      "state_dict")
    assert "model_spec cannot stand in" in message
    out = tmp_path / "r.h5"
    args = ["analyze", tmp_path / "program.ts", "--data", "digits", "--subset", "20", "--metrics", "trace",
            "--trace-matvecs", "2", "-o", out, "--quiet"]
    for extra in ([], ["--model", "mlp"]):  # --model does not make a program safe
        code, err = cli(args + extra, capsys)
        assert code == 2 and "--trust-checkpoint" in err and not marker.exists() and not out.exists(), err
    assert cli(args + ["--trust-checkpoint"], capsys)[0] == 0
    assert marker.exists()  # trusted, the program ran, as it would in the user's own code


def test_a_torch_export_program_loads_only_when_trusted(model, tmp_path):
    file_name, write, _ = WRITERS["export"]
    write(model, tmp_path / file_name)
    refusal(lambda: load_checkpoint(tmp_path / file_name), "torch.export program", "pass trust,")
    assert load_checkpoint(tmp_path / file_name, trust=True).info.format == "export"


# ------------------------------------------------------------------------------------------ pickles of any protocol

# (zip archive, pickle protocol) of every torch.save variant
VARIANTS = [(zipped, protocol) for zipped in (True, False) for protocol in range(6)]


def variant_id(variant: tuple[bool, int]) -> str:
    return f"{'zip' if variant[0] else 'legacy'}-protocol{variant[1]}"


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_a_pickle_that_would_run_a_command_is_reported_as_needing_code(variant, model, tmp_path):
    zipped, protocol = variant
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.pt"
    torch.save({"state_dict": model.state_dict(), "hook": RunsCommand(f"touch {marker}")}, path,
               _use_new_zipfile_serialization=zipped, pickle_protocol=protocol)
    refusal(lambda: load_checkpoint(path, model_spec="mlp", model_kwargs=MLP_KWARGS), "refused", "hostile.pt",
            "run code", SYSTEM, "pass trust,")
    assert not marker.exists()


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v[1] in (1, 4, 5)], ids=variant_id)
def test_a_protocol_the_safe_loader_cannot_read_needs_trust_not_corrupt(variant, model, tmp_path):
    zipped, protocol = variant
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=zipped, pickle_protocol=protocol)
    load = lambda **kw: load_checkpoint(path, model_spec="mlp", model_kwargs=MLP_KWARGS, **kw)  # noqa: E731
    refusal(load, "weights.pt", f"protocol {protocol}", "pass trust,")
    assert same_weights(load(trust=True).model, model)


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_protocol_0_tensors_are_named_as_unreadable_not_corrupt(zipped, model, tmp_path):
    """torch.save writes protocol 0, but torch.load cannot read its tensors back, trusted or not: say so."""
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=zipped, pickle_protocol=0)
    message = refusal(lambda: load_checkpoint(path, model_spec="mlp", model_kwargs=MLP_KWARGS), "weights.pt",
                      "protocol 0", "trusted or not", "re-save")
    assert "pass trust" not in message


@pytest.mark.parametrize("protocol", [0, 4])
def test_a_truncated_pickle_still_says_corrupt(protocol, model, tmp_path):
    path = tmp_path / "cut.pt"
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    with open(path, "rb") as f:  # cut inside the pickle of the state dict: after magic number, protocol, sys info
        for _ in range(3):
            list(pickletools.genops(f))
        cut = f.tell() + 20
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, model_spec="mlp", model_kwargs=MLP_KWARGS)
    assert "corrupt" in str(info.value) and "pass trust" not in str(info.value)


# ------------------------------------------------------------------------------------------------- train --resume


def test_train_resume_loads_weights_only_unless_trusted(tmp_path, capsys):
    out, marker = tmp_path / "run.h5", tmp_path / "pwned"
    args = ["train", "--model", "mlp", "--model-kwargs", '{"sizes": [64, 8, 10]}', "--data", "digits", "--subset",
            "100", "--steps", "2", "--track-every", "0", "-o", out, "--quiet"]
    assert cli(args, capsys)[0] == 0
    last = tmp_path / "run_checkpoints" / "step_2.pt"
    state = torch.load(last, weights_only=True)
    resume = [*args, "--steps", "4", "--resume"]

    torch.save({**state, "extra": {**state["extra"], "hook": RunsCommand(f"touch {marker}")}}, last)
    code, err = cli(resume, capsys)
    assert code == 2 and "run code" in err and "--trust-checkpoint" in err and not marker.exists(), err

    torch.save(state, last, pickle_protocol=4)  # the same state, in a protocol only the full unpickler reads
    code, err = cli(resume, capsys)
    assert code == 2 and "protocol 4" in err and "--trust-checkpoint" in err, err
    assert cli([*resume, "--trust-checkpoint"], capsys)[0] == 0
    assert (tmp_path / "run_checkpoints" / "step_4.pt").exists()
