"""Sentence-embedding baselines (frozen encoder + cosine threshold / logistic regression) are models like any
other: `train` logs a complete run whose model serves pairs with the same signature, chosen on validation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import copy_project, project_env
from mlflow.tracking import MlflowClient

from parabench.common.names import FINAL_METRICS
from parabench.config import ConfigError, Params, RunOptions, load_params
from parabench.data.prepare import load_frames
from parabench.data.validate import require_validated
from parabench.models.embeddings import BELOW_HALF, Head, cosine, embed_pairs
from parabench.models.zoo import get_spec, load_zoo
from parabench.serving.pyfunc import logged_from_code
from parabench.training.baselines import best_threshold
from parabench.training.evaluation import subsample
from parabench.training.plan import plan_run
from parabench.training.run import RunSummary, train_and_track

BASELINES = ["tiny-bert+cosine", "tiny-bert+logreg"]
CHOSEN = {"cosine": "threshold", "logreg": "C"}
PAIRS = pd.DataFrame(
    {
        "sentence1": ["A man is eating.", "The cat sat on the mat.", "Stocks fell sharply on Monday."],
        "sentence2": ["A man eats.", "A dog runs in the park.", "Shares dropped steeply on Monday."],
    }
)
SEED, TRAIN_PAIRS = 7, 64
PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture(scope="module")
def baseline_project(validated_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Params]:
    """A writable validated project with its own tracking store; evaluation capped to keep tests fast."""
    destination = tmp_path_factory.mktemp("baselines") / "project"
    with project_env(copy_project(validated_project, destination, train={"max_eval_samples": 96})) as params:
        yield params


@pytest.fixture(scope="module")
def runs(baseline_project: Params) -> dict[str, RunSummary]:
    """One run of each tiny baseline (train_and_track, as `parabench train --model KEY` calls it)."""
    done = {}
    for key in BASELINES:
        given = RunOptions(max_train_samples=TRAIN_PAIRS)
        plan = plan_run(baseline_project, given, require_validated(baseline_project), model=key, seed=SEED)
        done[key] = train_and_track(baseline_project, plan, log=lambda _: None)
    return done


def test_baselines_are_zoo_models_in_their_encoders_class() -> None:
    zoo = load_zoo()
    for encoder in ("all-MiniLM-L6-v2", "all-mpnet-base-v2", "tiny-bert"):
        for head in ("cosine", "logreg"):
            spec = zoo[f"{encoder}+{head}"]
            assert (spec.head, spec.encoder, spec.recipe, spec.lora) == (head, encoder, None, False)
            assert (spec.source, spec.family, spec.size_class) == (
                zoo[encoder].source,
                zoo[encoder].family,
                zoo[encoder].size_class,
            )
    assert get_spec("all-MiniLM-L6-v2+cosine").size_class == "small"
    assert get_spec("all-mpnet-base-v2+logreg").size_class == "regular"


@pytest.mark.parametrize("key", BASELINES)
def test_each_baseline_logs_a_complete_run_whose_model_serves_pairs(
    baseline_project: Params, runs: dict[str, RunSummary], key: str
) -> None:
    client = MlflowClient()
    run = client.get_run(runs[key].run_id)
    spec = get_spec(key)
    assert run.info.status == "FINISHED"
    assert set(FINAL_METRICS) <= set(run.data.metrics)
    assert run.data.metrics["kept_epoch"] == 0
    assert run.data.metrics["num_parameters"] == int(run.data.params["num_parameters"]) > 0
    assert (
        run.data.metrics["train_samples_per_second"] > 0 and run.data.metrics["eval_samples_per_second"] > 0
    )
    assert {k: run.data.tags[k] for k in ("model", "size_class", "family", "seed")} == {
        "model": key,
        "size_class": spec.size_class,
        "family": spec.family,
        "seed": str(SEED),
    }
    params = run.data.params
    assert params["head"] == spec.head and params["train_samples"] == str(TRAIN_PAIRS)
    assert CHOSEN[spec.head] in params and "learning_rate" not in params
    if spec.head == "logreg":
        grid = baseline_project.baselines.c_grid
        assert float(params["C"]) in grid and params["c_grid"] == str(sorted(grid))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts >= {"confusion_matrix_test.png", "predictions_test.csv", "metrics.json"}
    folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model"))
    assert {path.name for path in (folder / "artifacts").iterdir()} == {"head.json", "encoder"}
    assert not [path for path in folder.rglob("*") if path.suffix in (".pkl", ".pickle", ".joblib")]

    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert logged_from_code(model.metadata.flavors)  # code + JSON head, no pickle
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["sentence1", "sentence2"]
    assert [c.name for c in model.metadata.get_output_schema().inputs] == ["label", "probability"]
    prediction = model.predict(PAIRS)
    assert list(prediction.columns) == ["label", "probability"] and len(prediction) == len(PAIRS)
    assert prediction["probability"].between(0.0, 1.0).all()
    assert ((prediction["probability"] >= 0.5) == (prediction["label"] == 1)).all()
    table = pd.read_csv(client.download_artifacts(run.info.run_id, "predictions_test.csv"))
    assert len(table) == 96 and ((table["probability"] >= 0.5) == (table["predicted_label"] == 1)).all()
    assert np.isclose((table["predicted_label"] == table["label"]).mean(), run.data.metrics["test_accuracy"])
    with pytest.raises(mlflow.exceptions.MlflowException, match="limit is 256 pairs"):
        model.predict(pd.concat([PAIRS] * 100, ignore_index=True))  # serve.max_pairs, as served models


def validation_pairs(params: Params) -> pd.DataFrame:
    """The validation pairs the runs used (the same capped, seeded draw)."""
    frame = load_frames(params.path(params.data.processed_dir))["validation"]
    return subsample(frame, params.train.max_eval_samples, SEED)


def test_the_cosine_threshold_is_the_validation_best_and_the_lowest_of_equals(
    baseline_project: Params, runs: dict[str, RunSummary]
) -> None:
    run = MlflowClient().get_run(runs["tiny-bert+cosine"].run_id)
    threshold = float(run.data.params["threshold"])
    served: Any = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").unwrap_python_model()
    frame = validation_pairs(baseline_project)
    u, v = embed_pairs(
        served.tokenizer, served.model, frame["sentence1"].tolist(), frame["sentence2"].tolist(), 128, 64
    )
    scores, labels = cosine(u, v), frame["label"].to_numpy()

    def accuracy(t: float) -> float:
        return float(((scores >= t) == (labels == 1)).mean())

    # Every threshold labels the pairs as one of the distinct scores (or +inf) does: try them all.
    candidates = [*np.unique(scores), np.inf]
    best = max(accuracy(t) for t in candidates)
    assert accuracy(threshold) == best == run.data.metrics["final_validation_accuracy"]
    assert all(accuracy(t) < best for t in candidates if t < threshold)


def test_threshold_ties_go_to_the_lower_and_probabilities_agree_with_labels() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.4, 0.9])
    labels = np.array([0, 1, 0, 1, 1, 0])  # 0.2 and 0.4 both get 4 of 6 right: 0.2, the lower
    candidates = [*np.unique(scores), np.inf]
    right = {t: int(((scores >= t) == (labels == 1)).sum()) for t in candidates}
    lowest_best = min(t for t, n in right.items() if n == max(right.values()))
    assert best_threshold(scores, labels) == lowest_best == 0.2
    assert best_threshold(np.array([0.5, 0.5]), np.array([0, 0])) > 0.5  # all negative: above every score
    head = Head("cosine", threshold=0.5, slope=0.0)  # a flat slope: the clamp still follows the threshold
    u = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    v = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])  # cos = 0.707, 1, 0
    assert list(head.probabilities(u, v)) == [0.5, 0.5, BELOW_HALF]


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"c_grid": []}, "baselines.c_grid"),
        ({"c_grid": [0.1, -1]}, "baselines.c_grid.1 = -1"),
        ({"max_iter": 0}, "baselines.max_iter = 0"),
        ({"embed_batch_size": "big"}, "baselines.embed_batch_size = 'big'"),
        ({"solver": "saga"}, "unknown key 'baselines.solver'"),
    ],
)
def test_a_bad_baselines_value_is_one_line(tmp_path: Path, change: dict[str, Any], text: str) -> None:
    raw = yaml.safe_load(PARAMS_FILE.read_text(encoding="utf-8"))
    params_file = tmp_path / "params.yaml"
    raw["baselines"].update(change)
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_params(params_file)
    assert text in str(error.value) and "\n" not in str(error.value)
