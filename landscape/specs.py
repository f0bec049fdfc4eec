"""``package.module:attribute`` specs, the one way users name their own model factories, data and losses."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from landscape.errors import LandscapeError


def import_callable(spec: str, error: type[LandscapeError], role: str) -> Callable:
    """The callable named ``package.module:attribute`` (``attribute`` may be dotted, e.g. ``Class.create``), looked
    up in the current folder too (see :func:`current_folder_on_path`).

    Every failure raises ``error`` naming ``role`` (the option, e.g. ``option("model_spec", "--model")``) and the
    spec: importing user code can raise anything, and the user needs to know which option to fix.
    """
    module_name, _, attribute = spec.partition(":")
    current_folder_on_path()
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else "no details"
        raise error(f"cannot import module {module_name!r} of {role} {spec!r} ({type(err).__name__}: {reason}); "
                    "check the name and that it is installed, in the current folder or on PYTHONPATH") from err
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise error(f"module {module_name!r} has no attribute {attribute!r} named by {role} {spec!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise error(f"{role} {spec!r} is not callable: it names an object of type {type(obj).__name__}; "
                    "expected a function or class")
    return obj


def current_folder_on_path() -> None:
    """Put the current folder first on ``sys.path`` unless it is there already, as ``python -m`` does and as uvicorn
    and gunicorn do for their ``module:attribute`` specs, so that a ``models.py`` beside the user is found without
    ``PYTHONPATH=.`` (a console script's ``sys.path`` starts with its own folder instead)."""
    here = os.getcwd()
    if not any(os.path.abspath(entry or os.curdir) == here for entry in sys.path if isinstance(entry, str)):
        sys.path.insert(0, here)
        importlib.invalidate_caches()
