"""`parabench promote`: per size class, the model with the best mean validation accuracy becomes the
`champion` of its registered model (parabench-small, parabench-regular, parabench-large). Every recipe a model
was swept with competes (a distilled student against the same model fine-tuned alone); a seed ensemble only
when params.yaml promote.allow_ensembles is true.

The test split never chooses. A model is represented by its best-validation seed's run. A champion is never
replaced by a worse one (lower mean validation accuracy) on the same data version; the one replaced keeps
the alias `previous`. Rerunning registers nothing new: a version of the same source run is reused.
Promotions against one tracking store take turns (a lock per tracking URI), so two `promote` started
together cannot both register the same run or leave the worse model as champion.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from filelock import FileLock, Timeout
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from parabench.common.files import require_writable, write_json
from parabench.common.names import VALIDATION_SCORE
from parabench.config import ParabenchError, Params
from parabench.results.store import all_records
from parabench.study.statistics import class_order
from parabench.study.sweep import ModelSweep, groups_by_model, mean_std, named, sweeps_by_model

MODEL_ARTIFACT = "model"


@dataclass(frozen=True)
class Candidate:
    """The sweep a size class would promote, represented by the run of its best-validation seed."""

    sweep: ModelSweep

    @property
    def run_id(self) -> str:
        return self.sweep.runs[self.sweep.best_seed].info.run_id

    @property
    def mean_validation(self) -> float:
        return self.sweep.mean(VALIDATION_SCORE)

    def tags(self) -> dict[str, str]:
        """Why this version was promoted, recorded on the model version."""
        validation_mean, validation_std = mean_std(self.sweep.values(VALIDATION_SCORE))
        best = self.sweep.runs[self.sweep.best_seed].data.metrics
        return {
            "model": self.sweep.model,
            "size_class": self.sweep.size_class,
            "seed": str(self.sweep.best_seed),
            "source_run_id": self.run_id,
            "data_version": self.sweep.identity.data_version,
            "recipe_fingerprint": self.sweep.identity.recipe_fingerprint,
            "recipe": self.sweep.runs[self.sweep.best_seed].data.params.get("recipe", ""),
            "n_seeds": str(len(self.sweep.runs)),
            "mean_validation_accuracy": f"{validation_mean:.6f}",
            "std_validation_accuracy": f"{validation_std:.6f}",
            "validation_accuracy": f"{best[VALIDATION_SCORE]:.6f}",
            "test_accuracy": f"{best['test_accuracy']:.6f}",
            "mean_test_accuracy": f"{self.sweep.mean('test_accuracy'):.6f}",
        }


def candidates(sweeps: list[ModelSweep]) -> dict[str, Candidate]:
    """Per size class, the sweep with the best mean validation accuracy (the first listed on a tie)."""
    best: dict[str, Candidate] = {}
    for candidate in map(Candidate, sweeps):
        current = best.get(candidate.sweep.size_class)
        if current is None or candidate.mean_validation > current.mean_validation:
            best[candidate.sweep.size_class] = candidate
    return {size_class: best[size_class] for size_class in class_order(best)}


def records_only(
    params: Params, found: dict[str, Candidate], models: list[str] | None, data_version: str | None
) -> list[str]:
    """One line per size class whose best model by the result records (results/ and the store) is not the
    candidate this store can promote: records carry no weights, so it is reported, not promoted."""
    records = all_records(params)
    groups = [each[0] for each in groups_by_model(params, records, models, data_version).values()]
    if not params.promote.allow_ensembles:
        groups = [group for group in groups if not group.is_ensemble]
    lines = []
    for size_class in class_order(group.size_class for group in groups):
        best = max(
            (group for group in groups if group.size_class == size_class),
            key=lambda group: group.mean(VALIDATION_SCORE),
        )
        candidate = found.get(size_class)
        if (
            candidate is None
            or candidate.sweep.identity.model != best.model
            or (candidate.sweep.identity.recipe_fingerprint != best.key.recipe_fingerprint)
        ):
            lines.append(
                f"{size_class}: {best.model} leads by its result records ({len(best.runs)} seeds, mean "
                f"validation accuracy {best.mean(VALIDATION_SCORE):.4f}) but has no weights in this tracking "
                f"store: reported, not promoted (train it here with `parabench sweep --models {best.model}`)"
            )
    return lines


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
    if current.tags.get("source_run_id") == candidate.run_id:
        return f"version {current.version} already is this run"
    recorded = float(current.tags.get("mean_validation_accuracy", "nan"))
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
    """The candidate's version of the registered model (reused when one exists, else registered now),
    tagged with why it is promoted."""
    version = version_of_run(client, name, candidate.run_id) or mlflow.register_model(
        f"runs:/{candidate.run_id}/{MODEL_ARTIFACT}", name
    )
    for key, value in candidate.tags().items():
        client.set_model_version_tag(name, version.version, key, value)
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
        f"{name}: version {version.version} ({candidate.sweep.model}, seed {candidate.sweep.best_seed}) "
        f"is champion, mean validation accuracy {candidate.mean_validation:.4f}"
    )


def registry_state(client: MlflowClient, prefix: str) -> dict[str, list[dict[str, Any]]]:
    """Every version of the registered models whose names start with the prefix: aliases and tags."""
    state = {}
    for model in client.search_registered_models(f"name LIKE '{prefix}%'"):
        versions = sorted(
            client.search_model_versions(f"name = '{model.name}'"), key=lambda v: int(v.version)
        )
        state[model.name] = [
            {
                "version": int(version.version),
                "aliases": sorted(a for a, v in model.aliases.items() if str(v) == str(version.version)),
                **version.tags,
            }
            for version in versions
        ]
    return state


def state_lines(state: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The registry state as text, a line per version."""
    lines = []
    for name, versions in state.items():
        lines.append(name)
        lines += [
            f"  v{v['version']} {' '.join(f'@{a}' for a in v['aliases']) or '-'}  {v.get('model')} seed "
            f"{v.get('seed')}  mean validation {v.get('mean_validation_accuracy')} over {v.get('n_seeds')} "
            f"seeds  data {v.get('data_version')}  run {v.get('source_run_id')}"
            for v in versions
        ]
    return lines


def registry_lock(uri: str) -> FileLock:
    """The lock promotions to one tracking store take turns on (one file per URI, shared by every checkout
    on this machine)."""
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return FileLock(Path(tempfile.gettempdir()) / f"parabench-registry-{digest}.lock")


def promote(
    params: Params,
    models: list[str] | None = None,
    data_version: str | None = None,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Promote the best model of each size class; write the registry state (params.yaml promote.state_file)
    and return it as text."""
    settings = params.promote
    require_writable(params.path(settings.state_file))  # before the registry changes
    sweeps = [sweep for found in sweeps_by_model(params, models, data_version).values() for sweep in found]
    if not settings.allow_ensembles:
        for sweep in (sweep for sweep in sweeps if sweep.is_ensemble):
            log(
                f"{sweep.model}: a seed ensemble, not a candidate "
                "(params.yaml promote.allow_ensembles: false)"
            )
        sweeps = [sweep for sweep in sweeps if not sweep.is_ensemble]
    found = candidates(sweeps)
    for line in records_only(params, found, models, data_version):
        log(line)
    if not found:
        raise ParabenchError(
            f"no FINISHED sweep runs with weights of {named(models)} in this tracking store; "
            "run `parabench sweep` first"
        )
    client = MlflowClient()
    lock = registry_lock(mlflow.get_tracking_uri())
    try:
        with lock.acquire(timeout=settings.lock_timeout_s):
            for size_class, candidate in found.items():
                name = f"{settings.name_prefix}{size_class}"
                log(promote_class(client, name, candidate, settings.aliases.model_dump()))
    except Timeout as error:
        raise ParabenchError(
            f"another `parabench promote` has held {lock.lock_file} for over {settings.lock_timeout_s} s; "
            "try again when it has finished"
        ) from error
    state = registry_state(client, settings.name_prefix)
    write_json(params.path(settings.state_file), state)
    return state_lines(state)
