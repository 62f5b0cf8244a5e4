"""Everything MLflow: where runs go, a run's lifecycle, and the names of what a run logs."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import torch
from filelock import FileLock
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from parabench.common.errors import first_line
from parabench.common.files import require_writable
from parabench.common.hardware import cpu_model
from parabench.common.names import FINAL_METRICS, VALIDATION_SCORE
from parabench.common.processes import http_ok, process_alive
from parabench.config import ParabenchError, Params

SQLITE_PREFIX = "sqlite:///"
ARTIFACTS_DIR = "mlartifacts"  # a local store's artifacts, beside mlflow.db in the project
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
# A tracking store that does not answer within this many seconds is unreachable: MLflow itself retries a
# database for about two minutes, then fails with a traceback.
STORE_TIMEOUT_S = 5.0
SQLITE_MAGIC = b"SQLite format 3\x00"  # the first bytes of every SQLite database file
# Where a database server listens when its URI names no port (the servers' own defaults).
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
# A Tune trial stopped before its last epoch (ASHA, the time budget): FINISHED, but never a seed of a study.
PRUNED_TAG = "pruned"
IMPORTED_TAG = "record_run_id"  # on a run `parabench results import` made from a record: the record's run id
ENSEMBLE_TAG = "ensemble_members"  # on a seed ensemble's run: how many seed runs it averages


def tracking_uri(params: Params) -> str:
    """$MLFLOW_TRACKING_URI, else params.yaml's URI, a relative sqlite path anchored at the project root."""
    uri = os.environ.get(TRACKING_URI_ENV) or params.mlflow.tracking_uri
    if uri.startswith(SQLITE_PREFIX) and not uri[len(SQLITE_PREFIX) :].startswith("/"):
        uri = SQLITE_PREFIX + str(params.path(uri[len(SQLITE_PREFIX) :]))
    return uri


def uri_origin() -> str:
    """Where the tracking URI came from, as error messages name it."""
    return TRACKING_URI_ENV if os.environ.get(TRACKING_URI_ENV) else "params.yaml mlflow.tracking_uri"


def connect(params: Params) -> str:
    """Point MLflow at the project's tracking store once it is known to answer (`require_reachable`); returns
    the URI. Every command that reads or writes the store comes through here."""
    uri = tracking_uri(params)
    require_reachable(uri)
    with store_errors(uri), store_lock(uri):
        mlflow.MlflowClient(uri)  # opens the store (creates a new SQLite one): an unusable URI fails here
    mlflow.set_tracking_uri(uri)
    return uri


@contextmanager
def store_errors(uri: str) -> Iterator[None]:
    """MLflow's and the database's errors on opening the store as one ParabenchError naming the URI and where
    it came from (an unknown scheme, a database MLflow cannot use, a server that refuses the user)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (MlflowException, SQLAlchemyError) as error:
        if "database is locked" in str(error):  # the CLI's hint for SQLite's one writer at a time
            raise
        raise ParabenchError(
            f"{uri_origin()}={uri}: the tracking store cannot be used: {first_line(error)}"
        ) from error


SQLITE_LOCKED_HINT = (
    "the SQLite tracking store is busy with another process's writes (SQLite takes one writer at a time); "
    "rerun the command (finished seeds are kept), or run concurrent jobs against a tracking server: "
    "`parabench server start`, then export the MLFLOW_TRACKING_URI it prints"
)


def store_lock(uri: str) -> FileLock | contextlib.nullcontext[None]:
    """A lock held while a process opens a SQLite store: MLflow creates and migrates the schema on first
    open, and two processes doing that at once fail ('table ... already exists'). Servers need none."""
    if not uri.startswith(SQLITE_PREFIX):
        return contextlib.nullcontext()
    database = Path(uri[len(SQLITE_PREFIX) :].split("?", 1)[0])
    database.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{database}.lock")


def configure(params: Params) -> str:
    """Point MLflow at the project's tracking store and experiment (ending runs orphaned by a kill -9 on
    this machine); returns the experiment id.

    The experiment is, in order: that of the run `mlflow run` launched (MLFLOW_RUN_ID), so a training nests
    under it in whichever experiment MLflow put it (--experiment-name, --experiment-id or the default one);
    MLFLOW_EXPERIMENT_NAME; params.yaml mlflow.experiment. (MLFLOW_EXPERIMENT_ID is not read: MLflow itself
    sets it in every process that picks an experiment, for whatever store that process was using.)
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file is noise
    uri = connect(params)
    with store_errors(uri):
        with store_lock(uri):
            experiment_id = launch_experiment_id()
            if experiment_id is not None:
                mlflow.set_experiment(experiment_id=experiment_id)
            else:
                name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or params.mlflow.experiment
                if uri.startswith(SQLITE_PREFIX) and mlflow.get_experiment_by_name(name) is None:
                    # Artifacts beside the project's store, not in ./mlruns of whatever folder this runs from.
                    mlflow.create_experiment(name, artifact_location=params.path(ARTIFACTS_DIR).as_uri())
                experiment_id = mlflow.set_experiment(name).experiment_id
        fail_orphaned_runs(experiment_id)
    return experiment_id


def require_reachable(uri: str, timeout_s: float = STORE_TIMEOUT_S) -> None:
    """The store must answer now: a tracking server its /health, a database server a connection, an SQLite
    path must be (or become) a database. MLflow itself would retry for minutes, then fail with a traceback,
    after the training's work was done. Fails in one line naming the URI and where it came from."""
    origin = uri_origin()
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme in ("http", "https"):
        if not http_ok(f"{uri.rstrip('/')}/health", timeout_s):
            raise ParabenchError(
                f"the MLflow tracking server {uri} does not answer ({origin}): start it "
                f"(`parabench server start`) or point {TRACKING_URI_ENV} at one that runs"
            )
    elif scheme == "sqlite":
        require_sqlite_file(uri, origin)
    elif scheme in DEFAULT_PORTS:
        require_database_server(uri, scheme, origin, timeout_s)


def require_sqlite_file(uri: str, origin: str) -> None:
    """An SQLite store's path is a database file, or nothing yet in a folder that can hold one."""
    database = Path(uri[len(SQLITE_PREFIX) :].split("?", 1)[0]) if uri.startswith(SQLITE_PREFIX) else None
    if database is None or not database.name:
        raise ParabenchError(f"{origin}={uri}: an SQLite store is sqlite:///path/to/mlflow.db")
    if database.is_dir():
        raise ParabenchError(f"{origin}={uri}: {database} is a folder, not an SQLite database file")
    if database.is_file():
        with database.open("rb") as handle:
            head = handle.read(len(SQLITE_MAGIC))
        if head and head != SQLITE_MAGIC:
            raise ParabenchError(f"{origin}={uri}: {database} is not an SQLite database")
    else:
        try:
            require_writable(database)
        except ParabenchError as error:
            raise ParabenchError(f"{origin}={uri}: {error}") from error


def require_database_server(uri: str, scheme: str, origin: str, timeout_s: float) -> None:
    """A database server's URI parses, and its host accepts a connection within timeout_s."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(uri)
        host, port = url.host or "localhost", url.port or DEFAULT_PORTS[scheme]
    except (ArgumentError, ValueError) as error:
        raise ParabenchError(f"{origin}={uri} is not a database URI: {first_line(error)}") from error
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as error:
        raise ParabenchError(
            f"{origin}={uri}: the database server {host}:{port} does not answer ({error.strerror or error}); "
            "start it, or give the address of one that runs"
        ) from error


def run_exists(run_id: str) -> bool:
    """True when the run is in the current tracking store and not deleted."""
    try:
        return mlflow.MlflowClient().get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


def seed_runs(
    experiment_id: str, tags: dict[str, str], with_weights: bool = True
) -> dict[int, mlflow.entities.Run]:
    """The newest FINISHED training run of each seed among the runs carrying these tags (sweep children,
    `train` runs, a completed tune trial; never a sweep parent, which has no seed, a pruned trial, or a run
    whose metrics are not finite). Runs imported from result records have no weights: only
    `with_weights=False` takes them."""
    condition = " and ".join(f"tags.{key} = '{quoted(value)}'" for key, value in tags.items())
    runs: dict[int, mlflow.entities.Run] = {}
    for run in mlflow.MlflowClient().search_runs(
        [experiment_id],
        f"{condition} and attributes.status = 'FINISHED'",
        max_results=10_000,
        order_by=["attributes.start_time DESC"],
    ):
        imported = IMPORTED_TAG in run.data.tags
        trained = "seed" in run.data.tags and PRUNED_TAG not in run.data.tags and finite_metrics(run)
        if trained and not (with_weights and imported):
            runs.setdefault(int(run.data.tags["seed"]), run)
    return dict(sorted(runs.items()))


def quoted(value: str) -> str:
    """A value made safe inside a single-quoted MLflow filter string."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def best_run(experiment_id: str, model: str, data_version: str) -> mlflow.entities.Run | None:
    """The FINISHED training run of the model on this data version with the best validation accuracy (any
    recipe; never a sweep parent, a pruned trial or a run whose metrics are not finite), or None."""
    runs = mlflow.MlflowClient().search_runs(
        [experiment_id],
        f"tags.model = '{quoted(model)}' and tags.data_version = '{quoted(data_version)}' "
        "and attributes.status = 'FINISHED'",
        max_results=10_000,
    )
    trained = [
        run
        for run in runs
        if VALIDATION_SCORE in run.data.metrics
        and "seed" in run.data.tags
        and PRUNED_TAG not in run.data.tags
        and IMPORTED_TAG not in run.data.tags
        and finite_metrics(run)
    ]
    return max(trained, key=lambda run: run.data.metrics[VALIDATION_SCORE], default=None)


def model_folder(run_id: str, destination: Path | None = None) -> Path:
    """The saved weights folder (save_pretrained) of a run's logged model, downloaded from the store."""
    if destination is not None:
        destination.mkdir(parents=True, exist_ok=True)
    folder = mlflow.artifacts.download_artifacts(
        f"runs:/{run_id}/model", dst_path=None if destination is None else str(destination)
    )
    return Path(folder) / "artifacts" / "weights"


def launch_experiment_id() -> str | None:
    """The experiment of the run this process works under: the active run's (a sweep's parent, once MLflow
    has taken over the launch run and cleared MLFLOW_RUN_ID), else the run `mlflow run` launched this process
    for (MLFLOW_RUN_ID); None when there is neither."""
    active = mlflow.active_run()
    if active is not None:
        return active.info.experiment_id
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        try:
            return mlflow.MlflowClient().get_run(run_id).info.experiment_id
        except MlflowException as error:
            raise ParabenchError(
                f"MLFLOW_RUN_ID={run_id} names no run in {mlflow.get_tracking_uri()}: "
                f"{str(error).strip().splitlines()[0]}"
            ) from error
    return None


def finite_metrics(run: mlflow.entities.Run) -> bool:
    """True when every metric of the run is a number: a run whose loss or scores became NaN or infinite (a
    diverged training logged before such runs failed) is never a result."""
    return all(math.isfinite(value) for value in run.data.metrics.values())


def require_trained_run(run_id: str, model: str, option: str = "--run-id") -> mlflow.entities.Run:
    """A run whose logged model may stand for `model` (a teacher, the weights of a benchmark): in this store,
    of that model, FINISHED, trained here (not imported from a record: no weights), with finite metrics;
    ParabenchError in one line naming what is wrong otherwise."""
    where = mlflow.get_tracking_uri()
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except MlflowException as error:
        raise ParabenchError(f"{option} {run_id}: no such run in {where}") from error
    trained = run.data.tags.get("model")
    if run.info.lifecycle_stage != "active":
        raise ParabenchError(f"{option} {run_id}: that run was deleted from {where}")
    if trained != model:
        raise ParabenchError(f"{option} {run_id} is a run of {trained or 'no model'}, not of {model}")
    if "seed" not in run.data.tags or PRUNED_TAG in run.data.tags:
        raise ParabenchError(
            f"{option} {run_id} is not a training run of {model} (a sweep parent, a benchmark?)"
        )
    if run.info.status != RunStatus.to_string(RunStatus.FINISHED):
        raise ParabenchError(
            f"{option} {run_id} did not finish (it is {run.info.status}): use a FINISHED run"
        )
    if IMPORTED_TAG in run.data.tags:
        raise ParabenchError(f"{option} {run_id} was imported from a result record: it has no model weights")
    if not finite_metrics(run):
        raise ParabenchError(f"{option} {run_id} has metrics that are not finite (its training diverged)")
    return run


def ui_hint(params: Params, experiment_id: str, run_id: str) -> str:
    """Where to see a run: the tracking server's own UI, or `mlflow ui` on a local store."""
    uri = tracking_uri(params)
    page = f"#/experiments/{experiment_id}/runs/{run_id}"
    if uri.startswith(("http://", "https://")):
        return f"open the MLflow UI: {uri}/{page}"
    return f"open the MLflow UI: mlflow ui --backend-store-uri {uri}  (then http://127.0.0.1:5000/{page})"


PID_TAG, HOST_TAG = "parabench.pid", "parabench.host"
ORPHANED_TAG = "parabench.orphaned"  # on a run whose process died RUNNING; a later command ended it FAILED


def owner_tags() -> dict[str, str]:
    """Tags naming the process that holds a run RUNNING (so a later command can end it if that dies)."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: platform.node()}


def fail_orphaned_runs(experiment_id: str) -> list[str]:
    """Mark FAILED the RUNNING runs this machine started whose process is gone (killed with -9, power loss).

    A process killed that way cannot end its own run; the next parabench command on the machine does.
    """
    client = mlflow.MlflowClient()
    host = platform.node()
    orphans = [
        run.info.run_id
        for run in client.search_runs(
            [experiment_id], f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'"
        )
        if not process_alive(int(run.data.tags.get(PID_TAG, "0")))
    ]
    for run_id in orphans:
        client.set_tag(run_id, ORPHANED_TAG, "process gone; marked FAILED by a later run")
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
    return orphans


class RunKilled(Exception):
    """Raised inside a run when the process receives SIGTERM, so the run ends KILLED rather than RUNNING."""


@contextmanager
def tracked_run(
    run_name: str,
    tags: dict[str, str],
    nested: bool = False,
    run_id: str | None = None,
    parent_run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run that always ends: FINISHED on success, KILLED on interrupt/SIGTERM, FAILED on error.
    With `run_id`, that run goes on (a training resumed from its checkpoint). With `parent_run_id`, it is
    nested under that run although no run is active in this process (a Ray worker's). System metrics (CPU,
    memory, GPU) are recorded while it runs.

    Under `mlflow run`, the run MLflow created (MLFLOW_RUN_ID) holds the entry point's parameters as the user
    gave them (`auto` = "the recipe's value"); this run is nested under it and logs the resolved values under
    the same names, so no value is silently dropped and every training run has the same columns.
    """
    previous_handler = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise RunKilled(f"received signal {signum}")

    main_thread = threading.current_thread() is threading.main_thread()  # a Ray Tune trial runs in another
    if main_thread:
        signal.signal(signal.SIGTERM, on_sigterm)
    launched_by_mlflow_run = (
        bool(os.environ.get("MLFLOW_RUN_ID")) and mlflow.active_run() is None and parent_run_id is None
    )
    if launched_by_mlflow_run:
        mlflow.start_run()  # resumes the `mlflow run` launch run
    run = mlflow.start_run(
        run_id=run_id,
        run_name=None if run_id else run_name,
        tags={**tags, **owner_tags()},
        nested=nested or launched_by_mlflow_run,
        parent_run_id=None if run_id else parent_run_id,
        log_system_metrics=True,
    )
    try:
        yield run
    except (KeyboardInterrupt, RunKilled):
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous_handler)


FAILED_AFTER_TAG = "parabench.failed_after"  # on a run whose owed outputs could not be written after it ended


@contextmanager
def completing(run_id: str) -> Iterator[None]:
    """Work a FINISHED run still owes (its files beside the store: a result record, reports/runs): when it
    fails (a disk error, a folder that cannot be written), the run is marked FAILED with why, so that no run
    claims a success whose outputs are missing."""
    try:
        yield
    except Exception as error:
        client = mlflow.MlflowClient()
        client.set_tag(run_id, FAILED_AFTER_TAG, first_line(error)[:500])
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise


def git_commit(root: Path) -> str:
    """The checkout's commit (with '-dirty' when it has uncommitted changes), or 'unknown' outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def hardware(device: torch.device | None = None) -> dict[str, str]:
    """Where the numbers were made: the device the training ran on (type and name), the CPU, torch threads,
    and the versions of torch, accelerate and CUDA."""
    import accelerate

    device = device or torch.device("cpu")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "mps":
        name = "Apple MPS"
    else:
        name = cpu_model()
    return {
        "hardware_cpu": cpu_model(),
        "hardware_gpu": name if device.type != "cpu" else "none",
        "hardware_device": device.type,
        "hardware_device_name": name,
        "hardware_threads": str(torch.get_num_threads()),
        "torch_version": torch.__version__,
        "accelerate_version": accelerate.__version__,
        "cuda_version": torch.version.cuda or "none",
    }


def log_params(values: dict[str, Any]) -> None:
    """Log parameters; MLflow refuses to overwrite a param with another value, so clashes fail loudly."""
    mlflow.log_params({key: str(value) for key, value in values.items()})


def log_epoch(epoch: int, values: dict[str, float]) -> None:
    mlflow.log_metrics(values, step=epoch)


def log_final_metrics(values: dict[str, float]) -> None:
    """Log the end-of-run metrics once, under names of their own (no per-epoch curve shares them)."""
    missing = [name for name in FINAL_METRICS if name not in values]
    if missing:
        raise ValueError(f"final metrics missing: {missing}")
    mlflow.log_metrics({name: float(values[name]) for name in FINAL_METRICS})


def log_json(values: dict[str, Any], artifact_file: str) -> None:
    mlflow.log_text(json.dumps(values, indent=2, sort_keys=True), artifact_file)
