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

from parabench.common.files import write_json
from parabench.config import MAX_SEED, ConfigError, ParabenchError, Params, RunOptions
from parabench.data.validate import require_validated
from parabench.models.zoo import get_spec, load_zoo
from parabench.tracking import client as tracking
from parabench.training.plan import RunPlan, plan_run
from parabench.training.run import train_and_track

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
        score = tracking.VALIDATION_SCORE
        return max(self.runs, key=lambda seed: (self.runs[seed].data.metrics[score], -seed))

    def values(self, metric: str, scale: float = 1.0) -> list[float]:
        """The metric of every seed's run, times scale (100 for percent)."""
        return [run.data.metrics[metric] * scale for run in self.runs.values()]

    def mean(self, metric: str) -> float:
        return mean_std(self.values(metric))[0]


def quoted(value: str) -> str:
    """A value made safe inside a single-quoted MLflow filter string."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def parse_models(value: str | None, params: Params) -> list[str]:
    """Zoo keys from a comma list (None or 'auto': params.yaml sweep.models); an empty list or an unknown key
    fails before any training."""
    if value is None or value.strip().lower() == "auto":
        return list(params.sweep.models)
    models = [key.strip() for key in value.split(",")]
    if not any(models):
        raise ConfigError(f"--models {value!r} names no model: give a comma list of zoo keys")
    if not all(models):
        raise ConfigError(f"--models {value!r} has an empty name between its commas")
    for key in models:
        get_spec(key, params)
    return list(dict.fromkeys(models))


def parse_seeds(value: str | None, params: Params) -> list[int]:
    """A count N (the first N of params.yaml sweep.seeds) or a comma list of seeds ('42,' = seed 42 only);
    None or 'auto' = all of sweep.seeds."""
    configured = list(params.sweep.seeds)
    if value is None or value.strip().lower() == "auto":
        return configured
    try:
        if "," not in value:
            count = int(value)
            if not 1 <= count <= len(configured):
                raise ConfigError(
                    f"--seeds {count}: params.yaml sweep.seeds lists {len(configured)} seeds; "
                    f"give 1..{len(configured)} or explicit seeds as a comma list (e.g. 7,11 or 7,)"
                )
            return configured[:count]
        seeds = [int(seed) for seed in value.split(",") if seed.strip()]
    except ValueError as error:
        raise ConfigError(f"--seeds must be a count or a comma list of integers, got {value!r}") from error
    if not seeds:
        raise ConfigError(f"--seeds {value!r} names no seed")
    for seed in seeds:
        if not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"--seeds: seed {seed} is outside 0..{MAX_SEED} (what numpy and torch take)")
    return list(dict.fromkeys(seeds))


def named(models: list[str] | None) -> str:
    """The models for a message: their keys, or 'any model' when none were named."""
    return ", ".join(models) if models else "any model"


def identity_of(plan: RunPlan) -> Identity:
    """The identity train_and_track tags a run of this plan with, known before training."""
    return Identity(plan.spec.key, plan.fingerprint, plan.data_version)


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
    plans: list[RunPlan],
    log: Callable[[str], None],
    progress: str = "",
) -> ModelSweep:
    """Train every seed of one model that has no FINISHED run yet, then log the aggregates on the parent."""
    identity = identity_of(plans[0])
    with open_parent(client, experiment_id, identity, plans[0].spec.size_class) as parent:
        parent_id = parent.info.run_id
        done = seed_runs(client, experiment_id, identity)
        for index, plan in enumerate(plans, start=1):
            where = f"[{progress}seed {index}/{len(plans)}] {identity.model} seed {plan.seed}"
            if plan.seed in done:
                log(f"{where}: skipped, FINISHED run {done[plan.seed].info.run_id}")
                continue
            log(f"{where}: training")
            train_and_track(params, plan, log=log, nested=True, extra_tags={SWEEP_PARENT_TAG: parent_id})
        runs = seed_runs(client, experiment_id, identity)
        mlflow.log_metrics(aggregate(runs.values()))
        mlflow.set_tag("seeds", ",".join(map(str, runs)))
    return ModelSweep(client.get_run(parent_id), runs)


def run_sweep(
    params: Params,
    models: list[str],
    seeds: list[int],
    options: RunOptions | None = None,
    log: Callable[[str], None] = print,
) -> list[ModelSweep]:
    """Sweep the models over the seeds on validated MRPC; returns each model's parent and seed runs."""
    options = options or RunOptions()
    data_version = require_validated(params)
    plans = {
        model: [plan_run(params, options, data_version, model=model, seed=seed) for seed in seeds]
        for model in models
    }
    experiment_id = tracking.configure(params)
    client = MlflowClient()
    with session_run():
        sweeps = [
            sweep_model(params, client, experiment_id, model_plans, log, f"model {index}/{len(models)}, ")
            for index, model_plans in enumerate(plans.values(), start=1)
        ]
    write_json(params.path(params.sweep.summary_file), summary(sweeps))
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


def latest_sweeps(
    params: Params, models: list[str] | None = None, data_version: str | None = None
) -> list[ModelSweep]:
    """Per model (the given ones, or every model swept), its sweep with a FINISHED seed on one data version
    (default: that of the newest sweep among the models): the one with the model's default recipe when there
    is one, else the newest; models without one there are left out."""
    return [sweeps[0] for sweeps in sweeps_by_model(params, models, data_version).values()]


def sweeps_by_model(
    params: Params, models: list[str] | None = None, data_version: str | None = None
) -> dict[str, list[ModelSweep]]:
    """Per model (given order; None = every model with a sweep, newest first), every sweep with a FINISHED
    seed on one data version: the default recipe's first, then newest first. The data version defaults to
    that of the newest sweep among the models."""
    experiment_id = tracking.configure(params)
    client = MlflowClient()
    parents = [
        run
        for run in find_parents(client, experiment_id)
        if models is None or run.data.tags.get("model") in models
    ]
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
        default = default_fingerprint(params, model, data_version)
        sweeps.sort(key=lambda sweep: sweep.identity.recipe_fingerprint != default)  # stable: newest next
    order = models if models is not None else zoo_order(found)
    return {model: found[model] for model in order if model in found}


def zoo_order(models: Iterable[str]) -> list[str]:
    """Models in models.yaml's order (local folders after, by name): ties between them go to the first."""
    position = {key: index for index, key in enumerate(load_zoo())}
    return sorted(models, key=lambda key: (position.get(key, len(position)), key))


def default_fingerprint(params: Params, model: str, data_version: str) -> str | None:
    """The fingerprint of the model's default recipe, or None for a model no longer in the zoo."""
    try:
        return plan_run(params, RunOptions(), data_version, model=model).fingerprint
    except ParabenchError:
        return None
