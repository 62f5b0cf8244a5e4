"""`parabench sweep` as users run it, on tiny models: a parent run per model, a nested run per seed, and
resuming (finished seeds skipped, failed ones run again under the same parent).

The swept project built here is shared by test_report, test_promote and test_predict_serve: one sweep per
session (two small-class tiny models x two seeds, one epoch on 32 pairs, evaluation on 96 pairs)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner, Result

from parabench.cli import app
from parabench.config import PARAMS_ENV, ParabenchError, Params, load_params
from parabench.study.sweep import parse_models, parse_seeds
from parabench.tracking import client as tracking

SWEPT_MODELS = ("tiny-distilbert", "tiny-electra")
SWEPT_SEEDS = (13, 42)
TRAIN_OPTIONS = ("--epochs", "1", "--max-train-samples", "32")
EVAL_SAMPLES = 96
_SWEPT_FOLDER: dict[str, Path] = {}


def invoke(*args: str, exit_code: int = 0) -> Result:
    """Run `parabench ARGS` in-process, asserting its exit code."""
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == exit_code, result.output
    return result


def sweep_args(models: tuple[str, ...] = SWEPT_MODELS) -> list[str]:
    return ["sweep", "--models", ",".join(models), "--seeds", str(len(SWEPT_SEEDS)), *TRAIN_OPTIONS]


@contextmanager
def project_env(folder: Path) -> Iterator[Params]:
    """$PARABENCH_PARAMS and $MLFLOW_TRACKING_URI pointing at the project while the block runs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PARAMS_ENV, str(folder / "params.yaml"))
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        yield load_params(folder / "params.yaml")


def swept_folder(validated_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Once per session: a copy of the validated project with its own tracking store, swept by the CLI."""
    if "folder" not in _SWEPT_FOLDER:
        folder = Path(shutil.copytree(validated_project, tmp_path_factory.mktemp("swept") / "project"))
        params_file = folder / "params.yaml"
        raw = yaml.safe_load(params_file.read_text(encoding="utf-8"))
        raw["train"]["max_eval_samples"] = EVAL_SAMPLES
        params_file.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        with project_env(folder):
            invoke(*sweep_args())
        _SWEPT_FOLDER["folder"] = folder
    return _SWEPT_FOLDER["folder"]


@pytest.fixture(scope="module")
def swept(validated_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Params]:
    """The session's swept project, with the environment pointing at it for the module's tests."""
    with project_env(swept_folder(validated_project, tmp_path_factory)) as params:
        yield params


def client_for(params: Params) -> tuple[MlflowClient, str]:
    """A client on the project's tracking store and the experiment's id."""
    experiment_id = tracking.configure(params)
    return MlflowClient(), experiment_id


def runs_of(params: Params, model: str) -> list[Run]:
    """Every run tagged with the model (parents, children, any status)."""
    client, experiment_id = client_for(params)
    return client.search_runs([experiment_id], f"tags.model = '{model}'", max_results=1000)


def parent_and_children(params: Params, model: str) -> tuple[Run, list[Run]]:
    runs = runs_of(params, model)
    parents = [run for run in runs if run.data.tags.get("sweep") == "parent"]
    assert len(parents) == 1, "one parent run per model, reused on reruns"
    return parents[0], [run for run in runs if run.data.tags.get("sweep") != "parent"]


def test_a_parent_per_model_holds_a_finished_child_per_seed(swept: Params) -> None:
    summary = json.loads(swept.path(swept.sweep.summary_file).read_text(encoding="utf-8"))
    assert list(summary) == list(SWEPT_MODELS)
    for model in SWEPT_MODELS:
        parent, children = parent_and_children(swept, model)
        tags = parent.data.tags
        assert tags["model"] == model and tags["size_class"] == "small"
        assert tags["data_version"] and tags["recipe_fingerprint"]
        finished = [run for run in children if run.info.status == "FINISHED"]
        assert sorted(int(run.data.tags["seed"]) for run in finished) == sorted(SWEPT_SEEDS)
        for child in finished:
            assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert child.data.tags["sweep_parent"] == parent.info.run_id
            assert {k: child.data.tags[k] for k in ("data_version", "recipe_fingerprint")} == {
                k: tags[k] for k in ("data_version", "recipe_fingerprint")
            }
        accuracies = [run.data.metrics["test_accuracy"] for run in finished]
        assert parent.data.metrics["n_seeds"] == len(SWEPT_SEEDS)
        assert parent.data.metrics["test_accuracy_mean"] == pytest.approx(np.mean(accuracies))
        assert parent.data.metrics["test_accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))
        assert summary[model]["parent_run_id"] == parent.info.run_id
        assert summary[model]["seeds"] == list(SWEPT_SEEDS)
        assert summary[model]["test_accuracy_mean"] == parent.data.metrics["test_accuracy_mean"]


def test_rerun_skips_finished_seeds_and_reruns_only_a_failed_one(swept: Params, tmp_path: Path) -> None:
    model = SWEPT_MODELS[0]
    with project_env(Path(shutil.copytree(swept.root, tmp_path / "project"))) as params:
        before = {run.info.run_id for run in runs_of(params, model)}
        output = invoke(*sweep_args((model,))).output
        assert all(f"{model} seed {seed}: skipped" in output for seed in SWEPT_SEEDS)
        assert {run.info.run_id for run in runs_of(params, model)} == before

        parent, children = parent_and_children(params, model)
        failed = next(run for run in children if run.data.tags["seed"] == str(SWEPT_SEEDS[1]))
        client_for(params)[0].set_terminated(failed.info.run_id, "FAILED")
        # A run that failed wrote no result record (records are written once a run ended FINISHED).
        [record] = params.path(params.results.dir).glob(f"*--{failed.info.run_id}.json")
        record.unlink()
        output = invoke(*sweep_args((model,))).output
        assert f"{model} seed {SWEPT_SEEDS[0]}: skipped" in output
        assert f"{model} seed {SWEPT_SEEDS[1]}: skipped" not in output

        new = [run for run in runs_of(params, model) if run.info.run_id not in before]
        assert len(new) == 1 and new[0].data.tags["seed"] == str(SWEPT_SEEDS[1])
        assert new[0].info.status == "FINISHED"
        assert new[0].data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert parent_and_children(params, model)[0].info.run_id == parent.info.run_id


def test_seeds_are_a_count_or_a_list(swept: Params) -> None:
    assert parse_seeds(None, swept) == [13, 42, 87, 100, 2023]
    assert parse_seeds("2", swept) == [13, 42]
    assert parse_seeds("7,11,7", swept) == [7, 11]
    assert parse_seeds("42,", swept) == [42]
    for bad in ("0", "6", "x", "1,y"):
        with pytest.raises(ParabenchError, match="--seeds"):
            parse_seeds(bad, swept)


def test_models_default_to_params_and_unknown_ones_fail_before_training(swept: Params) -> None:
    assert parse_models(None, swept) == list(swept.sweep.models)
    assert parse_models("tiny-bert, tiny-electra", swept) == ["tiny-bert", "tiny-electra"]
    result = invoke("sweep", "--models", "tiny-bert,no-such-model", exit_code=1)
    assert "unknown model 'no-such-model'" in result.output
    assert not runs_of(swept, "tiny-bert")
