"""results.md: the report's rows as Markdown (class tables beside the study's rows, throughput per hardware,
Pareto fronts, paired tests, recipes compared, collapsed seeds)."""

from __future__ import annotations

import math
from typing import Any

from parabench.common.names import SCORE_METRICS
from parabench.common.tables import markdown_table
from parabench.models.zoo import study_models
from parabench.study.report_data import Report, ReportSettings
from parabench.study.statistics import class_order, pareto_front

MISSING = "n/a"
TABLE_COLUMNS = (
    "Model",
    "Params",
    "Seeds",
    "Train acc",
    "Train F1",
    "Val acc",
    "Val F1",
    "Test acc",
    "Test F1",
    "Test acc CI",
    "Samples/s",
    "Measured on",
    "Paper test acc",
    "Δ acc",
    "Paper test F1",
    "Δ F1",
)


def plus_minus(mean: float, std: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return MISSING
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def number(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def parameters_text(count: int) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"


def table_cells(row: dict[str, Any]) -> list[str]:
    """One model's cells in the class table."""
    flag = " ⚠" if row["collapsed_seeds"] else ""
    scores = [plus_minus(row[f"{name}_mean"], row[f"{name}_std"]) for name in SCORE_METRICS]
    return [
        f"{row['label']}{flag}",
        parameters_text(row["parameters"]),
        f"{row['n_seeds']} ({row['seeds']})",
        *scores,
        f"[{number(row['test_accuracy_ci_low'])}, {number(row['test_accuracy_ci_high'])}]",
        f"{plus_minus(row['eval_samples_per_second_mean'], row['eval_samples_per_second_std'], 1)} "
        f"({row['throughput_hardware']})",
        row["hardware"],
        number(row["paper_test_accuracy"]),
        number(row["diff_test_accuracy"], signed=True),
        number(row["paper_test_f1"]),
        number(row["diff_test_f1"], signed=True),
    ]


def study_cells(model: str, paper: dict[str, Any], hardware_name: str) -> list[str]:
    """A study's model in the class table: its reported test numbers (mean ± std over its 5 seeds) and
    samples/s, measured on its own hardware; no train or validation numbers (the study gives none)."""
    row = [MISSING] * len(TABLE_COLUMNS)
    row[0] = f"{model} (study)"
    row[1] = str(paper.get("parameters") or MISSING)
    row[2] = "study"

    def cell(name: str, digits: int = 2) -> str:
        mean, std = paper.get(name), paper.get(f"{name}_std")
        return plus_minus(math.nan if mean is None else mean, math.nan if std is None else std, digits)

    row[TABLE_COLUMNS.index("Test acc")] = cell("test_accuracy")
    row[TABLE_COLUMNS.index("Test F1")] = cell("test_f1")
    row[TABLE_COLUMNS.index("Samples/s")] = cell("samples_per_second", 1)
    row[TABLE_COLUMNS.index("Measured on")] = hardware_name
    row[TABLE_COLUMNS.index("Paper test acc")] = number(paper.get("test_accuracy"))
    row[TABLE_COLUMNS.index("Paper test F1")] = number(paper.get("test_f1"))
    return row


def significance_line(test: dict[str, Any]) -> str:
    verdict = "significant" if test["significant"] else "not significant"
    if math.isnan(test["seed_p_value"]):
        over_seeds = "fewer than two shared seeds: no test over seeds"
    else:
        seed_verdict = "significant" if test["seed_significant"] else "not significant"
        over_seeds = (
            f"over seeds {test['shared_seeds']}, paired t-test of test accuracy: mean difference "
            f"{test['seed_mean_difference']:+.2f} points, p = {test['seed_p_value']:.4g} ({seed_verdict})"
        )
    return (
        f"- **{test['size_class']}**: {test['model_a']} (seed {test['seed_a']}) vs {test['model_b']} "
        f"(seed {test['seed_b']}) on {test['pairs']} test pairs: only the first right on "
        f"{test['only_a_correct']}, only the second on {test['only_b_correct']}; exact McNemar "
        f"p = {test['p_value']:.4g} ({verdict}); {over_seeds}"
    )


def front_lines(report: Report, settings: ReportSettings) -> list[str]:
    """The Pareto front of test accuracy against inference pairs/s, per hardware class (ours) and over the
    study's rows (its hardware): the models no other on the same hardware beats on both."""
    accuracy = {row["model"]: row["test_accuracy_mean"] for row in report.rows}
    machines: dict[str, list[tuple[float, float, str]]] = {}
    for row in report.throughput:
        point = (row["eval_samples_per_second_mean"], accuracy[row["model"]], row["model"])
        machines.setdefault(f"ours on {row['hardware']}", []).append(point)
    machines[f"the study's ({settings.paper_hardware})"] = [
        (paper["samples_per_second"], paper["test_accuracy"], model)
        for model, (_, paper) in study_models().items()
        if paper.get("samples_per_second") is not None and paper.get("test_accuracy") is not None
    ]
    lines = []
    for label, points in machines.items():
        front = sorted((points[i] for i in pareto_front([p[:2] for p in points])), key=lambda p: p[0])
        described = ", ".join(f"{name} ({accuracy:.2f} %, {speed:.1f}/s)" for speed, accuracy, name in front)
        lines.append(f"- {label}: {described or 'no rows'}")
    return lines


def throughput_lines(report: Report) -> list[str]:
    headers = ("Model", "Hardware", "Runs", "Threads", "Inference pairs/s", "Training pairs/s")
    rows = [
        [
            row["model"],
            row["hardware"],
            row["runs"],
            row["threads"],
            plus_minus(row["eval_samples_per_second_mean"], row["eval_samples_per_second_std"], 1),
            plus_minus(row["train_samples_per_second_mean"], row["train_samples_per_second_std"], 1),
        ]
        for row in report.throughput
    ]
    return markdown_table(headers, rows)


def recipe_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The recipes table of results.md."""
    headers = ("Model", "Recipe", "lr", "Warm-up", "Epochs", "Batch", "Weight decay", "Best epoch kept",
               "Seeds", "Val acc", "Test acc")  # fmt: skip
    table = []
    for row in rows:
        mark = " (tables)" if row["in_tables"] else ""
        table.append(
            [
                row["model"],
                f"{row['recipe']}{mark}",
                row["learning_rate"],
                row["warmup_ratio"],
                row["epochs"],
                row["batch_size"],
                row["weight_decay"],
                row["select_best_epoch"],
                row["seeds"],
                plus_minus(100 * row["validation_accuracy_mean"], 100 * row["validation_accuracy_std"]),
                plus_minus(100 * row["test_accuracy_mean"], 100 * row["test_accuracy_std"]),
            ]
        )
    return markdown_table(headers, table)


def ensemble_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The records-built seed ensembles of results.md."""
    if not rows:
        return ["- no fine-tuned model has two seeds"]
    headers = ("Model", "Seeds", "Val acc", "Val F1", "Test acc", "Test F1", "Seeds' mean test acc", "Δ test")
    table = [
        [
            row["model"],
            row["seeds"],
            f"{100 * row['validation_accuracy']:.2f}",
            f"{100 * row['validation_f1']:.2f}",
            f"{100 * row['test_accuracy']:.2f}",
            f"{100 * row['test_f1']:.2f}",
            f"{100 * row['test_seed_mean_accuracy']:.2f}",
            f"{100 * (row['test_accuracy'] - row['test_seed_mean_accuracy']):+.2f}",
        ]
        for row in rows
    ]
    return markdown_table(headers, table)


def markdown(report: Report, settings: ReportSettings) -> str:
    """results.md: tables per size class, throughput per hardware, fronts, tests, recipes, collapsed seeds."""
    lines = [
        "# MRPC results",
        "",
        f"Generated by `parabench report` from the result records (`results/`) and the MLflow store; data "
        f"version `{report.data_version}`. Accuracy and F1 in percent, mean ± sample standard deviation "
        f"(ddof=1) over the seeds, whichever machine made each; Test acc CI: the {settings.confidence:.0%} "
        "t-interval of the mean test accuracy. Samples/s: test-split inference throughput on one hardware "
        "class (named; every class is under *Throughput per hardware*), never averaged across two. Measured "
        "on: the hardware class of each seed. Δ: ours minus the study's, in points. ⚠: a seed collapsed to "
        "the majority class (see below).",
        "",
    ]
    study = study_models()
    ours = {row["model"] for row in report.rows}
    classes = [row["size_class"] for row in report.rows] + [size_class for size_class, _ in study.values()]
    for size_class in class_order(classes):
        rows = [table_cells(row) for row in report.rows if row["size_class"] == size_class]
        rows += [
            study_cells(model, paper, settings.paper_hardware)
            for model, (model_class, paper) in study.items()
            if model_class == size_class and model not in ours
        ]
        lines += [f"## {size_class}", "", *markdown_table(TABLE_COLUMNS, rows), ""]
    lines += [
        "Rows marked *study* are the study's own numbers (test only, over its 5 seeds), measured on the "
        f"study's {settings.paper_hardware}: their samples/s are not comparable with ours.",
        "",
        "## Throughput per hardware",
        "",
        *throughput_lines(report),
        "",
        "## Pareto front: test accuracy against samples/s, per hardware",
        "",
        *front_lines(report, settings),
        "",
        "## Paired significance (each class's best model by mean validation accuracy against every other)",
        "",
        *([significance_line(test) for test in report.tests] or ["- no class has two models"]),
        "",
        "## Seed ensembles rebuilt from the records",
        "",
        "The mean paraphrase probability of each fine-tuned model's seeds (label 1 at ≥ 0.5), from the "
        "probabilities in their result records; no weights needed. Δ test: the ensemble's test accuracy "
        "minus its seeds' mean.",
        "",
        *ensemble_lines(report.ensembles),
        "",
        "## Recipes compared (chosen by mean validation accuracy; test only reported)",
        "",
        *recipe_lines(report.recipes),
        "",
        "## Collapsed seeds",
        "",
        *([f"- {line}" for line in report.collapsed] or ["- none"]),
    ]
    return "\n".join(lines) + "\n"
