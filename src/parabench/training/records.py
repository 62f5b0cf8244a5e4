"""A tracked run's result record: built inside the run (and logged with it as `result.json`), written to
`results/` once the run ended FINISHED."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import mlflow
import pandas as pd
import torch

from parabench.common.files import require_writable
from parabench.common.hardware import cpu_isa
from parabench.common.names import EPOCH_METRICS, FINAL_METRICS, SPLITS
from parabench.config import Params
from parabench.models.inference import Predictions
from parabench.results.record import (
    Hardware,
    ResultRecord,
    library_versions,
    seal,
    split_predictions,
    write_record,
)
from parabench.results.store import RECORD_ARTIFACT, RECORD_TAG
from parabench.tracking import client as tracking
from parabench.training.kind import RunKind
from parabench.training.plan import TRAINING_REVISION, RunPlan
from parabench.training.state import EpochResult


def hardware_of(device_type: str = "cpu") -> Hardware:
    """This machine as a record names it."""
    values = tracking.hardware()
    gpu = None
    if device_type != "cpu":
        gpu = torch.cuda.get_device_name() if device_type == "cuda" else "Apple MPS"
    return Hardware(
        kernels=torch.backends.cpu.get_cpu_capability(),
        cpu=values["hardware_cpu"],
        isa=cpu_isa(),
        threads=int(values["hardware_threads"]),
        device=device_type,
        gpu=gpu,
    )


def log_record(
    params: Params,
    plan: RunPlan,
    kind: RunKind,
    frames: dict[str, pd.DataFrame],
    predictions: dict[str, Predictions],
    final: dict[str, float],
    epochs: Sequence[EpochResult] = (),
    timings: dict[str, float] | None = None,
) -> ResultRecord:
    """The active run's record, logged to it as `result.json` and named in its tag `result_record`."""
    run = mlflow.active_run()
    assert run is not None, "log_record needs the run it records"
    curves = {"epoch": [float(e.epoch) for e in epochs]} | {
        name: [float(getattr(e, name)) for e in epochs] for name in EPOCH_METRICS
    }
    record = seal(
        {
            "run_id": run.info.run_id,
            "model": plan.spec.key,
            "size_class": plan.spec.size_class,
            "family": plan.spec.family,
            "kind": kind.record_kind,
            "recipe_name": kind.recipe_name,
            "recipe": {} if plan.spec.head else plan.recipe.model_dump(mode="json", exclude_none=True),
            "recipe_fingerprint": plan.fingerprint,
            "params": {key: str(value) for key, value in mlflow.get_run(run.info.run_id).data.params.items()},
            "training_revision": TRAINING_REVISION,
            "seed": plan.seed,
            "data_version": plan.data_version,
            "code_commit": tracking.git_commit(params.root),
            "versions": library_versions(),
            "hardware": hardware_of(kind.device.type),
            "started_at": run.info.start_time / 1000,
            "finished_at": time.time(),
            "curves": curves,
            "metrics": {name: float(final[name]) for name in FINAL_METRICS},
            "timings": timings or {},
            "predictions": {
                split: split_predictions(
                    frames[split]["idx"],
                    predictions[split].probabilities,
                    predictions[split].labels,
                    frames[split]["label"],
                )
                for split in SPLITS
            },
        }
    )
    mlflow.log_text(json.dumps(record.model_dump(mode="json"), sort_keys=True), RECORD_ARTIFACT)
    mlflow.set_tag(RECORD_TAG, record.file_name)
    return record


def require_record_folder(params: Params) -> None:
    """params.yaml results.dir can take a record: checked before the run, which must not end FINISHED and
    then fail to write it."""
    require_writable(params.path(params.results.dir) / "record.json")


def save_record(params: Params, record: ResultRecord, log: Callable[[str], None]) -> Path:
    """The record of a run that ended FINISHED, written to params.yaml results.dir."""
    path = write_record(params.path(params.results.dir), record)
    log(f"result record: {path}")
    return path
