"""Distillation and seed ensembles, as a user runs them: `parabench teacher` caches a fine-tuned teacher's
train-split logits, `--recipe`/`--teacher` students train on them, `<model>+ensemble` averages a sweep's
seeds as one tracked, served, promotable-on-request model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import TRAIN_OPTIONS, copy_project, invoke, project_env, runs_of
from mlflow.entities import Run

from parabench.common.names import FINAL_METRICS, VALIDATION_SCORE
from parabench.config import Params
from parabench.data.prepare import load_frames

MEMBER, ENSEMBLE, STUDENT = "tiny-bert", "tiny-bert+ensemble", "tiny-distilbert"
SEEDS = (13, 42)
PAIRS = pd.DataFrame(
    {
        "sentence1": ["A man is eating.", "Stocks fell sharply on Monday."],
        "sentence2": ["A man eats.", "Shares dropped steeply on Monday."],
    }
)


@pytest.fixture(scope="module")
def project(validated_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Params]:
    """A validated copy with its own store, swept as a user would: the ensemble named before its members."""
    destination = tmp_path_factory.mktemp("ensemble") / "project"
    with project_env(copy_project(validated_project, destination, train={"max_eval_samples": 96})) as params:
        invoke("sweep", "--models", f"{ENSEMBLE},{MEMBER}", "--seeds", str(len(SEEDS)), *TRAIN_OPTIONS)
        yield params


def seed_runs(params: Params, model: str) -> dict[int, Run]:
    return {
        int(run.data.tags["seed"]): run
        for run in runs_of(params, model)
        if run.data.tags.get("sweep") != "parent" and run.info.status == "FINISHED"
    }


def test_an_ensemble_run_is_the_mean_of_its_members_and_serves_pairs(project: Params) -> None:
    members = seed_runs(project, MEMBER)
    assert sorted(members) == list(SEEDS)
    ensembles = seed_runs(project, ENSEMBLE)
    assert list(ensembles) == [SEEDS[0]], "an ensemble is swept once, after its members"
    run = ensembles[SEEDS[0]]
    assert set(FINAL_METRICS) <= set(run.data.metrics)
    assert run.data.params["n_members"] == "2" and run.data.tags["ensemble_members"] == "2"
    assert {run.data.params[f"member_seed{seed}"] for seed in SEEDS} == {
        r.info.run_id for r in members.values()
    }
    assert run.data.metrics["num_parameters"] == sum(
        r.data.metrics["num_parameters"] for r in members.values()
    )
    speeds = [r.data.metrics["train_samples_per_second"] for r in members.values()]
    assert run.data.metrics["train_samples_per_second"] == pytest.approx(1 / sum(1 / s for s in speeds))

    table = pd.read_csv(mlflow.MlflowClient().download_artifacts(run.info.run_id, "predictions_test.csv"))
    assert len(table) == 96
    assert (table["predicted_label"] == table["label"]).mean() == pytest.approx(
        run.data.metrics["test_accuracy"]
    )
    loaded = [mlflow.pyfunc.load_model(f"runs:/{r.info.run_id}/model") for r in members.values()]
    each = [model.predict(table[["sentence1", "sentence2"]])["probability"].to_numpy() for model in loaded]
    assert np.allclose(table["probability"], np.mean(each, axis=0), atol=1e-5), (
        "the members' mean probability"
    )

    served = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    one_by_one = [model.predict(PAIRS) for model in loaded]
    prediction = served.predict(PAIRS)
    assert list(prediction.columns) == ["label", "probability"]
    expected = np.mean([p["probability"].to_numpy() for p in one_by_one], axis=0)
    assert np.allclose(prediction["probability"], expected, atol=1e-6)
    assert ((prediction["probability"] >= 0.5) == (prediction["label"] == 1)).all()


def test_an_ensemble_without_two_finished_seeds_is_one_line_and_no_run(project: Params) -> None:
    before = len(runs_of(project, ENSEMBLE))
    result = invoke("train", "--model", ENSEMBLE, "--epochs", "2", "--max-train-samples", "32", exit_code=1)
    assert (
        "needs FINISHED runs of tiny-bert with at least 2 seeds" in result.output
        and "found 0" in result.output
    )
    assert len(runs_of(project, ENSEMBLE)) == before


def set_allow_ensembles(params: Params, allowed: bool) -> None:
    params_file = params.root / "params.yaml"
    raw = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    raw["promote"]["allow_ensembles"] = allowed
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


def champion_model(params: Params) -> str:
    version = mlflow.MlflowClient().get_model_version_by_alias("parabench-regular", "champion")
    return version.tags["model"]


def test_an_ensemble_is_promoted_only_when_allowed(project: Params) -> None:
    members, ensemble = seed_runs(project, MEMBER), seed_runs(project, ENSEMBLE)[SEEDS[0]]
    member_mean = np.mean([r.data.metrics[VALIDATION_SCORE] for r in members.values()])
    ensemble_better = ensemble.data.metrics[VALIDATION_SCORE] > member_mean
    try:
        output = invoke("promote", "--models", f"{MEMBER},{ENSEMBLE}").output
        assert f"{ENSEMBLE}: a seed ensemble, not a candidate" in output
        assert champion_model(project) == MEMBER
        set_allow_ensembles(project, True)
        output = invoke("promote", "--models", f"{MEMBER},{ENSEMBLE}").output
        assert "not a candidate" not in output
        assert champion_model(project) == (ENSEMBLE if ensemble_better else MEMBER)
    finally:
        set_allow_ensembles(project, False)


def test_teacher_logits_are_cached_from_the_best_run_and_named_when_missing(project: Params) -> None:
    members = seed_runs(project, MEMBER)
    best = max(members.values(), key=lambda r: r.data.metrics[VALIDATION_SCORE])
    untrained = "tiny-electra"  # no test of this module trains it
    assert "has no FINISHED training run" in invoke("teacher", "--model", untrained, exit_code=1).output
    invoke("teacher", "--model", MEMBER)
    folder = project.path(project.distill.dir)
    logits = pd.read_parquet(folder / f"{MEMBER}.parquet")
    description = json.loads((folder / f"{MEMBER}.json").read_text(encoding="utf-8"))
    train = load_frames(project.path(project.data.processed_dir))["train"]
    assert logits["idx"].tolist() == train["idx"].tolist() and len(logits) == 3668
    assert np.isfinite(logits["teacher_logit"]).all() and logits["teacher_logit"].std() > 0
    assert description["run_id"] == best.info.run_id and description["pairs"] == 3668
    assert sorted(folder.iterdir()) == [folder / f"{MEMBER}.json", folder / f"{MEMBER}.parquet"]


def epoch_losses(run_id: str) -> list[float]:
    return [m.value for m in mlflow.MlflowClient().get_metric_history(run_id, "train_loss")]


def student(*distill: str) -> str:
    output = invoke(
        "train", "--model", STUDENT, "--seed", "5", *TRAIN_OPTIONS, "--epochs", "2", *distill
    ).output
    return output.split("run id: ")[1].split()[0]


def test_a_student_trains_on_the_teacher_logits(project: Params) -> None:
    invoke("teacher", "--model", MEMBER)
    plain = student()
    hard_only = student("--teacher", MEMBER, "--distill-temperature", "2", "--distill-weight", "0")
    soft = student("--teacher", MEMBER, "--distill-temperature", "2", "--distill-weight", "1")
    assert epoch_losses(hard_only) == epoch_losses(plain), "weight 0 is the labels' loss alone"
    assert epoch_losses(soft) != epoch_losses(plain)
    logged = mlflow.MlflowClient().get_run(soft).data.params
    description = json.loads(
        (project.path(project.distill.dir) / f"{MEMBER}.json").read_text(encoding="utf-8")
    )
    assert (logged["teacher"], logged["distill_temperature"], logged["distill_weight"]) == (
        MEMBER,
        "2.0",
        "1.0",
    )
    assert logged["teacher_run_id"] == description["run_id"]
    assert "teacher" not in mlflow.MlflowClient().get_run(plain).data.params


def test_missing_or_stale_teacher_logits_are_one_line_and_no_run(project: Params) -> None:
    invoke("teacher", "--model", MEMBER)
    before = len(runs_of(project, STUDENT))
    given = ("--distill-temperature", "2", "--distill-weight", "0.5")
    result = invoke(
        "train", "--model", STUDENT, *TRAIN_OPTIONS, "--teacher", "tiny-electra", *given, exit_code=1
    )
    assert "no cached logits of the teacher tiny-electra" in result.output
    description_file = project.path(project.distill.dir) / f"{MEMBER}.json"
    description = json.loads(description_file.read_text(encoding="utf-8"))
    description_file.write_text(json.dumps({**description, "data_version": "0" * 64}), encoding="utf-8")
    result = invoke("train", "--model", STUDENT, *TRAIN_OPTIONS, "--teacher", MEMBER, *given, exit_code=1)
    assert "are of data 000000000000" in result.output
    (project.path(project.distill.dir) / f"{MEMBER}.parquet").write_text("not parquet", encoding="utf-8")
    description_file.write_text(json.dumps(description), encoding="utf-8")
    result = invoke("train", "--model", STUDENT, *TRAIN_OPTIONS, "--teacher", MEMBER, *given, exit_code=1)
    assert "is not a teacher logits file" in result.output
    assert len(runs_of(project, STUDENT)) == before
