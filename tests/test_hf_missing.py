"""Without transformers a save_pretrained folder is still found as one checkpoint, and loading it says how to install
the extra (this runs whether transformers is installed or not: its import is made to fail)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors.torch import save_file

from landscape import CheckpointError
from landscape.checkpoints import find_checkpoints, load_checkpoint


def test_without_transformers_the_message_says_how_to_install_it(tmp_path, monkeypatch):
    folder = tmp_path / "gpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    save_file({"transformer.wte.weight": torch.zeros(4, 2)}, str(folder / "model.safetensors"))
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    assert find_checkpoints(tmp_path) == [folder.absolute()]
    with pytest.raises(CheckpointError, match=r"gpt' is a Hugging Face folder, which needs transformers: "
                                              r"pip install \"landscape\[hf\]\"$"):
        load_checkpoint(folder)
