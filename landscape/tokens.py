"""Token data for language models: sequences of tokens, or a flat token stream cut into windows.

- an integer array (N, T) in a ``.npy`` file, or as ``X`` in a ``.npz`` file without ``y`` (``X_<split>`` selects a
  split): N sequences of T >= 2 tokens;
- a flat token stream: a ``.bin`` file of raw uint16 tokens (as nanoGPT's ``prepare.py`` writes ``train.bin``), or a
  1-D integer array in a ``.npy`` (or as ``X`` in a ``.npz``), cut into ``len // seq_len`` non-overlapping windows of
  ``seq_len`` tokens; the tail that fills no window is left out.

``.npy`` and ``.bin`` files are memory-mapped: :class:`TokenBatches` reads its batches of sequences from the file at
every pass, so only one batch is in memory at a time. Every batch is ``(tokens, tokens)``: the inputs and the labels
are the same tokens (the next-token loss shifts them).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from landscape.errors import DataError, OptionError, option

TOKEN_SUFFIXES = (".npy", ".bin")
BIN_DTYPE = np.dtype(np.uint16)  # the tokens of a .bin stream, in the machine's byte order (nanoGPT's format)
STREAM_BATCH_SIZE = 16  # sequences per batch of a memory-mapped stream when no batch size is given


@dataclass(frozen=True)
class TokenArray:
    """The sequences of a token file as the rows of a 2-D integer array (a view of the memory-mapped file for .npy
    and .bin files), with what it was read from for the data's description."""

    rows: np.ndarray  # (N, T)
    mapped: bool  # a view of the file on disk, not yet read
    stream: bool  # windows cut from a flat stream
    tags: list[str]


#: rows read at a time when a stream's largest token is looked for
LARGEST_CHUNK_ROWS = 65536


class TokenBatches:
    """Batches ``(tokens, tokens)`` of int64 sequences (``batch_size`` each), read on demand from the rows of a
    (memory-mapped) array: ``index`` (sorted) selects rows, default all. Every pass reads its batches again."""

    def __init__(self, rows: np.ndarray, batch_size: int, source: str, index: Optional[np.ndarray] = None) -> None:
        self.rows, self.batch_size, self.source, self.index = rows, batch_size, source, index
        self.num_sequences = len(rows) if index is None else len(index)
        self._largest: Optional[int] = None

    def __len__(self) -> int:
        return -(-self.num_sequences // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, self.num_sequences, self.batch_size):
            tokens = self.read(start, start + self.batch_size)
            yield tokens, tokens

    def read(self, start: int, stop: int) -> torch.Tensor:
        """The selected sequences ``start:stop`` as an int64 tensor (B, T), read from the array."""
        rows = self.rows[start:stop] if self.index is None else self.rows[self.index[start:stop]]
        return as_tokens(rows, self.source)

    def largest_token(self) -> int:
        """The largest token of the selected sequences: one pass over the array, in chunks of rows, the first time
        (every checkpoint's pairing check asks again)."""
        if self._largest is None:
            self._largest = 0
            for start in range(0, self.num_sequences, LARGEST_CHUNK_ROWS):
                stop = start + LARGEST_CHUNK_ROWS
                rows = self.rows[start:stop] if self.index is None else self.rows[self.index[start:stop]]
                self._largest = max(self._largest, int(np.max(rows)))
        return self._largest

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every selected sequence in memory, as one ``(tokens, tokens)`` pair (training draws its own batches)."""
        tokens = self.read(0, self.num_sequences)
        return tokens, tokens


def as_tokens(rows: np.ndarray, source: str) -> torch.Tensor:
    """``rows`` copied into an int64 tensor; a negative token raises DataError."""
    tokens = np.array(rows, dtype=np.int64)
    if tokens.size and tokens.min() < 0:
        raise DataError(f"token data {source} holds a negative token ({int(tokens.min())}); tokens are indices into "
                        "the vocabulary, 0 or more")
    return torch.from_numpy(tokens)


def is_token_npz(spec: str) -> bool:
    """Whether the ``.npz`` file ``spec`` holds token data: integer arrays ``X``/``X_<split>`` and no
    ``y``/``y_<split>`` (a file that cannot be read is left to the ordinary reader, which says why)."""
    try:
        arrays = np.load(spec, allow_pickle=False)
        if not isinstance(arrays, np.lib.npyio.NpzFile):
            return False
        with arrays:
            if any(key == "y" or key.startswith("y_") for key in arrays.files):
                return False
            inputs = [key for key in arrays.files if key == "X" or key.startswith("X_")]
            return bool(inputs) and arrays[inputs[0]].dtype.kind in "iu"
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False


def read_tokens(spec: str, split: str, seq_len: Optional[int]) -> TokenArray:
    """The sequences of split ``split`` of the token file ``spec`` (see the module docstring); a stream needs
    ``seq_len``."""
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"data file {spec} does not exist; check the path")
    if path.stat().st_size == 0:
        raise DataError(f"token data {spec} is an empty file: it holds 0 tokens")
    suffix = path.suffix.lower()
    if suffix != ".npz" and split == "test":
        raise DataError(f"{spec} holds one token array, with no test split; pass the test tokens' file as the data")
    try:
        if suffix == ".bin":
            array, mapped = _map_bin(path), True
        elif suffix == ".npy":
            array, mapped = np.load(spec, mmap_mode="r", allow_pickle=False), True
        else:
            array, mapped = _read_npz(spec, split), False
    except (OSError, ValueError, EOFError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DataError(f"cannot read token file {spec} ({type(err).__name__}: {first}); check that it is a valid "
                        f"{suffix} file") from err
    if array.dtype.kind not in "iu":
        raise DataError(f"token data {spec} holds {array.dtype} values; tokens must be integers (save them with an "
                        "integer dtype, e.g. uint16 or int64)")
    if array.size == 0:
        raise DataError(f"token data {spec} is empty: it holds 0 tokens")
    if array.ndim == 1:
        return TokenArray(_windows(array, seq_len, spec), mapped, True,
                          [f"stream of {array.size} {array.dtype} tokens in windows of {seq_len}"])
    if array.ndim != 2:
        raise DataError(f"token data {spec} has shape {array.shape}; expected sequences (N, T) or a 1-D stream")
    if array.shape[1] < 2:
        raise DataError(f"the sequences in {spec} are {array.shape[1]} token long; a language model needs at least 2 "
                        "(one to predict from, one to predict)")
    if seq_len is not None and seq_len != array.shape[1]:
        raise OptionError(f"{option('seq_len')} {seq_len} does not apply to {spec}, which holds sequences of "
                          f"{array.shape[1]} tokens; drop it (it cuts 1-D token streams)")
    return TokenArray(array, mapped, False, [])


def _map_bin(path: Path) -> np.ndarray:
    size = path.stat().st_size
    if size % BIN_DTYPE.itemsize:
        raise DataError(f"{path} is {size} bytes, not a whole number of uint16 tokens; a .bin token stream holds raw "
                        "uint16 tokens (numpy: tokens.astype(np.uint16).tofile(path))")
    return np.memmap(path, dtype=BIN_DTYPE, mode="r")


def _read_npz(spec: str, split: str) -> np.ndarray:
    with np.load(spec, allow_pickle=False) as arrays:
        if f"X_{split}" in arrays.files:
            return arrays[f"X_{split}"]
        if split != "test" and "X" in arrays.files:
            return arrays["X"]
    wanted = f"X_{split}" + ("" if split == "test" else " (or X)")
    raise DataError(f"token file {spec} has no array {wanted} for split {split!r}; found {sorted(arrays.files)}")


def _windows(stream: np.ndarray, seq_len: Optional[int], spec: str) -> np.ndarray:
    """The stream's non-overlapping windows of ``seq_len`` tokens, as the rows of a (N, seq_len) view."""
    if seq_len is None:
        raise OptionError(f"{spec} is a flat token stream: give {option('seq_len')}, the tokens per sequence, to cut "
                          "it into windows")
    if seq_len < 2:
        raise OptionError(f"{option('seq_len')} must be at least 2 (one token to predict from, one to predict), "
                          f"got {seq_len}")
    count = len(stream) // seq_len
    if count == 0:
        raise DataError(f"the token stream {spec} holds {len(stream)} tokens, fewer than one window of "
                        f"{option('seq_len')} {seq_len}")
    return stream[:count * seq_len].reshape(count, seq_len)
