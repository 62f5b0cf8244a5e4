"""`parabench report` on the session's tiny sweep: its numbers equal a hand computation from the runs in
MLflow, and it writes the tables, DVC metrics, plots and a `report` run (from the runs' result records)."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers import SWEPT_MODELS, TRAIN_OPTIONS, client_for, invoke, project_env, runs_of
from mlflow.entities import Run
from scipy import stats

from parabench.common.files import write_json
from parabench.common.names import SCORE_METRICS
from parabench.config import Params
from parabench.results.groups import group_records
from parabench.results.record import split_predictions
from parabench.results.store import folder_records
from parabench.study import markdown as markdown_module
from parabench.study import report as report_module
from parabench.study.report import ReportSettings
from parabench.study.statistics import mcnemar_exact, pareto_front
from parabench.study.sweep import latest_sweeps
from parabench.training.plan import tuned_recipe_file


@pytest.fixture(scope="module")
def settings(swept: Params) -> ReportSettings:
    """The report's settings, after `parabench report` ran as the README says, with no --models: it covers
    every model swept on the data version (params.yaml sweep.models names only all-MiniLM-L6-v2)."""
    assert list(swept.sweep.models) == ["all-MiniLM-L6-v2"]
    output = invoke("report").output
    assert "report run:" in output and "warning" not in output
    return ReportSettings.from_params(swept)


@pytest.fixture(scope="module")
def table(settings: ReportSettings) -> pd.DataFrame:
    return pd.read_csv(settings.results_csv).set_index("model")


def finished_by_seed(params: Params, model: str) -> dict[int, Run]:
    """By hand: the newest FINISHED non-parent run of each seed of the model."""
    runs: dict[int, Run] = {}
    for run in sorted(runs_of(params, model), key=lambda r: r.info.start_time, reverse=True):
        if run.info.status == "FINISHED" and run.data.tags.get("sweep") != "parent":
            runs.setdefault(int(run.data.tags["seed"]), run)
    return runs


def predictions(run: Run) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as folder:
        path = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="predictions_test.csv", dst_path=folder
        )
        return pd.read_csv(path)


def test_means_stds_and_intervals_equal_a_hand_computation(swept: Params, table: pd.DataFrame) -> None:
    for model in SWEPT_MODELS:
        runs = list(finished_by_seed(swept, model).values())
        row = table.loc[model]
        assert row["n_seeds"] == len(runs) == 2
        assert row["parameters"] == runs[0].data.metrics["num_parameters"]
        for name in SCORE_METRICS:
            values = np.array([run.data.metrics[name] for run in runs]) * 100
            assert row[f"{name}_mean"] == pytest.approx(values.mean())
            assert row[f"{name}_std"] == pytest.approx(values.std(ddof=1))
        values = np.array([run.data.metrics["test_accuracy"] for run in runs]) * 100
        half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
        assert row["test_accuracy_ci_low"] == pytest.approx(values.mean() - half)
        assert row["test_accuracy_ci_high"] == pytest.approx(values.mean() + half)
        throughput = [run.data.metrics["eval_samples_per_second"] for run in runs]
        assert row["eval_samples_per_second_mean"] == pytest.approx(np.mean(throughput))
        score = "final_validation_accuracy"
        best = max(runs, key=lambda r: (r.data.metrics[score], -int(r.data.tags["seed"])))
        assert row["best_validation_run_id"] == best.info.run_id


def test_collapsed_seeds_are_the_ones_a_hand_check_flags(swept: Params, table: pd.DataFrame) -> None:
    for model in SWEPT_MODELS:
        expected = sorted(
            seed
            for seed, run in finished_by_seed(swept, model).items()
            if predictions(run)["predicted_label"].nunique() == 1
            or abs(run.data.metrics["final_validation_accuracy"] - 0.684) <= 0.005
        )
        flagged = table.loc[model, "collapsed_seeds"]
        assert ([] if pd.isna(flagged) else [int(s) for s in str(flagged).split(",")]) == expected


def test_markdown_json_and_plots_are_written(settings: ReportSettings, table: pd.DataFrame) -> None:
    markdown = settings.results_md.read_text(encoding="utf-8")
    assert "## small" in markdown and "Paper test acc" in markdown and "ddof=1" in markdown
    for model in SWEPT_MODELS:
        mean, std = table.loc[model, "test_accuracy_mean"], table.loc[model, "test_accuracy_std"]
        assert f"{mean:.2f} ± {std:.2f}" in markdown
    assert "exact McNemar" in markdown
    metrics = json.loads(settings.results_json.read_text(encoding="utf-8"))
    assert set(metrics) == set(SWEPT_MODELS)
    assert all(isinstance(value, int | float) for values in metrics.values() for value in values.values())
    assert metrics[SWEPT_MODELS[0]]["test_accuracy_mean"] == pytest.approx(
        table.loc[SWEPT_MODELS[0], "test_accuracy_mean"]
    )
    for name in ("tradeoff_small.png", "seed_spread.png", "validation_curves.png"):
        assert (settings.plots_dir / name).read_bytes().startswith(b"\x89PNG")


def test_the_report_is_logged_as_a_report_run(swept: Params, settings: ReportSettings) -> None:
    client, experiment_id = client_for(swept)
    runs = client.search_runs([experiment_id], "tags.stage = 'report'")
    assert runs and runs[0].info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"results.md", "results.csv", "results.json", "plots"} <= logged
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id, "plots")} >= {"plots/seed_spread.png"}


def as_split(frame: pd.DataFrame):
    """A predictions_test.csv as a record's test split."""
    return split_predictions(frame["idx"], frame["probability"], frame["predicted_label"], frame["label"])


def test_mcnemar_compares_the_best_validation_seeds(swept: Params, table: pd.DataFrame) -> None:
    first, second = (
        predictions(finished_by_seed(swept, m)[table.loc[m, "best_validation_seed"]]) for m in SWEPT_MODELS
    )
    merged = first.merge(second, on="idx")
    right_a = merged["predicted_label_x"] == merged["label_x"]
    right_b = merged["predicted_label_y"] == merged["label_y"]
    only_a, only_b = (right_a & ~right_b).sum(), (right_b & ~right_a).sum()
    assert mcnemar_exact(as_split(first), as_split(second))[:3] == (len(merged), only_a, only_b)


def test_mcnemar_exact_p_value() -> None:
    labels = [1] * 10
    first = pd.DataFrame({"idx": range(10), "label": labels, "predicted_label": labels, "probability": 0.9})
    second = first.assign(predicted_label=[0] * 5 + [1] * 5)
    assert mcnemar_exact(as_split(first), as_split(second)) == (10, 5, 0, pytest.approx(2 * 0.5**5))
    assert mcnemar_exact(as_split(first), as_split(first))[3] == 1.0


def test_pareto_front_keeps_the_undominated_points() -> None:
    points = [(100.0, 80.0), (200.0, 75.0), (50.0, 79.0), (150.0, 80.0)]
    assert pareto_front(points) == [1, 3]


def test_the_papers_numbers_stand_beside_ours(
    swept: Params,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = ReportSettings.from_params(swept)
    [group] = [g for g in group_records(folder_records(swept)) if g.model == SWEPT_MODELS[0]]
    result = report_module.ModelResult(group, {})
    monkeypatch.setattr(report_module, "paper_numbers", lambda _: {"test_accuracy": 84.87, "test_f1": 88.64})
    row = report_module.summary_row(result, settings)
    assert row["paper_test_accuracy"] == 84.87
    assert row["diff_test_accuracy"] == pytest.approx(row["test_accuracy_mean"] - 84.87)
    assert row["diff_test_f1"] == pytest.approx(row["test_f1_mean"] - 88.64)
    cells = markdown_module.table_cells(row)
    assert cells[-4:-2] == ["84.87", f"{row['diff_test_accuracy']:+.2f}"]


def test_no_sweep_is_a_one_line_error(swept: Params) -> None:
    result = invoke("report", "--models", "tiny-bert", exit_code=1)
    assert "run `parabench sweep` first" in result.output


@pytest.mark.slow
def test_a_second_recipe_is_compared_and_the_default_recipe_fills_the_tables(
    swept: Params,
    tmp_path: Path,
) -> None:
    folder = Path(shutil.copytree(swept.root, tmp_path / "project"))
    model = SWEPT_MODELS[0]
    with project_env(folder) as params:
        invoke("sweep", "--models", model, "--seeds", "2", "--recipe", "tuned", *TRAIN_OPTIONS)
        searched = params.recipe("paper").model_dump() | {"learning_rate": 7e-05, "epochs": 2}
        write_json(  # what `parabench tune` writes for a model
            tuned_recipe_file(params, model),
            {"model": model, "recipe": searched, "validation_accuracy": 0.8125, "trial_run_id": "r"},
        )
        invoke("report", "--models", model)
        markdown = ReportSettings.from_params(params).results_md.read_text(encoding="utf-8")
        [newest] = latest_sweeps(params, [model])
    recipes = markdown.split("## Recipes compared")[1].split("## Collapsed seeds")[0]
    rows = [line for line in recipes.splitlines() if line.startswith(f"| {model} |")]
    assert [row.split(" | ")[1] for row in rows] == [
        "tuned (tables)",
        "paper",
        f"tune:{model} (best of the search, not swept)",
    ]  # no default-recipe sweep: newest; then the search's best recipe
    assert "0.0001" in rows[0] and "2e-05" in rows[1]
    assert "7e-05" in rows[2] and "81.25" in rows[2]
    assert newest.identity.recipe_fingerprint != latest_sweeps(swept, [model])[0].identity.recipe_fingerprint


def test_study_rows_the_pareto_front_and_a_test_over_seeds_are_reported(
    swept: Params,
    settings: ReportSettings,
    table: pd.DataFrame,
) -> None:
    markdown = settings.results_md.read_text(encoding="utf-8")
    assert "| albert-base-v2 (study) | 11M | study |" in markdown
    assert "## large" in markdown and "meta-llama/Llama-2-7b-hf (study)" in markdown
    assert f"| {settings.paper_hardware} |" in markdown
    ours = [
        (table.loc[m, "eval_samples_per_second_mean"], table.loc[m, "test_accuracy_mean"])
        for m in SWEPT_MODELS
    ]
    front = [SWEPT_MODELS[i] for i in pareto_front(ours)]
    front_line = next(line for line in markdown.splitlines() if line.startswith("- ours on "))
    assert all(model in front_line for model in front)
    assert all(model not in front_line for model in SWEPT_MODELS if model not in front)
    best, other = sorted(SWEPT_MODELS, key=lambda m: -table.loc[m, "final_validation_accuracy_mean"])
    a = [100 * finished_by_seed(swept, best)[seed].data.metrics["test_accuracy"] for seed in (13, 42)]
    b = [100 * finished_by_seed(swept, other)[seed].data.metrics["test_accuracy"] for seed in (13, 42)]
    p_value = 1.0 if a == b else stats.ttest_rel(a, b).pvalue
    line = next(line for line in markdown.splitlines() if line.startswith("- **small**"))
    assert f"{best} (seed" in line.split(" vs ")[0] and "over seeds 13,42" in line
    assert f"mean difference {np.mean(np.subtract(a, b)):+.2f} points, p = {p_value:.4g}" in line
    assert (settings.plots_dir / "tradeoff_all.png").read_bytes().startswith(b"\x89PNG")


def test_each_seed_ensemble_is_the_mean_probability_of_its_seeds_records(
    swept: Params, settings: ReportSettings
) -> None:
    """By hand from the records: the mean probability per pair over the seeds, label 1 at >= 0.5."""
    text = settings.results_md.read_text(encoding="utf-8")
    section = text.split("## Seed ensembles rebuilt from the records")[1].split("## ")[0]
    for model in SWEPT_MODELS:
        records = [r for r in folder_records(swept) if r.model == model]
        assert len(records) == 2
        cells = {}
        for split in ("validation", "test"):
            first, second = (
                pd.DataFrame(
                    {"p": r.predictions[split].probability, "gold": r.predictions[split].references},
                    index=r.predictions[split].idx,
                )
                for r in records
            )
            both = first.join(second, how="inner", rsuffix="_2")  # the pairs both seeds predicted
            labels = ((both["p"] + both["p_2"]) / 2 >= 0.5).astype(int)
            cells[split] = 100 * float(np.mean(labels == both["gold"]))
        row = next(line for line in section.splitlines() if line.startswith(f"| {model} |"))
        values = [cell.strip() for cell in row.strip("|").split("|")]
        assert values[1] == "13, 42"
        assert float(values[2]) == pytest.approx(cells["validation"], abs=0.006)
        assert float(values[4]) == pytest.approx(cells["test"], abs=0.006)
