"""The read model of results: records grouped into one model's seeds of one recipe on one data version.

Records come from `results/` and from the MLflow store; a run present in both counts once. Per group and seed
the newest record counts for accuracy; every record counts for throughput, per hardware class.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from parabench.common.names import VALIDATION_SCORE
from parabench.results.record import ResultRecord


@dataclass(frozen=True)
class GroupKey:
    """What makes records comparable across seeds: model, recipe, data and training code."""

    model: str
    recipe_fingerprint: str
    data_version: str
    training_revision: int

    @classmethod
    def of(cls, record: ResultRecord) -> GroupKey:
        return cls(record.model, record.recipe_fingerprint, record.data_version, record.training_revision)


@dataclass(frozen=True)
class SeedGroup:
    """One group's records: `runs` the newest per seed (seed order), `every` all of them."""

    runs: dict[int, ResultRecord]
    every: tuple[ResultRecord, ...]

    @property
    def key(self) -> GroupKey:
        return GroupKey.of(self.first)

    @property
    def first(self) -> ResultRecord:
        return next(iter(self.runs.values()))

    @property
    def model(self) -> str:
        return self.first.model

    @property
    def size_class(self) -> str:
        return self.first.size_class

    @property
    def recipe_name(self) -> str:
        return self.first.recipe_name

    @property
    def is_ensemble(self) -> bool:
        return self.first.kind == "ensemble"

    @property
    def best_seed(self) -> int:
        """The seed with the highest validation accuracy (the lowest seed on a tie)."""
        return max(self.runs, key=lambda seed: (self.runs[seed].metrics[VALIDATION_SCORE], -seed))

    def values(self, metric: str, scale: float = 1.0) -> list[float]:
        """The metric of every seed's record, times scale (100 for percent)."""
        return [record.metrics[metric] * scale for record in self.runs.values()]

    def mean(self, metric: str) -> float:
        return mean_std(self.values(metric))[0]

    def by_hardware(self) -> dict[str, list[ResultRecord]]:
        """Every record (all seeds, all machines) per hardware class, in name order."""
        found: dict[str, list[ResultRecord]] = {}
        for record in self.every:
            found.setdefault(record.hardware.label, []).append(record)
        return dict(sorted(found.items()))


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1, NaN for a single value) of the values."""
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def unique_runs(records: Iterable[ResultRecord]) -> list[ResultRecord]:
    """One record per run id (the first seen)."""
    found: dict[str, ResultRecord] = {}
    for record in records:
        found.setdefault(record.run_id, record)
    return list(found.values())


def group_records(records: Iterable[ResultRecord]) -> list[SeedGroup]:
    """Records (one per run) grouped by GroupKey, the newest group first; per seed the newest record."""
    grouped: dict[GroupKey, list[ResultRecord]] = {}
    for record in sorted(unique_runs(records), key=lambda r: r.finished_at, reverse=True):
        grouped.setdefault(GroupKey.of(record), []).append(record)
    groups = []
    for members in grouped.values():
        newest: dict[int, ResultRecord] = {}
        for record in members:
            newest.setdefault(record.seed, record)
        groups.append(SeedGroup(dict(sorted(newest.items())), tuple(members)))
    return groups


def newest_data_version(records: Sequence[ResultRecord]) -> str | None:
    """The data version of the newest record, or None for no records."""
    return max(records, key=lambda r: r.finished_at).data_version if records else None
