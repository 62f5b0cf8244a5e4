"""The Hugging Face Hub seen from a machine that may be offline: is it reachable, what is cached, and
transformers' own output kept quiet while loading. Labels shared by every model are here too."""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from parabench.models.embedded import is_model_folder

TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
LABELS = {0: "not_paraphrase", 1: "paraphrase"}


def env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in TRUE_VALUES


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set now or was set when huggingface_hub was imported."""
    from huggingface_hub import constants

    return env_true("HF_HUB_OFFLINE") or env_true("TRANSFORMERS_OFFLINE") or constants.HF_HUB_OFFLINE


def hub_endpoint() -> str:
    """The Hub address: $HF_ENDPOINT, else huggingface_hub's (https://huggingface.co)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_cache_dir() -> Path:
    """The local Hub cache as the environment names it now ($HF_HUB_CACHE, $HF_HOME/hub, or the default)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of a Hub model when it holds config and weights; no network."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo_id, "config.json", cache_dir=hub_cache_dir())
    if not isinstance(config, str):
        return None
    folder = Path(config).parent
    return folder if is_model_folder(folder) else None


def hub_reachable(endpoint: str, timeout_s: float) -> bool:
    """True when the Hub answers an HTTP HEAD within timeout_s (DNS included: the probe runs in a thread)."""
    answered: list[bool] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout_s).close()
            answered.append(True)
        except urllib.error.HTTPError as error:  # it answered, maybe with 4xx
            answered.append(error.code < 500)
        except (OSError, ValueError):
            answered.append(False)

    thread = threading.Thread(target=probe, daemon=True, name="parabench-hub-probe")
    thread.start()
    thread.join(timeout_s)
    return bool(answered and answered[0])


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' loading report and progress bars (e.g. the newly initialised classifier)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
