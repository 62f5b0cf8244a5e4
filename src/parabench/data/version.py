"""Which version of the processed data is in hand: file sums, DVC's directory hash, and the data version."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from parabench.common.files import file_hash
from parabench.config import Params


def display_path(params: Params, path: Path) -> str:
    """A path as messages show it: relative to the project folder when inside it."""
    path = Path(path).resolve()
    try:
        return path.relative_to(params.root.resolve()).as_posix()
    except ValueError:
        return str(path)


def dvc_dir_md5(folder: Path) -> str:
    """The hash DVC 3 gives a directory output: MD5 of its sorted JSON listing of file MD5s, plus '.dir'."""
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    entries = [
        {"md5": file_hash(path, "md5"), "relpath": path.relative_to(folder).as_posix()} for path in files
    ]
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def data_version(params: Params, data_dir: Path | None = None) -> str:
    """DVC's hash of the processed-data folder (what dvc.lock records for the prepare stage's output),
    computed from the files, so a run gets the same data version with or without dvc.lock."""
    return dvc_dir_md5(Path(data_dir) if data_dir is not None else params.path(params.data.processed_dir))
