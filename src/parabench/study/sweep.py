"""`parabench sweep`: every model with every seed; one MLflow parent run per model, a nested run per seed.

A sweep is resumable: a seed that already has a FINISHED run with the same model, recipe fingerprint and
data version is skipped; failed, killed or interrupted seeds run again, under the same parent run.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import mlflow
from mlflow.entities import Metric, Run, RunStatus, RunTag, ViewType
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from parabench.common.files import require_writable, write_json
from parabench.common.names import FINAL_METRICS, VALIDATION_SCORE
from parabench.config import MAX_SEED, ConfigError, ParabenchError, Params, RayOptions, RunOptions
from parabench.data.validate import require_validated
from parabench.models.zoo import get_spec, load_zoo, require_length_fits
from parabench.results.groups import SeedGroup, group_records, mean_std, newest_data_version
from parabench.results.record import ResultRecord
from parabench.results.store import folder_records
from parabench.study import cluster
from parabench.study.cluster import WorkerEnv
from parabench.tracking import client as tracking
from parabench.training.plan import RunPlan, pick, plan_run
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
        return " and ".join(f"tags.{key} = '{tracking.quoted(value)}'" for key, value in self.tags().items())

    @classmethod
    def of(cls, run: Run) -> Identity:
        tags = run.data.tags
        return cls(tags["model"], tags["recipe_fingerprint"], tags["data_version"])


@dataclass(frozen=True)
class ModelSweep:
    """One model's sweep as recorded in MLflow: its parent run and the newest FINISHED run of each seed."""

    parent: Run
    runs: dict[int, Run]
    failed: dict[int, str] = field(default_factory=dict)  # seed -> why, after every retry (Ray engine)

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
    def is_ensemble(self) -> bool:
        """A seed ensemble's sweep (its runs average other runs)."""
        return any(tracking.ENSEMBLE_TAG in run.data.tags for run in self.runs.values())

    @property
    def best_seed(self) -> int:
        """The seed whose run has the highest validation accuracy (the lowest seed on a tie)."""
        score = VALIDATION_SCORE
        return max(self.runs, key=lambda seed: (self.runs[seed].data.metrics[score], -seed))

    def values(self, metric: str, scale: float = 1.0) -> list[float]:
        """The metric of every seed's run, times scale (100 for percent)."""
        return [run.data.metrics[metric] * scale for run in self.runs.values()]

    def mean(self, metric: str) -> float:
        return mean_std(self.values(metric))[0]


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


def aggregate(runs: Iterable[Run]) -> dict[str, float]:
    """`<metric>_mean` / `<metric>_std` of every final metric over the runs, and `n_seeds`."""
    runs = list(runs)
    values: dict[str, float] = {"n_seeds": float(len(runs))}
    for name in FINAL_METRICS:
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


def parent_run_id(client: MlflowClient, experiment_id: str, identity: Identity, size_class: str) -> str:
    """The parent run of this identity: the newest one (set RUNNING again), or a new one; nested under the
    active run (`mlflow run`'s session) when there is one."""
    owner = tracking.owner_tags()  # this process holds it: if it dies, a later command ends it FAILED
    existing = find_parents(client, experiment_id, identity.filter())
    if existing:
        run_id = existing[0].info.run_id
        for key, value in owner.items():
            client.set_tag(run_id, key, value)
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return run_id
    tags = {**identity.tags(), PARENT_TAG: PARENT_VALUE, "size_class": size_class, **owner}
    if (outer := mlflow.active_run()) is not None:
        tags[MLFLOW_PARENT_RUN_ID] = outer.info.run_id
    return client.create_run(experiment_id, run_name=f"{identity.model}-sweep", tags=tags).info.run_id


def open_parent(
    client: MlflowClient, experiment_id: str, identity: Identity, size_class: str
) -> mlflow.ActiveRun:
    """The parent run of this identity as this process's active run (resumed or started)."""
    run_id = parent_run_id(client, experiment_id, identity, size_class)
    return mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None)


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
        done = finished_seeds(params, experiment_id, identity)
        for index, plan in enumerate(plans, start=1):
            where = f"[{progress}seed {index}/{len(plans)}] {identity.model} seed {plan.seed}"
            if plan.seed in done:
                log(f"{where}: skipped, {done[plan.seed]}")
                continue
            log(f"{where}: training")
            train_and_track(params, plan, log=log, nested=True, extra_tags={SWEEP_PARENT_TAG: parent_id})
        runs = record_outcome(client, experiment_id, parent_id, identity, {})
    return ModelSweep(client.get_run(parent_id), runs)


def finished_seeds(params: Params, experiment_id: str, identity: Identity) -> dict[int, str]:
    """The seeds of this identity that need no run: a FINISHED run in the store (imported ones included), or a
    result record in results/ (made on any machine); seed -> where."""
    done = {
        record.seed: f"result record {record.file_name}"
        for record in folder_records(params)
        if Identity(record.model, record.recipe_fingerprint, record.data_version) == identity
    }
    runs = tracking.seed_runs(experiment_id, identity.tags(), with_weights=False)
    return done | {seed: f"FINISHED run {run.info.run_id}" for seed, run in runs.items()}


def record_outcome(
    client: MlflowClient, experiment_id: str, parent_id: str, identity: Identity, failed: dict[int, str]
) -> dict[int, Run]:
    """On the parent run: the aggregates over every FINISHED seed, which seeds those are, and the seeds that
    failed with why; returns the FINISHED seed runs."""
    runs = tracking.seed_runs(experiment_id, identity.tags())
    metrics = aggregate(runs.values()) | {"n_failed": float(len(failed))}
    timestamp = int(time.time() * 1000)
    client.log_batch(
        parent_id,
        metrics=[Metric(name, value, timestamp, 0) for name, value in metrics.items()],
        tags=[
            RunTag("seeds", ",".join(map(str, runs))),
            RunTag("failed_seeds", ",".join(map(str, failed))),
            *(RunTag(f"failure.seed{seed}", reason) for seed, reason in failed.items()),
        ],
    )
    return runs


def plan_sweep(
    params: Params, models: list[str], seeds: list[int], options: RunOptions
) -> dict[str, list[RunPlan]]:
    """Every (model, seed) run of a sweep on validated MRPC, planned before any training (both engines).
    A seed ensemble (`<model>+ensemble`) comes after the other models, with one run (the first seed): it
    averages its members' FINISHED seeds and trains nothing, so another seed would only repeat it. A length a
    model cannot take, or an output that cannot be written, fails here, before any run exists."""
    data_version = require_validated(params)
    ensembles = [model for model in models if get_spec(model, params).members is not None]
    plans = {
        model: [
            plan_run(params, options, data_version, model=model, seed=seed)
            for seed in (seeds[:1] if model in ensembles else seeds)
        ]
        for model in [*(m for m in models if m not in ensembles), *ensembles]
    }
    for first, *_ in plans.values():  # before any parent run exists
        require_length_fits(first.spec, params, first.max_length)
    require_writable(params.path(params.sweep.summary_file), params.path(params.results.dir) / "record.json")
    return plans


def run_sweep(
    params: Params,
    models: list[str],
    seeds: list[int],
    options: RunOptions | None = None,
    log: Callable[[str], None] = print,
) -> list[ModelSweep]:
    """Sweep the models over the seeds on validated MRPC; returns each model's parent and seed runs."""
    options = options or RunOptions()
    plans = plan_sweep(params, models, seeds, options)
    experiment_id = tracking.configure(params)
    client = MlflowClient()
    with session_run():
        sweeps = [
            sweep_model(params, client, experiment_id, model_plans, log, f"model {index}/{len(models)}, ")
            for index, model_plans in enumerate(plans.values(), start=1)
        ]
    write_json(params.path(params.sweep.summary_file), summary(sweeps))
    return sweeps


def train_in_worker(params: Params, plan: RunPlan, parent_id: str, env: WorkerEnv) -> str:
    """One seed's run inside a Ray worker, nested under its model's parent run; returns the run id."""
    env.apply()
    tags = {SWEEP_PARENT_TAG: parent_id}
    return train_and_track(params, plan, log=print, extra_tags=tags, parent_run_id=parent_id).run_id


@dataclass(frozen=True)
class RayJob:
    """One (model, seed) run to do on Ray: what to submit again when an attempt fails."""

    plan: RunPlan
    parent_id: str
    env: WorkerEnv
    options: dict[str, float]
    attempt: int = 1

    def submit(self, params: Params) -> Any:
        import ray

        # Ray retries nothing itself (max_retries=0): every try is counted and logged here.
        task = ray.remote(train_in_worker).options(**self.options, max_retries=0)
        return task.remote(params, self.plan, self.parent_id, self.env)

    def again(self) -> RayJob:
        return dataclasses.replace(self, attempt=self.attempt + 1)


def run_sweep_on_ray(
    params: Params,
    models: list[str],
    seeds: list[int],
    options: RunOptions | None = None,
    ray_options: RayOptions | None = None,
    log: Callable[[str], None] = print,
) -> list[ModelSweep]:
    """The sweep with every (model, seed) a Ray task reserving its size class's CPUs/GPUs, as many at once
    as the cluster holds. Skips and resumes like the local sweep; a run that fails is tried again up to
    max_retries times, then reported (parent run, sweep.json, ParabenchError at the end) without stopping
    the others. Ctrl-C cancels every run and leaves their MLflow runs KILLED."""
    options, ray_options = options or RunOptions(), ray_options or RayOptions()
    plans = plan_sweep(params, models, seeds, options)
    tries = pick(ray_options.max_retries, params.ray.max_retries) + 1
    with cluster.ray_cluster(params, ray_options, log) as available:
        reserved = {
            model: cluster.resources_for(params, model_plans[0].spec.size_class, ray_options, available)
            for model, model_plans in plans.items()
        }
        concurrency = cluster.concurrent_runs(list(reserved.values()), available, len(models) * len(seeds))
        uri = cluster.shared_store(params, concurrency, ray_options, log)
        experiment_id = tracking.configure(params)
        client = MlflowClient()
        experiment_name = client.get_experiment(experiment_id).name
        with session_run():
            parents: dict[str, str] = {}
            jobs: list[RayJob] = []
            for model, model_plans in plans.items():
                identity = identity_of(model_plans[0])
                parents[model] = parent_run_id(
                    client, experiment_id, identity, model_plans[0].spec.size_class
                )
                done = finished_seeds(params, experiment_id, identity)
                env = cluster.worker_env(uri, experiment_name, reserved[model])
                for plan in model_plans:
                    if plan.seed in done:
                        log(f"{model} seed {plan.seed}: skipped, {done[plan.seed]}")
                    else:
                        jobs.append(RayJob(plan, parents[model], env, reserved[model].task_options()))
            log(
                f"{len(jobs)} runs on Ray, up to {concurrency} at once "
                f"({', '.join(f'{m}: {r.cpus:g} CPU, {r.gpus:g} GPU' for m, r in reserved.items())})"
            )
            failed = collect(params, client, jobs, tries, parents, log)
            sweeps = []
            for model, model_plans in plans.items():
                identity, parent_id = identity_of(model_plans[0]), parents[model]
                model_failed = {seed: why for (key, seed), why in failed.items() if key == model}
                runs = record_outcome(client, experiment_id, parent_id, identity, model_failed)
                status = RunStatus.FAILED if model_failed else RunStatus.FINISHED
                client.set_terminated(parent_id, RunStatus.to_string(status))
                sweeps.append(ModelSweep(client.get_run(parent_id), runs, model_failed))
    write_json(params.path(params.sweep.summary_file), summary(sweeps))
    if failed:
        names = "; ".join(f"{model} seed {seed} ({why})" for (model, seed), why in failed.items())
        raise ParabenchError(
            f"{len(failed)} run(s) failed {tries} time(s): {names}; the other runs finished "
            f"(see {params.sweep.summary_file}); rerun the command to try them again"
        )
    return sweeps


def collect(
    params: Params,
    client: MlflowClient,
    jobs: list[RayJob],
    tries: int,
    parents: dict[str, str],
    log: Callable[[str], None],
) -> dict[tuple[str, int], str]:
    """Submit the jobs and wait for them, logging each as it ends and submitting a failed one again while
    it has tries left; returns the runs that failed every try. On Ctrl-C: cancel them all, give them
    ray.cancel_grace_s to end their runs KILLED, end the rest KILLED from here, then re-raise."""
    import ray

    pending = {job.submit(params): job for job in jobs}
    failed: dict[tuple[str, int], str] = {}
    total, ended = len(pending), 0
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                job = pending.pop(ref)
                where = f"{job.plan.spec.key} seed {job.plan.seed}"
                try:
                    run_id = ray.get(ref)
                except ray.exceptions.RayError as error:
                    why = cluster.first_line(error)
                    if job.attempt < tries:
                        log(f"{where}: try {job.attempt}/{tries} failed ({why}); trying again")
                        pending[job.again().submit(params)] = job.again()
                        continue
                    ended += 1
                    failed[(job.plan.spec.key, job.plan.seed)] = why
                    log(f"[{ended}/{total}] {where}: FAILED {tries} time(s), last: {why}")
                else:
                    ended += 1
                    log(f"[{ended}/{total}] {where}: FINISHED run {run_id}")
    except KeyboardInterrupt:
        log(f"interrupted: cancelling {len(pending)} run(s)")
        for ref in pending:
            ray.cancel(ref)
        ray.wait(list(pending), num_returns=len(pending), timeout=params.ray.cancel_grace_s)
        kill_leftovers(client, parents)
        raise
    return failed


def kill_leftovers(client: MlflowClient, parents: dict[str, str]) -> None:
    """End KILLED every run of these parents still RUNNING (a worker that could not end its own), and the
    parents themselves."""
    killed = RunStatus.to_string(RunStatus.KILLED)
    for parent_id in parents.values():
        experiment_id = client.get_run(parent_id).info.experiment_id
        running = f"tags.{SWEEP_PARENT_TAG} = '{parent_id}' and attributes.status = 'RUNNING'"
        for run in search(client, experiment_id, running):
            client.set_terminated(run.info.run_id, killed)
        client.set_terminated(parent_id, killed)


def summary(sweeps: list[ModelSweep]) -> dict[str, dict[str, Any]]:
    """Per model: parent run, seeds, data version, fingerprint and aggregates (the DVC output of sweep)."""
    return {
        sweep.model: {
            "parent_run_id": sweep.parent.info.run_id,
            "seeds": list(sweep.runs),
            "failed_seeds": {str(seed): reason for seed, reason in sweep.failed.items()},
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
            runs = tracking.seed_runs(experiment_id, identity.tags())
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


def groups_by_model(
    params: Params, records: list[ResultRecord], models: list[str] | None, data_version: str | None
) -> dict[str, list[SeedGroup]]:
    """The read model of result records: per model (given order; None = every model with records, zoo
    order), its groups on one data version (given, else the newest record's): the default recipe's first,
    then newest first."""
    chosen = [r for r in records if models is None or r.model in models]
    data_version = data_version or newest_data_version(chosen)
    found: dict[str, list[SeedGroup]] = {}
    for group in group_records(r for r in chosen if r.data_version == data_version):
        found.setdefault(group.model, []).append(group)
    for model, model_groups in found.items():
        default = default_fingerprint(params, model, data_version) if data_version else None
        model_groups.sort(key=lambda group: group.key.recipe_fingerprint != default)  # stable: newest next
    order = models if models is not None else zoo_order(found)
    return {model: found[model] for model in order if model in found}
