"""Training runs as users start them: every tiny family logs a complete MLflow run whose model predicts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from helpers import copy_project, project_env
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from parabench.cli import app
from parabench.common.names import EPOCH_METRICS, FINAL_METRICS
from parabench.config import Params, RunOptions, load_params
from parabench.data.validate import require_validated
from parabench.models.zoo import load_zoo
from parabench.training.plan import plan_run
from parabench.training.run import RunSummary, train_and_track

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_MODELS = sorted(
    key
    for key, spec in load_zoo().items()
    if key.startswith("tiny-") and spec.head is None and spec.members is None  # fine-tuned models only
)
EXPECTED_PARAMS = {
    "model",
    "size_class",
    "family",
    "seed",
    "num_parameters",
    "data_version",
    "git_commit",
    "epochs",
    "batch_size",
    "learning_rate",
    "weight_decay",
    "scheduler",
    "hardware_cpu",
    "hardware_gpu",
    "hardware_threads",
    "dtype",
    "eval_path",
    "recipe",
}
EXPECTED_ARTIFACTS = {"confusion_matrix_test.png", "predictions_test.csv", "metrics.json"}


@pytest.fixture(scope="module")
def train_project(validated_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Params]:
    """A writable validated project with its own tracking store; evaluation capped to keep tests fast."""
    destination = tmp_path_factory.mktemp("train") / "project"
    with project_env(copy_project(validated_project, destination, train={"max_eval_samples": 96})) as params:
        yield params


def train(params: Params, model: str, seed: int, **options: object) -> RunSummary:
    """train_and_track of one planned run: 1 epoch on 32 pairs unless the options say otherwise."""
    given = RunOptions(**{"epochs": 1, "max_train_samples": 32, **options})
    plan = plan_run(params, given, require_validated(params), model=model, seed=seed)
    return train_and_track(params, plan, log=lambda _: None)


def store() -> MlflowClient:
    """A client on the project's store (where the CLI and `mlflow run` log), whatever earlier tests set."""
    return MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])


def runs_in(status: str) -> list:
    return [run for run in store().search_runs(search_all_experiments()) if run.info.status == status]


def search_all_experiments() -> list[str]:
    return [experiment.experiment_id for experiment in store().search_experiments()]


@pytest.mark.parametrize("model_key", TINY_MODELS)
def test_every_tiny_family_logs_a_complete_run(train_project: Params, model_key: str) -> None:
    summary = train(train_project, model_key, 7)
    client = MlflowClient()
    run = client.get_run(summary.run_id)
    spec = load_zoo()[model_key]

    assert run.info.status == "FINISHED"
    assert set(run.data.params) >= EXPECTED_PARAMS
    assert run.data.params["model"] == model_key and run.data.params["seed"] == "7"
    assert run.data.params["lora"] == str(spec.lora)
    assert set(FINAL_METRICS) <= set(run.data.metrics)
    assert all(
        0.0 <= run.data.metrics[f"{split}_accuracy"] <= 1.0 for split in ("train", "final_validation", "test")
    )
    assert run.data.params["hardware_device"] == "cpu" and run.data.params["max_eval_samples"] == "96"
    assert run.data.metrics["num_parameters"] == int(run.data.params["num_parameters"]) > 0
    for name in EPOCH_METRICS:
        assert {m.step for m in client.get_metric_history(summary.run_id, name)} == {1}
    assert {k: run.data.tags[k] for k in ("model", "size_class", "family")} == {
        "model": model_key,
        "size_class": spec.size_class,
        "family": spec.family,
    }
    assert {a.path for a in client.list_artifacts(summary.run_id)} >= EXPECTED_ARTIFACTS

    logged = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{summary.run_id}'",
        output_format="list",
    )
    assert [m.name for m in logged] == ["model"]
    model = mlflow.pyfunc.load_model(f"runs:/{summary.run_id}/model")
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["sentence1", "sentence2"]
    prediction = model.predict(
        pd.DataFrame({"sentence1": ["A man is eating."], "sentence2": ["A man eats."]})
    )
    assert list(prediction.columns) == ["label", "probability"]
    assert prediction["label"].iloc[0] in (0, 1) and 0.0 <= prediction["probability"].iloc[0] <= 1.0
    if spec.lora:
        assert run.data.params["lora_r"] == "16" and run.data.params["lora_bias"] == "all"


def test_logged_predictions_and_metrics_agree(train_project: Params) -> None:
    summary = train(train_project, "tiny-bert", 3)
    folder = mlflow.artifacts.download_artifacts(run_id=summary.run_id, artifact_path="predictions_test.csv")
    table = pd.read_csv(folder)
    assert len(table) == 96
    assert {"idx", "sentence1", "sentence2", "label", "predicted_label", "probability"} <= set(table.columns)
    accuracy = (table["label"] == table["predicted_label"]).mean()
    assert accuracy == pytest.approx(summary.metrics["test_accuracy"])


def test_pairs_decide_the_prediction_not_the_first_sentence_alone(train_project: Params) -> None:
    summary = train(train_project, "tiny-bert", 5)
    model = mlflow.pyfunc.load_model(f"runs:/{summary.run_id}/model")
    same_first = pd.DataFrame(
        {
            "sentence1": ["The company posted a profit."] * 2,
            "sentence2": ["The company posted a profit.", "Rain is expected tomorrow."],
        }
    )
    probabilities = model.predict(same_first)["probability"]
    assert probabilities.iloc[0] != probabilities.iloc[1]
    with pytest.raises(Exception, match="sentence2"):
        model.predict(pd.DataFrame({"sentence1": ["only one sentence"]}))


def cli_train(*args: str) -> tuple[int, str, float]:
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["train", *args])
    return result.exit_code, result.output, time.perf_counter() - started


def test_unknown_model_is_one_clear_line_and_no_run(train_project: Params) -> None:
    code, output, _ = cli_train("--model", "no-such-model", "--epochs", "1")
    assert code == 1
    assert "unknown model 'no-such-model'" in output and "parabench models" in output
    assert runs_in("RUNNING") == []


def test_unreachable_hub_fails_fast_with_how_to_get_weights(
    train_project: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    code, output, seconds = cli_train("--model", "albert-base-v2", "--epochs", "1")
    assert code == 1
    assert "albert-base-v2" in output and "hf download" in output
    assert seconds < 20  # before the Hub client's ~29 s of retries, even on a loaded machine
    assert runs_in("RUNNING") == []


def test_training_refuses_data_that_failed_validation(train_project: Params, tmp_path: Path) -> None:
    folder = Path(
        shutil.copytree(train_project.root, tmp_path / "failed", ignore=shutil.ignore_patterns("*.db"))
    )
    frame = pd.read_parquet(folder / "data/processed/train.parquet")
    frame.loc[0, "label"] = 2
    frame.to_parquet(folder / "data/processed/train.parquet", index=False)
    params = load_params(folder / "params.yaml")
    with pytest.raises(Exception, match=r"train\.parquet"):
        train(params, "tiny-bert", 1)


def test_weight_decay_zero_and_every_recipe_field_can_be_set(train_project: Params) -> None:
    summary = train(
        train_project,
        "tiny-bert",
        11,
        weight_decay=0,
        warmup_ratio=0.25,
        scheduler="cosine",
        max_grad_norm=0.5,
        max_length=64,
    )
    logged = MlflowClient().get_run(summary.run_id).data.params
    assert logged["weight_decay"] == "0.0" and logged["warmup_ratio"] == "0.25"
    assert (
        logged["scheduler"] == "cosine" and logged["max_grad_norm"] == "0.5" and logged["max_length"] == "64"
    )


def test_the_validation_curve_has_one_point_per_epoch_and_the_kept_epoch_its_own_name(
    train_project: Params,
) -> None:
    summary = train(train_project, "tiny-bert", 12, epochs=3, recipe="tuned")
    client = MlflowClient()
    history = client.get_metric_history(summary.run_id, "validation_accuracy")
    assert sorted(point.step for point in history) == [1, 2, 3]
    metrics = client.get_run(summary.run_id).data.metrics
    kept = int(metrics["kept_epoch"])
    best = max(history, key=lambda point: (point.value, -point.step))
    assert kept == best.step and metrics["final_validation_accuracy"] == pytest.approx(best.value)


def mlflow_run(*args: str) -> subprocess.CompletedProcess[str]:
    """`mlflow run` of this checkout in the local environment, as a user types it (no experiment flag unless
    given), with the test's tracking store."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    env = {**inherited, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, "-m", "mlflow", "run", str(REPO_ROOT), *args, "--env-manager", "local"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_mlflow_run_as_written_trains_in_the_launch_runs_experiment(train_project: Params) -> None:
    result = mlflow_run("-P", "model=tiny-bert", "-P", "epochs=1", "-P", "max_train_samples=64")
    assert result.returncode == 0, result.stderr[-3000:]
    launched = [run for run in runs_in("FINISHED") if run.data.params.get("max_train_samples") == "64"]
    launch = next(run for run in launched if "mlflow.parentRunId" not in run.data.tags)
    assert launch.data.params["epochs"] == "1" and launch.data.params["learning_rate"] == "auto"
    trained = next(run for run in launched if run.data.tags.get("mlflow.parentRunId") == launch.info.run_id)
    assert trained.info.experiment_id == launch.info.experiment_id
    assert set(trained.data.metrics) >= set(FINAL_METRICS)
    assert trained.data.params["learning_rate"] == "2e-05" and trained.data.params["epochs"] == "1"
    assert runs_in("RUNNING") == []
    written = (train_project.path(train_project.train.reports_dir) / "metrics.json").read_text()
    assert trained.info.run_id in written  # the DVC metrics file of the train stage


@pytest.mark.slow
def test_mlflow_run_with_an_experiment_name_and_the_sweep_entry_point(train_project: Params) -> None:
    result = mlflow_run(
        "-e",
        "sweep",
        "-P",
        "models=tiny-bert",
        "-P",
        "seeds=1",
        "-P",
        "epochs=1",
        "-P",
        "max_train_samples=16",
        "--experiment-name",
        "named-by-user",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = store().get_experiment_by_name("named-by-user")
    runs = store().search_runs([experiment.experiment_id])
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert sum("seed" in run.data.tags and run.data.tags.get("sweep") != "parent" for run in runs) == 1


@pytest.mark.slow
def test_mlflow_run_with_a_bad_parameter_is_one_line(train_project: Params) -> None:
    result = mlflow_run("-P", "model=tiny-bert", "-P", "epochs=-1")
    assert result.returncode != 0
    assert "error: invalid option: --epochs = '-1'" in result.stderr
    assert "Traceback" not in result.stderr.split("=== Run")[0]


def test_a_params_yaml_edited_while_a_run_trains_does_not_break_it(
    validated_copy: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run reads params.yaml once, when it is planned: editing the file meanwhile (or breaking it) does not
    fail the run at its end, when the model is logged with its request limits."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store.db'}")
    options = RunOptions(epochs=1, max_train_samples=32, max_eval_samples=32)
    plan = plan_run(validated_copy, options, require_validated(validated_copy), model="tiny-bert", seed=3)
    (validated_copy.root / "params.yaml").write_text("train: [no longer valid\n", encoding="utf-8")
    summary = train_and_track(validated_copy, plan, log=lambda _: None)
    run = MlflowClient().get_run(summary.run_id)
    assert run.info.status == "FINISHED"
    served = mlflow.pyfunc.load_model(f"runs:/{summary.run_id}/model")
    assert served.model_config["max_pairs"] == validated_copy.serve.max_pairs
