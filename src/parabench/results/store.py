"""Result records and the MLflow store: the records its runs logged, and records imported back as runs.

An imported run is FINISHED, with the record's params, curves and metrics, its `result.json`, and tags saying
where it came from; it has no model weights, so nothing that needs weights (an ensemble's members, a teacher,
a promotion) takes it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from parabench.common.names import EPOCH_METRICS
from parabench.config import Params
from parabench.results.record import ResultRecord, parse_record, read_records
from parabench.tracking import client as tracking

RECORD_ARTIFACT = "result.json"
RECORD_TAG = "result_record"  # on a run that logged or imported a record: the record's file name
IMPORTED_TAG = tracking.IMPORTED_TAG
FINISHED = RunStatus.to_string(RunStatus.FINISHED)
METRIC_BATCH, PARAM_BATCH = 1000, 100  # what one MLflow log_batch takes at most


def records_dir(params: Params) -> Path:
    return params.path(params.results.dir)


def folder_records(params: Params) -> list[ResultRecord]:
    """The records of params.yaml results.dir (a bad one fails in one line naming its file)."""
    return read_records(records_dir(params))


def store_records(experiment_id: str) -> list[ResultRecord]:
    """The records the store's FINISHED runs logged (their own, or imported ones), newest run first."""
    client = MlflowClient()
    runs = client.search_runs(
        [experiment_id],
        f"tags.{RECORD_TAG} LIKE '%' and attributes.status = '{FINISHED}'",
        max_results=10_000,
        order_by=["attributes.start_time DESC"],
    )
    records = []
    with tempfile.TemporaryDirectory() as folder:
        for run in runs:
            try:
                path = client.download_artifacts(run.info.run_id, RECORD_ARTIFACT, folder)
            except (MlflowException, OSError):
                continue  # the run's artifacts are gone: its record cannot be read back
            records.append(parse_record(Path(path).read_text(encoding="utf-8"), f"run {run.info.run_id}"))
    return records


def all_records(params: Params) -> list[ResultRecord]:
    """The records of results/ (read and checked first, before the store is opened) and of the store, one
    per run."""
    from parabench.results.groups import unique_runs

    folder = folder_records(params)
    return unique_runs([*folder, *store_records(tracking.configure(params))])


def known_runs(experiment_id: str) -> set[str]:
    """The run ids the store already holds a record of: its own runs and the ones it imported."""
    runs = MlflowClient().search_runs([experiment_id], f"tags.{RECORD_TAG} LIKE '%'", max_results=10_000)
    return {run.data.tags.get(IMPORTED_TAG, run.info.run_id) for run in runs}


def import_record(client: MlflowClient, experiment_id: str, record: ResultRecord) -> str:
    """One record as a FINISHED run (no weights); returns the new run's id."""
    tags = {
        "model": record.model,
        "size_class": record.size_class,
        "family": record.family,
        "seed": str(record.seed),
        "data_version": record.data_version,
        "recipe_fingerprint": record.recipe_fingerprint,
        "hardware": record.hardware.label,
        RECORD_TAG: record.file_name,
        IMPORTED_TAG: record.run_id,
        "imported_from": f"result record {record.file_name} (no model weights)",
        MLFLOW_RUN_NAME: f"{record.model}-seed{record.seed}",
    }
    start, end = int(record.started_at * 1000), int(record.finished_at * 1000)
    run = client.create_run(experiment_id, start_time=start, tags=tags)
    run_id = run.info.run_id
    metrics = [Metric(name, value, end, 0) for name, value in record.metrics.items()]
    epochs = record.curves.get("epoch", [])
    for name in EPOCH_METRICS:
        values = record.curves.get(name, [])
        metrics += [Metric(name, value, end, int(epoch)) for epoch, value in zip(epochs, values, strict=True)]
    params = [Param(key, value) for key, value in sorted(record.params.items())]
    for start_at in range(0, len(params), PARAM_BATCH):
        client.log_batch(run_id, params=params[start_at : start_at + PARAM_BATCH])
    for start_at in range(0, len(metrics), METRIC_BATCH):
        client.log_batch(run_id, metrics=metrics[start_at : start_at + METRIC_BATCH])
    client.log_text(run_id, json.dumps(record.model_dump(mode="json"), sort_keys=True), RECORD_ARTIFACT)
    client.set_terminated(run_id, FINISHED, end_time=end)
    return run_id


def import_records(
    params: Params, log: Callable[[str], None] = print, records: Iterable[ResultRecord] | None = None
) -> tuple[int, int]:
    """Every record of results/ not in the store yet, as a FINISHED run; returns (imported, already there).
    All records are read (and checked) before the first run is created."""
    records = list(folder_records(params) if records is None else records)
    experiment_id = tracking.configure(params)
    known = known_runs(experiment_id)
    client = MlflowClient()
    imported = 0
    for record in records:
        if record.run_id in known:
            continue
        run_id = import_record(client, experiment_id, record)
        known.add(record.run_id)
        imported += 1
        log(f"imported {record.file_name} as run {run_id}")
    return imported, len(records) - imported
