"""The training engine as users meet it on the CPU: several processes under torchrun log one run, mixed
precision and gradient accumulation, an exact resume after kill -9 (also past a corrupt checkpoint), and the
7B model refused at once on a machine without a GPU."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import copy_project, project_env
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from parabench.cli import app
from parabench.common.names import EPOCH_METRICS, FINAL_METRICS
from parabench.common.processes import wait_until
from parabench.config import Params, RunOptions
from parabench.data.validate import require_validated
from parabench.training.plan import plan_run
from parabench.training.run import RunSummary, train_and_track

BIN = Path(sys.executable).parent
RESUME_ARGS = ["--model", "tiny-bert", "--epochs", "3", "--max-train-samples", "768", "--seed", "5"]


@pytest.fixture(scope="module")
def project(validated_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Params]:
    """A writable validated project with its own tracking store, evaluation capped to 96 pairs."""
    destination = tmp_path_factory.mktemp("engine") / "project"
    with project_env(copy_project(validated_project, destination, train={"max_eval_samples": 96})) as params:
        yield params


def client() -> MlflowClient:
    """A client on the project's store (the one the CLI subprocesses log to), whatever earlier tests set."""
    return MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])


def train(params: Params, **options: object) -> RunSummary:
    given = RunOptions(**{"model": "tiny-bert", "epochs": 1, "max_train_samples": 64, **options})
    return train_and_track(params, plan_run(params, given, require_validated(params)), log=lambda _: None)


def cli_env() -> dict[str, str]:
    """The environment a user's shell would have: the venv first on PATH, no inherited MLflow run."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")}
    return {**env, "PATH": f"{BIN}{os.pathsep}{env['PATH']}", "PYTHONUNBUFFERED": "1"}


def parabench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["parabench", *args], env=cli_env(), capture_output=True, text=True, timeout=600)


def run_of(output: str) -> str:
    return next(line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("run id: "))


def curve_and_finals(run_id: str) -> tuple[dict[str, list[tuple[int, float]]], dict[str, float]]:
    store = client()
    curves = {
        name: sorted((m.step, m.value) for m in store.get_metric_history(run_id, name))
        for name in EPOCH_METRICS
    }
    metrics = store.get_run(run_id).data.metrics
    return curves, {name: metrics[name] for name in FINAL_METRICS if "per_second" not in name}


def kill_after_checkpoint(folder: Path, name_prefix: str) -> None:
    """Start the resume run, kill -9 it as soon as a checkpoint named name_prefix* is complete."""
    process = subprocess.Popen(
        ["parabench", "train", *RESUME_ARGS],
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(
        lambda: any((path / "manifest.json").is_file() for path in folder.glob(f"*/{name_prefix}*")),
        300,
        interval_s=0.02,
        give_up=lambda: process.poll() is not None,
    )
    assert process.poll() is None, "the run ended before it could be killed: make it longer"
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.fixture
def own_project(validated_project: Path, tmp_path: Path) -> Iterator[Params]:
    """A project of its own: checkpoints left by another test's killed run must not be resumed here."""
    folder = copy_project(validated_project, tmp_path / "project", train={"max_eval_samples": 96})
    with project_env(folder) as params:
        yield params


@pytest.mark.slow
def test_kill_9_then_the_same_command_resumes_to_the_uninterrupted_result(own_project: Params) -> None:
    project = own_project
    checkpoints = project.path(project.train.checkpoint_dir)
    whole = parabench("train", *RESUME_ARGS)
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert not any(checkpoints.glob("*/checkpoint-*")), "checkpoints are removed once the model is logged"

    kill_after_checkpoint(checkpoints, "checkpoint-0002-")  # epoch 1 done, epoch 2 running
    resumed = parabench("train", *RESUME_ARGS)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from checkpoint checkpoint-0002-0000000" in resumed.stdout
    assert curve_and_finals(run_of(resumed.stdout)) == curve_and_finals(run_of(whole.stdout))
    runs = client().search_runs([client().get_run(run_of(whole.stdout)).info.experiment_id])
    assert [run.info.status for run in runs].count("RUNNING") == 0
    assert len(runs) == 2, "the resumed run is the interrupted one, not a third"
    tags = client().get_run(run_of(resumed.stdout)).data.tags
    assert tags["parabench.resumed_from"] == "checkpoint-0002-0000000"


@pytest.mark.slow
def test_a_corrupt_checkpoint_is_skipped_for_the_one_before(own_project: Params) -> None:
    project = own_project
    checkpoints = project.path(project.train.checkpoint_dir)
    kill_after_checkpoint(checkpoints, "checkpoint-0003-")  # epochs 1 and 2 checkpointed
    newest = sorted(checkpoints.glob("*/checkpoint-0003-*"))[-1]
    weights = next(path for path in newest.rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-16])
    resumed = parabench("train", *RESUME_ARGS)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"checkpoint {newest.name} is unusable" in resumed.stdout
    assert "resumed from checkpoint checkpoint-0002-0000000" in resumed.stdout


@pytest.mark.slow
def test_two_processes_under_torchrun_log_one_run_with_every_pair_once(project: Params) -> None:
    command = [
        str(BIN / "torchrun"), "--nproc_per_node", "2", "-m", "parabench", "train",
        "--model", "tiny-bert", "--epochs", "1", "--max-train-samples", "64", "--seed", "21",
    ]  # fmt: skip
    done = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run id: ") == 1
    run = client().get_run(run_of(done.stdout))
    assert run.info.status == "FINISHED" and run.data.params["num_processes"] == "2"
    import mlflow

    table = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id,
        artifact_path="predictions_test.csv",
        tracking_uri=os.environ["MLFLOW_TRACKING_URI"],
    )
    import pandas as pd

    predictions = pd.read_csv(table)
    assert len(predictions) == 96 and predictions["idx"].is_unique
    assert predictions["probability"].notna().all()
    accuracy = (predictions["label"] == predictions["predicted_label"]).mean()
    assert run.data.metrics["test_accuracy"] == pytest.approx(accuracy)


def test_gradient_accumulation_keeps_the_effective_batch(project: Params) -> None:
    whole = train(project, batch_size=32, seed=9)
    accumulated = train(project, batch_size=32, gradient_accumulation_steps=4, seed=9)
    store = client()
    losses = [store.get_metric_history(s.run_id, "train_loss")[0].value for s in (whole, accumulated)]
    assert losses[1] == pytest.approx(losses[0], rel=0.05)
    assert store.get_run(accumulated.run_id).data.params["gradient_accumulation_steps"] == "4"
    with pytest.raises(Exception, match="not divisible"):
        train(project, batch_size=32, gradient_accumulation_steps=3)


def test_bf16_autocast_runs_on_the_cpu(project: Params) -> None:
    summary = train(project, mixed_precision="bf16", seed=4)
    params = client().get_run(summary.run_id).data.params
    assert params["mixed_precision"] == "bf16" and params["hardware_device"] == "cpu"
    assert all(isinstance(value, float | int) and math.isfinite(value) for value in summary.metrics.values())
    fp32 = train(project, mixed_precision="no", seed=4)
    bf16_curve = client().get_metric_history(summary.run_id, "train_loss")
    fp32_curve = client().get_metric_history(fp32.run_id, "train_loss")
    assert [m.value for m in bf16_curve] != [m.value for m in fp32_curve]  # the forward ran in bf16


def test_system_metrics_are_recorded(project: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # MLflow's own knob (default 10 s)
    summary = train(project, seed=8)
    metrics = client().get_run(summary.run_id).data.metrics
    assert any(name.startswith("system/") for name in metrics)


def test_a_7b_model_on_a_cpu_machine_is_refused_at_once(project: Params) -> None:
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["train", "--model", "meta-llama/Llama-2-7b-hf"])
    assert result.exit_code == 1
    assert "trains only on a CUDA GPU" in result.output and "GB" in result.output
    assert time.perf_counter() - started < 20  # refused before any weights load, even on a loaded machine
    four_bit = CliRunner().invoke(app, ["train", "--model", "tiny-llama", "--load-in-4bit", "true"])
    assert four_bit.exit_code == 1 and "needs a CUDA GPU" in four_bit.output


def test_tiny_llama_trains_lora_and_logs_its_target_modules(project: Params) -> None:
    summary = train(project, model="tiny-llama", seed=3)
    params = client().get_run(summary.run_id).data.params
    assert params["lora_r"] == "16" and params["lora_target_modules"]


def test_checkpoints_of_a_run_in_another_store_start_over(
    project: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = RunOptions(model="tiny-bert", epochs=1, max_train_samples=64, seed=31, keep_checkpoints=True)
    plan = plan_run(project, options, require_validated(project))
    first = train_and_track(project, plan, log=lambda _: None)
    folder = project.path(project.train.checkpoint_dir) / plan.checkpoint_name
    assert any(folder.glob("checkpoint-*")), "--keep-checkpoints true keeps them"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    said: list[str] = []
    second = train_and_track(project, plan, log=said.append)
    assert any(f"checkpoints of run {first.run_id} found" in line for line in said)
    assert client().get_run(second.run_id).info.status == "FINISHED"
    assert "parabench.resumed_from" not in client().get_run(second.run_id).data.tags
