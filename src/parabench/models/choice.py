"""`inference.path: auto`: the fastest path `parabench bench` proved eligible (within 0.5 point of fp32 on
validation and test) on this machine's CPU class, read from the bench's file for that class; fp32 where no
bench of this class exists. The choice is measured, never guessed from the CPU's name."""

from __future__ import annotations

import json
import re
from pathlib import Path

from parabench.common.errors import ConfigError
from parabench.common.hardware import this_cpu
from parabench.common.names import AUTO_PATH, INFERENCE_PATHS
from parabench.config import Params

FALLBACK = "fp32"


def hardware_slug(label: str) -> str:
    """'AMD EPYC, AVX2' -> 'amd-epyc-avx2': a file name per hardware class."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def bench_file(params: Params, label: str) -> Path:
    """Where `parabench bench` keeps its result for this hardware class (committed: it outlives machines)."""
    return params.path(params.bench.by_hardware_dir) / f"{hardware_slug(label)}.json"


def choose_path(params: Params) -> tuple[str, str]:
    """The path to run and why: params.yaml's path, or for `auto` the bench's choice on this CPU class."""
    path = params.inference.path
    if path != AUTO_PATH:
        return path, f"inference.path {path}"
    label = this_cpu()
    file = bench_file(params, label)
    if not file.is_file():
        return FALLBACK, f"auto: no `parabench bench` of {label} ({file.name}): {FALLBACK}"
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
        chosen, speedup = document["auto_path"], float(document["auto_speedup_over_fp32"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{file} is not a bench result ({error}): run `parabench bench` again") from error
    if chosen not in INFERENCE_PATHS:
        raise ConfigError(f"{file}: auto_path {chosen!r} is no inference path: run `parabench bench` again")
    return chosen, f"auto: {chosen}, {speedup:.2f}x fp32 on {label} ({file.name})"
