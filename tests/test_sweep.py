"""`parabench sweep` as users run it, on tiny models (the session's sweep, conftest `swept`): a parent run
per model, a nested run per seed, and resuming (finished seeds skipped, failed ones run again under the same
parent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    SWEPT_MODELS,
    SWEPT_SEEDS,
    client_for,
    copy_project,
    invoke,
    project_env,
    runs_of,
    sweep_args,
)
from mlflow.entities import Run

from parabench.config import ParabenchError, Params
from parabench.study.sweep import parse_models, parse_seeds


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
    with project_env(copy_project(swept.root, tmp_path / "project")) as params:
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
