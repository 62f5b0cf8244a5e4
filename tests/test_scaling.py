"""`parabench scaling`'s table: runs per hour per width from the timed sweeps; 1 at a time is 1.00×."""

from __future__ import annotations

import json

from parabench.checks.scaling import summarize, sweep_args, write_report
from parabench.config import Params


def test_the_table_gives_runs_per_hour_and_the_ratio_to_one_run_at_a_time(project_params: Params) -> None:
    timed = {
        1: [{"seconds": 120.0, "runs": 4}, {"seconds": 100.0, "runs": 4}],
        2: [{"seconds": 60.0, "runs": 4}, {"seconds": 80.0, "runs": 4}],
    }
    report = write_report(project_params, summarize(project_params, timed, cpus=2))
    rows = {row["runs_at_a_time"]: row for row in report["rows"]}
    assert rows[1]["median_seconds"] == 110.0 and rows[1]["runs_per_hour"] == round(3600 * 4 / 110, 1)
    assert rows[2]["median_seconds"] == 70.0 and rows[2]["ratio"] == round(
        (3600 * 4 / 70) / (3600 * 4 / 110), 2
    )
    assert rows[1]["ratio"] == 1.0 and rows[2]["cpus_per_run"] == 1.0
    path = project_params.path(project_params.scaling.report_file)
    assert json.loads(path.read_text())["rows"] == report["rows"]
    table = path.with_suffix(".md").read_text()
    assert "| 2 | 1 | 4 | 70.0 (60.0, 80.0) |" in table


def test_each_width_is_a_ray_sweep_reserving_its_share_of_the_cpus(project_params: Params) -> None:
    args = sweep_args(project_params, 0.5)
    assert args[:3] == ["sweep", "--engine", "ray"]
    assert args[args.index("--cpus-per-run") + 1] == "0.5"
    assert args[args.index("--seeds") + 1] == ",".join(
        str(s) for s in range(1, project_params.scaling.runs + 1)
    )
