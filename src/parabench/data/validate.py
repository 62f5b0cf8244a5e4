"""`parabench data validate`: a Great Expectations suite over the three splits, written as a JSON result and
HTML Data Docs; and `require_validated`, the gate that training passes through.

Great Expectations is imported only when a validation runs, so `require_validated` stays cheap to import."""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parabench.common.errors import first_line
from parabench.common.files import sha256_file, write_json
from parabench.config import ParabenchError, Params
from parabench.data.fetch import MAX_FILE_BYTES, require_raw_intact
from parabench.data.prepare import COLUMNS, split_paths
from parabench.data.version import data_version, display_path

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from great_expectations.core import ExpectationSuiteValidationResult
    from great_expectations.data_context import AbstractDataContext
    from great_expectations.expectations import Expectation

LEAK_COLUMN = "pair_in_other_split"
SENTENCE_COLUMNS = ("sentence1", "sentence2")
COLUMN_TYPES = {"idx": "int64", "sentence1": "str", "sentence2": "str", "label": "int64"}
DOCS_SUBDIR = "gx"
SITE_NAME = "parabench"
SHOWN_VALUES = 5
BAND_KEYS = ("row_counts", "positive_rate", "sentence_chars")
RERUN_HINT = "run `parabench data validate` (or `dvc repro`)"
LEAK_NOTE = (
    f"`{LEAK_COLUMN}` is derived by parabench before validation: True where the row's (sentence1, sentence2) "
    "pair also occurs in another split (train/validation/test leakage)."
)


@dataclass
class ValidationOutcome:
    """What `validate_splits` found, and where it wrote the result and the Data Docs."""

    success: bool
    failures: list[str]
    result_file: Path
    data_docs: Path


@dataclass
class SplitFile:
    """One split as read from disk: its frame (None when unreadable), why not, and the bytes' SHA-256."""

    path: Path
    frame: pd.DataFrame | None = None
    problem: str | None = None
    sha256: str | None = None
    failed: list[dict[str, str]] = field(default_factory=list)


def decoded(value: bytes) -> str | bytes:
    """A value as str when it is valid UTF-8, else the raw bytes (which the type expectation then reports)."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def to_frame(table: pa.Table) -> pd.DataFrame:
    """A parquet table as pandas; in string columns with invalid UTF-8, only the invalid values stay bytes."""
    import pyarrow as pa

    invalid = []
    for index, column in enumerate(table.columns):
        kind = table.schema.field(index).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            continue
        try:
            column.validate(full=True)
        except pa.ArrowInvalid:
            binary = pa.large_binary() if pa.types.is_large_string(kind) else pa.binary()
            table = table.set_column(index, table.schema.field(index).name, column.cast(binary))
            invalid.append(table.schema.field(index).name)
    frame = table.to_pandas()
    for name in invalid:
        frame[name] = frame[name].map(decoded, na_action="ignore").astype(object)
    return frame


def read_split(path: Path) -> SplitFile:
    """Read one parquet split; a missing or damaged file gives a problem instead of raising."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    split_file = SplitFile(path)
    if not path.is_file():
        split_file.problem = "file not found"
        return split_file
    if (size := path.stat().st_size) > MAX_FILE_BYTES:
        split_file.problem = f"{size:,} bytes, over the limit of {MAX_FILE_BYTES:,} (a split has under 1 MB)"
        return split_file
    data = path.read_bytes()
    split_file.sha256 = hashlib.sha256(data).hexdigest()
    try:
        split_file.frame = to_frame(pq.read_table(pa.BufferReader(data)))
    except Exception as error:  # any damage must end as a failure line, never as a traceback
        split_file.problem = f"not a readable parquet file ({type(error).__name__}: {first_line(error)})"
    return split_file


def pair_keys(frame: pd.DataFrame | None) -> set[tuple[Any, Any]] | None:
    """The (sentence1, sentence2) pairs of a frame, None when they cannot be formed."""
    if frame is None or not set(SENTENCE_COLUMNS) <= set(frame.columns):
        return None
    try:
        return set(zip(frame["sentence1"], frame["sentence2"], strict=True))
    except TypeError:
        return None


def with_leak_column(frames: dict[str, pd.DataFrame | None]) -> dict[str, pd.DataFrame]:
    """Each readable frame plus LEAK_COLUMN: does its pair occur in any other split (None: not computable)."""
    keys = {split: pair_keys(frame) for split, frame in frames.items()}
    flagged = {}
    for split, frame in frames.items():
        if frame is None:
            continue
        others: set[tuple[Any, Any]] = set().union(*(k for s, k in keys.items() if s != split and k))
        flags = None
        if keys[split] is not None:
            flags = [pair in others for pair in zip(frame["sentence1"], frame["sentence2"], strict=True)]
        flagged[split] = frame.assign(**{LEAK_COLUMN: flags})
    return flagged


def split_expectations(params: Params, split: str) -> list[Expectation]:
    """The expectations one split must meet; every band comes from params.yaml `validate:`."""
    import great_expectations.expectations as gxe

    bands = params.validate
    rows, positives = int(bands.row_counts[split]), int(bands.positives[split])
    chars, rate = bands.sentence_chars, bands.positive_rate
    expectations: list[Expectation] = [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=[*COLUMNS, LEAK_COLUMN], notes=LEAK_NOTE),
        gxe.ExpectTableRowCountToEqual(value=rows),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=list(SENTENCE_COLUMNS)),
        gxe.ExpectColumnValuesToBeUnique(column="idx"),
        gxe.ExpectColumnValuesToBeBetween(column="idx", min_value=0, max_value=rows - 1),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1]),
        gxe.ExpectColumnMeanToBeBetween(column="label", min_value=rate["min"], max_value=rate["max"]),
        gxe.ExpectColumnSumToBeBetween(column="label", min_value=positives, max_value=positives),
        gxe.ExpectColumnValuesToBeInSet(column=LEAK_COLUMN, value_set=[False], notes=LEAK_NOTE),
    ]
    expectations += [
        gxe.ExpectColumnValuesToBeOfType(column=column, type_=kind) for column, kind in COLUMN_TYPES.items()
    ]
    for column in SENTENCE_COLUMNS:  # int64 columns cannot hold nulls: their type expectation covers them
        expectations += [
            gxe.ExpectColumnValuesToNotBeNull(column=column),
            gxe.ExpectColumnValuesToMatchRegex(column=column, regex=r"\S"),
            gxe.ExpectColumnValueLengthsToBeBetween(
                column=column, min_value=chars["min"], max_value=chars["max"]
            ),
        ]
    return expectations


def gx_context(docs_dir: Path) -> AbstractDataContext:
    """An in-memory GX context, quiet (no analytics, no progress bars), with a Data Docs site in docs_dir."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    site = {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        data_docs_sites={SITE_NAME: site},
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def run_suites(
    params: Params, frames: dict[str, pd.DataFrame], docs_dir: Path
) -> dict[str, ExpectationSuiteValidationResult]:
    """Validate each frame against its split's suite, then rebuild the Data Docs site from scratch."""
    import great_expectations as gx

    context = gx_context(docs_dir)
    source = context.data_sources.add_pandas("mrpc")
    results = {}
    for split, frame in frames.items():
        batch = source.add_dataframe_asset(name=split).add_batch_definition_whole_dataframe(split)
        suite = context.suites.add(
            gx.ExpectationSuite(name=f"mrpc_{split}", expectations=split_expectations(params, split))
        )
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"mrpc_{split}", data=batch, suite=suite)
        )
        results[split] = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
    shutil.rmtree(docs_dir, ignore_errors=True)
    context.build_data_docs(site_names=[SITE_NAME])
    return results


def exception_message(info: dict[str, Any] | None) -> str | None:
    """The first error GX recorded for an expectation, whichever of its two layouts it used."""
    if not info:
        return None
    entries = [info] if "exception_message" in info else list(info.values())
    for entry in entries:
        if isinstance(entry, dict) and entry.get("exception_message"):
            return first_line(entry["exception_message"])
    return None


def plain(value: Any) -> Any:
    """numpy scalars as Python ones, so messages read `1.0`, not `np.float64(1.0)`."""
    return value.item() if isinstance(value, numbers.Number) and hasattr(value, "item") else value


def show_values(values: list[Any]) -> str:
    """A short list of values for a message."""
    shown = ", ".join(repr(plain(value))[:80] for value in values[:SHOWN_VALUES])
    return f"[{shown}{', …' if len(values) > SHOWN_VALUES else ''}]"


def expected_text(kwargs: dict[str, Any]) -> str:
    """What an aggregate expectation wanted, from its arguments."""
    if "value" in kwargs:
        return f", expected {kwargs['value']!r}"
    if "min_value" in kwargs or "max_value" in kwargs:
        return f", expected between {kwargs.get('min_value')} and {kwargs.get('max_value')}"
    if "type_" in kwargs:
        return f", expected {kwargs['type_']}"
    return ""


def columns_text(observed: list[str], expected: list[str]) -> str:
    """How a table's columns differ from the expected ones."""
    missing = [column for column in expected if column not in observed]
    extra = [column for column in observed if column not in expected]
    if not (missing or extra):
        return f"columns out of order: {observed}"
    return "; ".join(
        f"{label} column(s) {columns}"
        for label, columns in (("missing", missing), ("unexpected", extra))
        if columns
    )


def describe(kwargs: dict[str, Any], result: dict[str, Any], error: str | None) -> str:
    """One line on why an expectation failed."""
    if error:
        return f"could not be evaluated: {error}"
    if "unexpected_count" in result:
        text = f"{result['unexpected_count']} unexpected value(s): "
        text += show_values(result.get("partial_unexpected_list") or [])
        rows = result.get("partial_unexpected_index_list")
        return text + (f" at row(s) {show_values(rows)}" if rows else "")
    observed = plain(result.get("observed_value"))
    if isinstance(observed, list) and "column_list" in kwargs:
        return columns_text(observed, list(kwargs["column_list"]))
    return f"observed {observed!r}{expected_text(kwargs)}"


def target(kind: str, kwargs: dict[str, Any]) -> str:
    """The column(s) an expectation is about, '' for whole-table ones."""
    if "column" in kwargs:
        return str(kwargs["column"])
    return "+".join(kwargs.get("column_list", [])) if kind.startswith("expect_compound") else ""


def failed_entries(split: str, result: ExpectationSuiteValidationResult) -> list[dict[str, str]]:
    """One entry per failed expectation: its type, column, why, and the failure line."""
    entries = []
    for outcome in result.results:
        if outcome.success:
            continue
        kind, kwargs = outcome.expectation_config.type, dict(outcome.expectation_config.kwargs)
        column = target(kind, kwargs)
        detail = describe(kwargs, dict(outcome.result or {}), exception_message(outcome.exception_info))
        name = f"{kind}({column})" if column else kind
        message = f"{split}: {name} — {detail}"
        entries.append({"expectation": kind, "column": column, "detail": detail, "message": message})
    return entries


def unreadable_entry(params: Params, split: str, split_file: SplitFile) -> dict[str, str]:
    """The failure entry for a split file that could not be read at all."""
    shown = display_path(params, split_file.path)
    return {
        "expectation": "read_parquet",
        "column": "",
        "detail": split_file.problem or "",
        "message": f"{split}: cannot read {shown} — {split_file.problem}",
    }


def report_document(
    params: Params, data_dir: Path, split_files: dict[str, SplitFile], results: dict[str, Any], index: Path
) -> dict[str, Any]:
    """The JSON result: success, per-split failed expectations, files and their sums, data version."""
    import great_expectations as gx

    sums = {split: split_file.sha256 for split, split_file in split_files.items()}
    failures = [entry["message"] for split_file in split_files.values() for entry in split_file.failed]
    return {
        "success": not failures,
        "failures": failures,
        "data_dir": display_path(params, data_dir),
        "data_version": data_version(params, data_dir) if all(sums.values()) else None,
        "files": {
            split: {"path": display_path(params, split_file.path), "sha256": split_file.sha256}
            for split, split_file in split_files.items()
        },
        "splits": {
            split: {
                "success": not split_file.failed,
                "evaluated_expectations": len(results[split].results) if split in results else 0,
                "failed": split_file.failed,
            }
            for split, split_file in split_files.items()
        },
        "bands": {key: getattr(params.validate, key) for key in BAND_KEYS},
        "data_docs": display_path(params, index),
        "great_expectations_version": gx.__version__,
    }


def output_folders(params: Params, data_dir: Path) -> tuple[Path, Path]:
    """Where a validation of data_dir writes its result file and Data Docs. Only data.processed_dir's result
    is the gate training reads; any other folder's goes to <report_dir>/other/<folder>-<hash>/."""
    report_dir = params.path(params.validate.report_dir)
    if data_dir.resolve() == params.path(params.data.processed_dir).resolve():
        return params.path(params.validate.result_file), report_dir / DOCS_SUBDIR
    tag = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]
    folder = report_dir / "other" / f"{data_dir.resolve().name}-{tag}"
    return folder / "result.json", folder / DOCS_SUBDIR


def validate_splits(params: Params, data_dir: Path | None = None) -> ValidationOutcome:
    """Run the suite over data_dir (default data.processed_dir); write the JSON result and the Data Docs
    (see `output_folders`: validating another folder never touches the training gate). Raw files that do not
    match their SHA-256 are refused first, in one line (ParabenchError)."""
    data_dir = Path(data_dir) if data_dir is not None else params.path(params.data.processed_dir)
    require_raw_intact(params)  # splits made from other raw files are no GLUE splits, whatever they hold
    split_files = {split: read_split(path) for split, path in split_paths(data_dir).items()}
    frames = with_leak_column({split: split_file.frame for split, split_file in split_files.items()})
    result_file, docs_dir = output_folders(params, data_dir)
    results = run_suites(params, frames, docs_dir)
    for split, split_file in split_files.items():
        if split in results:
            split_file.failed = failed_entries(split, results[split])
        else:
            split_file.failed = [unreadable_entry(params, split, split_file)]
    index = docs_dir / "index.html"
    document = report_document(params, data_dir, split_files, results, index)
    write_json(result_file, document)
    return ValidationOutcome(document["success"], document["failures"], result_file, index)


def read_result(params: Params) -> dict[str, Any]:
    """The last validation result; a missing or unreadable one is an error."""
    result_file = params.path(params.validate.result_file)
    shown = display_path(params, result_file)
    if not result_file.is_file():
        raise ParabenchError(f"the data has not been validated ({shown} not found); {RERUN_HINT}")
    try:
        document = json.loads(result_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ParabenchError(f"{shown} is not a readable validation result ({error}); {RERUN_HINT}") from None
    if not isinstance(document, dict):
        raise ParabenchError(f"{shown} is not a validation result; {RERUN_HINT}")
    return document


def require_validated(params: Params, data_dir: Path | None = None) -> str:
    """Refuse (ParabenchError) unless the last validation passed and neither the splits nor the raw files
    changed since; return the data version (see `parabench.data.version.data_version`)."""
    document = read_result(params)
    if document.get("success") is not True:
        count = len(document.get("failures") or [])
        shown = display_path(params, params.path(params.validate.result_file))
        raise ParabenchError(
            f"the last data validation failed ({count} expectation(s), see {shown}); "
            f"fix the data, then {RERUN_HINT}"
        )
    data_dir = Path(data_dir) if data_dir is not None else params.path(params.data.processed_dir)
    recorded = document.get("files") or {}
    sums = {}
    for split, path in split_paths(data_dir).items():
        shown = display_path(params, path)
        if not path.is_file():
            raise ParabenchError(f"{shown} not found; run `parabench data prepare` (or `dvc repro`)")
        sums[split] = sha256_file(path)
        if sums[split] != (recorded.get(split) or {}).get("sha256"):
            raise ParabenchError(f"{shown} changed since it was validated; {RERUN_HINT}")
    require_raw_intact(params)
    return data_version(params, data_dir)
