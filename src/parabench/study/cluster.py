"""Ray under the study: start or join a cluster, what one run reserves there, and the one tracking store
every worker logs to.

A local Ray is started when no address is given (`ray.init()`: this machine's CPUs and GPUs); `auto` joins
the cluster `ray start --head` runs here, `ray://HOST:10001` a remote one through Ray Client. Each run
reserves CPUs (torch's threads follow) and, where the cluster has GPUs, a GPU share; Ray starts as many runs
at once as the reservations allow. Runs that overlap need a store that takes concurrent writers: the SQLite
default takes one, so the study refuses, or starts `parabench server` (PostgreSQL) when asked to.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from parabench.config import ConfigError, Params, RayOptions
from parabench.tracking import client as tracking
from parabench.training.plan import pick

# Variables a worker needs to see what the driver sees (a worker on another machine inherits nothing).
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "PARABENCH_PARAMS", "CI")
# Launch-run variables of `mlflow run`: a worker's run nests under the study's parent run instead.
LAUNCH_ENV = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")


@dataclass(frozen=True)
class RunResources:
    """What one run reserves on the cluster."""

    cpus: float
    gpus: float

    @property
    def threads(self) -> int:
        """torch threads of a run: its whole CPUs (at least one)."""
        return max(1, math.floor(self.cpus))

    def task_options(self) -> dict[str, float]:
        """Ray task options reserving these resources."""
        return {"num_cpus": self.cpus, "num_gpus": self.gpus}

    def trial_resources(self) -> dict[str, float]:
        """Ray Tune's resources of one trial."""
        return {"cpu": self.cpus, "gpu": self.gpus}


@dataclass(frozen=True)
class WorkerEnv:
    """What a run needs in a Ray worker to log where the driver logs: the store, the experiment, the
    project's variables."""

    tracking_uri: str
    experiment_name: str
    variables: dict[str, str]
    threads: int

    def apply(self) -> None:
        """Set this worker process up: variables, no launch run, the store and experiment, torch threads."""
        import torch

        for name in LAUNCH_ENV:
            os.environ.pop(name, None)
        os.environ.update(self.variables)
        os.environ["MLFLOW_TRACKING_URI"] = self.tracking_uri
        os.environ["MLFLOW_EXPERIMENT_NAME"] = self.experiment_name
        torch.set_num_threads(self.threads)


def worker_env(tracking_uri: str, experiment_name: str, resources: RunResources) -> WorkerEnv:
    """The worker environment for runs with these resources."""
    variables = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
    return WorkerEnv(tracking_uri, experiment_name, variables, resources.threads)


@contextmanager
def ray_cluster(
    params: Params, options: RayOptions, log: Callable[[str], None]
) -> Iterator[dict[str, float]]:
    """Ray for the duration of the block (started here, or joined): yields the cluster's total resources."""
    try:
        import ray
    except ImportError as error:
        raise ConfigError(
            "Ray is not installed: pip install 'ray[tune]' (the project's lock has it)"
        ) from error
    address = options.address or params.ray.address
    address = None if address == "local" else address
    if ray.is_initialized():  # a caller (a test, a notebook) runs Ray already: use it, leave it running
        yield ray.cluster_resources()
        return
    try:
        if address is None:
            ray.init(num_cpus=params.ray.num_cpus, include_dashboard=False, log_to_driver=True)
        else:
            ray.init(address=address, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as error:
        reason = " ".join(str(error).split())[:300]
        where = f"at {address}" if address else "locally"
        raise ConfigError(f"cannot start Ray {where}: {reason}") from error
    try:
        available = ray.cluster_resources()
        log(
            f"Ray {'started locally' if address is None else 'joined at ' + address}: "
            f"{available.get('CPU', 0):g} CPUs, {available.get('GPU', 0):g} GPUs"
        )
        yield available
    finally:
        ray.shutdown()


def resources_for(
    params: Params, size_class: str, options: RayOptions, available: dict[str, float]
) -> RunResources:
    """What one run of this size class reserves: the options' values, else params.yaml's per class (GPUs
    only where the cluster has some). A reservation no node could ever grant fails at once, in one line."""
    cpus = options.cpus_per_run or params.ray.cpus_per_run[size_class]
    has_gpus = available.get("GPU", 0) > 0
    gpus = options.gpus_per_run if options.gpus_per_run is not None else 0.0
    if options.gpus_per_run is None and has_gpus:
        gpus = params.ray.gpus_per_run[size_class]
    for name, wanted, unit in (("--cpus-per-run", cpus, "CPU"), ("--gpus-per-run", gpus, "GPU")):
        if wanted > available.get(unit, 0):
            raise ConfigError(
                f"{name} {wanted:g}: the Ray cluster has {available.get(unit, 0):g} {unit}s, so no "
                f"{size_class} run could ever start; ask for less"
            )
    return RunResources(cpus, gpus)


def concurrent_runs(resources: list[RunResources], available: dict[str, float], runs: int) -> int:
    """How many of `runs` runs the cluster can hold at once, at the smallest reservation among them."""
    fits = []
    for wanted in resources:
        limits = [math.floor(available.get("CPU", 0) / wanted.cpus)]
        if wanted.gpus:
            limits.append(math.floor(available.get("GPU", 0) / wanted.gpus))
        fits.append(min(limits))
    return min(max(fits, default=1), runs)


def shared_store(params: Params, concurrency: int, options: RayOptions, log: Callable[[str], None]) -> str:
    """The tracking URI the runs log to. With more than one run at a time on the SQLite default (one
    writer), either `parabench server` is started and used (ray.start_server / --start-server:
    MLFLOW_TRACKING_URI points at it from here on) or the command stops here."""
    uri = tracking.tracking_uri(params)
    if concurrency <= 1 or not uri.startswith(tracking.SQLITE_PREFIX):
        return uri
    if os.environ.get("MLFLOW_RUN_ID"):  # `mlflow run` made its run in this store: the study must stay here
        raise ConfigError(
            f"{concurrency} runs would write at once to the SQLite store {uri} that `mlflow run` uses, "
            "which takes one writer: run `parabench server start`, then `mlflow run` with the "
            "MLFLOW_TRACKING_URI it prints, or give -P cpus_per_run so that one run fits at a time"
        )
    if not pick(options.start_server, params.ray.start_server):
        raise ConfigError(
            f"{concurrency} runs would write at once to the SQLite store {uri}, which takes one writer: "
            "use --start-server true (starts `parabench server`, PostgreSQL, and logs there), or export "
            "MLFLOW_TRACKING_URI of a running tracking server, or reserve more --cpus-per-run"
        )
    from parabench.tracking.server import start

    state = start(params)
    uri = state["tracking_uri"]
    os.environ["MLFLOW_TRACKING_URI"] = uri
    log(
        f"{concurrency} runs at once: SQLite takes one writer, so the runs log to the parabench tracking "
        f"server {uri} (PostgreSQL, {'already running' if state.get('already_running') else 'started'}; "
        f"`parabench server stop` stops it); see them with: export MLFLOW_TRACKING_URI={uri}"
    )
    return uri


def first_line(error: BaseException) -> str:
    """A failed run's reason in one line: the exception inside a Ray error, its type and first line."""
    cause: Any = getattr(error, "cause", None) or error
    text = " ".join(str(cause).strip().splitlines()[:1]) or type(cause).__name__
    return f"{type(cause).__name__}: {text}"[:500]
