"""`parabench scaling`: runs per hour of `parabench sweep --engine ray` at 1 and more runs at a time, measured
in one go, the widths interleaved round by round (a slower moment of the machine then hits every width).

Each sweep is the real command in a subprocess, on a throw-away copy of the project logging to its own
PostgreSQL tracking server, each (round, width) in an experiment of its own so nothing is skipped. The width
is set by what a run reserves: on a machine of C CPUs, `--cpus-per-run C/width`. Writes params.yaml
`scaling.report_file` (JSON) and a Markdown table beside it.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from parabench.checks.sandbox import PARABENCH, copy_project, last_lines, project_env
from parabench.common.files import write_json, write_text
from parabench.common.tables import markdown_table
from parabench.config import PARAMS_ENV, ParabenchError, Params, load_params
from parabench.tracking import server as tracking_server


def sweep_args(params: Params, cpus_per_run: float) -> list[str]:
    settings = params.scaling
    seeds = ",".join(str(seed) for seed in range(1, settings.runs + 1))
    return [
        "sweep",
        "--engine",
        "ray",
        "--models",
        settings.model,
        "--seeds",
        seeds,
        "--epochs",
        str(settings.epochs),
        "--max-train-samples",
        str(settings.max_train_samples),
        "--max-eval-samples",
        str(settings.max_eval_samples),
        "--cpus-per-run",
        f"{cpus_per_run:g}",
    ]


def timed_sweep(params: Params, env: dict[str, str], cpus_per_run: float) -> dict[str, Any]:
    """One sweep command: wall seconds and the runs it FINISHED."""
    started = time.perf_counter()
    process = subprocess.run(
        [PARABENCH, *sweep_args(params, cpus_per_run)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise ParabenchError(f"a timed sweep failed: {last_lines(process.stdout + process.stderr)}")
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(env["MLFLOW_EXPERIMENT_NAME"])
    finished = [
        run
        for run in client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'")
        if run.data.tags.get("sweep") != "parent"
    ]
    return {"seconds": seconds, "runs": len(finished)}


def run_scaling(params: Params, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every width once per round, rounds interleaved; the table of runs per hour."""
    settings = params.scaling
    cpus = os.cpu_count() or 1
    results: dict[int, list[dict[str, Any]]] = {width: [] for width in settings.widths}
    with tempfile.TemporaryDirectory(prefix="parabench-scaling-") as work:
        folder = Path(work)
        folder.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data folder
        params_file = copy_project(params, folder / "project", folder / "server", {"ray": {"num_cpus": cpus}})
        copy = load_params(params_file)
        os.environ[PARAMS_ENV] = str(params_file)
        state = tracking_server.start(copy)
        try:
            for round_ in range(1, settings.rounds + 1):
                for width in settings.widths if round_ % 2 else reversed(settings.widths):
                    env = project_env(params_file, state["tracking_uri"], f"scaling-r{round_}-w{width}")
                    outcome = timed_sweep(copy, env, cpus / width)
                    results[width].append(outcome)
                    log(
                        f"round {round_}, {width} at a time: {outcome['runs']} runs in "
                        f"{outcome['seconds']:.1f} s"
                    )
        finally:
            tracking_server.stop(copy)
    return write_report(params, summarize(params, results, cpus))


def summarize(params: Params, results: dict[int, list[dict[str, Any]]], cpus: int) -> dict[str, Any]:
    """Per width: the median wall time, runs per hour, and the ratio to the narrowest width."""
    settings = params.scaling
    rows = []
    for width, outcomes in results.items():
        seconds = statistics.median(outcome["seconds"] for outcome in outcomes)
        runs = min(outcome["runs"] for outcome in outcomes)
        rows.append(
            {
                "runs_at_a_time": width,
                "cpus_per_run": cpus / width,
                "runs": runs,
                "median_seconds": round(seconds, 1),
                "all_seconds": [round(outcome["seconds"], 1) for outcome in outcomes],
                "runs_per_hour": round(3600 * runs / seconds, 1),
            }
        )
    base = rows[0]["runs_per_hour"]
    for row in rows:
        row["ratio"] = round(row["runs_per_hour"] / base, 2)
    return {
        "command": "parabench scaling",
        "cpus": cpus,
        "model": settings.model,
        "epochs": settings.epochs,
        "max_train_samples": settings.max_train_samples,
        "max_eval_samples": settings.max_eval_samples,
        "rounds": settings.rounds,
        "rows": rows,
    }


def write_report(params: Params, report: dict[str, Any]) -> dict[str, Any]:
    """reports/scaling.json and the Markdown table beside it."""
    path = params.path(params.scaling.report_file)
    write_json(path, report)
    headers = ("runs at a time", "CPUs per run", "runs", "median wall s (all)", "runs/hour", "× 1 at a time")
    rows = [
        (
            row["runs_at_a_time"],
            f"{row['cpus_per_run']:g}",
            row["runs"],
            f"{row['median_seconds']} ({', '.join(map(str, row['all_seconds']))})",
            row["runs_per_hour"],
            f"{row['ratio']:.2f}",
        )
        for row in report["rows"]
    ]
    lines = [
        "# Ray sweep scaling",
        "",
        f"`parabench scaling` on {report['cpus']} CPUs: `parabench sweep --engine ray` of {report['model']} "
        f"({report['epochs']} epoch, {report['max_train_samples']} training pairs, "
        f"{report['max_eval_samples']} evaluation pairs per run), widths interleaved over "
        f"{report['rounds']} rounds; wall time of the whole command (Ray start included).",
        "",
        *markdown_table(headers, rows),
        "",
    ]
    write_text(path.with_suffix(".md"), "\n".join(lines))
    return report | {"report_file": str(path)}
