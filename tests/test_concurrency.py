"""Concurrency as users meet it: `parabench server` (PostgreSQL + mlflow server) with four trainings started
at once, several first-time openers of a new SQLite store, and two `promote` started together."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import SWEPT_MODELS, copy_project, invoke, project_env

from parabench.checks.reliability import concurrent_promotes, concurrent_trainings
from parabench.checks.sandbox import project_env as run_env
from parabench.config import Params
from parabench.study.sweep import latest_sweeps

pytestmark = pytest.mark.slow  # servers and subprocess trainings: end-to-end

TRAININGS = {"model": "tiny-bert", "epochs": 1, "max_train_samples": 16, "max_eval_samples": 32}


@pytest.fixture
def server_project(served: Params) -> Params:
    """The session's served project: `parabench server` runs on free ports."""
    return served


def server_uri(params: Params) -> str:
    return f"http://127.0.0.1:{params.tracking_server.mlflow_port}"


def test_server_start_again_reuses_the_running_server(server_project: Params) -> None:
    assert "already running" in invoke("server", "start").stdout
    assert "up" in invoke("server", "status").stdout


@pytest.mark.slow
def test_four_trainings_at_once_on_the_server_all_finish_with_every_metric(server_project: Params) -> None:
    env = run_env(server_project.root / "params.yaml", server_uri(server_project), "four-at-once")
    outcome = concurrent_trainings(env, TRAININGS, 4)
    assert outcome["errors"] == []
    assert (outcome["exit_zero"], outcome["runs"], outcome["complete_runs"], outcome["running_runs"]) == (
        4,
        4,
        4,
        0,
    )


@pytest.mark.slow
def test_trainings_opening_a_new_sqlite_store_at_once_all_finish(server_project: Params) -> None:
    store = server_project.root / "fresh.db"
    env = run_env(server_project.root / "params.yaml", f"sqlite:///{store}", "sqlite-at-once")
    outcome = concurrent_trainings(env, TRAININGS, 3)
    assert outcome["errors"] == []
    assert (outcome["exit_zero"], outcome["complete_runs"], outcome["running_runs"]) == (3, 3, 0)


def test_a_locked_sqlite_store_ends_in_one_line_pointing_to_the_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sqlalchemy.exc import OperationalError

    from parabench import cli

    def locked(**_: object) -> None:  # what SQLAlchemy raises when another process holds the SQLite store
        raise OperationalError("INSERT INTO runs", {}, Exception("database is locked"))

    monkeypatch.setattr(cli, "app", locked)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    error = capsys.readouterr().err
    assert exit_info.value.code == 1 and error.count("\n") == 1 and "Traceback" not in error
    assert error.startswith("error: ") and "parabench server start" in error
    assert "MLFLOW_TRACKING_URI" in error


@pytest.mark.slow
def test_two_promotes_at_once_leave_one_champion_the_better_model(swept_root: Path, tmp_path: Path) -> None:
    # registered models nobody promoted to yet
    swept = copy_project(swept_root, tmp_path / "project", promote={"name_prefix": "race-"})
    with project_env(swept) as params:
        env = run_env(swept / "params.yaml", f"sqlite:///{swept / 'mlflow.db'}", params.mlflow.experiment)
        outcome = concurrent_promotes(env, list(SWEPT_MODELS), "race-")
        sweeps = latest_sweeps(params, list(SWEPT_MODELS))
        means = {s.model: s.mean("final_validation_accuracy") for s in sweeps}
    assert outcome["errors"] == [] and outcome["exit_zero"] == 2
    [(name, registered)] = outcome["registered"].items()
    assert name == "race-small"
    assert (registered["versions"], registered["duplicate_versions"], registered["champions"]) == (1, 0, 1)
    assert registered["champion_model"] == max(means, key=lambda model: means[model])
