"""Plain helpers of the tests (fixtures live in conftest.py): the one way a test copies a project and points
the environment at it, the CLI in-process, and reading a project's store."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner, Result

from parabench.cli import app
from parabench.config import PARAMS_ENV, Params, load_params
from parabench.tracking import client as tracking

# The session's tiny sweep (conftest `swept`): two small-class tiny models x two seeds, one epoch on 32 pairs,
# evaluation on 96 pairs.
SWEPT_MODELS = ("tiny-distilbert", "tiny-electra")
SWEPT_SEEDS = (13, 42)
TRAIN_OPTIONS = ("--epochs", "1", "--max-train-samples", "32")
EVAL_SAMPLES = 96


def copy_project(source: Path, destination: Path, **sections: dict[str, Any]) -> Path:
    """A copy of the project folder `source` (params.yaml, data, store, records) at `destination`, with the
    given params.yaml sections updated (e.g. train={"max_eval_samples": 96}); returns the new folder."""
    folder = Path(shutil.copytree(source, destination))
    if sections:
        params_file = folder / "params.yaml"
        raw = yaml.safe_load(params_file.read_text(encoding="utf-8"))
        for name, values in sections.items():
            raw[name].update(values)
        params_file.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return folder


@contextmanager
def project_env(folder: Path) -> Iterator[Params]:
    """$PARABENCH_PARAMS and $MLFLOW_TRACKING_URI pointing at the project while the block runs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PARAMS_ENV, str(folder / "params.yaml"))
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        yield load_params(folder / "params.yaml")


def invoke(*args: str, exit_code: int = 0) -> Result:
    """Run `parabench ARGS` in-process, asserting its exit code."""
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == exit_code, result.output
    return result


def sweep_args(models: tuple[str, ...] = SWEPT_MODELS) -> list[str]:
    return ["sweep", "--models", ",".join(models), "--seeds", str(len(SWEPT_SEEDS)), *TRAIN_OPTIONS]


def client_for(params: Params) -> tuple[MlflowClient, str]:
    """A client on the project's tracking store and the experiment's id."""
    experiment_id = tracking.configure(params)
    return MlflowClient(), experiment_id


def runs_of(params: Params, model: str) -> list[Run]:
    """Every run tagged with the model (parents, children, any status)."""
    client, experiment_id = client_for(params)
    return client.search_runs([experiment_id], f"tags.model = '{model}'", max_results=1000)
