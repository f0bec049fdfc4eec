"""Library messages name a parameter as the caller spells it: the Python keyword from the API, the command-line flag
from the ``landscape`` command (which runs every job inside :func:`landscape.errors.command_line_names`)."""

from __future__ import annotations

import pytest

from landscape.analysis import AnalysisSettings
from landscape.cli import main
from landscape.errors import OptionError, command_line_names, option


def test_one_message_names_top_k_in_python_and_top_k_flag_on_the_command_line(tmp_path, capsys):
    with pytest.raises(OptionError) as info:
        AnalysisSettings(top_k=0)
    assert str(info.value) == "top_k must be a positive integer, got 0"

    # the settings are checked before the (missing) checkpoint or data are looked at
    code = main(["analyze", str(tmp_path / "never.pt"), "--data", "digits", "--top-k", "0",
                 "-o", str(tmp_path / "r.h5"), "--quiet"])
    assert code == 2
    assert capsys.readouterr().err == "landscape analyze: error: --top-k must be a positive integer, got 0\n"
    assert not (tmp_path / "r.h5").exists()


def test_option_gives_the_python_name_or_the_flag_inside_command_line_names():
    assert (option("top_k"), option("model_spec", "--model")) == ("top_k", "model_spec")
    with command_line_names():
        assert option("top_k") == "--top-k"
        assert option("model_spec", "--model") == "--model"
        assert option("output", "-o") == "-o"
    assert option("top_k") == "top_k"  # left again, also when the block raised
    with pytest.raises(OptionError), command_line_names():
        raise OptionError(option("trust", "--trust-checkpoint"))
    assert option("trust", "--trust-checkpoint") == "trust"
