"""`parabench tune`: which recipe suits a model, found by search and chosen on validation only.

Ray Tune runs the trials (each a training run reserving its size class's CPUs/GPUs), Optuna's sampler picks
each trial's recipe from params.yaml `tune.space`, and ASHA stops trials whose per-epoch validation accuracy
trails at a rung. Every trial is an MLflow run nested under a `<model>-tune` parent, with its sampled values
as params and its per-epoch curve; a trial stopped before its last epoch ends FINISHED with the `pruned` tag
(and never counts as a seed of a study). The best completed trial by validation accuracy is written to
`reports/tune/<model>.json`, which `--recipe tune:<model>` (or `--recipe tune`) hands to train and sweep.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from parabench.common.files import file_stem, require_writable, write_json
from parabench.common.names import VALIDATION_SCORE
from parabench.config import (
    ConfigError,
    ParabenchError,
    Params,
    Range,
    RayOptions,
    RunOptions,
    TuneParams,
)
from parabench.data.validate import require_validated
from parabench.models.zoo import require_fine_tuned, require_length_fits
from parabench.study import cluster
from parabench.study.cluster import WorkerEnv
from parabench.tracking import client as tracking
from parabench.training.plan import RunPlan, pick, plan_run, tuned_recipe_file
from parabench.training.run import train_and_track
from parabench.training.state import EpochResult

TUNE_TAG = "tune"
TUNE_PARENT_TAG = "tune_parent"
TRIAL_TAG = "tune_trial"
# Per epoch, what ASHA compares; the best trial is the one with the best final_validation_accuracy.
OBJECTIVE = "validation_accuracy"


@dataclass(frozen=True)
class TuneSettings:
    """One search: the trials, the epochs' range, the sample caps' and time's limits."""

    trials: int
    max_epochs: int
    time_budget_s: float | None = None


@dataclass(frozen=True)
class Trial:
    """A trial as it ended: its run, recipe values, and whether it completed, was pruned or failed."""

    run_id: str | None
    values: dict[str, Any]
    state: str  # completed | pruned | failed
    validation_accuracy: float | None  # the run's final (kept epoch's) validation accuracy
    epochs_done: int
    error: str | None = None


def search_space(tune_params: TuneParams, max_epochs: int) -> dict[str, Any]:
    """Ray Tune's space (which Optuna samples): every params.yaml `tune.space` field, epochs in
    min_epochs..max_epochs."""
    from ray import tune

    space: dict[str, Any] = {"epochs": tune.randint(min(tune_params.min_epochs, max_epochs), max_epochs + 1)}
    for name, dimension in tune_params.space.items():
        if isinstance(dimension, Range):
            sample = tune.loguniform if dimension.log else tune.uniform
            space[name] = sample(dimension.low, dimension.high)
        else:
            space[name] = tune.choice(list(dimension))
    return space


def trial_plan(base: RunPlan, values: dict[str, Any]) -> RunPlan:
    """The base plan with a trial's sampled recipe values; no checkpoints (ASHA may stop it any time)."""
    try:
        recipe = base.recipe.with_overrides(**values)
    except ValueError as error:
        raise ConfigError(f"params.yaml tune.space gives a value no recipe takes: {error}") from error
    return dataclasses.replace(
        base, recipe=recipe, recipe_name=f"{base.recipe_name}+search", checkpoint=False, record=False
    )


def run_trial(config: dict[str, Any], params: Params, base: RunPlan, parent_id: str, env: WorkerEnv) -> None:
    """One trial in a Ray worker: a nested training run whose every epoch is reported to Tune."""
    from ray import tune

    env.apply()
    plan = trial_plan(base, config)
    trial_id = tune.get_context().get_trial_id() or ""

    def report(epoch: EpochResult) -> None:
        active = mlflow.active_run()
        try:
            tune.report(
                {
                    OBJECTIVE: epoch.validation_accuracy,
                    "epoch": epoch.epoch,
                    "mlflow_run_id": active.info.run_id if active else "",
                }
            )
        except SystemExit:  # how Tune stops a trial its scheduler pruned: say so before the run ends
            mlflow.set_tag(
                tracking.PRUNED_TAG, f"stopped by ASHA after epoch {epoch.epoch} of {plan.recipe.epochs}"
            )
            raise

    tags = {TUNE_PARENT_TAG: parent_id, TRIAL_TAG: trial_id}
    train_and_track(params, plan, log=print, extra_tags=tags, parent_run_id=parent_id, on_epoch=report)


def run_tune(
    params: Params,
    model: str,
    settings: TuneSettings,
    options: RunOptions | None = None,
    ray_options: RayOptions | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Search the model's recipe; returns what it writes to reports/tune/<model>.json."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    options, ray_options = options or RunOptions(), ray_options or RayOptions()
    data_version = require_validated(params)
    base = plan_run(params, options, data_version, model=model)
    require_fine_tuned(base.spec, "--model", "it has no training recipe to tune")
    require_length_fits(base.spec, params, base.max_length)
    require_writable(tuned_recipe_file(params, model))
    tune_params = params.tune
    with cluster.ray_cluster(params, ray_options, log) as available:
        reserved = cluster.resources_for(params, base.spec.size_class, ray_options, available)
        concurrency = cluster.concurrent_runs([reserved], available, settings.trials)
        uri = cluster.shared_store(params, concurrency, ray_options, log)
        experiment_id = tracking.configure(params)
        client = MlflowClient()
        env = cluster.worker_env(uri, client.get_experiment(experiment_id).name, reserved)
        parent_id = open_tune_parent(client, experiment_id, base, settings)
        log(
            f"tuning {model}: {settings.trials} trials, up to {concurrency} at once "
            f"({reserved.cpus:g} CPU, {reserved.gpus:g} GPU each), epochs "
            f"{tune_params.min_epochs}..{settings.max_epochs}; parent run {parent_id}"
        )
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, params=params, base=base, parent_id=parent_id, env=env),
            reserved.trial_resources(),
        )
        # max_t one past the last epoch: ASHA stops a trial that reaches max_t, which would cut off the
        # evaluation and logging after its last epoch. Rungs (grace * rf^k) stay below max_epochs.
        scheduler = ASHAScheduler(
            time_attr="epoch",
            max_t=settings.max_epochs + 1,
            grace_period=tune_params.grace_period,
            reduction_factor=tune_params.reduction_factor,
        )
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(tune_params, settings.max_epochs),
            tune_config=tune.TuneConfig(
                metric=OBJECTIVE,
                mode="max",
                search_alg=OptunaSearch(seed=tune_params.sampler_seed),
                scheduler=scheduler,
                num_samples=settings.trials,
                max_concurrent_trials=concurrency,
                time_budget_s=settings.time_budget_s,
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name=f"{file_stem(model)}-tune-{parent_id[:8]}",
                storage_path=str(params.path(params.ray.storage_dir).resolve()),
                failure_config=tune.FailureConfig(
                    max_failures=pick(ray_options.max_retries, params.ray.max_retries)
                ),
                verbose=1,
            ),
        )
        # Ctrl-C reaches this process as KeyboardInterrupt (Tune's own handler would end the search as if
        # it were complete): the trials' runs and the parent then end KILLED.
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        try:
            grid = tuner.fit()
        except KeyboardInterrupt:
            end_trials(client, experiment_id, parent_id, RunStatus.KILLED)
            client.set_terminated(parent_id, RunStatus.to_string(RunStatus.KILLED))
            raise
        trials = settle_trials(client, experiment_id, parent_id, grid, base, sampled_names(tune_params))
    return finish(params, client, model, base, parent_id, trials, log)


def open_tune_parent(client: MlflowClient, experiment_id: str, base: RunPlan, settings: TuneSettings) -> str:
    """A new `<model>-tune` parent run holding the search's settings."""
    tags = {
        TUNE_TAG: "parent",
        "model": base.spec.key,
        "size_class": base.spec.size_class,
        "data_version": base.data_version,
        **tracking.owner_tags(),
    }
    if (outer := mlflow.active_run()) is not None:
        tags[MLFLOW_PARENT_RUN_ID] = outer.info.run_id
    run_id = client.create_run(experiment_id, run_name=f"{base.spec.key}-tune", tags=tags).info.run_id
    for key, value in {
        "trials": settings.trials,
        "max_epochs": settings.max_epochs,
        "time_budget_s": settings.time_budget_s,
        "base_recipe": base.recipe_name,
        "seed": base.seed,
        "max_train_samples": base.max_train_samples,
        "max_eval_samples": base.max_eval_samples,
        "objective": f"{OBJECTIVE} (validation split)",
        "scheduler": "ASHA",
        "sampler": "Optuna TPE",
    }.items():
        client.log_param(run_id, key, value)
    return run_id


def sampled_names(tune_params: TuneParams) -> tuple[str, ...]:
    """The recipe fields a search samples."""
    return ("epochs", *tune_params.space)


def settle_trials(
    client: MlflowClient, experiment_id: str, parent_id: str, grid: Any, base: RunPlan, names: tuple[str, ...]
) -> list[Trial]:
    """Every trial of the search as its MLflow run shows it, oldest first. A run that FINISHED with final
    metrics completed; one that ended FAILED itself (an exception, a diverged training), whose trial Ray
    reports an error, or whose metrics are not finite, failed; any other was stopped before its end — by
    ASHA (the trial tagged itself `pruned` as Tune stopped it) or by the time budget (its actor killed, the
    run left RUNNING, or ended FAILED as orphaned by a later command) — and is ended FINISHED with the
    `pruned` tag."""
    errors = {
        result.metrics["mlflow_run_id"]: cluster.first_line(result.error)
        for result in grid
        if result.error is not None and (result.metrics or {}).get("mlflow_run_id")
    }
    trials = []
    for run in client.search_runs(
        [experiment_id], f"tags.{TUNE_PARENT_TAG} = '{parent_id}'", order_by=["attributes.start_time ASC"]
    ):
        run_id, tags, status = run.info.run_id, run.data.tags, run.info.status
        logged = trial_plan(base, {key: run.data.params[key] for key in names if key in run.data.params})
        values = {key: getattr(logged.recipe, key) for key in names}
        epochs_done = len(client.get_metric_history(run_id, OBJECTIVE))
        final = run.data.metrics.get(VALIDATION_SCORE)
        pruned = tracking.PRUNED_TAG in tags
        ended_itself = status == RunStatus.to_string(RunStatus.FAILED) and tracking.ORPHANED_TAG not in tags
        if run_id in errors or (ended_itself and not pruned):
            trials.append(Trial(run_id, values, "failed", None, epochs_done, errors.get(run_id, "FAILED")))
        elif not tracking.finite_metrics(run):  # a diverged trial is a failure, never a score
            trials.append(Trial(run_id, values, "failed", None, epochs_done, "metrics not finite (diverged)"))
        elif status == RunStatus.to_string(RunStatus.FINISHED) and final is not None and not pruned:
            trials.append(Trial(run_id, values, "completed", final, epochs_done))
        else:
            stopped = f"stopped after epoch {epochs_done} of {values.get('epochs')} (the time budget)"
            client.set_tag(run_id, tracking.PRUNED_TAG, tags.get(tracking.PRUNED_TAG, stopped))
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
            trials.append(Trial(run_id, values, "pruned", None, epochs_done))
    return trials


def end_trials(client: MlflowClient, experiment_id: str, parent_id: str, status: int) -> None:
    """End every trial run of this search still RUNNING with the status (after Ctrl-C)."""
    running = f"tags.{TUNE_PARENT_TAG} = '{parent_id}' and attributes.status = 'RUNNING'"
    for run in client.search_runs([experiment_id], running):
        client.set_terminated(run.info.run_id, RunStatus.to_string(status))


def finish(
    params: Params,
    client: MlflowClient,
    model: str,
    base: RunPlan,
    parent_id: str,
    trials: list[Trial],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Pick the best completed trial (validation accuracy; the earlier run on a tie), write it out, and
    close the parent run."""
    counts = {state: sum(t.state == state for t in trials) for state in ("completed", "pruned", "failed")}
    for trial in trials:
        shown = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.values.items()
        )
        score = f"validation {trial.validation_accuracy:.4f}" if trial.validation_accuracy is not None else ""
        log(
            f"trial {trial.run_id or '-'}: {trial.state} after {trial.epochs_done} epoch(s) {score} [{shown}]"
            + (f" {trial.error}" if trial.error else "")
        )
    completed = [t for t in trials if t.state == "completed"]
    for state, count in counts.items():
        client.log_metric(parent_id, f"n_{state}", count)
    if not completed:
        client.set_terminated(parent_id, RunStatus.to_string(RunStatus.FAILED))
        raise ParabenchError(
            f"no trial of {model} completed ({counts['pruned']} pruned, {counts['failed']} failed): "
            "give more trials, epochs or --time-budget-s"
        )
    best = max(completed, key=lambda t: (t.validation_accuracy, -trials.index(t)))
    recipe = trial_plan(base, best.values).recipe
    document = {
        "model": model,
        "recipe": recipe.model_dump(),
        "values": best.values,
        "trial_run_id": best.run_id,
        "validation_accuracy": best.validation_accuracy,
        "parent_run_id": parent_id,
        "base_recipe": base.recipe_name,
        "seed": base.seed,
        "data_version": base.data_version,
        "max_train_samples": base.max_train_samples,
        "trials": counts,
        "chosen_by": "final_validation_accuracy (validation split; never test) among completed trials",
    }
    path = write_json(tuned_recipe_file(params, model), document)
    client.log_metric(parent_id, "best_validation_accuracy", best.validation_accuracy or 0.0)
    client.set_tag(parent_id, "best_trial_run_id", best.run_id or "")
    client.log_text(parent_id, json.dumps(document, indent=2), "tuned_recipe.json")
    client.set_terminated(parent_id, RunStatus.to_string(RunStatus.FINISHED))
    log(f"best recipe of {model} (validation {best.validation_accuracy:.4f}, run {best.run_id}): {path}")
    log(f"use it with: parabench sweep --models {model} --recipe tune:{model}")
    return document | {"file": str(path)}
