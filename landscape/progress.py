"""Progress bars that appear on long work in a terminal and stay silent otherwise."""

from __future__ import annotations

import sys
from typing import Optional

from tqdm.auto import tqdm


def progress_bar(total: Optional[int], desc: str, enabled: Optional[bool] = None, unit: str = "matvec") -> tqdm:
    """A tqdm bar; ``enabled=None`` shows it only when stderr is a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False, dynamic_ncols=True)
