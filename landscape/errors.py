"""One exception family, so callers (and the CLI) can catch every usage error in one place; and :func:`option`, the
name a message gives a parameter: its Python keyword, or its command-line flag while the CLI runs the job (inside
:func:`command_line_names`)."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Optional

#: True while the ``landscape`` command runs a job: messages then name options by their flags
_COMMAND_LINE_NAMES: ContextVar[bool] = ContextVar("landscape_command_line_names", default=False)


@contextmanager
def command_line_names() -> Iterator[None]:
    """Within this block, :func:`option` gives the command-line flag rather than the Python keyword (the CLI runs
    every command inside it)."""
    token = _COMMAND_LINE_NAMES.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE_NAMES.reset(token)


def option(name: str, flag: Optional[str] = None) -> str:
    """The name a message uses for the parameter ``name`` (its Python keyword, e.g. ``"top_k"``): ``name`` itself,
    or inside :func:`command_line_names` its command-line flag, ``flag`` or by default ``"--" + name`` with ``_``
    spelt ``-`` (e.g. ``"--top-k"``); pass ``flag`` where the two differ (``option("model_spec", "--model")``)."""
    if _COMMAND_LINE_NAMES.get():
        return flag if flag is not None else "--" + name.replace("_", "-")
    return name


class LandscapeError(Exception):
    """A usage or input error with a message that names the culprit and the fix."""


class DataError(LandscapeError):
    """The data set is empty, malformed, or does not fit the model."""


class LossError(LandscapeError):
    """The loss is not a finite scalar."""


class ParameterError(LandscapeError):
    """The parameter selection is empty or names parameters that cannot be differentiated."""


class OptionError(LandscapeError, ValueError):
    """An argument has a value outside what the function accepts."""


class CheckpointError(LandscapeError):
    """A checkpoint file is missing, corrupt, unsafe to load, or does not fit the model."""


class StoreError(LandscapeError):
    """A results file cannot be read or written, or is not a landscape file."""
