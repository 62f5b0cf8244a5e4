"""What a report is made of: its settings (params.yaml `report:`), one model's result, and the report itself
(rows, throughput per hardware, tests, recipes). Shared by the report's builder, Markdown and plots."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from parabench.config import Params
from parabench.results.groups import SeedGroup
from parabench.results.record import ResultRecord


@dataclass(frozen=True)
class ReportSettings:
    """params.yaml `report:`: where the outputs go and the thresholds of the statistics."""

    results_md: Path
    results_csv: Path
    results_json: Path
    plots_dir: Path
    confidence: float
    significance_level: float
    paper_hardware: str
    majority_rate: float
    collapse_margin: float

    @classmethod
    def from_params(cls, params: Params) -> ReportSettings:
        values = params.report.model_dump()
        return cls(
            **{
                f.name: params.path(values[f.name]) if f.type == "Path" else values[f.name]
                for f in fields(cls)
            }
        )


@dataclass(frozen=True)
class ModelResult:
    """One model's group of seeds in the tables, and its seeds that collapsed (seed → why)."""

    group: SeedGroup
    collapsed: dict[int, str]

    @property
    def best_seed(self) -> int:
        return self.group.best_seed

    @property
    def best(self) -> ResultRecord:
        return self.group.runs[self.best_seed]


@dataclass(frozen=True)
class Report:
    """The table rows, throughput per hardware, the paired tests, the recipes compared, the data version they
    are on, and the files written."""

    rows: list[dict[str, Any]]
    throughput: list[dict[str, Any]]
    tests: list[dict[str, Any]]
    data_version: str
    recipes: list[dict[str, Any]] = field(default_factory=list)
    ensembles: list[dict[str, Any]] = field(default_factory=list)
    collapsed: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
