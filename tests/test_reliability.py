"""Interrupted runs: kill -9 or SIGTERM during training never leave a run RUNNING; training starts over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import copy_project
from mlflow.tracking import MlflowClient

from parabench.common.processes import wait_until
from parabench.config import PARAMS_ENV

pytestmark = pytest.mark.slow  # servers and subprocess trainings: end-to-end

TRAIN = ["train", "--model", "tiny-bert", "--epochs", "30", "--max-train-samples", "64", "--seed", "11"]


@pytest.fixture
def project(validated_project: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    folder = copy_project(validated_project, tmp_path / "project")
    env = {
        **os.environ,
        PARAMS_ENV: str(folder / "params.yaml"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    return folder, env


def all_runs(env: dict[str, str]) -> list:
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments) if experiments else []


def start_and_interrupt(env: dict[str, str], sig: signal.Signals) -> subprocess.Popen:
    """Start a long training, wait until its run logged an epoch, then send the signal."""
    process = subprocess.Popen(
        ["parabench", *TRAIN], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    logged_epoch = wait_until(
        lambda: any(
            r.info.status == "RUNNING" and "validation_accuracy" in r.data.metrics for r in all_runs(env)
        ),
        240,
        interval_s=1,
        give_up=lambda: process.poll() is not None,
    )
    assert process.poll() is None, process.stdout.read().decode()[-2000:]
    assert logged_epoch, "training never logged an epoch"
    process.send_signal(sig)
    process.wait(timeout=60)
    return process


@pytest.mark.slow
def test_kill_9_then_the_same_command_leaves_no_run_running(project: tuple[Path, dict[str, str]]) -> None:
    _, env = project
    start_and_interrupt(env, signal.SIGKILL)
    assert [r.info.status for r in all_runs(env)] == ["RUNNING"]  # nobody could end it yet

    rerun = subprocess.run(
        ["parabench", *TRAIN[:4], "1", *TRAIN[5:]], env=env, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    statuses = sorted(r.info.status for r in all_runs(env))
    assert statuses == ["FAILED", "FINISHED"]
    failed = next(r for r in all_runs(env) if r.info.status == "FAILED")
    assert "process gone" in failed.data.tags["parabench.orphaned"]


@pytest.mark.slow
def test_sigterm_ends_the_run_killed(project: tuple[Path, dict[str, str]]) -> None:
    _, env = project
    process = start_and_interrupt(env, signal.SIGTERM)
    assert process.returncode != 0
    assert [r.info.status for r in all_runs(env)] == ["KILLED"]
