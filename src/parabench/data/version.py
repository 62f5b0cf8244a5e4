"""Which version of the processed data is in hand: file sums, DVC's directory hash, and the data version."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from parabench.config import Params
from parabench.data.fetch import file_hash, sha256_file
from parabench.data.prepare import SPLITS, split_paths

DVC_LOCK = "dvc.lock"
PREPARE_STAGE = "prepare"


def display_path(params: Params, path: Path) -> str:
    """A path as messages show it: relative to the project folder when inside it."""
    path = Path(path).resolve()
    try:
        return path.relative_to(params.root.resolve()).as_posix()
    except ValueError:
        return str(path)


def split_sums(paths: dict[str, Path]) -> dict[str, str | None]:
    """SHA-256 of each split file, None where it is missing."""
    return {split: sha256_file(path) if path.is_file() else None for split, path in paths.items()}


def sums_version(sums: dict[str, str | None]) -> str:
    """'sha256:' + 16 hex of a hash over the split files' sums, in split order."""
    listing = "".join(f"{split} {sums.get(split)}\n" for split in SPLITS)
    return "sha256:" + hashlib.sha256(listing.encode()).hexdigest()[:16]


def dvc_dir_md5(folder: Path) -> str:
    """The hash DVC 3 gives a directory output: MD5 of its sorted JSON listing of file MD5s, plus '.dir'."""
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    entries = [
        {"md5": file_hash(path, "md5"), "relpath": path.relative_to(folder).as_posix()} for path in files
    ]
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def locked_md5(params: Params) -> str | None:
    """The md5 dvc.lock records for the `prepare` stage's processed-data output, if it records one."""
    lock_file = params.root / DVC_LOCK
    if not lock_file.is_file():
        return None
    try:
        lock = yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}
        outs = lock.get("stages", {}).get(PREPARE_STAGE, {}).get("outs", [])
    except (yaml.YAMLError, AttributeError):
        return None
    wanted = Path(params.data.processed_dir).as_posix().rstrip("/")
    for out in outs if isinstance(outs, list) else []:
        if isinstance(out, dict) and Path(str(out.get("path", ""))).as_posix().rstrip("/") == wanted:
            return out.get("md5")
    return None


def data_version(
    params: Params, data_dir: Path | None = None, sums: dict[str, str | None] | None = None
) -> str:
    """DVC's hash of the processed folder from dvc.lock when it lists it and still matches the files there,
    else 'sha256:' + 16 hex over the three split files' SHA-256 sums."""
    processed = params.path(params.data.processed_dir)
    data_dir = Path(data_dir) if data_dir is not None else processed
    if data_dir.resolve() == processed.resolve():
        locked = locked_md5(params)
        if locked and data_dir.is_dir() and dvc_dir_md5(data_dir) == locked:
            return locked
    return sums_version(sums if sums is not None else split_sums(split_paths(data_dir)))
