"""Reliability scenarios, run as a user would (the `parabench` command in subprocesses), each measured:
concurrent trainings, a training killed with -9 and rerun, concurrent promotes, a served model under load,
tampered data. The test suite runs short versions; `parabench reliability` runs them all in a throw-away
copy of the project against its own PostgreSQL tracking server; it writes reports/reliability/report.*.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from parabench.checks.sandbox import PARABENCH, copy_project, last_lines, project_env
from parabench.common.files import write_json, write_text
from parabench.common.names import EPOCH_METRICS, FINAL_METRICS
from parabench.common.processes import wait_until
from parabench.common.tables import markdown_table
from parabench.config import PARAMS_ENV, ParabenchError, Params, load_params
from parabench.serving.loadtest import load, serving
from parabench.tracking import server as tracking_server
from parabench.tracking.client import ORPHANED_TAG


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PARABENCH, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def experiment_runs(env: dict[str, str]) -> list[Any]:
    """Every run of the environment's experiment."""
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(env["MLFLOW_EXPERIMENT_NAME"])
    return client.search_runs([experiment.experiment_id]) if experiment else []


def complete(run: Any, client: MlflowClient, epochs: int) -> bool:
    """A FINISHED run with every final metric and a value per epoch of every per-epoch metric."""
    if run.info.status != "FINISHED" or any(name not in run.data.metrics for name in FINAL_METRICS):
        return False
    return all(
        len({m.step for m in client.get_metric_history(run.info.run_id, name)} & set(range(1, epochs + 1)))
        == epochs
        for name in EPOCH_METRICS
    )


def training_args(settings: dict[str, Any], seed: int, epochs: int | None = None) -> list[str]:
    return [
        "train",
        "--model",
        settings["model"],
        "--seed",
        str(seed),
        "--epochs",
        str(epochs or settings["epochs"]),
        "--max-train-samples",
        str(settings["max_train_samples"]),
    ]


def concurrent_trainings(env: dict[str, str], settings: dict[str, Any], count: int) -> dict[str, Any]:
    """`count` trainings started at the same moment; how many ended with a complete run."""
    started = time.perf_counter()
    processes = [start(training_args(settings, seed), env) for seed in range(1, count + 1)]
    outputs = [process.communicate()[0] for process in processes]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = experiment_runs(env)
    return {
        "tracking_uri": env["MLFLOW_TRACKING_URI"],
        "started": count,
        "exit_zero": sum(process.returncode == 0 for process in processes),
        "runs": len(runs),
        "complete_runs": sum(complete(run, client, settings["epochs"]) for run in runs),
        "running_runs": sum(run.info.status == "RUNNING" for run in runs),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "errors": [last_lines(out) for out, p in zip(outputs, processes, strict=True) if p.returncode],
    }


def killed_training(env: dict[str, str], settings: dict[str, Any], timeout_s: float = 300) -> dict[str, Any]:
    """kill -9 a training once it logged an epoch, then run the same command again (it starts over)."""
    process = start(training_args(settings, 11, epochs=settings["long_epochs"]), env)
    if not wait_until(
        lambda: any(
            r.info.status == "RUNNING" and "validation_accuracy" in r.data.metrics
            for r in experiment_runs(env)
        ),
        timeout_s,
        interval_s=1,
        give_up=lambda: process.poll() is not None,
    ):
        raise ParabenchError(
            f"the training to kill never logged an epoch: {last_lines(process.stdout.read())}"
        )
    process.send_signal(signal.SIGKILL)
    process.wait()
    running_after_kill = sum(r.info.status == "RUNNING" for r in experiment_runs(env))
    rerun = subprocess.run([PARABENCH, *training_args(settings, 11)], env=env, capture_output=True, text=True)
    runs = experiment_runs(env)
    return {
        "running_after_kill": running_after_kill,
        "rerun_exit": rerun.returncode,
        "finished_runs": sum(r.info.status == "FINISHED" for r in runs),
        "orphans_marked_failed": sum(ORPHANED_TAG in r.data.tags for r in runs),
        "running_runs": sum(r.info.status == "RUNNING" for r in runs),
    }


def concurrent_promotes(env: dict[str, str], models: list[str], name_prefix: str) -> dict[str, Any]:
    """Two `parabench promote` started together; champions per registered model and duplicate versions."""
    processes = [start(["promote", "--models", ",".join(models)], env) for _ in range(2)]
    outputs = [process.communicate()[0] for process in processes]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    registered = {}
    for model in client.search_registered_models(f"name LIKE '{name_prefix}%'"):
        versions = client.search_model_versions(f"name = '{model.name}'")
        champion = client.get_model_version_by_alias(model.name, "champion") if model.aliases else None
        source_runs = [v.run_id for v in versions]
        registered[model.name] = {
            "versions": len(versions),
            "duplicate_versions": len(source_runs) - len(set(source_runs)),
            "champions": sum(alias == "champion" for alias in model.aliases),
            "champion_model": champion.tags.get("model") if champion else None,
            "champion_mean_validation": float(champion.tags["mean_validation_accuracy"])
            if champion
            else None,
        }
    return {
        "exit_zero": sum(process.returncode == 0 for process in processes),
        "registered": registered,
        "errors": [last_lines(out) for out, p in zip(outputs, processes, strict=True) if p.returncode],
    }


def tampered_training(env: dict[str, str], settings: dict[str, Any], data_file: Path) -> dict[str, Any]:
    """Append a byte to a validated data file, try to train, and put the file back."""
    original = data_file.read_bytes()
    try:
        data_file.write_bytes(original + b"\n")
        runs_before = len(experiment_runs(env))
        result = subprocess.run(
            [PARABENCH, *training_args(settings, 5)], env=env, capture_output=True, text=True
        )
    finally:
        data_file.write_bytes(original)
    return {
        "file": str(data_file.name),
        "exit": result.returncode,
        "message": last_lines(result.stderr, 1),
        "file_named": data_file.name in result.stderr,
        "runs_started": len(experiment_runs(env)) - runs_before,
    }


def run_all(params: Params, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every scenario at full size in a copy of the project; the report, also written under reports/."""
    settings = params.reliability.model_dump(mode="json")
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="parabench-reliability-") as work:
        folder = Path(work)
        folder.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data folder
        changes = {"train": {"max_eval_samples": params.reliability.max_eval_samples}}
        params_file = copy_project(params, folder / "project", folder / "server", changes)
        copy = load_params(params_file)
        os.environ[PARAMS_ENV] = str(params_file)
        state = tracking_server.start(copy)
        try:
            server_env = project_env(params_file, state["tracking_uri"], "reliability")
            sqlite_env = project_env(
                params_file, f"sqlite:///{folder / 'project' / 'mlflow.db'}", "reliability"
            )
            count = int(settings["concurrent_trainings"])
            log(f"{count} concurrent trainings on the PostgreSQL tracking server ...")
            report["concurrent_trainings_postgres"] = concurrent_trainings(server_env, settings, count)
            log(f"{count} concurrent trainings on a new SQLite store ...")
            report["concurrent_trainings_sqlite"] = concurrent_trainings(sqlite_env, settings, count)
            log("kill -9 during training, then the same command ...")
            report["kill_9_and_rerun"] = killed_training(
                project_env(params_file, state["tracking_uri"], "kill"), settings
            )
            log("two concurrent promotes ...")
            models = settings["promote_models"]
            sweep_env = project_env(params_file, state["tracking_uri"], "promote")
            subprocess.run(
                [
                    PARABENCH,
                    "sweep",
                    "--models",
                    ",".join(models),
                    "--seeds",
                    "2",
                    "--epochs",
                    "1",
                    "--max-train-samples",
                    str(settings["max_train_samples"]),
                ],
                env=sweep_env,
                check=True,
                capture_output=True,
            )
            report["concurrent_promotes"] = concurrent_promotes(sweep_env, models, copy.promote.name_prefix)
            log("load test of the served champion ...")
            loadtest = params.loadtest
            os.environ["MLFLOW_TRACKING_URI"] = state["tracking_uri"]
            with serving(
                copy,
                copy.serve.model_uri,
                folder / "serve.log",
                loadtest.server_start_timeout_s,
            ) as url:
                report["loadtest"] = load(
                    url,
                    loadtest.requests,
                    loadtest.concurrency,
                    loadtest.valid_fraction,
                    loadtest.request_timeout_s,
                )
            log("tampered data ...")
            report["tampered_data"] = tampered_training(
                server_env, settings, copy.path(copy.data.processed_dir) / "train.parquet"
            )
        finally:
            tracking_server.stop(copy)
    report_file = params.path(settings["report_dir"]) / "report.json"
    write_json(report_file, report)
    write_text(report_file.with_suffix(".md"), as_markdown(report))
    return report


def as_markdown(report: dict[str, Any]) -> str:
    """The report as one table per scenario."""
    lines = ["# Reliability scenarios", ""]
    for scenario, values in report.items():
        rows = [
            (key, json.dumps(value) if isinstance(value, dict | list) else value)
            for key, value in values.items()
        ]
        lines += [f"## {scenario.replace('_', ' ')}", "", *markdown_table(("measure", "value"), rows)]
        lines.append("")
    return "\n".join(lines)
