"""Shared fixtures: throw-away projects (params.yaml with every path inside a temp folder); once per session,
a project whose MRPC splits are fetched from ../shared/mrpc, prepared and validated, and a tiny sweep of it.
Session projects are read-only: a test that changes one works on a copy (`helpers.copy_project`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import EVAL_SAMPLES, copy_project, invoke, project_env, sweep_args

from parabench.checks import sandbox
from parabench.common.processes import free_port, stop_process_group, wait_until
from parabench.config import PARAMS_ENV, Params, load_params
from parabench.data.fetch import SOURCE_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO_ROOT / "params.yaml"
SHARED_MRPC = REPO_ROOT.parent / "shared" / "mrpc"
RAY = str(Path(sys.executable).with_name("ray"))
RAY_CPUS = 2
EXPECTED_SPLITS = {"train": (3668, 2474), "validation": (408, 279), "test": (1725, 1147)}


def write_project(folder: Path, **data_overrides: Any) -> Path:
    """Copy params.yaml into `folder` (its relative paths then land there), with data.local_fallback pointing
    at ../shared/mrpc and the given `data:` keys replaced; return the new params.yaml."""
    raw = yaml.safe_load(PARAMS_FILE.read_text(encoding="utf-8"))
    raw["data"].update({"source": None, "local_fallback": str(SHARED_MRPC), **data_overrides})
    folder.mkdir(parents=True, exist_ok=True)
    params_file = folder / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return params_file


@pytest.fixture(scope="session")
def shared_mrpc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The raw MRPC files: ../shared/mrpc beside the checkout, else downloaded once from the official
    addresses in params.yaml (checksummed). Neither: the whole run stops with one line saying where to put
    them; a test never skips for want of data."""
    names = yaml.safe_load(PARAMS_FILE.read_text(encoding="utf-8"))["data"]["sha256"]
    if all((SHARED_MRPC / name).is_file() for name in names):
        return SHARED_MRPC
    from parabench.config import ParabenchError
    from parabench.data.fetch import fetch_raw

    folder = tmp_path_factory.mktemp("official-mrpc")
    params = load_params(write_project(folder, local_fallback=str(folder / "absent")))
    try:
        fetch_raw(params)
    except ParabenchError as error:
        pytest.exit(
            f"MRPC is not in {SHARED_MRPC} and the official download failed ({error}); "
            f"put {', '.join(names)} there",
            returncode=1,
        )
    return params.path(params.data.raw_dir)


@pytest.fixture
def project_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh temp project folder holding only params.yaml; $PARABENCH_PARAMS points at it (so the CLI uses
    it) and $PARABENCH_MRPC_SOURCE is unset."""
    params_file = write_project(tmp_path / "project")
    monkeypatch.setenv(PARAMS_ENV, str(params_file))
    monkeypatch.delenv(SOURCE_ENV, raising=False)
    return params_file.parent


@pytest.fixture
def project_params(project_dir: Path) -> Params:
    """Params of `project_dir`."""
    return load_params(project_dir / "params.yaml")


@pytest.fixture
def make_params(tmp_path: Path) -> Callable[..., Params]:
    """Factory: make_params(name, **data_overrides) -> Params of a new temp project with those `data:`."""

    def make(name: str = "custom", **data_overrides: Any) -> Params:
        return load_params(write_project(tmp_path / name, **data_overrides))

    return make


@pytest.fixture(scope="session")
def validated_project(tmp_path_factory: pytest.TempPathFactory, shared_mrpc: Path) -> Path:
    """A session-wide project folder with data/raw fetched, data/processed prepared and validated
    (reports/validation/result.json + Data Docs). Read-only: copy it (`validated_copy`) to change anything."""
    from parabench.data.fetch import fetch_raw
    from parabench.data.prepare import prepare_splits
    from parabench.data.validate import validate_splits

    params = load_params(write_project(tmp_path_factory.mktemp("validated")))
    fetch_raw(params, str(shared_mrpc))
    assert prepare_splits(params) == EXPECTED_SPLITS
    outcome = validate_splits(params)
    assert outcome.success, outcome.failures
    return params.root


@pytest.fixture(scope="session")
def validated_params(validated_project: Path) -> Params:
    """Params of the session-wide validated project (do not write through them)."""
    return load_params(validated_project / "params.yaml")


@pytest.fixture(scope="session")
def processed_dir(validated_params: Params) -> Path:
    """The folder holding the validated train/validation/test.parquet (read-only, shared by the session)."""
    return validated_params.path(validated_params.data.processed_dir)


@pytest.fixture
def validated_copy(validated_project: Path, tmp_path: Path) -> Iterator[Params]:
    """A private, writable copy of the validated project; the environment points at it."""
    with project_env(copy_project(validated_project, tmp_path / "validated")) as params:
        yield params


@pytest.fixture(scope="session")
def swept_root(validated_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Once per session: a copy of the validated project swept by the CLI (helpers.SWEPT_MODELS x
    SWEPT_SEEDS, evaluation on EVAL_SAMPLES pairs), with its store and result records. Read-only."""
    destination = tmp_path_factory.mktemp("swept") / "project"
    folder = copy_project(validated_project, destination, train={"max_eval_samples": EVAL_SAMPLES})
    with project_env(folder):
        invoke(*sweep_args())
    return folder


@pytest.fixture(scope="module")
def swept(swept_root: Path) -> Iterator[Params]:
    """The session's swept project, the environment pointing at it for the module's tests (read-only)."""
    with project_env(swept_root) as params:
        yield params


@pytest.fixture(scope="module")
def swept_module_copy(swept_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Params]:
    """A copy of the swept project for one module whose tests build on each other's changes (promote)."""
    with project_env(copy_project(swept_root, tmp_path_factory.mktemp("swept-copy") / "project")) as params:
        yield params


@pytest.fixture
def swept_copy(swept_root: Path, tmp_path: Path) -> Iterator[Params]:
    """A private copy of the swept project (store and records) for one test to change."""
    with project_env(copy_project(swept_root, tmp_path / "project")) as params:
        yield params


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """One local Ray cluster of RAY_CPUS CPUs for the whole test run (`ray start --head --block`, every port
    free, in its own process group: SIGTERM, then SIGKILL, at the end); the address sweeps and tunes join."""
    host = "127.0.0.1"
    temp = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's socket paths live under it
    ports = {
        name: str(free_port(host))
        for name in (
            "port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
        )
    }
    command = [
        RAY,
        "start",
        "--head",
        "--block",
        f"--node-ip-address={host}",
        f"--num-cpus={RAY_CPUS}",
        "--num-gpus=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp}",
        *(f"--{name}={port}" for name, port in ports.items()),
    ]
    log_file = temp / "start.log"
    with log_file.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        started = wait_until(
            lambda: "Ray runtime started" in log_file.read_text(errors="replace"),
            180,
            give_up=lambda: process.poll() is not None,
        )
        assert started, log_file.read_text(errors="replace")[-2000:]
        yield f"{host}:{ports['port']}"
    finally:
        stop_process_group(process.pid)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def served_root(validated_project: Path, ray_address: str) -> Iterator[Path]:
    """Once per session: a copy of the validated project whose `parabench server` (PostgreSQL + MLflow on
    free ports) runs and whose `ray.address` is the session's cluster, evaluating 64 pairs: the one tracking
    server and Ray cluster of the test run. Tests there log under their own experiment or model names."""
    work = Path(tempfile.mkdtemp(prefix="parabench-served-"))
    work.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data folder
    changes = {"ray": {"address": ray_address}, "train": {"max_eval_samples": 64}}
    source = load_params(validated_project / "params.yaml")
    folder = sandbox.copy_project(source, work / "project", work / "server", changes).parent
    mlflow_pid = None
    try:
        with project_env(folder) as params:
            uri = f"http://127.0.0.1:{params.tracking_server.mlflow_port}"
            assert f"MLFLOW_TRACKING_URI={uri}" in invoke("server", "start").stdout
        mlflow_pid = json.loads((work / "server" / "server.json").read_text(encoding="utf-8"))["mlflow_pid"]
        yield folder
    finally:
        with project_env(folder):
            invoke("server", "stop")
        if mlflow_pid is not None:  # a server no longer in server.json (a test replaced it) stops too
            stop_process_group(mlflow_pid)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def served(served_root: Path) -> Iterator[Params]:
    """The session's served project, the environment pointing at it (its SQLite store) for one test."""
    with project_env(served_root) as params:
        yield params
