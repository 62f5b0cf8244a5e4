"""Progress bars (tqdm) for long loops: shown on a terminal, quiet in pipes, files and CI logs."""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm


def progress(total: int, description: str, unit: str = "pair", **options: Any) -> tqdm:
    """A bar over `total` units (rate shown as units/s), disabled when stderr is no terminal or CI is set."""
    quiet = not sys.stderr.isatty() or bool(os.environ.get("CI"))
    return tqdm(
        total=total, desc=description, unit=unit, disable=quiet, leave=False, dynamic_ncols=True, **options
    )
