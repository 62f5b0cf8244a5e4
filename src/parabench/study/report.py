"""`parabench report`: the study's tables rebuilt from the result records (results/ and the MLflow store).

Per size class: train / validation / test accuracy and F1 as mean ± sample standard deviation (ddof=1) over
the seeds, in percent, whatever machine made each seed; throughput per hardware class, never averaged across
two; parameters; seeds; the study's test numbers beside ours. Beyond the study: a t-distribution confidence
interval of test accuracy, an exact McNemar test and a paired t-test over seeds between each class's best
model and every other, and a flag on every seed that collapsed to one class. Written to
reports/results.{md,csv,json} and reports/plots/, and logged to MLflow as a `report` run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from parabench.common.errors import ParabenchError
from parabench.common.files import require_writable, write_text
from parabench.common.names import SCORE_METRICS, VALIDATION_SCORE
from parabench.config import Params
from parabench.models.zoo import paper_numbers
from parabench.results.groups import SeedGroup, mean_std
from parabench.results.store import all_records
from parabench.study import plots
from parabench.study.markdown import MISSING, markdown
from parabench.study.report_data import ModelResult, Report, ReportSettings
from parabench.study.statistics import (
    class_order,
    collapse_reason,
    interval,
    mcnemar_exact,
    paired_seed_test,
    records_ensemble,
)
from parabench.study.sweep import groups_by_model, named
from parabench.tracking import client as tracking
from parabench.training.plan import TRAINING_REVISION, TUNED_PREFIX, tuned_recipes

THROUGHPUT_METRICS = ("eval_samples_per_second", "train_samples_per_second")
INTERVAL_METRICS = ("test_accuracy", "test_f1")
REPORT_RUN_TAGS = {"stage": "report"}
RECIPE_PARAMS = ("learning_rate", "warmup_ratio", "epochs", "batch_size", "weight_decay", "select_best_epoch")


def difference(ours: float, theirs: float | None) -> float:
    """Ours minus the study's, in points; NaN where the study has no number."""
    return ours - theirs if theirs is not None else float("nan")


def older_code(group: SeedGroup) -> bool:
    """Made by training code of an older revision: the same recipe would now train to other numbers."""
    return group.key.training_revision < TRAINING_REVISION


def model_label(group: SeedGroup) -> str:
    """The model's name in the tables, marked when older training code made it."""
    revision = group.key.training_revision
    return f"{group.model} (older training code, revision {revision})" if older_code(group) else group.model


def primary_hardware(group: SeedGroup) -> str:
    """The hardware class with the most runs of the group (the first by name on a tie)."""
    machines = group.by_hardware()
    return max(machines, key=lambda label: (len(machines[label]), [-ord(c) for c in label]))


def hardware_text(group: SeedGroup) -> str:
    """Which machines made the seeds: 'Intel Xeon, AMX: 13, 42; AMD EPYC, AVX2: 87'."""
    machines: dict[str, list[int]] = {}
    for seed, record in group.runs.items():
        machines.setdefault(record.hardware.label, []).append(seed)
    return "; ".join(f"{label}: {', '.join(map(str, seeds))}" for label, seeds in sorted(machines.items()))


def summary_row(result: ModelResult, settings: ReportSettings) -> dict[str, Any]:
    """One model's line of the tables: scores in percent over its seeds, throughput on its main hardware
    class, and the study's numbers beside ours."""
    group = result.group
    row: dict[str, Any] = {
        "size_class": group.size_class,
        "model": group.model,
        "label": model_label(group),
        "recipe": group.recipe_name,
        "n_seeds": len(group.runs),
        "seeds": ",".join(map(str, group.runs)),
        "parameters": int(group.first.metrics["num_parameters"]),
        "hardware": hardware_text(group),
    }
    for name in SCORE_METRICS:
        row[f"{name}_mean"], row[f"{name}_std"] = mean_std(group.values(name, 100.0))
    for name in INTERVAL_METRICS:
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = interval(
            group.values(name, 100.0), settings.confidence
        )
    row["throughput_hardware"] = primary_hardware(group)
    measured = group.by_hardware()[row["throughput_hardware"]]
    for name in THROUGHPUT_METRICS:
        row[f"{name}_mean"], row[f"{name}_std"] = mean_std(record.metrics[name] for record in measured)
    paper = paper_numbers(group.model)
    for name in INTERVAL_METRICS:
        row[f"paper_{name}"] = paper.get(name)
        row[f"diff_{name}"] = difference(row[f"{name}_mean"], paper.get(name))
    row["paper_samples_per_second"] = paper.get("samples_per_second")
    row["best_validation_seed"] = result.best_seed
    row["best_validation_run_id"] = result.best.run_id
    row["collapsed_seeds"] = ",".join(map(str, result.collapsed))
    row |= {
        "data_version": group.key.data_version,
        "recipe_fingerprint": group.key.recipe_fingerprint,
        "training_revision": group.key.training_revision,
    }
    return row


def throughput_rows(results: list[ModelResult]) -> list[dict[str, Any]]:
    """Per model and hardware class: how many runs measured it, inference and training pairs/s."""
    rows = []
    for result in results:
        for label, records in result.group.by_hardware().items():
            row: dict[str, Any] = {"model": result.group.model, "hardware": label, "runs": len(records)}
            for name in THROUGHPUT_METRICS:
                row[f"{name}_mean"], row[f"{name}_std"] = mean_std(r.metrics[name] for r in records)
            row["threads"] = ",".join(sorted({str(r.hardware.threads) for r in records}))
            rows.append(row)
    return rows


def paired_tests(results: list[ModelResult], settings: ReportSettings) -> list[dict[str, Any]]:
    """Per size class, its best model (mean validation accuracy) against every other: McNemar's exact test on
    the test predictions of their best seeds, and a paired t-test over the seeds they share."""
    tests = []
    for size_class in class_order(result.group.size_class for result in results):
        ranked = sorted(
            (r for r in results if r.group.size_class == size_class),
            key=lambda r: r.group.mean(VALIDATION_SCORE),
            reverse=True,
        )
        best = ranked[0]
        for other in ranked[1:]:
            pairs, only_first, only_second, p_value = mcnemar_exact(
                best.best.predictions["test"], other.best.predictions["test"]
            )
            seeds = paired_seed_test(best.group, other.group)
            tests.append(
                {
                    "size_class": size_class,
                    "model_a": best.group.model,
                    "seed_a": best.best_seed,
                    "model_b": other.group.model,
                    "seed_b": other.best_seed,
                    "pairs": pairs,
                    "only_a_correct": only_first,
                    "only_b_correct": only_second,
                    "p_value": p_value,
                    "significant": p_value < settings.significance_level,
                    **seeds,
                    "seed_significant": seeds["seed_p_value"] < settings.significance_level,
                }
            )
    return tests


def ensemble_rows(results: list[ModelResult]) -> list[dict[str, Any]]:
    """Every fine-tuned model with two seeds or more: its seed ensemble rebuilt from the records'
    probabilities (validation and test), beside the seeds' mean accuracy on the same pairs."""
    rows = []
    for result in results:
        group = result.group
        if group.first.kind != "fine-tuned" or len(group.runs) < 2:
            continue
        row: dict[str, Any] = {"model": model_label(group), "seeds": ", ".join(map(str, sorted(group.runs)))}
        for split in ("validation", "test"):
            ensemble = records_ensemble(group, split)
            row |= {f"{split}_{name}": value for name, value in ensemble.items()}
        rows.append(row)
    return rows


def recipe_rows(
    groups: dict[str, list[SeedGroup]], tuned: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Every group of every model (one per recipe): the recipe and mean ± std validation/test accuracy.
    The first of each model is the one in the tables (its default recipe when run, else the newest).
    Then each model's recipe search (`parabench tune`) not run yet: its best trial's validation accuracy."""
    rows = []
    for model, model_groups in groups.items():
        for position, group in enumerate(model_groups):
            row = {"model": model_label(group), "in_tables": position == 0, "seeds": len(group.runs)}
            row["recipe"] = group.recipe_name
            row |= {name: group.first.params.get(name, MISSING) for name in RECIPE_PARAMS}
            for name, metric in (
                ("validation_accuracy", VALIDATION_SCORE),
                ("test_accuracy", "test_accuracy"),
            ):
                row[f"{name}_mean"], row[f"{name}_std"] = mean_std(group.values(metric))
            rows.append(row)
        search = (tuned or {}).get(model)
        run = {group.recipe_name for group in model_groups}
        if search is not None and f"{TUNED_PREFIX}:{model}" not in run:
            recipe = search["recipe"]
            row = {"model": model, "in_tables": False, "seeds": "search: 1 trial"}
            row |= {name: str(recipe.get(name, MISSING)) for name in RECIPE_PARAMS}
            row["recipe"] = f"{TUNED_PREFIX}:{model} (best of the search, not swept)"
            row["validation_accuracy_mean"], row["validation_accuracy_std"] = (
                search["validation_accuracy"],
                math.nan,
            )
            row["test_accuracy_mean"] = row["test_accuracy_std"] = math.nan  # a search never looks at test
            rows.append(row)
    return rows


def flat_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The numeric, finite entries of a row (what `dvc metrics show` can display)."""
    return {
        key: value
        for key, value in row.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def write_outputs(report: Report, results: list[ModelResult], settings: ReportSettings) -> list[Path]:
    """results.md / .csv / .json and the plots."""
    json_text = json.dumps({row["model"]: flat_metrics(row) for row in report.rows}, indent=2, sort_keys=True)
    paths = [
        write_text(settings.results_md, markdown(report, settings)),
        write_text(settings.results_csv, pd.DataFrame(report.rows).to_csv(index=False)),
        write_text(settings.results_json, json_text + "\n"),
    ]
    return paths + plots.write_plots(
        report.rows, [r.group for r in results], settings.plots_dir, settings.paper_hardware
    )


def log_report_run(report: Report, settings: ReportSettings) -> str:
    """Log the report's files as artifacts of a `report` run; returns its run id."""
    tags = {**REPORT_RUN_TAGS, "data_version": report.data_version}
    with tracking.tracked_run(run_name="report", tags=tags) as run:
        for path in report.paths:
            mlflow.log_artifact(
                str(path), artifact_path="plots" if path.parent == settings.plots_dir else None
            )
    return run.info.run_id


def build_report(
    params: Params,
    models: list[str] | None = None,
    data_version: str | None = None,
    log: Callable[[str], None] = print,
) -> Report:
    """Read every result record (results/ and the store), group them, and write every output."""
    settings = ReportSettings.from_params(params)
    require_writable(
        settings.results_md, settings.results_csv, settings.results_json, settings.plots_dir / "plot"
    )
    records = all_records(params)
    all_groups = groups_by_model(params, records, models, data_version)
    if not all_groups:
        raise ParabenchError(
            f"no result records of {named(models)} in {params.path(params.results.dir)} or the tracking "
            "store; run `parabench sweep` first"
        )
    for model in (m for m in models or [] if m not in all_groups):
        log(f"warning: {model} has no result record on this data version; left out of the report")
    results = []
    for model_groups in all_groups.values():
        group = model_groups[0]
        reasons = {
            seed: collapse_reason(record, settings.majority_rate, settings.collapse_margin)
            for seed, record in group.runs.items()
        }
        results.append(ModelResult(group, {seed: why for seed, why in reasons.items() if why}))
    report = Report(
        rows=[summary_row(result, settings) for result in results],
        throughput=throughput_rows(results),
        tests=paired_tests(results, settings),
        data_version=results[0].group.key.data_version,
        recipes=recipe_rows(all_groups, tuned_recipes(params)),
        ensembles=ensemble_rows(results),
        collapsed=[
            f"{result.group.model} seed {seed}: {why}"
            for result in results
            for seed, why in result.collapsed.items()
        ],
    )
    report.paths.extend(write_outputs(report, results, settings))
    log(f"report run: {log_report_run(report, settings)}")
    return report
