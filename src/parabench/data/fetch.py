"""`parabench data fetch`: put the three raw MRPC files into data/raw, each checked against its SHA-256."""

from __future__ import annotations

import contextlib
import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from parabench.common.files import atomic_target, sha256_file
from parabench.config import ParabenchError, Params
from parabench.data.version import display_path

SOURCE_ENV = "PARABENCH_MRPC_SOURCE"
CHUNK_BYTES = 1 << 20
# The most bytes a raw or processed MRPC file may have: the largest (msr_paraphrase_train.txt) has about 1 MB,
# so anything 32 times that is a wrong file, refused before it is read (or downloaded) whole.
MAX_FILE_BYTES = 32 << 20


@dataclass(frozen=True)
class Source:
    """Where the raw files come from: a folder, a base URL, or (location None) the official addresses."""

    location: str | None
    origin: str
    explicit: bool = False  # named by the user (--source, the environment, data.source): always checked

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
        return Source(location, origin, explicit=True)
    folder = base / Path(location).expanduser()
    if not folder.is_dir():
        raise ParabenchError(f"MRPC source folder {folder} (from {origin}) does not exist")
    return Source(str(folder), origin, explicit=True)


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


def copy_verified(reader: BinaryIO, target: Path | None, name: str, expected: str, where: str) -> None:
    """Stream `reader` into a temp file beside `target`; only a matching SHA-256 replaces `target`.
    With target None the bytes are only checked (the source of a file already in place)."""
    digest, size = hashlib.sha256(), 0
    with contextlib.ExitStack() as stack:
        out = None
        if target is not None:
            out = stack.enter_context(stack.enter_context(atomic_target(target)).open("wb"))
        for chunk in iter(lambda: reader.read(CHUNK_BYTES), b""):
            size += len(chunk)
            if size > MAX_FILE_BYTES:
                raise ParabenchError(
                    f"{name}: {where} has more than {MAX_FILE_BYTES:,} bytes; MRPC's files have about 1 MB"
                )
            digest.update(chunk)
            if out is not None:
                out.write(chunk)
        got = digest.hexdigest()
        if got != expected:
            raise ParabenchError(f"{name}: SHA-256 mismatch for {where}: expected {expected}, got {got}")


def fetch_file(params: Params, source: Source, name: str, target: Path | None) -> None:
    """Copy or download one raw file into `target` (None: only check it), verified against data.sha256."""
    expected = expected_sha256(params, name)
    address = source.address(name, params.data.official_urls)
    timeout_s = float(params.data.download_timeout_s)
    with open_source(address, name, timeout_s) as reader:
        copy_verified(reader, target, name, expected, source.describe(name, params.data.official_urls))


def expected_sha256(params: Params, name: str) -> str:
    """The SHA-256 params.yaml gives for a raw file."""
    expected = params.data.sha256.get(name)
    if not expected:
        raise ParabenchError(f"{name}: no SHA-256 in params.yaml data.sha256")
    return expected.lower()


def require_raw_intact(params: Params) -> None:
    """Raw files present in data.raw_dir must still have the SHA-256 params.yaml gives them (what `fetch`
    checked them against): ParabenchError in one line naming the first that does not."""
    raw_dir = params.path(params.data.raw_dir)
    for name, expected in params.data.sha256.items():
        path = raw_dir / name
        if path.is_file() and (got := sha256_file(path)) != expected.lower():
            raise ParabenchError(
                f"{display_path(params, path)} does not match its SHA-256 in params.yaml "
                f"(expected {expected}, got {got}); run `parabench data fetch` to restore it"
            )


def is_current(path: Path, expected: str) -> bool:
    """True when `path` exists and already has the expected SHA-256 (so it is left untouched)."""
    return path.is_file() and sha256_file(path) == expected


def fetch_raw(params: Params, source: str | None = None) -> list[tuple[Path, bool]]:
    """Put msr_paraphrase_train.txt, msr_paraphrase_test.txt and mrpc_dev_ids.tsv into data.raw_dir; returns
    each file with whether it was copied (False: it was already there with the right SHA-256).

    A source the user named (see `resolve_source`) is always checked, file by file, even when data.raw_dir
    already holds good copies; otherwise files in place are not looked at again. Nothing replaces a file
    before its SHA-256 matched."""
    raw_dir = params.path(params.data.raw_dir)
    resolved = resolve_source(params, source)
    results = []
    for name in params.data.files.values():
        target = raw_dir / name
        current = is_current(target, expected_sha256(params, name))
        if resolved.explicit or not current:
            raw_dir.mkdir(parents=True, exist_ok=True)
            fetch_file(params, resolved, name, None if current else target)
        results.append((target, not current))
    return results
