"""Hugging Face ``save_pretrained`` folders as checkpoints: found as one checkpoint, built from config.json through
transformers, weights equal to the saved model's, Hessian products equal to a dense double-backward Hessian of the
saved model itself (float64, math attention kernel), ``landscape analyze FOLDER`` end to end, and code named by
``auto_map`` run only when trusted. Skipped without transformers (``pip install "landscape[hf]"``); the message
that says how to install it is tested in test_hf_missing.py."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from landscape import CheckpointError, HessianOperator, store
from landscape.checkpoints import build_model, find_checkpoints, load_checkpoint
from landscape.cli import main
from landscape.operators.next_token import next_token
from reference import double_backward_hessian

transformers = pytest.importorskip("transformers", reason='needs transformers: pip install "landscape[hf]"')

VOCAB, SEQ, SEQS = 16, 6, 5


def tiny_gpt2(seed: int = 0) -> torch.nn.Module:
    """A 1-layer GPT-2 with 2 heads of width 2 over 16 tokens (340 parameters), as transformers builds it."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=4, n_layer=1, n_head=2, n_positions=8,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def tokens(seed: int = 3) -> torch.Tensor:
    return torch.randint(0, VOCAB, (SEQS, SEQ), generator=torch.Generator().manual_seed(seed))


def lm_loss(output, ids: torch.Tensor) -> torch.Tensor:
    """Hugging Face's ``labels=input_ids`` loss of a ``CausalLMOutput``, written here (the truth's own)."""
    return F.cross_entropy(output.logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[torch.nn.Module, Path, Path]:
    """The model, and its save_pretrained folders: one file, and shards of at most 1 kB."""
    root = tmp_path_factory.mktemp("hf")
    model = tiny_gpt2()
    model.save_pretrained(root / "single")
    model.save_pretrained(root / "sharded", max_shard_size="1KB")
    return model, root / "single", root / "sharded"


@pytest.fixture(scope="module")
def truth(saved) -> torch.Tensor:
    """The dense Hessian of the next-token loss of the saved model itself (its own attention), float64."""
    model = copy.deepcopy(saved[0]).double()
    X = tokens()
    return double_backward_hessian(model, X, X, lm_loss)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].dtype)) for k in sa)


def sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_a_folder_is_one_checkpoint_also_inside_a_folder(saved, tmp_path):
    _, single, sharded = saved
    assert find_checkpoints(single) == [single.absolute()]
    assert find_checkpoints([str(single.parent / "s*")]) == sorted([single.absolute(), sharded.absolute()])
    trainer = tmp_path / "run"  # a Trainer's output_dir: checkpoint-N folders beside other files
    for step in (20, 100):
        shutil.copytree(single, trainer / f"checkpoint-{step}")
    (trainer / "notes.txt").write_text("")
    assert [p.name for p in find_checkpoints(trainer)] == ["checkpoint-20", "checkpoint-100"]
    assert load_checkpoint(trainer / "checkpoint-100").info.step == 100


@pytest.mark.parametrize("layout", ["single", "sharded", "bin"])
def test_the_weights_and_provenance_are_the_saved_models(saved, layout, tmp_path):
    model, single, sharded = saved
    folder = {"single": single, "sharded": sharded}.get(layout, tmp_path / "bin")
    if layout == "bin":  # the pre-safetensors layout; transformers 5 no longer writes it
        folder.mkdir()
        shutil.copy(single / "config.json", folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    loaded = load_checkpoint(folder)
    assert type(loaded.model) is type(model) and same_weights(loaded.model, model)
    assert [n for n, _ in loaded.model.named_parameters()] == [n for n, _ in model.named_parameters()]
    files = sorted(folder.glob("model-*.safetensors")) if layout == "sharded" else \
        [folder / ("pytorch_model.bin" if layout == "bin" else "model.safetensors")]
    assert len(files) > 1 or layout != "sharded"
    info = loaded.info
    assert (info.format, info.path, info.sha256) == ("huggingface", str(folder.absolute()), sha256(*files))
    assert info.size == sum(f.stat().st_size for f in files) and loaded.model_spec is None


def test_a_bfloat16_folder_loads_exactly_in_float32(saved, tmp_path):
    half = copy.deepcopy(saved[0]).to(torch.bfloat16)
    half.save_pretrained(tmp_path / "bf16")
    loaded = load_checkpoint(tmp_path / "bf16").model
    assert next(loaded.parameters()).dtype == torch.float32 and same_weights(loaded, half)


def test_outputs_are_the_logits_also_through_functional_call(saved):
    model, single, _ = saved
    loaded = load_checkpoint(single).model
    X = tokens()
    state = {k: v.clone() for k, v in [*loaded.named_parameters(), *loaded.named_buffers()]}
    out = torch.func.functional_call(loaded, state, (X,))
    assert isinstance(out, torch.Tensor) and torch.equal(out, model(X).logits)


def test_a_users_factory_of_a_transformers_model_gives_logits_too(saved):
    model = build_model("test_hf:tiny_gpt2")
    X = tokens()
    assert isinstance(model(X), torch.Tensor) and torch.equal(model(X), saved[0](X).logits)


@pytest.mark.parametrize("product", ["auto", "reverse", "forward"])
def test_hessian_products_equal_the_double_backward_hessian(saved, truth, product):
    _, single, _ = saved
    X = tokens()
    op = HessianOperator(load_checkpoint(single).model, next_token, (X, X), dtype=torch.float64, product=product)
    V = torch.randn(3, truth.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert op.shape == truth.shape
    assert float((op.matmat(V) - V @ truth.T).norm() / (V @ truth.T).norm()) < 1e-10
    assert float((op.matvec(V[0]) - truth @ V[0]).norm() / (truth @ V[0]).norm()) < 1e-10


def test_landscape_analyze_a_folder_on_token_data(saved, truth, tmp_path):
    _, _, sharded = saved
    data = tmp_path / "tokens.npy"
    np.save(data, tokens().numpy())
    out = tmp_path / "r.h5"
    assert main(["analyze", str(sharded), "--data", str(data), "--loss", "next-token", "--metrics", "eigs",
                 "--top-k", "2", "--tol", "1e-10", "--dtype", "float64", "-o", str(out), "--quiet"]) == 0
    (record,) = store.read_results(out).values()
    expected = torch.linalg.eigvalsh(truth).flip(0)[:2].numpy()
    assert np.allclose(record.results["eigen"].values, expected, rtol=1e-8, atol=1e-10)
    assert record.attrs["format"] == "huggingface" and record.attrs["sha256"] == load_checkpoint(sharded).info.sha256


def test_a_base_model_file_with_legacy_keys_loads_into_the_model_with_a_head(saved, tmp_path):
    """As on the Hub (gpt2): the base model's keys without ``transformer.``, its ``attn.bias`` buffers, no head."""
    model, single, _ = saved
    folder = tmp_path / "legacy"
    folder.mkdir()
    shutil.copy(single / "config.json", folder)
    state = {k: v for k, v in model.transformer.state_dict().items()}
    state["h.0.attn.bias"] = torch.ones(1, 1, 8, 8)
    torch.save(state, folder / "pytorch_model.bin")
    assert same_weights(load_checkpoint(folder).model, model)
    state["h.0.mlp.extra"] = torch.zeros(2)  # what transformers does not declare ignorable is still reported
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"1 unexpected key\(s\) 'transformer.h.0.mlp.extra'.*save_pretrained"):
        load_checkpoint(folder)


def test_a_missing_shard_is_named(saved, tmp_path):
    folder = shutil.copytree(saved[2], tmp_path / "sharded")
    next(folder.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match=r"lacks 1 of the \d+ shards its index lists \(model-00002-of"):
        load_checkpoint(folder)


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "config.json").write_text("{"), r"unreadable config.json \(JSONDecodeError"),
    (lambda f: (f / "model.safetensors.index.json").write_text('{"weight_map": {"a": "../model.safetensors"}}'),
     r"names files outside its folder"),
    (lambda f: (f / "model.safetensors.index.json").write_text("[]"), r"is not a save_pretrained index"),
])
def test_a_malformed_config_or_index_is_one_line(saved, tmp_path, damage, message):
    folder = shutil.copytree(saved[2], tmp_path / "sharded")
    damage(folder)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(folder)


def write_own_code(folder: Path) -> None:
    """The folder's own architecture (auto_map): GPT-2 under another model type, in files beside the weights."""
    (folder / "configuration_tiny.py").write_text(
        "from transformers import GPT2Config\n\nclass TinyConfig(GPT2Config):\n    model_type = 'tiny-gpt'\n")
    (folder / "modeling_tiny.py").write_text(
        "from transformers import GPT2LMHeadModel\nfrom .configuration_tiny import TinyConfig\n\n"
        "class TinyLM(GPT2LMHeadModel):\n    config_class = TinyConfig\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="tiny-gpt", architectures=["TinyLM"],
                  auto_map={"AutoConfig": "configuration_tiny.TinyConfig", "AutoModelForCausalLM": "modeling_tiny.TinyLM"})
    (folder / "config.json").write_text(json.dumps(config))


def test_code_named_by_auto_map_runs_only_when_trusted(saved, tmp_path, monkeypatch, capsys):
    model, single, _ = saved
    folder = shutil.copytree(single, tmp_path / "own")
    write_own_code(folder)
    with pytest.raises(CheckpointError, match=r"auto_map: AutoConfig, AutoModelForCausalLM.*pass trust,"):
        load_checkpoint(folder)
    data = tmp_path / "tokens.npy"
    np.save(data, tokens().numpy())
    assert main(["analyze", str(folder), "--data", str(data), "-o", str(tmp_path / "r.h5"), "--quiet"]) == 2
    assert "pass --trust-checkpoint" in capsys.readouterr().err and not (tmp_path / "r.h5").exists()
    # transformers copies trusted code into its modules cache: keep that in the test's folder
    monkeypatch.setattr(transformers.dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    trusted = load_checkpoint(folder, trust=True)
    assert type(trusted.model).__name__ == "TinyLM" and same_weights(trusted.model, model)


@pytest.mark.slow
def test_the_readme_example_runs_as_written(tmp_path):
    """The README's two commands (its first shell block after ``<!-- hf-example``): save a model, analyse it."""
    from test_readme import README, environment, shell_block

    assert "<!-- hf-example" in README
    proc = subprocess.run(["bash", "-e", "-c", shell_block("hf-example")], cwd=tmp_path, env=environment(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ((_, record),) = store.read_results(next(tmp_path.glob("*.h5"))).items()
    assert record.attrs["format"] == "huggingface" and len(record.results["eigen"].values) >= 1
