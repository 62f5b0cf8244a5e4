"""The one way parabench writes a file: to a temp file beside the target, then renamed over it, so DVC, a
reader or a crash never sees half a file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from parabench.common.errors import ParabenchError


@contextlib.contextmanager
def atomic_target(target: Path) -> Iterator[Path]:
    """A temp path beside `target` to write; it replaces `target` only if the block ends without error."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    temp = Path(temp_name)
    try:
        yield temp
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> Path:
    """Write text atomically; returns the path."""
    with atomic_target(path) as temp:
        temp.write_text(text, encoding="utf-8")
    return path


def write_json(path: Path, document: Any) -> Path:
    """Write JSON atomically: indented, keys sorted, a trailing newline; non-JSON values as text."""
    return write_text(path, json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")


def file_stem(name: str) -> str:
    """A name (a model key such as facebook/bart-base) made safe as one file or folder name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def file_hash(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file."""
    return file_hash(path, "sha256")


def require_writable(*targets: Path) -> None:
    """ParabenchError naming the first target file that could not be written: its nearest existing folder is
    a file, or one this process may not write. Checked before a command's work, so that it never fails after
    the work is done with nothing (or a run claiming success) to show for it."""
    for target in targets:
        folder = Path(target).parent
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir():
            raise ParabenchError(f"cannot write {target}: {folder} is a file, not a folder")
        if Path(target).is_dir():
            raise ParabenchError(f"cannot write {target}: it is a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ParabenchError(f"cannot write {target}: {folder} is not writable")


def require_size(path: Path, limit_bytes: int, why: str) -> Path:
    """The path, when it is a file of at most limit_bytes; ParabenchError naming its size and the limit (and
    why there is one) otherwise, before anything reads it whole."""
    size = Path(path).stat().st_size
    if size > limit_bytes:
        raise ParabenchError(f"{path} has {size:,} bytes, over the limit of {limit_bytes:,} ({why})")
    return Path(path)
