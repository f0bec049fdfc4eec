"""``package.module:attribute`` specs, the one way users name their own model factories, data and losses."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from landscape.errors import LandscapeError


def import_callable(spec: str, error: type[LandscapeError], role: str) -> Callable:
    """The callable named ``package.module:attribute`` (``attribute`` may be dotted, e.g. ``Class.create``).

    Every failure raises ``error`` naming ``role`` (the option, e.g. "--model") and the spec: importing user code can
    raise anything, and the user needs to know which option to fix.
    """
    module_name, _, attribute = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else "no details"
        raise error(f"cannot import module {module_name!r} of {role} {spec!r} ({type(err).__name__}: {reason}); "
                    "check the name and that it is installed or on PYTHONPATH") from err
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise error(f"module {module_name!r} has no attribute {attribute!r} named by {role} {spec!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise error(f"{role} {spec!r} is not callable: it names an object of type {type(obj).__name__}; "
                    "expected a function or class")
    return obj
