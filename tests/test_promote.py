"""`parabench promote` on the session's tiny sweep: the best mean validation accuracy of the class becomes
parabench-small@champion; reruns add nothing; a worse model never replaces a champion on the same data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import SWEPT_MODELS, client_for, invoke, runs_of
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from parabench.config import Params

NAME = "parabench-small"


@pytest.fixture
def promoted(swept_copy: Params) -> MlflowClient:
    """A client on the swept project's registry after one `parabench promote`."""
    output = invoke("promote").output  # no --models: every model swept on the data version competes
    assert f"{NAME}:" in output and "@champion" in output
    return client_for(swept_copy)[0]


def champion(client: MlflowClient, alias: str = "champion") -> ModelVersion:
    return client.get_model_version_by_alias(NAME, alias)


def version_count(client: MlflowClient) -> int:
    return len(client.search_model_versions(f"name = '{NAME}'"))


def validation_by_seed(params: Params, model: str) -> dict[int, float]:
    """By hand: the validation accuracy of each FINISHED seed run (newest per seed) of the model."""
    values: dict[int, float] = {}
    for run in sorted(runs_of(params, model), key=lambda r: r.info.start_time, reverse=True):
        if run.info.status == "FINISHED" and run.data.tags.get("sweep") != "parent":
            values.setdefault(int(run.data.tags["seed"]), run.data.metrics["final_validation_accuracy"])
    return values


def test_the_best_mean_validation_model_is_champion_at_its_best_seed(
    swept_copy: Params, promoted: MlflowClient
) -> None:
    by_model = {model: validation_by_seed(swept_copy, model) for model in SWEPT_MODELS}
    means = {model: np.mean(list(values.values())) for model, values in by_model.items()}
    best = max(SWEPT_MODELS, key=lambda m: (means[m], -SWEPT_MODELS.index(m)))
    version = champion(promoted)
    tags = version.tags
    assert tags["model"] == best and tags["size_class"] == "small" and tags["n_seeds"] == "2"
    assert float(tags["mean_validation_accuracy"]) == pytest.approx(means[best], abs=1e-6)
    assert int(tags["seed"]) == max(by_model[best], key=lambda s: (by_model[best][s], -s))
    assert tags["source_run_id"] == version.run_id
    assert tags["data_version"] == runs_of(swept_copy, best)[0].data.tags["data_version"]
    assert {"std_validation_accuracy", "test_accuracy", "recipe_fingerprint"} <= set(tags)
    assert "previous" not in promoted.get_registered_model(NAME).aliases
    state_file = swept_copy.path(swept_copy.promote.state_file)
    state = json.loads(state_file.read_text(encoding="utf-8"))
    assert [v["version"] for v in state[NAME] if "champion" in v["aliases"]] == [int(version.version)]


def test_promoting_again_registers_nothing(promoted: MlflowClient) -> None:
    count, version = version_count(promoted), champion(promoted).version
    output = invoke("promote", "--models", ",".join(SWEPT_MODELS)).output
    assert "champion kept" in output
    assert version_count(promoted) == count and champion(promoted).version == version


def test_a_worse_model_never_replaces_the_champion_on_the_same_data(promoted: MlflowClient) -> None:
    current = champion(promoted)
    other = next(model for model in SWEPT_MODELS if model != current.tags["model"])
    count = version_count(promoted)

    promoted.set_model_version_tag(NAME, current.version, "mean_validation_accuracy", "0.999")
    output = invoke("promote", "--models", other).output
    assert "champion kept" in output and "0.9990" in output
    assert version_count(promoted) == count and champion(promoted).version == current.version

    promoted.set_model_version_tag(NAME, current.version, "mean_validation_accuracy", "0.001")
    invoke("promote", "--models", other)
    assert version_count(promoted) == count + 1
    assert champion(promoted).tags["model"] == other
    assert champion(promoted, "previous").version == current.version


def test_a_champion_on_other_data_is_replaced(promoted: MlflowClient) -> None:
    current = champion(promoted)
    challenger = next(model for model in SWEPT_MODELS if model != current.tags["model"])
    promoted.set_model_version_tag(NAME, current.version, "mean_validation_accuracy", "0.999")
    promoted.set_model_version_tag(NAME, current.version, "data_version", "sha256:older")
    versions = promoted.search_model_versions(f"name = '{NAME}'")
    earlier = [v.version for v in versions if v.tags["model"] == challenger]
    output = invoke("promote", "--models", challenger).output
    assert f"{NAME}: version" in output and "is champion" in output
    assert champion(promoted).tags["model"] == challenger
    assert champion(promoted, "previous").version == current.version
    assert version_count(promoted) == len(versions) + (0 if earlier else 1)
    assert not earlier or champion(promoted).version == earlier[0], "a version of the same run is reused"
