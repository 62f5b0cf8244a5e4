"""`parabench data validate` (Great Expectations) and `require_validated`, the gate in front of training."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from parabench.cli import app
from parabench.common.files import sha256_file
from parabench.config import ParabenchError, Params
from parabench.data.validate import require_validated, validate_splits
from parabench.data.version import dvc_dir_md5

Corruption = Callable[[pa.Table, dict[str, pa.Table]], pa.Table]


def set_value(column: str, row: int, value: object) -> Corruption:
    """Replace one cell, keeping the column's arrow type where the value allows."""

    def corrupt(table: pa.Table, _: dict[str, pa.Table]) -> pa.Table:
        frame = table.to_pandas()
        frame[column] = frame[column].astype(object)
        frame.at[row, column] = value
        return pa.Table.from_pandas(frame, preserve_index=False)

    return corrupt


def drop_column(column: str) -> Corruption:
    return lambda table, _: table.drop_columns([column])


def truncate(rows: int) -> Corruption:
    return lambda table, _: table.slice(0, rows)


def labels_as_strings(table: pa.Table, _: dict[str, pa.Table]) -> pa.Table:
    return table.set_column(3, "label", table.column("label").cast(pa.string()))


def all_positive(table: pa.Table, _: dict[str, pa.Table]) -> pa.Table:
    return table.set_column(3, "label", pa.array([1] * table.num_rows, pa.int64()))


def copy_test_pair(table: pa.Table, splits: dict[str, pa.Table]) -> pa.Table:
    """Row 7 of train becomes test row 0's pair (row count unchanged): leakage only."""
    frame, test = table.to_pandas(), splits["test"].to_pandas()
    frame.loc[7, ["sentence1", "sentence2"]] = test.loc[0, ["sentence1", "sentence2"]].tolist()
    return pa.Table.from_pandas(frame, preserve_index=False)


def invalid_utf8_string(table: pa.Table, _: dict[str, pa.Table]) -> pa.Table:
    """sentence1 stays typed `string` in parquet but one value holds bytes that are not UTF-8."""
    values = [value.encode() for value in table.column("sentence1").to_pylist()]
    values[2] = b"caf\xe9 au lait, \xff\xfe"
    return table.set_column(1, "sentence1", pa.array(values, pa.binary()).view(pa.string()))


def binary_sentences(table: pa.Table, _: dict[str, pa.Table]) -> pa.Table:
    """sentence2 written as a binary column, one value not UTF-8."""
    values = [value.encode() for value in table.column("sentence2").to_pylist()]
    values[0] = b"\xc3\x28 broken"
    return table.set_column(2, "sentence2", pa.array(values, pa.binary()))


LEAK = "expect_column_values_to_be_in_set(pair_in_other_split)"
# name -> (split to corrupt, corruption, texts that failure lines must contain)
CORRUPTIONS: dict[str, tuple[str, Corruption, tuple[str, ...]]] = {
    "label_2": ("validation", set_value("label", 3, 2), (
        "validation: expect_column_values_to_be_in_set(label) — 1 unexpected value(s): [2] at row(s) [3]",
    )),
    "missing_column": ("test", drop_column("sentence2"), (
        "test: expect_table_columns_to_match_ordered_list — missing column(s) ['sentence2']",
    )),
    "blank_sentence": ("train", set_value("sentence1", 5, "   "), (
        "train: expect_column_values_to_match_regex(sentence1) — 1 unexpected value(s): ['   ']",
    )),
    "null_sentence": ("test", set_value("sentence2", 9, None), (
        "test: expect_column_values_to_not_be_null(sentence2)",
    )),
    "duplicated_idx": ("validation", set_value("idx", 1, 0), (
        "validation: expect_column_values_to_be_unique(idx)",
    )),
    "truncated_split": ("test", truncate(1000), (
        "test: expect_table_row_count_to_equal — observed 1000, expected 1725",
    )),
    "test_pair_in_train": ("train", copy_test_pair, (
        f"train: {LEAK} — 1 unexpected value(s): [True] at row(s) [7]",
        f"test: {LEAK} — 1 unexpected value(s): [True] at row(s) [0]",
    )),
    "invalid_utf8": ("train", invalid_utf8_string, (
        "train: expect_column_values_to_be_of_type(sentence1) — 1 unexpected value(s)",
    )),
    "binary_sentence": ("validation", binary_sentences, (
        "validation: expect_column_values_to_be_of_type(sentence2)",
    )),
    "string_label": ("test", labels_as_strings, (
        "test: expect_column_values_to_be_of_type(label) — observed 'str', expected int64",
        "test: expect_column_values_to_be_in_set(label) — 1725 unexpected value(s)",
    )),
    "positive_rate": ("validation", all_positive, (
        "validation: expect_column_mean_to_be_between(label) — observed 1.0, expected between 0.6 and 0.72",
    )),
    "long_sentence": ("train", set_value("sentence2", 0, "x" * 401), (
        "train: expect_column_value_lengths_to_be_between(sentence2)",
    )),
}


def corrupted_copy(processed_dir: Path, target: Path, split: str, corruption: Corruption) -> Path:
    """A copy of the validated splits with `corruption` applied to one of them."""
    shutil.copytree(processed_dir, target, dirs_exist_ok=True)
    splits = {path.stem: pq.read_table(path) for path in target.glob("*.parquet")}
    pq.write_table(corruption(splits[split], splits), target / f"{split}.parquet")
    return target


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_is_rejected_by_name(
    name: str, processed_dir: Path, project_params: Params, tmp_path: Path
) -> None:
    split, corruption, expected = CORRUPTIONS[name]
    bad = corrupted_copy(processed_dir, tmp_path / name, split, corruption)
    outcome = validate_splits(project_params, bad)
    assert not outcome.success
    for text in expected:
        assert any(text in failure for failure in outcome.failures), (text, outcome.failures)
    assert all("\n" not in failure for failure in outcome.failures)
    result = json.loads(outcome.result_file.read_text(encoding="utf-8"))
    assert result["success"] is False and result["failures"] == outcome.failures
    assert result["files"][split]["sha256"] == sha256_file(bad / f"{split}.parquet")
    assert result["data_dir"] == str(bad.resolve())
    failed = [entry["message"] for entry in result["splits"][split]["failed"]]
    assert any(expected[0] in message for message in failed)


def test_unreadable_and_missing_files_become_failure_lines(
    processed_dir: Path, project_params: Params, tmp_path: Path
) -> None:
    bad = Path(shutil.copytree(processed_dir, tmp_path / "broken"))
    (bad / "test.parquet").write_bytes(b"PAR1 this is not parquet")
    (bad / "validation.parquet").unlink()
    outcome = validate_splits(project_params, bad)
    assert not outcome.success
    failures = outcome.failures
    assert any(f.startswith("test: cannot read") and "not a readable parquet file" in f for f in failures)
    assert any(f.startswith("validation: cannot read") and "file not found" in f for f in failures)
    result = json.loads(outcome.result_file.read_text(encoding="utf-8"))
    assert result["files"]["validation"]["sha256"] is None and result["data_version"] is None
    assert result["splits"]["train"]["success"] is True


def test_happy_path_writes_result_and_data_docs(validated_params: Params, processed_dir: Path) -> None:
    result_file = validated_params.path(validated_params.validate.result_file)
    result = json.loads(result_file.read_text(encoding="utf-8"))
    assert result["success"] is True and result["failures"] == []
    assert result["data_dir"] == "data/processed"
    assert result["data_version"] == dvc_dir_md5(processed_dir) and result["data_version"].endswith(".dir")
    for split in ("train", "validation", "test"):
        assert result["files"][split]["sha256"] == sha256_file(processed_dir / f"{split}.parquet")
        assert result["splits"][split] == {"success": True, "evaluated_expectations": 19, "failed": []}
    index = validated_params.path(validated_params.validate.report_dir) / "gx" / "index.html"
    assert index.is_file() and "mrpc_validation" in index.read_text(encoding="utf-8")
    train_pages = list(index.parent.glob("validations/mrpc_train/**/*.html"))
    assert len(train_pages) == 1 and "pair_in_other_split" in train_pages[0].read_text(encoding="utf-8")
    assert result["data_docs"] == "reports/validation/gx/index.html"


def test_bands_come_from_params(validated_copy: Params) -> None:
    """Tightening a band in params.yaml makes the same data fail."""
    params_file = validated_copy.root / "params.yaml"
    raw = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    raw["validate"]["positive_rate"] = {"min": 0.70, "max": 0.72}
    raw["validate"]["sentence_chars"] = {"min": 5, "max": 200}
    params_file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    from parabench.config import load_params

    outcome = validate_splits(load_params(params_file))
    failed = {failure.split(" — ")[0] for failure in outcome.failures}
    assert "train: expect_column_mean_to_be_between(label)" in failed
    assert "test: expect_column_value_lengths_to_be_between(sentence1)" in failed


def test_require_validated_returns_the_data_version(validated_params: Params) -> None:
    result_file = validated_params.path(validated_params.validate.result_file)
    result = json.loads(result_file.read_text(encoding="utf-8"))
    assert require_validated(validated_params) == result["data_version"]


def test_data_version_is_the_hash_dvc_records_for_the_processed_folder(validated_copy: Params) -> None:
    processed = validated_copy.path(validated_copy.data.processed_dir)
    dvc = [str(Path(sys.executable).parent / "dvc")]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=validated_copy.root, check=True)
    subprocess.run([*dvc, "add", "-q", str(processed)], cwd=validated_copy.root, check=True)
    recorded = yaml.safe_load(processed.with_suffix(".dvc").read_text(encoding="utf-8"))["outs"][0]["md5"]
    assert require_validated(validated_copy) == dvc_dir_md5(processed) == recorded  # what DVC itself computes
    (validated_copy.root / "dvc.lock").write_text("schema: '2.0'\n", encoding="utf-8")
    assert require_validated(validated_copy) == recorded


def test_require_validated_refuses_without_a_result(project_params: Params) -> None:
    with pytest.raises(ParabenchError, match=r"has not been validated .*run `parabench data validate`"):
        require_validated(project_params)


def test_require_validated_refuses_a_changed_split(validated_copy: Params) -> None:
    train = validated_copy.path(validated_copy.data.processed_dir) / "train.parquet"
    frame = pd.read_parquet(train)
    frame.loc[0, "label"] = 1 - frame.loc[0, "label"]
    frame.to_parquet(train, index=False)
    message = "data/processed/train.parquet changed since it was validated; run `parabench data validate`"
    with pytest.raises(ParabenchError, match=message.replace(".", r"\.")):
        require_validated(validated_copy)


def test_require_validated_refuses_a_tampered_raw_file(validated_copy: Params) -> None:
    raw = validated_copy.path(validated_copy.data.raw_dir) / "mrpc_dev_ids.tsv"
    raw.write_bytes(raw.read_bytes() + b"1\t2\n")
    with pytest.raises(ParabenchError, match=r"data/raw/mrpc_dev_ids\.tsv does not match its SHA-256"):
        require_validated(validated_copy)


def test_cli_validate_of_another_folder_fails_naming_the_expectation_and_leaves_the_gate(
    processed_dir: Path, validated_copy: Params, tmp_path: Path
) -> None:
    gate = validated_copy.path(validated_copy.validate.result_file)
    before = gate.read_bytes()
    bad = corrupted_copy(processed_dir, tmp_path / "bad", "validation", set_value("label", 3, 2))
    result = CliRunner().invoke(app, ["data", "validate", "--data-dir", str(bad)])
    assert result.exit_code == 1
    assert "FAILED validation: expect_column_values_to_be_in_set(label)" in result.output
    assert "nothing may be trained on this data" in result.output
    assert "Calculating Metrics" not in result.output and "Traceback" not in result.output
    assert "reports/validation/other/bad-" in result.output
    # The gate of data/processed is untouched: its data still passes and may be trained on.
    assert gate.read_bytes() == before
    assert require_validated(validated_copy).endswith(".dir")


def test_cli_validate_failing_on_the_processed_data_refuses_training(
    processed_dir: Path, validated_copy: Params
) -> None:
    own = validated_copy.path(validated_copy.data.processed_dir)
    corrupted_copy(processed_dir, own, "validation", set_value("label", 3, 2))
    result = CliRunner().invoke(app, ["data", "validate"])
    assert result.exit_code == 1
    # a label of 2 is outside {0, 1} and moves the split's exact paraphrase total (validate.positives)
    with pytest.raises(ParabenchError, match=r"last data validation failed \(2 expectation\(s\)"):
        require_validated(validated_copy)


def test_cli_validate_passes(validated_copy: Params) -> None:
    result = CliRunner().invoke(app, ["data", "validate"])
    assert result.exit_code == 0, result.output
    assert "all expectations passed" in result.output
    assert require_validated(validated_copy).endswith(".dir")
