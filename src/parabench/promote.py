"""`parabench promote`: per size class, the model with the best mean validation accuracy becomes the
`champion` of its registered model (parabench-small, parabench-regular, parabench-large).

The test split never chooses. A model is represented by its best-validation seed's run. A champion is never
replaced by a worse one (lower mean validation accuracy) on the same data version; the one replaced keeps
the alias `previous`. Rerunning registers nothing new: a version of the same source run is reused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from parabench.config import ParabenchError, Params
from parabench.report import best_validation_seed, class_order, metric_values
from parabench.sweep import ModelSweep, latest_sweeps, mean_std

MODEL_ARTIFACT = "model"


@dataclass(frozen=True)
class Candidate:
    """The model a size class would promote: its sweep and the best-validation seed that represents it."""

    sweep: ModelSweep
    seed: int

    @property
    def run_id(self) -> str:
        return self.sweep.runs[self.seed].info.run_id

    @property
    def mean_validation(self) -> float:
        return mean_std(metric_values(self.sweep.runs.values(), "validation_accuracy"))[0]

    def tags(self) -> dict[str, str]:
        """Why this version was promoted, recorded on the model version."""
        runs = self.sweep.runs.values()
        validation_mean, validation_std = mean_std(metric_values(runs, "validation_accuracy"))
        metrics = self.sweep.runs[self.seed].data.metrics
        return {
            "model": self.sweep.model,
            "size_class": self.sweep.size_class,
            "seed": str(self.seed),
            "source_run_id": self.run_id,
            "data_version": self.sweep.identity.data_version,
            "recipe_fingerprint": self.sweep.identity.recipe_fingerprint,
            "n_seeds": str(len(runs)),
            "mean_validation_accuracy": f"{validation_mean:.6f}",
            "std_validation_accuracy": f"{validation_std:.6f}",
            "validation_accuracy": f"{metrics['validation_accuracy']:.6f}",
            "test_accuracy": f"{metrics['test_accuracy']:.6f}",
            "mean_test_accuracy": f"{mean_std(metric_values(runs, 'test_accuracy'))[0]:.6f}",
        }


def candidates(sweeps: list[ModelSweep]) -> dict[str, Candidate]:
    """Per size class, the sweep with the best mean validation accuracy, at its best-validation seed."""
    best: dict[str, Candidate] = {}
    for sweep in (s for s in sweeps if s.runs):
        candidate = Candidate(sweep, best_validation_seed(sweep.runs))
        current = best.get(sweep.size_class)
        if current is None or candidate.mean_validation > current.mean_validation:
            best[sweep.size_class] = candidate
    return {size_class: best[size_class] for size_class in class_order(best)}


def champion(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding the alias, or None (also when the registered model does not exist yet)."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def keeps_champion(current: ModelVersion | None, candidate: Candidate) -> str | None:
    """Why the current champion stays (same data version and at least as good), or None to replace it."""
    if current is None or current.tags.get("data_version") != candidate.sweep.identity.data_version:
        return None
    recorded = float(current.tags.get("mean_validation_accuracy", "nan"))
    if current.tags.get("source_run_id") == candidate.run_id:
        return f"version {current.version} already is this run"
    if recorded >= candidate.mean_validation:
        return (
            f"version {current.version} ({current.tags.get('model')}) has mean validation accuracy "
            f"{recorded:.4f} >= {candidate.mean_validation:.4f} of {candidate.sweep.model}"
        )
    return None


def version_of_run(client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    """An existing version of the registered model made from this run."""
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return min(versions, key=lambda v: int(v.version)) if versions else None


def register(client: MlflowClient, name: str, candidate: Candidate) -> ModelVersion:
    """The candidate's version of the registered model: reused when it exists, else registered now."""
    version = version_of_run(client, name, candidate.run_id)
    if version is None:
        version = mlflow.register_model(
            f"runs:/{candidate.run_id}/{MODEL_ARTIFACT}", name, tags=candidate.tags()
        )
    return version


def promote_class(client: MlflowClient, name: str, candidate: Candidate, aliases: dict[str, str]) -> str:
    """Make the candidate champion of `name` unless the current champion is as good; say what it did."""
    current = champion(client, name, aliases["champion"])
    reason = keeps_champion(current, candidate)
    if reason:
        return f"{name}: champion kept, {reason}"
    version = register(client, name, candidate)
    if current is not None and current.version != version.version:
        client.set_registered_model_alias(name, aliases["previous"], current.version)
    client.set_registered_model_alias(name, aliases["champion"], version.version)
    return (
        f"{name}: version {version.version} ({candidate.sweep.model}, seed {candidate.seed}) is champion, "
        f"mean validation accuracy {candidate.mean_validation:.4f}"
    )


def registry_state(client: MlflowClient, prefix: str) -> list[str]:
    """One line per version of every registered model whose name starts with the prefix."""
    lines = []
    for model in client.search_registered_models(f"name LIKE '{prefix}%'"):
        aliases_of: dict[str, list[str]] = {}
        for alias, version in model.aliases.items():
            aliases_of.setdefault(str(version), []).append(alias)
        lines.append(f"{model.name}")
        for version in sorted(
            client.search_model_versions(f"name = '{model.name}'"), key=lambda v: int(v.version)
        ):
            tags = version.tags
            aliases = " ".join(f"@{alias}" for alias in sorted(aliases_of.get(str(version.version), [])))
            lines.append(
                f"  v{version.version} {aliases or '-'}  {tags.get('model')} seed {tags.get('seed')}  "
                f"mean validation {tags.get('mean_validation_accuracy')} over {tags.get('n_seeds')} "
                f"seeds  data {tags.get('data_version')}  run {tags.get('source_run_id')}"
            )
    return lines


def promote(
    params: Params, models: list[str], data_version: str | None = None, log: Callable[[str], None] = print
) -> list[str]:
    """Promote the best model of each size class; returns the registry state afterwards."""
    settings = params.raw["promote"]
    found = candidates(latest_sweeps(params, models, data_version))
    if not found:
        raise ParabenchError(f"no FINISHED sweep runs of {', '.join(models)}; run `parabench sweep` first")
    client = MlflowClient()
    for size_class, candidate in found.items():
        log(promote_class(client, f"{settings['name_prefix']}{size_class}", candidate, settings["aliases"]))
    return registry_state(client, settings["name_prefix"])
