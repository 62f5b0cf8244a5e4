"""A local MLflow tracking server on PostgreSQL: `parabench server start|stop|status`.

PostgreSQL (initdb/pg_ctl, run as the `postgres` user when started as root, which they refuse) keeps runs and
the registry; `mlflow server` on 127.0.0.1 serves them and proxies artifacts into a folder. Point any command
at it with `MLFLOW_TRACKING_URI=<uri>`. With `--database-url` an existing PostgreSQL is used instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parabench.config import ParabenchError, Params

POSTGRES_USER = "postgres"  # the OS account PostgreSQL's tools run as when parabench runs as root


@dataclass(frozen=True)
class ServerSettings:
    """params.yaml `tracking_server:`."""

    dir: Path
    host: str
    postgres_port: int
    mlflow_port: int
    database: str
    user: str
    workers: int
    start_timeout_s: float

    @classmethod
    def of(cls, params: Params) -> ServerSettings:
        raw = params.raw["tracking_server"]
        return cls(
            dir=params.path(raw["dir"]),
            host=raw["host"],
            postgres_port=int(raw["postgres_port"]),
            mlflow_port=int(raw["mlflow_port"]),
            database=raw["database"],
            user=raw["user"],
            workers=int(raw["workers"]),
            start_timeout_s=float(raw["start_timeout_s"]),
        )

    @property
    def pgdata(self) -> Path:
        return self.dir / "pgdata"

    @property
    def artifacts(self) -> Path:
        return self.dir / "artifacts"

    @property
    def state_file(self) -> Path:
        return self.dir / "server.json"

    @property
    def tracking_uri(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def local_database_url(self) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.postgres_port}/{self.database}"


def as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL's tools refuse root: run them as the postgres account then."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", POSTGRES_USER, "--", *command]


def require_tool(name: str) -> str:
    """The path of a PostgreSQL tool, or a ParabenchError saying how to get one."""
    path = shutil.which(name)
    if path is None:
        raise ParabenchError(
            f"'{name}' is not on the PATH: install PostgreSQL (e.g. `apt-get install postgresql`) or pass "
            "--database-url postgresql+psycopg://USER@HOST:PORT/DB for an existing server"
        )
    return path


def run_tool(command: list[str], what: str) -> None:
    """Run a PostgreSQL tool; a ParabenchError with its output when it fails."""
    done = subprocess.run(as_postgres(command), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ParabenchError(f"{what} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")


def http_ok(url: str, timeout: float) -> bool:
    """True when a GET of url answers 200 (a server's health or ping page)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def healthy(uri: str, timeout: float = 2.0) -> bool:
    """True when an MLflow server answers /health at uri."""
    return http_ok(f"{uri}/health", timeout)


def start_postgres(settings: ServerSettings) -> str:
    """Initialise (first time) and start the local PostgreSQL; returns the database URL."""
    for tool in ("initdb", "pg_ctl", "createdb"):
        require_tool(tool)
    settings.dir.mkdir(parents=True, exist_ok=True)
    if not (settings.pgdata / "PG_VERSION").is_file():
        settings.pgdata.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(settings.pgdata, POSTGRES_USER, POSTGRES_USER)
            settings.pgdata.chmod(0o700)
            if subprocess.run(as_postgres(["test", "-w", str(settings.pgdata)]), check=False).returncode:
                raise ParabenchError(
                    f"PostgreSQL runs as '{POSTGRES_USER}', which cannot reach {settings.pgdata}: set "
                    "params.yaml tracking_server.dir to a folder whose parents it may enter"
                )
        run_tool(["initdb", "-D", str(settings.pgdata), "-A", "trust", "-U", settings.user], "initdb")
    log = settings.pgdata / "postgres.log"
    options = f"-h {settings.host} -p {settings.postgres_port} -k {settings.pgdata}"
    run_tool(
        ["pg_ctl", "-D", str(settings.pgdata), "-l", str(log), "-o", options, "-w", "start"],
        f"starting PostgreSQL on port {settings.postgres_port} (log: {log})",
    )
    created = subprocess.run(
        as_postgres(
            [
                "createdb",
                "-h",
                settings.host,
                "-p",
                str(settings.postgres_port),
                "-U",
                settings.user,
                settings.database,
            ]
        ),
        capture_output=True,
        text=True,
        check=False,
    )
    if created.returncode != 0 and "already exists" not in created.stderr:
        raise ParabenchError(f"creating database '{settings.database}' failed: {created.stderr.strip()}")
    return settings.local_database_url


def stop_postgres(settings: ServerSettings) -> None:
    """Stop the local PostgreSQL if it runs."""
    if (settings.pgdata / "postmaster.pid").is_file():
        run_tool(["pg_ctl", "-D", str(settings.pgdata), "-m", "fast", "-w", "stop"], "stopping PostgreSQL")


def start_mlflow(settings: ServerSettings, database_url: str) -> int:
    """Start `mlflow server` detached on the database; returns its pid once /health answers."""
    settings.artifacts.mkdir(parents=True, exist_ok=True)
    log_file = settings.dir / "mlflow-server.log"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        database_url,
        "--artifacts-destination",
        str(settings.artifacts),
        "--host",
        settings.host,
        "--port",
        str(settings.mlflow_port),
        "--workers",
        str(settings.workers),
    ]
    with log_file.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + settings.start_timeout_s
    while time.monotonic() < deadline:
        if healthy(settings.tracking_uri):
            return process.pid
        if process.poll() is not None:
            break
        time.sleep(0.5)
    stop_process_group(process.pid)
    tail = log_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
    raise ParabenchError(
        f"mlflow server did not answer {settings.tracking_uri}/health in "
        f"{settings.start_timeout_s:.0f} s; last lines of {log_file}:\n" + "\n".join(tail)
    )


def stop_process_group(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM a process group (the server and its workers), then SIGKILL what is left after grace_s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def read_state(settings: ServerSettings) -> dict[str, Any] | None:
    """What `start` recorded, or None."""
    if not settings.state_file.is_file():
        return None
    return json.loads(settings.state_file.read_text(encoding="utf-8"))


def start(params: Params, database_url: str | None = None) -> dict[str, Any]:
    """Start PostgreSQL (unless database_url names one) and `mlflow server`; idempotent."""
    settings = ServerSettings.of(params)
    state = read_state(settings)
    if state and healthy(state["tracking_uri"]):
        return state | {"already_running": True}
    managed = database_url is None
    url = start_postgres(settings) if managed else database_url
    try:
        pid = start_mlflow(settings, url)
    except ParabenchError:
        if managed:
            stop_postgres(settings)
        raise
    state = {
        "tracking_uri": settings.tracking_uri,
        "mlflow_pid": pid,
        "database_url": url,
        "managed_postgres": managed,
        "artifacts": str(settings.artifacts),
    }
    settings.state_file.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    return state


def stop(params: Params) -> bool:
    """Stop what `start` started; False when nothing was running."""
    settings = ServerSettings.of(params)
    state = read_state(settings)
    if state is None:
        stop_postgres(settings)
        return False
    stop_process_group(int(state["mlflow_pid"]))
    if state.get("managed_postgres"):
        stop_postgres(settings)
    settings.state_file.unlink()
    return True


def status(params: Params) -> dict[str, Any]:
    """Whether the server runs, and where."""
    settings = ServerSettings.of(params)
    state = read_state(settings) or {"tracking_uri": settings.tracking_uri}
    return state | {"healthy": healthy(state["tracking_uri"])}
