"""The study on Ray as users run it: `parabench sweep --engine ray` and `parabench tune` joining the session's
local Ray of 2 CPUs (conftest `served`) with tiny models. Two runs at once on the SQLite default make the
sweep use `parabench server` (PostgreSQL, already running: the session's one tracking server) and log
there."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import invoke
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from parabench.checks.sandbox import PARABENCH
from parabench.checks.sandbox import project_env as subprocess_env
from parabench.common.processes import wait_until
from parabench.config import Params
from parabench.models.zoo import get_spec, resolve_weights

pytestmark = pytest.mark.slow  # Ray, a tracking server and trainings in worker processes

MODELS = ("tiny-bert", "tiny-distilbert")
TRAIN_OPTIONS = ("--epochs", "1", "--max-train-samples", "64")
EVAL_SAMPLES = 64


@pytest.fixture
def ray_project(served: Params) -> Params:
    """The session's served project: its tracking server runs, its `ray.address` is the session's cluster."""
    return served


def server_client(params: Params, uri: str | None = None) -> tuple[MlflowClient, str]:
    """A client on the store (default: the one the last command logged to; a sweep that started the tracking
    server points MLFLOW_TRACKING_URI at it) and the id of the project's experiment there ('' if none)."""
    client = MlflowClient(tracking_uri=uri or os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(params.mlflow.experiment)
    return client, "" if experiment is None else experiment.experiment_id


def runs(params: Params, filter_string: str, uri: str | None = None) -> list[Run]:
    client, experiment_id = server_client(params, uri)
    return client.search_runs([experiment_id], filter_string, max_results=1000) if experiment_id else []


def runs_in_sqlite(params: Params) -> list[Run]:
    client = MlflowClient(tracking_uri=f"sqlite:///{params.root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(params.mlflow.experiment)
    return (
        []
        if experiment is None
        else client.search_runs([experiment.experiment_id], "tags.model = 'tiny-distilbert'")
    )


def seed_runs_of(params: Params, model: str, uri: str | None = None) -> list[Run]:
    return [r for r in runs(params, f"tags.model = '{model}'", uri) if r.data.tags.get("sweep") != "parent"]


def test_ray_sweep_runs_every_seed_side_by_side_and_a_rerun_adds_none(
    ray_project: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a user starts: the project's SQLite store (a Ray sweep of an earlier test exported the server's URI).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{ray_project.root / 'mlflow.db'}")
    args = ["sweep", "--engine", "ray", "--models", ",".join(MODELS), "--seeds", "2", *TRAIN_OPTIONS]
    first = invoke(*args)
    assert "up to 2 at once" in first.output
    assert "SQLite takes one writer, so the runs log to the parabench tracking server" in first.output
    summary = json.loads(ray_project.path(ray_project.sweep.summary_file).read_text(encoding="utf-8"))
    for model in MODELS:
        parents = [
            r for r in runs(ray_project, f"tags.model = '{model}'") if r.data.tags.get("sweep") == "parent"
        ]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        children = seed_runs_of(ray_project, model)
        assert sorted(int(r.data.tags["seed"]) for r in children) == list(ray_project.sweep.seeds[:2])
        for child in children:
            assert child.info.status == "FINISHED"
            assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
            assert child.data.params["num_processes"] == "1"
            assert {"test_accuracy", "final_validation_accuracy", "train_samples_per_second"} <= set(
                child.data.metrics
            )
        assert parents[0].data.metrics["n_seeds"] == 2
        assert summary[model]["parent_run_id"] == parents[0].info.run_id
        assert summary[model]["failed_seeds"] == {}

    again = invoke(*args)
    assert again.output.count(": skipped, FINISHED run") == 4
    assert "0 runs on Ray" in again.output
    for model in MODELS:
        assert len(seed_runs_of(ray_project, model)) == 2


def test_a_failing_run_is_tried_again_then_reported_while_the_others_finish(
    ray_project: Params, tmp_path: Path
) -> None:
    broken = Path(shutil.copytree(resolve_weights(get_spec("tiny-bert"), ray_project), tmp_path / "broken"))
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a half-copied weights file
    args = ["sweep", "--engine", "ray", "--models", f"tiny-electra,{broken}", "--seeds", "1", *TRAIN_OPTIONS]
    result = invoke(*args, "--max-retries", "1", exit_code=1)
    assert f"{broken} seed {ray_project.sweep.seeds[0]}: try 1/2 failed" in result.output
    assert "FAILED 2 time(s)" in result.output
    assert "1 run(s) failed 2 time(s)" in result.output
    assert [r.info.status for r in seed_runs_of(ray_project, "tiny-electra")] == ["FINISHED"]
    summary = json.loads(ray_project.path(ray_project.sweep.summary_file).read_text(encoding="utf-8"))
    seed = str(ray_project.sweep.seeds[0])
    assert summary[str(broken)]["failed_seeds"][seed]
    assert summary["tiny-electra"]["failed_seeds"] == {}
    parent = next(
        r for r in runs(ray_project, f"tags.model = '{broken}'") if r.data.tags.get("sweep") == "parent"
    )
    assert parent.info.status == "FAILED"
    assert parent.data.tags["failed_seeds"] == seed and parent.data.metrics["n_failed"] == 1


def test_tune_writes_trials_under_a_parent_and_the_best_recipe_a_sweep_can_use(ray_project: Params) -> None:
    result = invoke(
        "tune", "--model", "tiny-bert", "--trials", "4", "--max-epochs", "2", "--max-train-samples", "64"
    )
    client, experiment_id = server_client(ray_project)
    parents = client.search_runs([experiment_id], "tags.tune = 'parent'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    trials = client.search_runs([experiment_id], f"tags.tune_parent = '{parent.info.run_id}'")
    assert len(trials) == 4
    assert all(t.data.tags["mlflow.parentRunId"] == parent.info.run_id for t in trials)
    assert all(t.info.status == "FINISHED" for t in trials)  # pruned ones too, with the tag
    completed = [t for t in trials if "pruned" not in t.data.tags]
    pruned = [t for t in trials if "pruned" in t.data.tags]
    assert completed and parent.data.metrics["n_completed"] == len(completed)
    assert parent.data.metrics["n_pruned"] == len(pruned) and parent.data.metrics["n_failed"] == 0
    for trial in trials:
        history = client.get_metric_history(trial.info.run_id, "validation_accuracy")
        assert [m.step for m in history] == list(range(1, len(history) + 1))
        assert {"learning_rate", "warmup_ratio", "weight_decay", "batch_size", "epochs"} <= set(
            trial.data.params
        )
    document = json.loads((ray_project.path(ray_project.tune.output_dir) / "tiny-bert.json").read_text())
    best = max(completed, key=lambda t: t.data.metrics["final_validation_accuracy"])
    assert document["validation_accuracy"] == best.data.metrics["final_validation_accuracy"]
    assert document["trial_run_id"] in {t.info.run_id for t in completed}
    assert float(document["recipe"]["learning_rate"]) == float(
        next(t for t in completed if t.info.run_id == document["trial_run_id"]).data.params["learning_rate"]
    )
    assert "--recipe tune:tiny-bert" in result.output

    # The winner as a recipe: a sweep with it logs the searched values (its seed may be the trial's run).
    swept = invoke(
        "sweep",
        "--models",
        "tiny-bert",
        "--seeds",
        "1",
        "--recipe",
        "tune:tiny-bert",
        "--max-train-samples",
        "64",
    )
    assert "FINISHED" in swept.output
    child = next(
        r
        for r in seed_runs_of(ray_project, "tiny-bert")
        if r.data.params.get("recipe", "").startswith("tune")
    )
    assert float(child.data.params["learning_rate"]) == float(document["recipe"]["learning_rate"])


def test_ctrl_c_cancels_every_ray_run_and_leaves_them_killed(ray_project: Params) -> None:
    params_file = ray_project.root / "params.yaml"
    uri = f"http://127.0.0.1:{ray_project.tracking_server.mlflow_port}"
    env = subprocess_env(params_file, uri, ray_project.mlflow.experiment)
    # Far more epochs than the test waits for: an idle CI machine ran 200 of them in 50 s, before the SIGINT.
    args = ["sweep", "--engine", "ray", "--models", "tiny-albert", "--seeds", "2", "--epochs", "1000"]
    process = subprocess.Popen(
        [PARABENCH, *args, "--max-train-samples", "64"],
        env=env,
        # As from a terminal: a shell without job control starts background jobs with SIGINT ignored, and a
        # test run launched that way would pass the ignoring on to parabench.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        def seed_statuses() -> list[str]:
            return [r.info.status for r in seed_runs_of(ray_project, "tiny-albert", uri)]

        both_running = wait_until(
            lambda: seed_statuses().count("RUNNING") == 2,
            180,
            interval_s=1,
            give_up=lambda: process.poll() is not None,
        )
        assert process.poll() is None, process.communicate()[0]
        assert both_running, "both seeds train at once"
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
    assert process.returncode == 130, output
    assert "cancelling 2 run(s)" in output
    statuses = [r.info.status for r in seed_runs_of(ray_project, "tiny-albert", uri)]
    assert statuses == ["KILLED", "KILLED"], output
    parent = next(
        r
        for r in runs(ray_project, "tags.model = 'tiny-albert'", uri)
        if r.data.tags.get("sweep") == "parent"
    )
    assert parent.info.status == "KILLED"


def test_sqlite_with_runs_side_by_side_refuses_in_one_line_when_told_not_to_start_a_server(
    ray_project: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{ray_project.root / 'mlflow.db'}")
    result = invoke(
        "sweep",
        "--engine",
        "ray",
        "--models",
        "tiny-distilbert",
        "--seeds",
        "2",
        *TRAIN_OPTIONS,
        "--start-server",
        "false",
        exit_code=2,
    )
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: 2 runs would write at once to the SQLite store")
    assert "--start-server true" in last
    assert runs_in_sqlite(ray_project) == []  # nothing started


def test_a_reservation_no_node_can_grant_fails_before_any_run(ray_project: Params) -> None:
    result = invoke(
        "sweep",
        "--engine",
        "ray",
        "--models",
        "tiny-bert",
        "--seeds",
        "1",
        "--cpus-per-run",
        "64",
        exit_code=2,
    )
    assert "--cpus-per-run 64: the Ray cluster has 2 CPUs" in result.output
