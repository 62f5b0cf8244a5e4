"""Result records (results/*.json): written by every FINISHED run, the report rebuilt from them alone,
imported back into MLflow once, refused in one line when edited or foreign, carrying the study between
machines."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import mlflow
import pytest
from helpers import SWEPT_MODELS, SWEPT_SEEDS, client_for, invoke, runs_of

from parabench.common.names import FINAL_METRICS, SPLITS
from parabench.config import Params
from parabench.results.record import ResultRecord, read_record, read_records, seal, write_record
from parabench.results.store import IMPORTED_TAG
from parabench.study.report import ReportSettings


def records_of(params: Params) -> list[ResultRecord]:
    return read_records(params.path(params.results.dir))


def resealed(record: ResultRecord, **changes: Any) -> ResultRecord:
    """A copy of the record with fields changed, sealed again (as another machine or run would write it)."""
    fields = record.model_dump(mode="json", exclude={"sha256", "schema_version"})
    return seal({**fields, "run_id": uuid.uuid4().hex, **changes})


def fresh_store(params: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the project at a new, empty tracking store (as on a fresh clone)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{params.root / f'{uuid.uuid4().hex}.db'}")


@pytest.fixture
def records_only(swept_copy: Params, monkeypatch: pytest.MonkeyPatch) -> Params:
    """The swept copy on a fresh machine: its records (committed), an empty tracking store."""
    fresh_store(swept_copy, monkeypatch)
    return swept_copy


def test_every_finished_run_wrote_one_record_that_matches_its_run(swept: Params) -> None:
    records = {record.run_id: record for record in records_of(swept)}
    for model in SWEPT_MODELS:
        runs = [r for r in runs_of(swept, model) if r.info.status == "FINISHED" and "seed" in r.data.tags]
        assert len(runs) == len(SWEPT_SEEDS)
        for run in runs:
            record = records[run.info.run_id]
            assert (record.model, record.seed, record.size_class) == (
                model,
                int(run.data.tags["seed"]),
                "small",
            )
            assert record.recipe_fingerprint == run.data.tags["recipe_fingerprint"]
            assert record.data_version == run.data.tags["data_version"]
            assert {name: record.metrics[name] for name in FINAL_METRICS} == {
                name: run.data.metrics[name] for name in FINAL_METRICS
            }
            assert record.params["learning_rate"] == run.data.params["learning_rate"]
            assert record.hardware.cpu and record.hardware.threads >= 1 and record.hardware.label
            assert record.versions["torch"] and record.code_commit
            assert len(record.curves["validation_accuracy"]) == int(run.data.params["epochs"])
            for split in SPLITS:
                predictions = record.predictions[split]
                assert len(predictions.idx) == len(set(predictions.idx)) == len(predictions.label)
            accuracy = (record.predictions["test"].labels == record.predictions["test"].references).mean()
            assert accuracy == pytest.approx(record.metrics["test_accuracy"])
            logged = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/result.json")
            assert json.loads(logged) == record.model_dump(mode="json")
            assert run.data.tags["result_record"] == record.file_name
    assert all(r.run_id in r.file_name and r.model in r.file_name for r in records.values())


def test_the_report_of_records_alone_equals_the_report_with_the_store(
    swept_copy: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = ReportSettings.from_params(swept_copy)
    invoke("report")
    with_store = settings.results_md.read_text(encoding="utf-8")
    fresh_store(swept_copy, monkeypatch)
    settings.results_md.unlink()
    invoke("report")
    assert settings.results_md.read_text(encoding="utf-8") == with_store
    assert all(model in with_store for model in SWEPT_MODELS)


def test_import_twice_leaves_exactly_one_run_per_record(records_only: Params) -> None:
    records = records_of(records_only)
    first = invoke("results", "import").output
    assert f"{len(records)} record(s) imported, 0 already" in first
    second = invoke("results", "import").output
    assert f"0 record(s) imported, {len(records)} already" in second
    client, experiment_id = client_for(records_only)
    imported = client.search_runs([experiment_id], f"tags.{IMPORTED_TAG} LIKE '%'")
    assert sorted(run.data.tags[IMPORTED_TAG] for run in imported) == sorted(r.run_id for r in records)
    by_id = {record.run_id: record for record in records}
    for run in imported:
        record = by_id[run.data.tags[IMPORTED_TAG]]
        assert run.info.status == "FINISHED" and "result record" in run.data.tags["imported_from"]
        assert run.data.metrics["test_accuracy"] == record.metrics["test_accuracy"]
        assert run.data.params["learning_rate"] == record.params["learning_rate"]
        history = client.get_metric_history(run.info.run_id, "validation_accuracy")
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == record.curves[
            "validation_accuracy"
        ]
        assert not client.list_artifacts(run.info.run_id, "model")  # no weights


def test_a_sweep_skips_the_seeds_its_records_hold_and_promote_says_they_have_no_weights(
    records_only: Params,
) -> None:
    model = SWEPT_MODELS[0]
    output = invoke(
        "sweep", "--models", model, "--seeds", "2", "--epochs", "1", "--max-train-samples", "32"
    ).output
    assert all(f"{model} seed {seed}: skipped, result record" in output for seed in SWEPT_SEEDS)
    assert not runs_of(records_only, model) or all(
        run.data.tags.get("sweep") == "parent" for run in runs_of(records_only, model)
    )
    result = invoke("promote", "--models", model, exit_code=1)
    lines = result.output.strip().splitlines()
    assert f"small: {model} leads by its result records" in lines[0] and "not promoted" in lines[0]
    assert lines[1].startswith("error: no FINISHED sweep runs with weights")


def test_throughput_is_per_hardware_and_accuracy_over_every_seed(swept_copy: Params) -> None:
    folder = swept_copy.path(swept_copy.results.dir)
    model = SWEPT_MODELS[0]
    [mine, *_] = [r for r in records_of(swept_copy) if r.model == model]
    epyc = {"cpu": "AMD EPYC 7B13 64-Core Processor", "isa": ["AVX2"], "threads": 2, "device": "cpu"}
    other = resealed(mine, seed=7, hardware=epyc, metrics={**mine.metrics, "eval_samples_per_second": 1.0})
    write_record(folder, other)
    invoke("report", "--models", model)
    settings = ReportSettings.from_params(swept_copy)
    markdown = settings.results_md.read_text(encoding="utf-8")
    assert f"| {model} | AMD EPYC 7B13 64-Core, AVX2 | 1 | 2 | 1.0 |" in markdown
    row = next(
        line for line in markdown.splitlines() if line.startswith(f"| {model}") and line.count("|") > 12
    )
    assert f"3 (7,{','.join(map(str, SWEPT_SEEDS))})" in row and "AMD EPYC 7B13 64-Core, AVX2: 7" in row
    here = [r for r in records_of(swept_copy) if r.model == model and r.hardware == mine.hardware]
    mean = sum(r.metrics["eval_samples_per_second"] for r in here) / len(here)
    assert f"{mean:.1f} ± " in row and f"({mine.hardware.label})" in row  # this machine's runs only


def test_a_record_of_older_training_code_is_marked(
    swept_copy: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = swept_copy.path(swept_copy.results.dir)
    model = SWEPT_MODELS[1]
    for record in [r for r in records_of(swept_copy) if r.model == model]:
        (folder / record.file_name).unlink()
        write_record(folder, resealed(record, run_id=record.run_id, training_revision=0))
    fresh_store(swept_copy, monkeypatch)
    invoke("report", "--models", model)
    markdown = ReportSettings.from_params(swept_copy).results_md.read_text(encoding="utf-8")
    assert f"| {model} (older training code, revision 0) |" in markdown


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda text: text.replace('"test_accuracy": 0.', '"test_accuracy": 1.', 1),
            "does not match its sha256",
        ),
        (lambda text: text[: len(text) // 2], "invalid JSON"),
        (lambda text: json.dumps({"schema_version": 99}), "not a result record of schema version 1"),
        (lambda text: json.dumps([1, 2]), "not a result record"),
        (lambda text: text.replace('"training_revision"', '"revision"'), "not a valid result record"),
    ],
    ids=["edited-metric", "truncated", "foreign-schema", "not-an-object", "renamed-field"],
)
def test_a_damaged_record_is_refused_in_one_line_naming_the_file(
    records_only: Params, damage: Any, message: str
) -> None:
    [path, *_] = sorted(records_only.path(records_only.results.dir).glob("*.json"))
    path.write_text(damage(path.read_text(encoding="utf-8")), encoding="utf-8")
    for command in (["report"], ["results", "import"]):
        result = subprocess.run(
            [sys.executable, "-m", "parabench", *command], capture_output=True, text=True, check=False
        )
        assert result.returncode == 1
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
        assert str(path) in result.stderr and message in result.stderr
    client, experiment_id = client_for(records_only)
    assert not client.search_runs([experiment_id], f"tags.{IMPORTED_TAG} LIKE '%'")  # nothing imported


def test_the_same_command_on_the_same_machine_gives_bit_identical_numbers(validated_copy: Params) -> None:
    args = ["train", "--model", "tiny-bert", "--epochs", "2", "--learning-rate", "1e-3",
            "--max-train-samples", "48", "--max-eval-samples", "64"]  # fmt: skip
    invoke(*args)
    invoke(*args)
    first, second = records_of(validated_copy)
    assert first.run_id != second.run_id
    timing = {"train_samples_per_second", "eval_samples_per_second"}
    assert {k: v for k, v in first.metrics.items() if k not in timing} == {
        k: v for k, v in second.metrics.items() if k not in timing
    }
    assert first.curves == second.curves
    assert first.predictions == second.predictions


def test_read_record_checks_the_hash_of_a_record_it_wrote(swept: Params, tmp_path: Path) -> None:
    [record, *_] = records_of(swept)
    path = write_record(tmp_path, record)
    assert read_record(path) == record
