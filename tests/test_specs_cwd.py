"""``package.module:function`` specs are looked up in the current folder too, as ``python -m``, uvicorn and gunicorn
do, so that a ``--model``/``--loss``/``--data`` module beside the user needs no ``PYTHONPATH=.``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from landscape.errors import OptionError
from landscape.specs import import_callable

ROOT = Path(__file__).resolve().parents[1]
FACTORIES = textwrap.dedent("""
    from torch.nn import functional as F
    from landscape.models import mlp

    def make():
        return mlp((64, 5, 10))

    def ce(model, batch):
        return F.cross_entropy(model(batch[0]), batch[1])
""")


def test_the_current_folder_goes_first_on_the_import_path_once(tmp_path, monkeypatch):
    (tmp_path / "cwd_spec_module.py").write_text("def answer():\n    return 42\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p and os.path.abspath(p) != str(tmp_path)])
    monkeypatch.delitem(sys.modules, "cwd_spec_module", raising=False)
    assert import_callable("cwd_spec_module:answer", OptionError, "model")() == 42
    assert sys.path[0] == str(tmp_path)
    import_callable("cwd_spec_module:answer", OptionError, "model")
    assert sys.path.count(str(tmp_path)) == 1
    sys.modules.pop("cwd_spec_module", None)


def test_train_finds_a_factory_and_a_model_loss_in_the_current_folder(tmp_path):
    """``python -P`` keeps the current folder off sys.path, as the ``landscape`` console script does."""
    (tmp_path / "my_factories.py").write_text(FACTORIES)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-P", "-m", "landscape", "train", "--model", "my_factories:make", "--loss",
               "my_factories:ce", "--data", "digits", "--subset", "40", "--steps", "2", "--track-every", "0",
               "--quiet", "-o", "run.h5"]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run.h5").is_file()
