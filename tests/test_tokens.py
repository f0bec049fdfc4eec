"""Token data: sequences in .npy/.npz, token streams (.bin, 1-D .npy) cut by seq_len and read from disk batch by
batch, --subset on sequences, the checks on bad token files, and the commands end to end on the built-in gpt."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from landscape import DataError, OptionError
from landscape.checkpoints import save_checkpoint
from landscape.cli import main
from landscape.data import load_data
from landscape.errors import command_line_names
from landscape.losses import resolve_loss
from landscape.models import gpt
from landscape.operators.next_token import next_token
from landscape.store import read_results, read_run
from landscape.tokens import STREAM_BATCH_SIZE, TokenBatches

GPT = dict(vocab_size=11, seq_len=8, d_model=8, n_layers=1, n_heads=2, d_ff=16)


def stream(n: int = 100, vocab: int = 11, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.uint16)


def mapped(array: np.ndarray) -> bool:
    """Whether ``array`` is a view of a memory-mapped file."""
    while array is not None:
        if isinstance(array, np.memmap):
            return True
        array = array.base
    return False


# -- sequences (N, T) --------------------------------------------------------------------------------------------


def test_npy_sequences_are_one_in_memory_batch_of_a_language_model(tmp_path):
    X = stream(60).reshape(10, 6)
    np.save(tmp_path / "seqs.npy", X)
    data = load_data(str(tmp_path / "seqs.npy"))
    inputs, labels = data.batches
    assert inputs.dtype == torch.int64 and torch.equal(inputs, torch.from_numpy(X.astype(np.int64)))
    assert labels is inputs
    assert (data.task, data.num_samples, data.num_classes) == ("language-model", 10, int(X.max()) + 1)
    assert resolve_loss(None, data.task) is next_token


def test_npy_sequences_with_a_batch_size_are_read_from_disk(tmp_path):
    X = stream(60).reshape(10, 6)
    np.save(tmp_path / "seqs.npy", X)
    data = load_data(str(tmp_path / "seqs.npy"), batch_size=4)
    assert isinstance(data.batches, TokenBatches) and mapped(data.batches.rows)
    batches = list(data.batches)
    assert [len(b[0]) for b in batches] == [4, 4, 2] and len(data.batches) == 3
    assert torch.equal(torch.cat([b[0] for b in batches]), torch.from_numpy(X.astype(np.int64)))
    assert all(b[1] is b[0] for b in batches)
    assert torch.equal(torch.cat([b[0] for b in data.batches]), torch.cat([b[0] for b in batches]))  # re-iterable


def test_npz_tokens_hold_x_only_and_select_a_split(tmp_path):
    train, test = stream(40).reshape(8, 5), stream(20, seed=1).reshape(4, 5)
    np.savez(tmp_path / "tok.npz", X=train, X_test=test)
    data = load_data(str(tmp_path / "tok.npz"))
    assert data.task == "language-model" and torch.equal(data.batches[0], torch.from_numpy(train.astype(np.int64)))
    assert torch.equal(load_data(str(tmp_path / "tok.npz"), split="test").batches[0],
                       torch.from_numpy(test.astype(np.int64)))
    batched = load_data(str(tmp_path / "tok.npz"), batch_size=3).batches
    assert [len(b[0]) for b in batched] == [3, 3, 2]


# -- streams -------------------------------------------------------------------------------------------------------


def test_bin_stream_is_cut_into_seq_len_windows_read_from_disk(tmp_path):
    tokens = stream(103)
    tokens.tofile(tmp_path / "train.bin")
    data = load_data(str(tmp_path / "train.bin"), seq_len=10)
    assert isinstance(data.batches, TokenBatches) and mapped(data.batches.rows)
    assert data.batches.batch_size == STREAM_BATCH_SIZE and data.num_samples == 10  # the last 3 tokens fill none
    windows = torch.cat([b[0] for b in data.batches])
    assert torch.equal(windows, torch.from_numpy(tokens[:100].reshape(10, 10).astype(np.int64)))
    assert "stream of 103 uint16 tokens in windows of 10" in data.description


def test_npy_stream_and_subset_of_windows(tmp_path):
    tokens = stream(200).astype(np.int32)
    np.save(tmp_path / "stream.npy", tokens)
    windows = tokens.reshape(25, 8).astype(np.int64)
    data = load_data(str(tmp_path / "stream.npy"), seq_len=8, subset=6, seed=3, batch_size=4)
    picked = torch.cat([b[0] for b in data.batches]).numpy()
    assert data.num_samples == 6 and picked.shape == (6, 8)
    rows = [int(np.flatnonzero((windows == row).all(1))[0]) for row in picked]
    assert rows == sorted(set(rows))  # distinct windows, in stream order
    again = load_data(str(tmp_path / "stream.npy"), seq_len=8, subset=6, seed=3, batch_size=4)
    other = load_data(str(tmp_path / "stream.npy"), seq_len=8, subset=6, seed=4, batch_size=4)
    assert np.array_equal(torch.cat([b[0] for b in again.batches]).numpy(), picked)
    assert not np.array_equal(torch.cat([b[0] for b in other.batches]).numpy(), picked)
    assert "subset 6 of 25, seed 3" in data.description


# -- bad token data ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("array, match", [
    (np.zeros((4, 5), dtype=np.float32), "must be integers"),
    (np.zeros((4, 1), dtype=np.int64), "at least 2"),
    (np.zeros((2, 3, 4), dtype=np.int64), "expected sequences"),
    (np.full((4, 5), -2, dtype=np.int64), "negative token"),
    (np.zeros((0, 5), dtype=np.int64), "empty"),
])
def test_bad_sequence_files_are_refused(tmp_path, array, match):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError, match=match):
        load_data(str(tmp_path / "bad.npy"))


def test_negative_tokens_of_a_mapped_stream_fail_when_read(tmp_path):
    tokens = stream(40).astype(np.int64)
    tokens[33] = -1
    np.save(tmp_path / "s.npy", tokens)
    data = load_data(str(tmp_path / "s.npy"), seq_len=4, batch_size=2)
    with pytest.raises(DataError, match="negative token"):
        list(data.batches)


def test_stream_checks_name_seq_len(tmp_path):
    stream(11).tofile(tmp_path / "s.bin")
    spec = str(tmp_path / "s.bin")
    with pytest.raises(OptionError, match="give seq_len"):
        load_data(spec)
    with command_line_names(), pytest.raises(OptionError, match="give --seq-len"):
        load_data(spec)
    with pytest.raises(OptionError, match="at least 2"):
        load_data(spec, seq_len=1)
    with pytest.raises(DataError, match="fewer than one window"):
        load_data(spec, seq_len=12)
    with pytest.raises(OptionError, match="seq_len .* does not apply"):
        load_data("digits", seq_len=8)
    with pytest.raises(DataError, match="no test split"):
        load_data(spec, split="test", seq_len=4)


def test_empty_and_truncated_bin_files_are_refused(tmp_path):
    (tmp_path / "empty.bin").write_bytes(b"")
    (tmp_path / "odd.bin").write_bytes(b"\x01\x00\x02")
    with pytest.raises(DataError, match="empty"):
        load_data(str(tmp_path / "empty.bin"), seq_len=4)
    with pytest.raises(DataError, match="not a whole number of uint16 tokens"):
        load_data(str(tmp_path / "odd.bin"), seq_len=4)


def test_sequences_refuse_another_seq_len(tmp_path):
    np.save(tmp_path / "seqs.npy", stream(60).reshape(10, 6))
    assert load_data(str(tmp_path / "seqs.npy"), seq_len=6).num_samples == 10
    with pytest.raises(OptionError, match="sequences of 6 tokens"):
        load_data(str(tmp_path / "seqs.npy"), seq_len=5)


# -- the commands end to end on the built-in gpt -------------------------------------------------------------------


@pytest.fixture
def gpt_checkpoint(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "gpt.pt", gpt(**GPT), model_spec="gpt", model_kwargs=GPT)
    return tmp_path / "gpt.pt"


def analyze(tmp_path, checkpoint, name, *options) -> dict:
    out = tmp_path / f"{name}.h5"
    code = main(["analyze", str(checkpoint), "--model", "gpt", "--model-kwargs", json.dumps(GPT), "--metrics", "eigs",
                 "--top-k", "2", "--dtype", "float64", "--quiet", "-o", str(out), *options])
    assert code == 0
    (record,) = read_results(out).values()
    return record


def test_analyze_gives_the_same_eigenvalues_streamed_and_in_memory(tmp_path, gpt_checkpoint):
    tokens = stream(96)
    tokens.tofile(tmp_path / "train.bin")
    np.save(tmp_path / "seqs.npy", tokens.reshape(12, 8))
    memory = analyze(tmp_path, gpt_checkpoint, "memory", "--data", str(tmp_path / "seqs.npy"), "--loss", "next-token")
    streamed = analyze(tmp_path, gpt_checkpoint, "streamed", "--data", str(tmp_path / "train.bin"), "--seq-len", "8",
                       "--batch-size", "5")
    assert memory.attrs["loss_function"] == streamed.attrs["loss_function"] == "next-token"
    eigen = {name: next(r for r in record.results.values() if hasattr(r, "values")).values
             for name, record in (("memory", memory), ("streamed", streamed))}
    np.testing.assert_allclose(eigen["streamed"], eigen["memory"], rtol=1e-8)
    assert eigen["memory"][0] > 0


def test_train_on_a_token_stream_records_next_token_accuracy(tmp_path):
    stream(200).tofile(tmp_path / "train.bin")
    out = tmp_path / "run.h5"
    code = main(["train", "--model", "gpt", "--model-kwargs", json.dumps(GPT), "--data", str(tmp_path / "train.bin"),
                 "--seq-len", "8", "--optimizer", "adam", "--lr", "0.01", "--steps", "4", "--batch-size", "8",
                 "--track-every", "4", "--track-trace-matvecs", "0", "--quiet", "-o", str(out)])
    assert code == 0
    run = read_run(out)
    assert run.attrs["loss_function"] == "next-token"
    accuracy = run.tables["run/curvature"]["train_accuracy"]
    assert len(accuracy) == 2 and all(0 <= a <= 1 for a in accuracy)


def test_tokens_beyond_the_vocabulary_fail_in_one_line(tmp_path, gpt_checkpoint, capsys):
    np.save(tmp_path / "seqs.npy", np.full((4, 8), GPT["vocab_size"], dtype=np.int64))
    code = main(["analyze", str(gpt_checkpoint), "--data", str(tmp_path / "seqs.npy"), "--metrics", "eigs", "--quiet",
                 "-o", str(tmp_path / "r.h5")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "index out of range" in err and "seqs.npy is 11" in err


@pytest.mark.parametrize("extra", [["--batch-size", "2"], [], ["--seq-len", "8"]])
def test_a_token_beyond_the_vocabulary_in_a_later_batch_fails_before_any_work(tmp_path, gpt_checkpoint, capsys,
                                                                               extra):
    """Streamed from disk (--batch-size, a .bin stream) or held in memory: the check of the first batch sees the data's
    largest token, so a bad token in the last sequence fails up front, in one line, with no results file."""
    sequences = np.random.default_rng(0).integers(0, GPT["vocab_size"], (6, 8))
    sequences[-1, -1] = GPT["vocab_size"] + 3
    if "--seq-len" in extra:
        sequences.astype(np.uint16).reshape(-1).tofile(tmp_path / "data.bin")
        data = tmp_path / "data.bin"
    else:
        np.save(tmp_path / "data.npy", sequences)
        data = tmp_path / "data.npy"
    code = main(["analyze", str(gpt_checkpoint), "--data", str(data), "--metrics", "eigs", "--top-k", "1", "--quiet",
                 "-o", str(tmp_path / "r.h5"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"is {GPT['vocab_size'] + 3}" in err and "vocabulary" in err
    assert not (tmp_path / "r.h5").exists()
