"""A throw-away copy of the project that checks run the real `parabench` command against (in subprocesses):
its validated data, its own params.yaml with free server ports, and the environment pointing at it."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from parabench.common.files import write_text
from parabench.common.processes import free_port
from parabench.config import PARAMS_ENV, Params

PARABENCH = str(Path(sys.executable).parent / "parabench")


def project_env(params_file: Path, tracking_uri: str, experiment: str) -> dict[str, str]:
    """The environment that points `parabench` at a project, a tracking store and an experiment."""
    return {
        **{k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")},
        PARAMS_ENV: str(params_file),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_EXPERIMENT_NAME": experiment,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def last_lines(output: str, count: int = 3) -> str:
    return " | ".join(output.strip().splitlines()[-count:])


def copy_project(
    params: Params, folder: Path, server_dir: Path, changes: dict[str, dict[str, Any]] | None = None
) -> Path:
    """A throw-away copy of the project's validated data and params, with its own server settings and free
    ports, and the given keys of params.yaml sections changed; returns its params.yaml."""
    for relative in (params.data.raw_dir, params.data.processed_dir, params.validate.report_dir):
        shutil.copytree(params.path(relative), folder / relative, ignore=shutil.ignore_patterns("gx"))
    raw = yaml.safe_load((params.root / "params.yaml").read_text(encoding="utf-8"))
    raw["tracking_server"] |= {
        "dir": str(server_dir),
        "postgres_port": free_port(raw["tracking_server"]["host"]),
        "mlflow_port": free_port(raw["tracking_server"]["host"]),
    }
    raw["mlflow"]["tracking_uri"] = "sqlite:///mlflow.db"
    for section, values in (changes or {}).items():
        raw[section] |= values
    return write_text(folder / "params.yaml", yaml.safe_dump(raw, sort_keys=False))
