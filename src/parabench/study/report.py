"""`parabench report`: the study's tables rebuilt from the sweep runs in MLflow, plus what the study lacks.

Per size class: train / validation / test accuracy and F1 as mean ± sample standard deviation (ddof=1) over
the seeds, in percent; samples/s; parameters; seeds; the study's test numbers beside ours. Beyond the study:
a t-distribution confidence interval of test accuracy and F1, an exact McNemar test between the two best
models of each class (by mean validation accuracy), and a flag on every seed that collapsed to one class.
Written to reports/results.{md,csv,json} and reports/plots/, and logged to MLflow as a `report` run.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from parabench.common.files import write_text
from parabench.common.names import SCORE_METRICS, VALIDATION_SCORE
from parabench.common.tables import markdown_table
from parabench.config import ParabenchError, Params
from parabench.models.zoo import get_spec, load_zoo
from parabench.study.sweep import ModelSweep, mean_std, named, sweeps_by_model
from parabench.tracking import client as tracking
from parabench.training.plan import TUNED_PREFIX, tuned_recipes

SCORE_METRICS = SCORE_METRICS
THROUGHPUT_METRICS = ("eval_samples_per_second", "train_samples_per_second")
INTERVAL_METRICS = ("test_accuracy", "test_f1")
SIZE_CLASSES = ("small", "regular", "large")
PREDICTIONS_ARTIFACT = "predictions_test.csv"
REPORT_RUN_TAGS = {"stage": "report"}
MISSING = "n/a"


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
    """One model's sweep with its test predictions per seed and the seeds that collapsed (seed → why)."""

    sweep: ModelSweep
    predictions: dict[int, pd.DataFrame]
    collapsed: dict[int, str]

    @property
    def best_seed(self) -> int:
        return self.sweep.best_seed


@dataclass(frozen=True)
class Report:
    """The table rows, the paired tests, the data version they are on, and the files written."""

    rows: list[dict[str, Any]]
    tests: list[dict[str, Any]]
    data_version: str
    recipes: list[dict[str, Any]] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)


def load_predictions(run_id: str) -> pd.DataFrame:
    """A run's predictions_test.csv (idx, sentence1, sentence2, label, predicted_label, probability)."""
    with tempfile.TemporaryDirectory() as folder:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=PREDICTIONS_ARTIFACT, dst_path=folder
        )
        return pd.read_csv(path)


def collapse_reason(run: Run, predictions: pd.DataFrame, settings: ReportSettings) -> str | None:
    """Why a run looks stuck at the majority class, or None when it learned something."""
    if predictions["predicted_label"].nunique() == 1:
        return f"every test prediction is {int(predictions['predicted_label'].iloc[0])}"
    validation = run.data.metrics[VALIDATION_SCORE]
    if abs(validation - settings.majority_rate) <= settings.collapse_margin:
        return (
            f"validation accuracy {validation:.1%} is within {settings.collapse_margin:.1%} "
            f"of the majority rate {settings.majority_rate:.1%}"
        )
    return None


def model_result(sweep: ModelSweep, settings: ReportSettings) -> ModelResult:
    """Fetch every seed's test predictions and flag the collapsed seeds."""
    predictions = {seed: load_predictions(run.info.run_id) for seed, run in sweep.runs.items()}
    reasons = {seed: collapse_reason(run, predictions[seed], settings) for seed, run in sweep.runs.items()}
    return ModelResult(sweep, predictions, {seed: why for seed, why in reasons.items() if why})


def interval(values: list[float], confidence: float) -> tuple[float, float]:
    """The t-distribution confidence interval of the mean (NaN bounds for fewer than two values)."""
    from scipy import stats

    if len(values) < 2:
        return float("nan"), float("nan")
    mean, std = mean_std(values)
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * std / math.sqrt(len(values))
    return mean - half, mean + half


def paper_numbers(model: str) -> dict[str, Any]:
    """The study's reported numbers for a zoo model (percent), empty for models outside the study."""
    try:
        return get_spec(model).paper or {}
    except ParabenchError:
        return {}


def difference(ours: float, theirs: float | None) -> float:
    """Ours minus the study's, in points; NaN where the study has no number."""
    return ours - theirs if theirs is not None else float("nan")


def hardware(runs: Iterable[Run]) -> str:
    """What measured the throughput: the GPU where one was used, else the CPU."""
    names = {
        run.data.params.get(
            "hardware_gpu" if run.data.params.get("hardware_device") == "cuda" else "hardware_cpu"
        )
        for run in runs
    }
    return "; ".join(sorted(name for name in names if name))


def summary_row(result: ModelResult, settings: ReportSettings) -> dict[str, Any]:
    """One model's line of the tables: scores in percent, pairs/s, and the study's numbers beside ours."""
    sweep, runs = result.sweep, list(result.sweep.runs.values())
    row: dict[str, Any] = {
        "size_class": sweep.size_class,
        "model": sweep.model,
        "n_seeds": len(runs),
        "seeds": ",".join(map(str, sweep.runs)),
        "parameters": int(runs[0].data.metrics["num_parameters"]),
    }
    for name in SCORE_METRICS:
        row[f"{name}_mean"], row[f"{name}_std"] = mean_std(sweep.values(name, 100.0))
    for name in INTERVAL_METRICS:
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = interval(
            sweep.values(name, 100.0), settings.confidence
        )
    for name in THROUGHPUT_METRICS:
        row[f"{name}_mean"], row[f"{name}_std"] = mean_std(sweep.values(name))
    paper = paper_numbers(sweep.model)
    for name in INTERVAL_METRICS:
        row[f"paper_{name}"] = paper.get(name)
        row[f"diff_{name}"] = difference(row[f"{name}_mean"], paper.get(name))
    row["paper_samples_per_second"] = paper.get("samples_per_second")
    row["hardware"] = hardware(runs)
    row["best_validation_seed"] = result.best_seed
    row["best_validation_run_id"] = sweep.runs[result.best_seed].info.run_id
    row["collapsed_seeds"] = ",".join(map(str, result.collapsed))
    row |= {
        "data_version": sweep.identity.data_version,
        "recipe_fingerprint": sweep.identity.recipe_fingerprint,
        "parent_run_id": sweep.parent.info.run_id,
    }
    return row


def mcnemar_exact(first: pd.DataFrame, second: pd.DataFrame) -> tuple[int, int, int, float]:
    """Pairs compared, pairs only the first got right, pairs only the second got right, exact two-sided p."""
    from scipy import stats

    merged = first.merge(second, on="idx", suffixes=("_a", "_b"))
    right_a = merged["predicted_label_a"] == merged["label_a"]
    right_b = merged["predicted_label_b"] == merged["label_b"]
    only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    p_value = stats.binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return len(merged), only_a, only_b, float(p_value)


def paired_seed_test(first: ModelSweep, second: ModelSweep) -> dict[str, Any]:
    """A paired t-test of test accuracy (points) over the seeds both sweeps share; NaN with fewer than two."""
    from scipy import stats

    shared = sorted(set(first.runs) & set(second.runs))
    row: dict[str, Any] = {"shared_seeds": ",".join(map(str, shared))}
    if len(shared) < 2:
        return row | {"seed_mean_difference": math.nan, "seed_p_value": math.nan}
    a = [100 * first.runs[seed].data.metrics["test_accuracy"] for seed in shared]
    b = [100 * second.runs[seed].data.metrics["test_accuracy"] for seed in shared]
    differences = np.subtract(a, b)
    p_value = 1.0 if not differences.any() else float(stats.ttest_rel(a, b).pvalue)
    return row | {"seed_mean_difference": float(differences.mean()), "seed_p_value": p_value}


def paired_tests(results: list[ModelResult], settings: ReportSettings) -> list[dict[str, Any]]:
    """Per size class, its best model (mean validation accuracy) against every other: McNemar's exact test on
    the test predictions of their best seeds, and a paired t-test over the seeds they share."""
    tests = []
    for size_class in class_order(result.sweep.size_class for result in results):
        ranked = sorted(
            (r for r in results if r.sweep.size_class == size_class),
            key=lambda r: r.sweep.mean(VALIDATION_SCORE),
            reverse=True,
        )
        best = ranked[0]
        for other in ranked[1:]:
            pairs, only_first, only_second, p_value = mcnemar_exact(
                best.predictions[best.best_seed], other.predictions[other.best_seed]
            )
            seeds = paired_seed_test(best.sweep, other.sweep)
            tests.append(
                {
                    "size_class": size_class,
                    "model_a": best.sweep.model,
                    "seed_a": best.best_seed,
                    "model_b": other.sweep.model,
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


def class_order(size_classes: Iterable[str]) -> list[str]:
    """The study's classes first (small, regular, large), then any other, each once."""
    present = set(size_classes)
    return [c for c in SIZE_CLASSES if c in present] + sorted(present - set(SIZE_CLASSES))


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
    "Paper test acc",
    "Δ acc",
    "Paper test F1",
    "Δ F1",
)


def table_cells(row: dict[str, Any]) -> list[str]:
    """One model's cells in the class table."""
    flag = " ⚠" if row["collapsed_seeds"] else ""
    scores = [plus_minus(row[f"{name}_mean"], row[f"{name}_std"]) for name in SCORE_METRICS]
    cells = [
        f"{row['model']}{flag}",
        parameters_text(row["parameters"]),
        str(row["n_seeds"]),
        *scores,
        f"[{number(row['test_accuracy_ci_low'])}, {number(row['test_accuracy_ci_high'])}]",
        plus_minus(row["eval_samples_per_second_mean"], row["eval_samples_per_second_std"], 1),
        number(row["paper_test_accuracy"]),
        number(row["diff_test_accuracy"], signed=True),
        number(row["paper_test_f1"]),
        number(row["diff_test_f1"], signed=True),
    ]
    return cells


def table_line(row: dict[str, Any]) -> str:
    """One model's line of the class table."""
    return markdown_table(TABLE_COLUMNS, [table_cells(row)])[-1]


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


def study_cells(model: str, paper: dict[str, Any], hardware_name: str) -> list[str]:
    """A study's model in the class table: its reported test numbers (mean ± std over its 5 seeds) and
    samples/s, measured on another machine; no train or validation numbers (the study gives none)."""
    row = ["n/a"] * len(TABLE_COLUMNS)
    row[0] = f"{model} (study, {hardware_name})"
    row[1] = str(paper.get("parameters") or MISSING)
    row[2] = "study"

    def cell(name: str, digits: int = 2) -> str:
        mean, std = paper.get(name), paper.get(f"{name}_std")
        return plus_minus(math.nan if mean is None else mean, math.nan if std is None else std, digits)

    row[TABLE_COLUMNS.index("Test acc")] = cell("test_accuracy")
    row[TABLE_COLUMNS.index("Test F1")] = cell("test_f1")
    row[TABLE_COLUMNS.index("Samples/s")] = cell("samples_per_second", 1)
    row[TABLE_COLUMNS.index("Paper test acc")] = number(paper.get("test_accuracy"))
    row[TABLE_COLUMNS.index("Paper test F1")] = number(paper.get("test_f1"))
    return row


def study_models() -> dict[str, tuple[str, dict[str, Any]]]:
    """The study's models in the zoo: key -> (size class, reported numbers)."""
    return {
        key: (spec.size_class, spec.paper)
        for key, spec in load_zoo().items()
        if spec.paper and spec.paper.get("test_accuracy") is not None  # RoBERTa base: no numbers in the study
    }


def front_lines(rows: list[dict[str, Any]], settings: ReportSettings) -> list[str]:
    """The Pareto front of test accuracy against samples/s: over our rows (one machine) and, apart, over the
    study's (its hardware): the models no other beats on both."""
    lines = []
    ours = [(row["eval_samples_per_second_mean"], row["test_accuracy_mean"], row["model"]) for row in rows]
    theirs = [
        (paper["samples_per_second"], paper["test_accuracy"], model)
        for model, (_, paper) in study_models().items()
        if paper.get("samples_per_second") is not None and paper.get("test_accuracy") is not None
    ]
    for label, points in (
        (f"ours ({measured_on(rows)})", ours),
        (f"the study's ({settings.paper_hardware})", theirs),
    ):
        front = sorted((points[i] for i in pareto_front([p[:2] for p in points])), key=lambda p: p[0])
        described = ", ".join(f"{name} ({accuracy:.2f} %, {speed:.1f}/s)" for speed, accuracy, name in front)
        lines.append(f"- {label}: {described or 'no rows'}")
    return lines


def measured_on(rows: list[dict[str, Any]]) -> str:
    return "; ".join(sorted({row["hardware"] for row in rows if row["hardware"]})) or "our hardware"


def markdown(report: Report, results: list[ModelResult], settings: ReportSettings) -> str:
    """results.md: one table per size class, the significance tests and the collapsed seeds."""
    confidence = f"{settings.confidence:.0%}"
    lines = [
        "# MRPC results",
        "",
        f"Data version `{report.data_version}`. Accuracy and F1 in percent, mean ± sample standard "
        "deviation (ddof=1) over the seeds; Test acc CI: the "
        f"{confidence} t-interval of the mean test accuracy. Samples/s: test-split inference "
        f"throughput on {measured_on(report.rows)} (the study's: a T4). Δ: ours minus the study's, in "
        "points. ⚠: a seed collapsed to the majority class (see below).",
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
        "## Pareto front: test accuracy against samples/s",
        "",
        *front_lines(report.rows, settings),
        "",
        "## Paired significance (each class's best model by mean validation accuracy against every other)",
        "",
    ]
    lines += [significance_line(test) for test in report.tests] or ["- no class has two models"]
    lines += ["", "## Recipes compared (chosen by mean validation accuracy; test only reported)", ""]
    lines += recipe_lines(report.recipes)
    lines += ["", "## Collapsed seeds", ""]
    lines += [
        f"- {result.sweep.model} seed {seed}: {why}"
        for result in results
        for seed, why in result.collapsed.items()
    ] or ["- none"]
    return "\n".join(lines) + "\n"


RECIPE_PARAMS = (
    "recipe",
    "learning_rate",
    "warmup_ratio",
    "epochs",
    "batch_size",
    "weight_decay",
    "select_best_epoch",
)


def recipe_rows(
    sweeps: dict[str, list[ModelSweep]], tuned: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Every sweep of every model (one per recipe): the recipe and mean ± std validation/test accuracy.
    The first of each model is the one in the tables (its default recipe when swept, else the newest).
    Then each model's recipe search (`parabench tune`) not swept yet: its best trial's validation accuracy."""
    rows = []
    for model, model_sweeps in sweeps.items():
        for position, sweep in enumerate(model_sweeps):
            run_params = next(iter(sweep.runs.values())).data.params
            row = {"model": model, "in_tables": position == 0, "seeds": len(sweep.runs)}
            row |= {name: run_params.get(name, MISSING) for name in RECIPE_PARAMS}
            for name, metric in (
                ("validation_accuracy", VALIDATION_SCORE),
                ("test_accuracy", "test_accuracy"),
            ):
                row[f"{name}_mean"], row[f"{name}_std"] = mean_std(sweep.values(metric))
            rows.append(row)
        search = (tuned or {}).get(model)
        swept = {row["recipe"] for row in rows if row["model"] == model}
        if search is not None and f"{TUNED_PREFIX}:{model}" not in swept:
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


def recipe_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The recipes table of results.md."""
    headers = (
        "Model",
        "Recipe",
        "lr",
        "Warm-up",
        "Epochs",
        "Batch",
        "Weight decay",
        "Best epoch kept",
        "Seeds",
        "Val acc",
        "Test acc",
    )
    table = []
    for row in rows:
        mark = " (tables)" if row["in_tables"] else ""
        cells = [
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
        table.append(cells)
    return markdown_table(headers, table)


def flat_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The numeric, finite entries of a row (what `dvc metrics show` can display)."""
    return {
        key: value
        for key, value in row.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indexes of the points no other point beats on both coordinates (higher is better on each)."""
    return [
        i
        for i, (x, y) in enumerate(points)
        if not any(ox >= x and oy >= y and (ox, oy) != (x, y) for ox, oy in points)
    ]


def new_figure(columns: int = 1, width: float = 7.0, height: float = 4.5) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, columns, figsize=(width * columns, height), squeeze=False)
    return figure, axes[0]


def save(figure: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_tradeoff(rows: list[dict[str, Any]], size_class: str, path: Path) -> Path:
    """Test accuracy against samples/s, with std bars, the Pareto front joined and starred."""
    figure, (axis,) = new_figure()
    points = [(row["eval_samples_per_second_mean"], row["test_accuracy_mean"]) for row in rows]
    for row, (x, y) in zip(rows, points, strict=True):
        axis.errorbar(
            x,
            y,
            xerr=np.nan_to_num(row["eval_samples_per_second_std"]),
            yerr=np.nan_to_num(row["test_accuracy_std"]),
            fmt="o",
            capsize=3,
        )
        axis.annotate(row["model"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    front = sorted(points[i] for i in pareto_front(points))
    axis.plot(*zip(*front, strict=True), "r*--", markersize=12, label="Pareto front")
    axis.set(
        xlabel="test inference samples/s",
        ylabel="test accuracy (%)",
        title=f"{size_class}: accuracy vs speed (mean ± std over seeds)",
    )
    axis.legend()
    return save(figure, path)


def plot_front(rows: list[dict[str, Any]], settings: ReportSettings, path: Path) -> Path:
    """Every row of ours (a colour per class) and the study's (hollow, its own hardware) on one accuracy vs
    samples/s plot, log-scaled speed, with our Pareto front joined."""
    figure, (axis,) = new_figure(width=9.0, height=5.5)
    classes = class_order(row["size_class"] for row in rows)
    for index, size_class in enumerate(classes):
        mine = [row for row in rows if row["size_class"] == size_class]
        axis.scatter(
            [row["eval_samples_per_second_mean"] for row in mine],
            [row["test_accuracy_mean"] for row in mine],
            color=f"C{index}",
            label=f"{size_class} (ours)",
            zorder=3,
        )
        for row in mine:
            point = (row["eval_samples_per_second_mean"], row["test_accuracy_mean"])
            axis.annotate(row["model"], point, textcoords="offset points", xytext=(4, 4), fontsize=7)
    study = [
        (paper["samples_per_second"], paper["test_accuracy"], model)
        for model, (_, paper) in study_models().items()
        if paper.get("samples_per_second") is not None and paper.get("test_accuracy") is not None
    ]
    if study:
        axis.scatter(
            [s for s, _, _ in study],
            [a for _, a, _ in study],
            facecolors="none",
            edgecolors="grey",
            label=f"study ({settings.paper_hardware})",
        )
        for speed, accuracy, model in study:
            axis.annotate(model, (speed, accuracy), textcoords="offset points", xytext=(4, -8), fontsize=6)
    points = [(row["eval_samples_per_second_mean"], row["test_accuracy_mean"]) for row in rows]
    front = sorted(points[i] for i in pareto_front(points))
    axis.plot(*zip(*front, strict=True), "r*--", markersize=12, label="Pareto front (ours)")
    axis.set_xscale("log")
    axis.set(
        xlabel="test inference samples/s (log)",
        ylabel="test accuracy (%)",
        title="Every model: accuracy vs speed",
    )
    axis.legend(fontsize=8)
    return save(figure, path)


def plot_seed_spread(results: list[ModelResult], path: Path) -> Path:
    """Test accuracy of every seed, per model: a box per model with the seeds drawn over it."""
    figure, (axis,) = new_figure(width=max(7.0, 1.2 * len(results)))
    values = [r.sweep.values("test_accuracy", 100.0) for r in results]
    axis.boxplot(values, showfliers=False)
    for position, (result, seeds) in enumerate(zip(results, values, strict=True), start=1):
        colors = ["red" if seed in result.collapsed else "black" for seed in result.sweep.runs]
        axis.scatter(np.full(len(seeds), position), seeds, c=colors, s=18, zorder=3)
    axis.set_xticks(range(1, len(results) + 1), [r.sweep.model for r in results], rotation=30, ha="right")
    axis.set(ylabel="test accuracy (%)", title="Test accuracy per seed (red: collapsed seed)")
    return save(figure, path)


def validation_history(client: MlflowClient, run: Run) -> tuple[list[int], list[float]]:
    """(epochs, validation accuracy in percent): the newest value logged at each step."""
    history = client.get_metric_history(run.info.run_id, "validation_accuracy")
    by_step = {m.step: m.value * 100.0 for m in sorted(history, key=lambda m: (m.step, m.timestamp))}
    return list(by_step), list(by_step.values())


def plot_validation_curves(results: list[ModelResult], path: Path) -> Path:
    """Validation accuracy per epoch from the metric history: one panel per size class, a line per seed."""
    client = MlflowClient()
    classes = class_order(r.sweep.size_class for r in results)
    figure, axes = new_figure(columns=len(classes), width=6.0)
    for axis, size_class in zip(axes, classes, strict=True):
        for index, result in enumerate(r for r in results if r.sweep.size_class == size_class):
            for position, run in enumerate(result.sweep.runs.values()):
                label = result.sweep.model if position == 0 else None
                axis.plot(
                    *validation_history(client, run), marker="o", color=f"C{index}", alpha=0.7, label=label
                )
        axis.set(xlabel="epoch", ylabel="validation accuracy (%)", title=size_class)
        axis.legend(fontsize=8)
    return save(figure, path)


def write_outputs(report: Report, results: list[ModelResult], settings: ReportSettings) -> list[Path]:
    """results.md / .csv / .json and the plots."""
    json_text = json.dumps({row["model"]: flat_metrics(row) for row in report.rows}, indent=2, sort_keys=True)
    paths = [
        write_text(settings.results_md, markdown(report, results, settings)),
        write_text(settings.results_csv, pd.DataFrame(report.rows).to_csv(index=False)),
        write_text(settings.results_json, json_text + "\n"),
    ]
    for size_class in class_order(row["size_class"] for row in report.rows):
        rows = [row for row in report.rows if row["size_class"] == size_class]
        paths.append(plot_tradeoff(rows, size_class, settings.plots_dir / f"tradeoff_{size_class}.png"))
    paths.append(plot_front(report.rows, settings, settings.plots_dir / "tradeoff_all.png"))
    paths.append(plot_seed_spread(results, settings.plots_dir / "seed_spread.png"))
    paths.append(plot_validation_curves(results, settings.plots_dir / "validation_curves.png"))
    return paths


def log_report_run(report: Report, settings: ReportSettings) -> str:
    """Log the report's files as artifacts of a `report` run; returns its run id."""
    tags = {**REPORT_RUN_TAGS, "data_version": report.data_version}
    with tracking.tracked_run(run_name="report", tags=tags) as run:
        for path in report.paths:
            plots = path.parent == settings.plots_dir
            mlflow.log_artifact(str(path), artifact_path="plots" if plots else None)
    return run.info.run_id


def build_report(
    params: Params,
    models: list[str] | None = None,
    data_version: str | None = None,
    log: Callable[[str], None] = print,
) -> Report:
    """Read the sweeps of the models from MLflow and write every output; see the module docstring."""
    settings = ReportSettings.from_params(params)
    all_sweeps = sweeps_by_model(params, models, data_version)
    sweeps = [model_sweeps[0] for model_sweeps in all_sweeps.values()]
    swept = {sweep.model for sweep in sweeps}
    for model in (m for m in models or [] if m not in swept):
        log(f"warning: {model} has no FINISHED sweep run on this data version; left out of the report")
    if not sweeps:
        raise ParabenchError(f"no FINISHED sweep runs of {named(models)}; run `parabench sweep` first")
    results = [model_result(sweep, settings) for sweep in sweeps]
    rows = [summary_row(result, settings) for result in results]
    report = Report(
        rows,
        paired_tests(results, settings),
        sweeps[0].identity.data_version,
        recipe_rows(all_sweeps, tuned_recipes(params)),
    )
    report.paths.extend(write_outputs(report, results, settings))
    log(f"report run: {log_report_run(report, settings)}")
    return report
