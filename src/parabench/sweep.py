"""`parabench sweep`: every model with every seed; one MLflow parent run per model, a nested run per seed.

A sweep is resumable: a seed that already has a FINISHED run with the same model, recipe fingerprint and
data version is skipped; failed, killed or interrupted seeds run again, under the same parent run.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.entities import Run, RunStatus, ViewType
from mlflow.tracking import MlflowClient

from parabench import tracking
from parabench.config import ParabenchError, Params
from parabench.data.validate import require_validated
from parabench.run import choose_recipe, recipe_fingerprint, train_and_track, write_metrics_file
from parabench.zoo import get_spec

PARENT_TAG = "sweep"
PARENT_VALUE = "parent"
SESSION_VALUE = "session"
SWEEP_PARENT_TAG = "sweep_parent"
MAX_RESULTS = 10_000
FINISHED = RunStatus.to_string(RunStatus.FINISHED)


@dataclass(frozen=True)
class Identity:
    """What makes runs of one model comparable across seeds: the same recipe and the same data."""

    model: str
    recipe_fingerprint: str
    data_version: str

    def tags(self) -> dict[str, str]:
        return {
            "model": self.model,
            "recipe_fingerprint": self.recipe_fingerprint,
            "data_version": self.data_version,
        }

    def filter(self) -> str:
        """An MLflow search filter matching runs that carry these three tags."""
        return " and ".join(f"tags.{key} = '{quoted(value)}'" for key, value in self.tags().items())

    @classmethod
    def of(cls, run: Run) -> Identity:
        tags = run.data.tags
        return cls(tags["model"], tags["recipe_fingerprint"], tags["data_version"])


@dataclass(frozen=True)
class ModelSweep:
    """One model's sweep as recorded in MLflow: its parent run and the newest FINISHED run of each seed."""

    parent: Run
    runs: dict[int, Run]

    @property
    def identity(self) -> Identity:
        return Identity.of(self.parent)

    @property
    def model(self) -> str:
        return self.identity.model

    @property
    def size_class(self) -> str:
        return self.parent.data.tags["size_class"]

    @property
    def best_seed(self) -> int:
        """The seed whose run has the highest validation accuracy (the lowest seed on a tie)."""
        return max(self.runs, key=lambda seed: (self.runs[seed].data.metrics["validation_accuracy"], -seed))

    def values(self, metric: str, scale: float = 1.0) -> list[float]:
        """The metric of every seed's run, times scale (100 for percent)."""
        return [run.data.metrics[metric] * scale for run in self.runs.values()]

    def mean(self, metric: str) -> float:
        return mean_std(self.values(metric))[0]


def quoted(value: str) -> str:
    """A value made safe inside a single-quoted MLflow filter string."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def parse_models(value: str | None, params: Params) -> list[str]:
    """Zoo keys from a comma list, default params.yaml sweep.models; unknown keys fail before any training."""
    models = [key.strip() for key in (value or "").split(",") if key.strip()] or list(params.sweep["models"])
    if not models:
        raise ParabenchError("no models to sweep: give --models or set sweep.models in params.yaml")
    for key in models:
        get_spec(key, params)
    return list(dict.fromkeys(models))


def parse_seeds(value: str | None, params: Params) -> list[int]:
    """A count N (the first N of params.yaml sweep.seeds) or a comma list of seeds ('42,' = seed 42 only)."""
    configured = [int(seed) for seed in params.sweep["seeds"]]
    if not value:
        return configured
    try:
        if "," not in value:
            count = int(value)
            if not 1 <= count <= len(configured):
                raise ParabenchError(
                    f"--seeds {count}: params.yaml sweep.seeds lists {len(configured)} seeds; "
                    f"give 1..{len(configured)} or explicit seeds as a comma list (e.g. 7,11 or 7,)"
                )
            return configured[:count]
        return list(dict.fromkeys(int(seed) for seed in value.split(",") if seed.strip()))
    except ValueError as error:
        raise ParabenchError(f"--seeds must be a count or a comma list of integers, got {value!r}") from error


def identity_for(
    params: Params,
    model_key: str,
    data_version: str,
    recipe_name: str = "auto",
    overrides: dict[str, Any] | None = None,
    max_train_samples: int | None = None,
) -> Identity:
    """The identity train_and_track will tag a run of this model with, computed before training."""
    spec = get_spec(model_key, params)
    recipe = choose_recipe(params, spec, recipe_name, overrides or {})
    samples = params.train.max_train_samples if max_train_samples is None else max_train_samples
    return Identity(spec.key, recipe_fingerprint(params, recipe, samples), data_version)


def search(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    """Active (not deleted) runs matching the filter, newest first."""
    return client.search_runs(
        [experiment_id],
        filter_string,
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=MAX_RESULTS,
        order_by=["attributes.start_time DESC"],
    )


def find_parents(client: MlflowClient, experiment_id: str, extra_filter: str = "") -> list[Run]:
    """Sweep parent runs, newest first, optionally narrowed by another filter."""
    filters = [f"tags.{PARENT_TAG} = '{PARENT_VALUE}'", *([extra_filter] if extra_filter else [])]
    return search(client, experiment_id, " and ".join(filters))


def seed_runs(client: MlflowClient, experiment_id: str, identity: Identity) -> dict[int, Run]:
    """The newest FINISHED training run of each seed with this identity (sweep children or `train` runs)."""
    runs: dict[int, Run] = {}
    for run in search(client, experiment_id, f"{identity.filter()} and attributes.status = '{FINISHED}'"):
        tags = run.data.tags
        if tags.get(PARENT_TAG) != PARENT_VALUE and "seed" in tags:
            runs.setdefault(int(tags["seed"]), run)
    return dict(sorted(runs.items()))


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1, NaN for a single value) of the values."""
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def aggregate(runs: Iterable[Run]) -> dict[str, float]:
    """`<metric>_mean` / `<metric>_std` of every final metric over the runs, and `n_seeds`."""
    runs = list(runs)
    values: dict[str, float] = {"n_seeds": float(len(runs))}
    for name in tracking.FINAL_METRICS:
        observed = [run.data.metrics[name] for run in runs if name in run.data.metrics]
        if observed:
            mean, std = mean_std(observed)
            values[f"{name}_mean"] = mean
            if len(observed) > 1:
                values[f"{name}_std"] = std
    return values


def session_run() -> AbstractContextManager[Any]:
    """Under `mlflow run` (MLFLOW_RUN_ID set) the project's run becomes the outer run holding the parents."""
    if os.environ.get("MLFLOW_RUN_ID"):
        return mlflow.start_run(tags={PARENT_TAG: SESSION_VALUE})
    return nullcontext()


def open_parent(
    client: MlflowClient, experiment_id: str, identity: Identity, size_class: str
) -> mlflow.ActiveRun:
    """Resume the parent run of this identity, or start it; nested when an outer run is active."""
    nested = mlflow.active_run() is not None
    existing = find_parents(client, experiment_id, identity.filter())
    if existing:
        return mlflow.start_run(run_id=existing[0].info.run_id, nested=nested)
    tags = {**identity.tags(), PARENT_TAG: PARENT_VALUE, "size_class": size_class}
    return mlflow.start_run(run_name=f"{identity.model}-sweep", tags=tags, nested=nested)


def sweep_model(
    params: Params,
    client: MlflowClient,
    experiment_id: str,
    identity: Identity,
    seeds: list[int],
    train_options: dict[str, Any],
    log: Callable[[str], None],
) -> ModelSweep:
    """Train every seed of one model that has no FINISHED run yet, then log the aggregates on the parent."""
    spec = get_spec(identity.model, params)
    with open_parent(client, experiment_id, identity, spec.size_class) as parent:
        parent_id = parent.info.run_id
        done = seed_runs(client, experiment_id, identity)
        for seed in seeds:
            if seed in done:
                log(f"skip {identity.model} seed {seed}: FINISHED run {done[seed].info.run_id}")
                continue
            train_and_track(
                params,
                identity.model,
                seed,
                nested=True,
                log=log,
                extra_tags={SWEEP_PARENT_TAG: parent_id},
                **train_options,
            )
        runs = seed_runs(client, experiment_id, identity)
        mlflow.log_metrics(aggregate(runs.values()))
        mlflow.set_tag("seeds", ",".join(map(str, runs)))
    return ModelSweep(client.get_run(parent_id), runs)


def run_sweep(
    params: Params,
    models: list[str],
    seeds: list[int],
    recipe_name: str = "auto",
    overrides: dict[str, Any] | None = None,
    max_train_samples: int | None = None,
    log: Callable[[str], None] = print,
) -> list[ModelSweep]:
    """Sweep the models over the seeds on validated MRPC; returns each model's parent and seed runs."""
    data_version = require_validated(params)
    experiment_id = tracking.configure(params)
    client = MlflowClient()
    train_options = {
        "recipe_name": recipe_name,
        "overrides": overrides,
        "max_train_samples": max_train_samples,
    }
    with session_run():
        sweeps = [
            sweep_model(
                params,
                client,
                experiment_id,
                identity_for(params, model, data_version, **train_options),
                seeds,
                train_options,
                log,
            )
            for model in models
        ]
    write_metrics_file(params.path(params.sweep["summary_file"]), summary(sweeps))
    return sweeps


def summary(sweeps: list[ModelSweep]) -> dict[str, dict[str, Any]]:
    """Per model: parent run, seeds, data version, fingerprint and aggregates (the DVC output of sweep)."""
    return {
        sweep.model: {
            "parent_run_id": sweep.parent.info.run_id,
            "seeds": list(sweep.runs),
            **sweep.identity.tags(),
            **sweep.parent.data.metrics,
        }
        for sweep in sweeps
    }


def latest_sweeps(params: Params, models: list[str], data_version: str | None = None) -> list[ModelSweep]:
    """Per model, in the given order, its sweep with a FINISHED seed on one data version (default: that of
    the newest sweep among the models): the one with the model's default recipe (params.yaml) when there is
    one, else the newest; models without one there are left out."""
    return [sweeps[0] for sweeps in sweeps_by_model(params, models, data_version).values()]


def sweeps_by_model(
    params: Params, models: list[str], data_version: str | None = None
) -> dict[str, list[ModelSweep]]:
    """Per model (given order), every sweep with a FINISHED seed on one data version: the default recipe's
    first, then newest first. The data version defaults to that of the newest sweep among the models."""
    experiment_id = tracking.configure(params)
    client = MlflowClient()
    parents = [run for run in find_parents(client, experiment_id) if run.data.tags.get("model") in models]
    if data_version is None and parents:
        data_version = parents[0].data.tags["data_version"]
    found: dict[str, list[ModelSweep]] = {}
    for parent in parents:
        identity = Identity.of(parent)
        if identity.data_version == data_version:
            runs = seed_runs(client, experiment_id, identity)
            if runs:
                found.setdefault(identity.model, []).append(ModelSweep(parent, runs))
    for model, sweeps in found.items():
        default = identity_for(params, model, data_version).recipe_fingerprint
        sweeps.sort(key=lambda sweep: sweep.identity.recipe_fingerprint != default)  # stable: newest next
    return {model: found[model] for model in models if model in found}
