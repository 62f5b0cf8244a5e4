"""`parabench data fetch`: put the three raw MRPC files into data/raw, each checked against its SHA-256."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from parabench.config import ParabenchError, Params

SOURCE_ENV = "PARABENCH_MRPC_SOURCE"
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Source:
    """Where the raw files come from: a folder, a base URL, or (location None) the official addresses."""

    location: str | None
    origin: str

    def describe(self, name: str, official: dict[str, str]) -> str:
        """Where `name` is taken from, for messages."""
        return f"{self.address(name, official)} ({self.origin})"

    def address(self, name: str, official: dict[str, str] | None = None) -> str:
        """The folder path or URL of one file."""
        if self.location is None:
            return (official or {}).get(name, name)
        if is_url(self.location):
            return f"{self.location.rstrip('/')}/{name}"
        return str(Path(self.location) / name)


def is_url(location: str) -> bool:
    """True for http(s) addresses."""
    return location.startswith(("http://", "https://"))


def file_hash(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file."""
    return file_hash(path, "sha256")


def resolve_source(params: Params, source: str | None) -> Source:
    """The first source given: the argument, $PARABENCH_MRPC_SOURCE, data.source, data.local_fallback
    (only when that folder exists), else the official URLs. An explicitly given folder must exist."""
    given = [
        (source, "--source", Path.cwd()),
        (os.environ.get(SOURCE_ENV), f"${SOURCE_ENV}", Path.cwd()),
        (params.data.source, "params.yaml data.source", params.root),
    ]
    for location, origin, base in given:
        if location:
            return checked_source(str(location), origin, base)
    fallback = params.path(params.data.local_fallback) if params.data.local_fallback else None
    if fallback is not None and fallback.is_dir():
        return Source(str(fallback), "params.yaml data.local_fallback")
    return Source(None, "official URL from params.yaml data.official_urls")


def checked_source(location: str, origin: str, base: Path) -> Source:
    """A Source for an explicitly given location (a relative folder is taken from `base`); a folder that
    does not exist is an error."""
    if is_url(location):
        return Source(location, origin)
    folder = base / Path(location).expanduser()
    if not folder.is_dir():
        raise ParabenchError(f"MRPC source folder {folder} (from {origin}) does not exist")
    return Source(str(folder), origin)


@contextlib.contextmanager
def open_source(address: str, name: str, timeout_s: float) -> Iterator[BinaryIO]:
    """Open a file or URL for reading bytes; a missing file or failed download raises ParabenchError."""
    if is_url(address):
        try:
            with urllib.request.urlopen(address, timeout=timeout_s) as response:
                yield response
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise ParabenchError(f"{name}: download from {address} failed: {error}") from error
        return
    path = Path(address)
    if not path.is_file():
        raise ParabenchError(f"{name} not found: {path} does not exist")
    with path.open("rb") as handle:
        yield handle


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


def copy_verified(reader: BinaryIO, target: Path, expected: str, where: str) -> None:
    """Stream `reader` into a temp file beside `target`; only a matching SHA-256 replaces `target`."""
    digest = hashlib.sha256()
    with atomic_target(target) as temp, temp.open("wb") as out:
        for chunk in iter(lambda: reader.read(CHUNK_BYTES), b""):
            digest.update(chunk)
            out.write(chunk)
        got = digest.hexdigest()
        if got != expected:
            raise ParabenchError(
                f"{target.name}: SHA-256 mismatch for {where}: expected {expected}, got {got}"
            )


def fetch_file(params: Params, source: Source, name: str, target: Path) -> None:
    """Copy or download one raw file into `target`, verified against params.data.sha256."""
    expected = expected_sha256(params, name)
    address = source.address(name, params.data.official_urls)
    timeout_s = float(params.data.download_timeout_s)
    with open_source(address, name, timeout_s) as reader:
        copy_verified(reader, target, expected, source.describe(name, params.data.official_urls))


def expected_sha256(params: Params, name: str) -> str:
    """The SHA-256 params.yaml gives for a raw file."""
    expected = params.data.sha256.get(name)
    if not expected:
        raise ParabenchError(f"{name}: no SHA-256 in params.yaml data.sha256")
    return expected.lower()


def is_current(path: Path, expected: str) -> bool:
    """True when `path` exists and already has the expected SHA-256 (so it is left untouched)."""
    return path.is_file() and sha256_file(path) == expected


def fetch_raw(params: Params, source: str | None = None) -> list[Path]:
    """Put msr_paraphrase_train.txt, msr_paraphrase_test.txt and mrpc_dev_ids.tsv into data.raw_dir.

    Files already present with the right SHA-256 are not rewritten; the others are copied or downloaded from
    the first source given (see `resolve_source`) and checked before they replace anything."""
    raw_dir = params.path(params.data.raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    resolved: Source | None = None
    paths = []
    for name in params.data.files.values():
        target = raw_dir / name
        if not is_current(target, expected_sha256(params, name)):
            resolved = resolved or resolve_source(params, source)
            fetch_file(params, resolved, name, target)
        paths.append(target)
    return paths

