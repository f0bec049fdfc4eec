"""`landscape analyze` end to end: every checkpoint format, per-layer results, resume, and every bad input."""

from __future__ import annotations

import copy
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from landscape import store
from landscape.checkpoints import save_checkpoint
from landscape.cli import main
from landscape.models import mlp

from reference import dense_hessian

SIZES = [64, 6, 10]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return mlp(SIZES)


@pytest.fixture(scope="module")
def digits_data():
    from landscape.data import digits

    return digits("train")


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def analyze_args(checkpoint, output, *extra):
    return ["analyze", checkpoint, "--data", "digits", "--dtype", "float64", "--quiet", "-o", output, *extra]


def write_every_format(model, folder, example):
    """The same weights in every format `analyze` reads; returns {file: needs --model}."""
    sd = model.state_dict()
    files = {}

    def put(name, obj, needs_model=True):
        torch.save(obj, folder / name)
        files[folder / name] = needs_model

    put("bare.pt", sd)
    put("wrapped.pth", {"state_dict": sd, "epoch": 3})
    put("model_state.bin", {"model_state_dict": sd, "optimizer_state_dict": {}})
    put("lightning.ckpt", {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "global_step": 10})
    put("ddp.pt", {f"module.{k}": v for k, v in sd.items()})
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "weights.safetensors"))
    files[folder / "weights.safetensors"] = True
    torch.jit.save(torch.jit.script(model), str(folder / "scripted.ts"))
    files[folder / "scripted.ts"] = False
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(folder / "exported.pt2"))
    files[folder / "exported.pt2"] = False
    save_checkpoint(folder / "own.pt", model, step=5, model_spec="mlp", model_kwargs={"sizes": SIZES})
    files[folder / "own.pt"] = False
    return files


def test_every_format_gives_the_same_eigenvalues_as_the_dense_hessian(tmp_path, capsys, model, digits_data):
    X, y = digits_data
    files = write_every_format(model, tmp_path, X[:8])
    truth = torch.linalg.eigvalsh(dense_hessian(copy.deepcopy(model).double(), X.double(), y)).flip(0)[:3].numpy()
    out = tmp_path / "results.h5"
    for path, needs_model in files.items():
        extra = ["--model", "mlp", "--model-kwargs", f'{{"sizes": {SIZES}}}'] if needs_model else []
        if path.suffix in (".ts", ".pt2"):  # programs: loading them needs --trust-checkpoint (tests/test_trust.py)
            extra.append("--trust-checkpoint")
        code, stdout, err = run(analyze_args(path, out, "--metrics", "eigs", "--top-k", "3", "--tol", "1e-10",
                                             *extra), capsys)
        assert code == 0, (path, err)
    records = store.read_results(out)
    assert len(records) == len(files)
    with torch.no_grad():
        logits = copy.deepcopy(model).double()(X.double())
    loss, accuracy = float(torch.nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).double().mean())
    for record in records.values():
        np.testing.assert_allclose(record.results["eigen"].values, truth, rtol=1e-8, err_msg=record.name)
        assert record.attrs["loss"] == pytest.approx(loss, rel=1e-12) and record.attrs["accuracy"] == accuracy
        assert record.attrs["sha256"] and record.attrs["num_params"] == sum(p.numel() for p in model.parameters())


def test_per_layer_traces_add_up_to_the_total(tmp_path, capsys, model, digits_data):
    ckpt = tmp_path / "m.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "r.h5"
    code, stdout, err = run(analyze_args(ckpt, out, "--model", "mlp", "--model-kwargs", f'{{"sizes": {SIZES}}}',
                                         "--subset", "100", "--metrics", "eigs,trace", "--per-layer", "--top-k", "2",
                                         "--trace-matvecs", "500"), capsys)
    assert code == 0, err
    record = store.read_results(out)["m"]
    assert set(record.layers) == {"0", "2"}
    total = record.results["trace"].estimate
    by_layer = sum(r["trace"].estimate for r in record.layers.values())
    np.testing.assert_allclose(by_layer, total, rtol=1e-8)  # 500 products exceed n: both traces are exact


def test_summary_table_info_and_resume(tmp_path, capsys, model):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for step in (20, 3, 100):
        save_checkpoint(folder / f"step_{step}.pt", model, step=step, model_spec="mlp", model_kwargs={"sizes": SIZES})
    out = tmp_path / "r.h5"
    code, stdout, err = run(["analyze", folder, "--data", "digits", "--subset", "200", "--metrics", "eigs,trace",
                             "-o", out], capsys)
    assert code == 0, err
    rows = [line.split()[0] for line in stdout.splitlines() if line.startswith("step_")]
    assert rows == ["step_3", "step_20", "step_100"]
    stamps = {n: r.attrs["analyzed"] for n, r in store.read_results(out).items()}
    code, stdout, err = run(["analyze", folder, "--data", "digits", "--subset", "200", "--metrics", "eigs,trace",
                             "-o", out, "--resume"], capsys)
    assert code == 0 and err.count("skipped") == 3
    assert {n: r.attrs["analyzed"] for n, r in store.read_results(out).items()} == stamps
    code, stdout, err = run(["info", out], capsys)
    assert code == 0 and "checkpoints/step_100" in stdout and "eigen: 5 eigenvalues" in stdout


# -- bad input: one line on stderr, exit code 2, no output file ------------------------------------------------------
class NeedsCode:
    """Unpickling this needs the class itself: arbitrary code, refused under weights_only."""


def make_bad_inputs(folder, model):
    sd = model.state_dict()
    good = folder / "good.pt"
    torch.save(sd, good)
    (folder / "truncated.pt").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (folder / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save({"state_dict": sd, "extra": NeedsCode()}, folder / "code.pt")
    torch.save({k: v for k, v in sd.items() if k != "2.bias"} | {"head.weight": torch.zeros(3)}, folder / "keys.pt")
    torch.save(sd | {"0.weight": torch.zeros(7, 64)}, folder / "shape.pt")
    torch.save({k: torch.full_like(v, float("nan")) for k, v in sd.items()}, folder / "nan.pt")
    np.savez(folder / "empty.npz", X=np.zeros((0, 64), np.float32), y=np.zeros(0, np.int64))
    np.savez(folder / "labels.npz", X=np.zeros((5, 64), np.float32), y=np.array([0, 1, 2, 3, 12]))
    return good


BAD = [
    ("missing.pt", [], "missing.pt"),
    ("truncated.pt", [], "truncated.pt"),
    ("random.pt", [], "random.pt"),
    ("code.pt", [], "--trust-checkpoint"),
    ("keys.pt", [], "2.bias"),
    ("shape.pt", [], "0.weight"),
    ("nan.pt", [], "nan"),
    ("good.pt", ["--model", "no_such_model"], "no_such_model"),
    ("good.pt", ["--data", "no_such_data"], "no_such_data"),
    ("good.pt", ["--loss", "no_such_loss"], "no_such_loss"),
    ("good.pt", ["--data", "{folder}/empty.npz"], "empty"),
    ("good.pt", ["--data", "{folder}/labels.npz"], "12"),
    ("good.pt", ["-o", "{folder}/no/such/dir/r.h5"], "does not exist"),
    ("good.pt", ["--metrics", "eigs,hessian"], "--metrics"),
    ("good.pt", ["--top-k", "0"], "--top-k"),
]


@pytest.mark.parametrize("checkpoint, extra, words", BAD, ids=[f"{c}{''.join(e[:2])}" for c, e, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path, capsys, model, checkpoint, extra, words):
    make_bad_inputs(tmp_path, model)
    out = tmp_path / "r.h5"
    extra = [e.format(folder=tmp_path) for e in extra]
    args = ["analyze", tmp_path / checkpoint, "--model", "mlp", "--model-kwargs", f'{{"sizes": {SIZES}}}',
            "--data", "digits", "-o", out, "--quiet"]
    # later options win in argparse, so the bad value given in `extra` replaces the good default above
    code, stdout, err = run(args + extra, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("landscape analyze: error:"), err
    assert words.lower() in lines[0].lower(), lines[0]
    assert not out.exists()
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_bad_input_never_damages_an_existing_results_file(tmp_path, capsys, model):
    good = make_bad_inputs(tmp_path, model)
    out = tmp_path / "r.h5"
    base = ["--model", "mlp", "--model-kwargs", f'{{"sizes": {SIZES}}}', "--data", "digits", "--subset", "50",
            "--metrics", "trace", "-o", out, "--quiet"]
    assert run(["analyze", good, *base], capsys)[0] == 0
    before = out.read_bytes()
    assert run(["analyze", good, tmp_path / "nan.pt", *base], capsys)[0] == 2  # the bad one is found before any work
    assert out.read_bytes() == before


def test_unknown_option_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "x.pt", "--data", "digits", "--no-such-option"])
    assert exit_info.value.code == 2
    assert "--no-such-option" in capsys.readouterr().err


def test_pickle_needing_code_loads_when_trusted(tmp_path, capsys, model):
    make_bad_inputs(tmp_path, model)
    out = tmp_path / "r.h5"
    pickle.dumps(NeedsCode())  # the class is importable from this module, so a trusted load can rebuild it
    code, _, err = run(["analyze", tmp_path / "code.pt", "--model", "mlp", "--model-kwargs", f'{{"sizes": {SIZES}}}',
                        "--data", "digits", "--subset", "50", "--metrics", "trace", "-o", out, "--quiet",
                        "--trust-checkpoint"], capsys)
    assert code == 0, err


def test_scripted_model_with_a_model_loss_over_batches_matches_the_dense_hessian(tmp_path, capsys, model,
                                                                                   digits_data):
    """TorchScript (parameters swapped in), a `package.module:function` loss, and data streamed in 3 batches."""
    X, y = digits_data
    torch.jit.save(torch.jit.script(model), str(tmp_path / "scripted.ts"))
    truth = torch.linalg.eigvalsh(dense_hessian(copy.deepcopy(model).double(), X.double(), y)).flip(0)[:2].numpy()
    out = tmp_path / "r.h5"
    code, _, err = run(analyze_args(tmp_path / "scripted.ts", out, "--loss",
                                    "datasets_for_tests:cross_entropy_model_loss", "--batch-size", "500",
                                    "--metrics", "eigs", "--top-k", "2", "--tol", "1e-10", "--trust-checkpoint"),
                       capsys)
    assert code == 0, err
    record = store.read_results(out)["scripted"]
    np.testing.assert_allclose(record.results["eigen"].values, truth, rtol=1e-8)
    assert record.attrs["loss_function"] == "datasets_for_tests:cross_entropy_model_loss"
    assert record.attrs["data_description"].endswith("batch 500")


def test_ggn_curvature_and_jacobian_metrics(tmp_path, capsys, model, digits_data):
    """--curvature ggn gives the dense Jᵀ H_out J spectrum; --metrics jacobian stores per-sample norms and a bound."""
    from torch.func import functional_call, jacrev

    X, y = digits_data
    ckpt = tmp_path / "m.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "r.h5"
    code, stdout, err = run(analyze_args(ckpt, out, "--model", "mlp", "--model-kwargs", f'{{"sizes": {SIZES}}}',
                                         "--subset", "60", "--metrics", "eigs,jacobian", "--curvature", "ggn",
                                         "--top-k", "2", "--tol", "1e-10"), capsys)
    assert code == 0, err
    record = store.read_results(out)["m"]
    assert record.attrs["curvature"] == "ggn"

    from landscape.data import load_data

    Xs, ys = load_data("digits", subset=60, seed=0).batches
    m64 = copy.deepcopy(model).double()
    params = {k: v.detach() for k, v in m64.named_parameters()}
    J = jacrev(lambda p: functional_call(m64, p, (Xs.double(),)))(params)
    Jf = torch.cat([J[k].reshape(len(Xs), 10, -1) for k in params], dim=2)
    probs = torch.softmax(m64(Xs.double()), 1)
    ggn = sum(Jf[i].T @ (torch.diag(probs[i]) - torch.outer(probs[i], probs[i])) @ Jf[i] for i in range(len(Xs)))
    truth = torch.linalg.eigvalsh(ggn / len(Xs)).flip(0)[:2].detach().numpy()
    np.testing.assert_allclose(record.results["eigen"].values, truth, rtol=1e-8)

    jac = record.results["jacobian"]
    per_sample = torch.func.vmap(torch.func.jacrev(lambda x: m64(x[None])[0]))(Xs.double())
    np.testing.assert_allclose(jac.spectral, torch.linalg.matrix_norm(per_sample, 2).detach().numpy(), rtol=1e-10)
    assert jac.lipschitz_upper >= jac.spectral_max
    assert "|J|_2 max" in stdout
