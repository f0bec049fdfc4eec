"""landscape.checkpoints: every checkpoint format users bring loads to the same model, and every bad file or option
is a one-line LandscapeError that names the culprit."""

from __future__ import annotations

import hashlib
import os
import random
import zipfile
from functools import partial
from pathlib import Path

import pytest
import torch
from ckpt_factories import MLP_KWARGS, SIZES, WRITERS, RunConfig, TinyNet, tiny_net
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from landscape.checkpoints import (
    Checkpoint,
    build_model,
    find_checkpoints,
    load_checkpoint,
    parse_model_kwargs,
    save_checkpoint,
)
from landscape.errors import CheckpointError, LandscapeError, OptionError
from landscape.models import mlp

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")  # how the test files are made


@pytest.fixture(scope="module")
def model() -> nn.Sequential:
    torch.manual_seed(0)
    return mlp(sizes=SIZES)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(5, SIZES[0], generator=torch.Generator().manual_seed(1))


def raises(error: type[Exception], call, *words: str) -> str:
    """Assert ``call()`` raises ``error`` with a one-line message containing every word; return the message."""
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


def load_mlp(path: Path, **kwargs) -> Checkpoint:
    return load_checkpoint(path, model_spec="mlp", model_kwargs=MLP_KWARGS, **kwargs)


def assert_same_model(loaded: nn.Module, original: nn.Module, batch: torch.Tensor) -> None:
    expected = original.state_dict()
    got = loaded.state_dict()
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    with torch.no_grad():
        assert torch.equal(loaded(batch), original(batch))


# ----------------------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("kind", list(WRITERS))
def test_every_format_loads_the_same_weights(kind, model, batch, tmp_path):
    file_name, write, fmt = WRITERS[kind]
    path = tmp_path / file_name
    write(model, path)
    own_code = fmt in ("torchscript", "export")
    checkpoint = load_mlp(path, trust=own_code)  # programs load only when trusted (tests/test_trust.py)
    assert checkpoint.info.format == fmt
    assert_same_model(checkpoint.model, model, batch)  # batch of 5: the export was traced with 2, batch dynamic
    assert all(p.device.type == "cpu" for p in checkpoint.model.parameters())
    assert checkpoint.model_spec == (None if own_code else "mlp")
    assert checkpoint.model_kwargs == ({} if own_code else MLP_KWARGS)


@pytest.mark.parametrize("kind", ["script", "export", "toolkit"])
def test_self_describing_formats_need_no_model_spec(kind, model, batch, tmp_path):
    file_name, write, fmt = WRITERS[kind]
    write(model, tmp_path / file_name)
    checkpoint = load_checkpoint(tmp_path / file_name, trust=fmt in ("torchscript", "export"))
    assert_same_model(checkpoint.model, model, batch)


def test_toolkit_checkpoint_carries_its_spec_and_an_explicit_spec_wins(model, batch, tmp_path):
    save_checkpoint(tmp_path / "run.pt", model, step=3, model_spec="mlp", model_kwargs=MLP_KWARGS)
    carried = load_checkpoint(tmp_path / "run.pt")
    assert (carried.model_spec, carried.model_kwargs) == ("mlp", MLP_KWARGS)
    explicit = load_checkpoint(tmp_path / "run.pt", model_spec="landscape.models:mlp", model_kwargs=MLP_KWARGS)
    assert explicit.model_spec == "landscape.models:mlp"
    assert_same_model(explicit.model, model, batch)


def test_prefix_is_removed_only_when_that_makes_the_keys_match(tmp_path):
    net = TinyNet()  # its own keys start with "body."
    torch.save(net.state_dict(), tmp_path / "tiny.pt")
    kept = load_checkpoint(tmp_path / "tiny.pt", model_spec="ckpt_factories:TinyNet")
    assert list(kept.model.state_dict()) == list(net.state_dict())
    stripped = load_checkpoint(tmp_path / "tiny.pt", model_spec="ckpt_factories:tiny_net")
    assert torch.equal(stripped.model.state_dict()["0.weight"], net.body[0].weight)


def test_lightning_keys_outside_the_model_prefix_are_ignored(model, batch, tmp_path):
    state = {"model." + k: v for k, v in model.state_dict().items()} | {"loss_fn.pos_weight": torch.ones(3)}
    torch.save({"pytorch-lightning_version": "2.4.0", "global_step": 9, "state_dict": state}, tmp_path / "a.ckpt")
    checkpoint = load_mlp(tmp_path / "a.ckpt")
    assert (checkpoint.info.format, checkpoint.info.step) == ("lightning", 9)
    assert_same_model(checkpoint.model, model, batch)


def test_pickle_that_runs_code_is_refused_unless_trusted(model, batch, tmp_path):
    path = tmp_path / "with_config.pt"
    torch.save({"state_dict": model.state_dict(), "config": RunConfig()}, path)
    raises(CheckpointError, lambda: load_mlp(path), "refused", "run code", "ckpt_factories.RunConfig",
           "pass trust,")
    assert_same_model(load_mlp(path, trust=True).model, model, batch)


def test_a_whole_pickled_model_loads_when_trusted(batch, tmp_path):
    net = TinyNet()
    torch.save(net, tmp_path / "whole.pt")
    raises(CheckpointError, lambda: load_checkpoint(tmp_path / "whole.pt"), "pass trust,", "TinyNet")
    as_is = load_checkpoint(tmp_path / "whole.pt", trust=True)
    assert (as_is.info.format, as_is.model_spec) == ("module", None)
    assert torch.equal(as_is.model(batch), net(batch))
    rebuilt = load_checkpoint(tmp_path / "whole.pt", model_spec="ckpt_factories:TinyNet", trust=True)
    assert torch.equal(rebuilt.model(batch), net(batch))


# ------------------------------------------------------------------------------------------------------------ info


def test_info_records_path_size_hash_and_name(model, tmp_path):
    path = tmp_path / "ckpt_step=1200.pth"
    torch.save(model.state_dict(), path)
    info = load_mlp(path).info
    assert info.path == str(path.absolute()) and os.path.isabs(info.path)
    assert info.size == os.path.getsize(path)
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (info.name, info.step, info.format) == ("ckpt_step=1200", 1200, "state_dict")


@pytest.mark.parametrize(
    ("file_name", "name", "step"),
    [
        ("ckpt_step=1200.pt", "ckpt_step=1200", 1200),
        ("model-000300.pth", "model-000300", 300),
        ("epoch5.ckpt", "epoch5", 5),
        ("step_100.pth.tar", "step_100", 100),
        ("lr0.1_step=40.bin", "lr0.1_step=40", 40),
        ("final.pt", "final", None),
        ("resnet18.pt", "resnet18", None),
        ("w1.pt", "w1", None),
        ("ckpt_step100.pt", "ckpt_step100", 100),
        ("run3_it250.pt", "run3_it250", 250),
        ("1500.pt", "1500", 1500),
    ],
)
def test_step_and_name_from_the_file_name(file_name, name, step, model, tmp_path):
    torch.save(model.state_dict(), tmp_path / file_name)
    info = load_mlp(tmp_path / file_name).info
    assert (info.name, info.step) == (name, step)


@pytest.mark.parametrize(
    ("extra", "step"),
    [({"step": 7, "global_step": 8}, 7), ({"global_step": 40, "epoch": 2}, 40), ({"iteration": 5, "epoch": 1}, 5),
     ({"epoch": 3}, 3), ({"epoch": True}, 999), ({"step": None, "epoch": 4}, 4)],
)
def test_step_from_the_contents_wins_over_the_name(extra, step, model, tmp_path):
    torch.save({"model": model.state_dict(), **extra}, tmp_path / "step_999.pt")
    assert load_mlp(tmp_path / "step_999.pt").info.step == step


def test_step_from_safetensors_metadata_and_toolkit_field(model, tmp_path):
    save_file(model.state_dict(), str(tmp_path / "a_3.safetensors"), metadata={"global_step": "12"})
    assert load_mlp(tmp_path / "a_3.safetensors").info.step == 12
    assert save_checkpoint(tmp_path / "b_3.pt", model, step=7).step == 7
    assert load_mlp(tmp_path / "b_3.pt").info.step == 7


# ------------------------------------------------------------------------------------------------------- discovery


@pytest.fixture
def run_folder(model, tmp_path) -> Path:
    for name in ["step_10.pt", "step_2.pt", "final.pth", "step_100.safetensors", "notes.txt", "sub/step_1.pt"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def names(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_find_checkpoints_in_a_folder_orders_by_step(run_folder):
    found = find_checkpoints([str(run_folder)])
    assert names(found) == ["step_2.pt", "step_10.pt", "step_100.safetensors", "final.pth"]
    assert all(p.is_absolute() for p in found)


def test_find_checkpoints_with_globs_and_several_paths_deduplicates(run_folder):
    found = find_checkpoints([str(run_folder / "step_*.pt"), run_folder / "step_2.pt", str(run_folder / "sub")])
    assert names(found) == ["step_1.pt", "step_2.pt", "step_10.pt"]
    assert names(find_checkpoints([str(run_folder / "notes.txt")])) == ["notes.txt"]  # named files are taken as is


def test_find_checkpoints_errors_name_the_entry(run_folder):
    assert find_checkpoints(str(run_folder / "step_2.pt")) == [run_folder / "step_2.pt"]  # one path, not a list
    raises(CheckpointError, lambda: find_checkpoints([str(run_folder / "nope.pt")]), "nope.pt", "does not exist")
    raises(CheckpointError, lambda: find_checkpoints([str(run_folder / "*.ckpt")]), "*.ckpt", "matched no")
    (run_folder / "empty").mkdir()
    raises(CheckpointError, lambda: find_checkpoints([str(run_folder / "empty")]), "empty", "no checkpoint files")


# ---------------------------------------------------------------------------------------------------------- errors


def test_missing_empty_and_folder_paths(tmp_path):
    raises(CheckpointError, lambda: load_mlp(tmp_path / "gone.pt"), "gone.pt", "does not exist")
    (tmp_path / "empty.pt").write_bytes(b"")
    raises(CheckpointError, lambda: load_mlp(tmp_path / "empty.pt"), "empty.pt", "empty")
    raises(CheckpointError, lambda: load_mlp(tmp_path), "not a file")


@pytest.mark.parametrize("kind", ["bare", "legacy", "safetensors", "toolkit", "script", "export"])
def test_truncated_files_are_reported_as_corrupt(kind, model, tmp_path):
    file_name, write, _ = WRITERS[kind]
    path = tmp_path / file_name
    write(model, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    raises(CheckpointError, lambda: load_mlp(path), file_name, "corrupt")


def test_foreign_files_are_not_checkpoints(tmp_path):
    # seeded noise that starts with no pickle, zip or safetensors header (os.urandom began with 0x80 one run in 256)
    (tmp_path / "noise.pt").write_bytes(b"\x00" + random.Random(0).randbytes(255))
    raises(CheckpointError, lambda: load_mlp(tmp_path / "noise.pt"), "noise.pt", "not a format")
    with zipfile.ZipFile(tmp_path / "other.pt", "w") as archive:
        archive.writestr("weights/readme.txt", "hello")
    raises(CheckpointError, lambda: load_mlp(tmp_path / "other.pt"), "other.pt", "zip", "no data.pkl")


def test_state_dict_without_model_spec_asks_for_model(model, tmp_path):
    torch.save(model.state_dict(), tmp_path / "w.pt")
    raises(CheckpointError, lambda: load_checkpoint(tmp_path / "w.pt"), "w.pt", "pass model_spec", "mlp",
           "package.module")


def test_missing_and_unexpected_keys_are_listed(model, tmp_path):
    state = model.state_dict()
    state["9.weight"] = state.pop("2.weight")
    torch.save(state, tmp_path / "keys.pt")
    raises(CheckpointError, lambda: load_mlp(tmp_path / "keys.pt"), "1 missing key(s) '2.weight'",
           "1 unexpected key(s) '9.weight'", "check that model_spec and model_kwargs build")


def test_long_key_lists_are_cut_with_a_count(tmp_path):
    torch.save({f"extra.{i}": torch.zeros(1) for i in range(25)}, tmp_path / "many.pt")
    message = raises(CheckpointError, lambda: load_mlp(tmp_path / "many.pt"), "4 missing", "25 unexpected",
                     "15 more")
    assert "'extra.9'" in message and "'extra.10'" not in message


def test_shape_mismatch_names_the_parameter_and_both_shapes(model, tmp_path):
    torch.save(model.state_dict(), tmp_path / "shapes.pt")
    load = partial(load_checkpoint, tmp_path / "shapes.pt", model_spec="mlp", model_kwargs={"sizes": [4, 8, 5]})
    raises(CheckpointError, load, "'2.weight': checkpoint (3, 8) vs model (5, 8)", "'2.bias'", "check model_kwargs")


def test_non_tensor_values_are_named(model, tmp_path):
    state = model.state_dict()
    state["0.bias"] = state["0.bias"].tolist()
    torch.save(state, tmp_path / "lists.pt")
    raises(CheckpointError, lambda: load_mlp(tmp_path / "lists.pt"), "'0.bias' (list)", "should be tensors")
    torch.save({"epoch": 3, "config": {"lr": 0.1}}, tmp_path / "no_tensors.pt")
    raises(CheckpointError, lambda: load_mlp(tmp_path / "no_tensors.pt"), "no tensors", "'epoch'", "state_dict")
    torch.save([torch.zeros(1)], tmp_path / "a_list.pt")
    raises(CheckpointError, lambda: load_mlp(tmp_path / "a_list.pt"), "holds a list", "state dict")


def test_toolkit_checkpoint_from_a_newer_version(model, tmp_path):
    torch.save({"format": "landscape-checkpoint", "format_version": 2, "state_dict": model.state_dict()},
               tmp_path / "new.pt")
    raises(CheckpointError, lambda: load_checkpoint(tmp_path / "new.pt"), "format_version 2", "upgrade")


# ---------------------------------------------------------------------------------------------------- property test

_FUZZED = ["bare", "legacy", "safetensors", "toolkit", "script"]
_POSITION = st.floats(0, 1, exclude_max=True)
_MUTATION = st.one_of(
    st.tuples(st.just("truncate"), _POSITION),
    st.tuples(st.just("flip"), _POSITION, st.integers(1, 255)),
    st.tuples(st.just("insert"), _POSITION, st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), _POSITION, st.integers(1, 16)),
)


def mutate(data: bytes, mutations: list[tuple]) -> bytes:
    """Apply truncations, byte flips, insertions and deletions at relative positions."""
    out = bytearray(data)
    for kind, where, *arg in mutations:
        at = int(where * len(out))
        if kind == "truncate":
            del out[at:]
        elif kind == "flip" and at < len(out):
            out[at] ^= arg[0]
        elif kind == "insert":
            out[at:at] = arg[0]
        elif kind == "delete":
            del out[at:at + arg[0]]
    return bytes(out)


@pytest.fixture(scope="module")
def valid_files(model, tmp_path_factory) -> dict[str, tuple[str, bytes]]:
    folder = tmp_path_factory.mktemp("valid")
    files = {}
    for kind in _FUZZED:
        file_name, write, _ = WRITERS[kind]
        write(model, folder / file_name)
        files[kind] = (file_name, (folder / file_name).read_bytes())
    return files


def load_or_landscape_error(path: Path, trust: bool = False) -> None:
    """The property: a Checkpoint, or a one-line LandscapeError; nothing else escapes."""
    try:
        assert isinstance(load_mlp(path, trust=trust), Checkpoint)
    except LandscapeError as err:
        assert "\n" not in str(err)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch's note on a damaged header
@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(_FUZZED), mutations=st.lists(_MUTATION, min_size=1, max_size=4))
def test_damaged_files_load_or_raise_a_landscape_error(kind, mutations, valid_files, tmp_path_factory):
    file_name, data = valid_files[kind]
    path = tmp_path_factory.getbasetemp() / f"damaged_{file_name}"
    path.write_bytes(mutate(data, mutations))
    load_or_landscape_error(path, trust=kind == "script")  # TorchScript is refused untrusted before it is read


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@settings(max_examples=60, deadline=None)
@given(head=st.sampled_from([b"", b"PK\x03\x04", b"\x80\x02", b"\x10\x00\x00\x00\x00\x00\x00\x00{"]),
       body=st.binary(max_size=300), suffix=st.sampled_from([".pt", ".safetensors", ".pt2"]))
def test_random_bytes_raise_a_landscape_error(head, body, suffix, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / f"random{suffix}"
    path.write_bytes(head + body)
    load_or_landscape_error(path)


# ----------------------------------------------------------------------------------------------------------- saving


def test_save_checkpoint_writes_a_weights_only_dict_atomically(model, batch, tmp_path):
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(batch).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    info = save_checkpoint(tmp_path / "out" / "step_5.pt", model, step=5, model_spec="mlp", model_kwargs=MLP_KWARGS,
                           optimizer_state=optimizer.state_dict(), extra={"lr": 0.01, "seed": [1, 2]})
    assert os.listdir(tmp_path / "out") == ["step_5.pt"]  # no temporary file left behind
    assert (info.format, info.step, info.name) == ("landscape", 5, "step_5")
    assert info.sha256 == hashlib.sha256((tmp_path / "out" / "step_5.pt").read_bytes()).hexdigest()
    payload = torch.load(tmp_path / "out" / "step_5.pt", weights_only=True)
    assert payload["format"] == "landscape-checkpoint" and payload["format_version"] == 1
    assert payload["extra"] == {"lr": 0.01, "seed": [1, 2]}
    assert torch.equal(payload["optimizer"]["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert_same_model(load_checkpoint(tmp_path / "out" / "step_5.pt").model, model, batch)


def test_save_checkpoint_replaces_an_existing_file(model, tmp_path):
    (tmp_path / "c.pt").write_bytes(b"old")
    save_checkpoint(tmp_path / "c.pt", model, model_spec="mlp", model_kwargs=MLP_KWARGS)
    assert load_checkpoint(tmp_path / "c.pt").info.size > 3


def test_save_checkpoint_rejects_what_would_need_trust(model, tmp_path):
    raises(OptionError, lambda: save_checkpoint(tmp_path / "c.pt", model, extra={"cfg": RunConfig()}),
           "extra['cfg']", "RunConfig", "tensors, numbers")
    raises(OptionError, lambda: save_checkpoint(tmp_path / "c.pt", model, step=1.5), "step", "1.5")
    assert not (tmp_path / "c.pt").exists()
    (tmp_path / "a_folder").mkdir()
    raises(CheckpointError, lambda: save_checkpoint(tmp_path / "a_folder", model), "a_folder", "cannot write")
    assert os.listdir(tmp_path) == ["a_folder"]


# ---------------------------------------------------------------------------------------------------------- models


def test_build_model_from_builtin_and_import_specs():
    assert isinstance(build_model("mlp", MLP_KWARGS)[0], nn.Linear)
    assert build_model("landscape.models:mlp", {"sizes": [4, 6, 2]})[-1].out_features == 2
    assert build_model("torch.nn:Linear", {"in_features": 4, "out_features": 3}).weight.shape == (3, 4)
    assert build_model("ckpt_factories:tiny_net", {"width": 5})[0].out_features == 5
    assert isinstance(build_model("ckpt_factories:TinyNet"), TinyNet)
    assert tiny_net().state_dict().keys() == build_model("ckpt_factories:tiny_net").state_dict().keys()


def test_build_model_errors_name_the_spec():
    raises(OptionError, lambda: build_model("resnet"), "'resnet'", "chebyshev, cnn, gpt, mlp", "package.module:factory")
    raises(OptionError, lambda: build_model("no_such_pkg.mod:f"), "no_such_pkg.mod:f", "cannot import")
    raises(OptionError, lambda: build_model("landscape.models:nope"), "landscape.models:nope", "no attribute")
    raises(OptionError, lambda: build_model("mlp", {"depth": 3}), "'mlp'", "depth", "built with model_kwargs")
    raises(OptionError, lambda: build_model("mlp", {"activation": "swish"}), "'mlp'", "swish")
    raises(OptionError, lambda: build_model("builtins:dict"), "builtins:dict", "torch.nn.Module")
    raises(OptionError, lambda: build_model("math:pi"), "math:pi", "function or class")


def test_parse_model_kwargs():
    assert parse_model_kwargs('{"sizes": [4, 8, 3], "activation": "relu"}') == {"sizes": [4, 8, 3],
                                                                                "activation": "relu"}
    assert parse_model_kwargs(None) == {} and parse_model_kwargs("  ") == {}
    raises(OptionError, lambda: parse_model_kwargs("{sizes: [4]}"), "model_kwargs is not valid JSON")
    raises(OptionError, lambda: parse_model_kwargs("[4, 8]"), "model_kwargs must be a JSON object", "list")
