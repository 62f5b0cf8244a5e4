"""Result records: one small JSON file per FINISHED run under `results/`, committed to git, so that a study
outlives any one machine's tracking store (the MTEB results repository's idea).

A record holds all that the report and promote's comparison need but the weights: what was run (model,
recipe, fingerprint, seed, data, code), where (CPU and its instruction sets, threads, GPU), the curves,
the final metrics, and every pair's probability by split. Its own SHA-256 makes an edited record detectable.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from parabench.common.errors import ParabenchError
from parabench.common.files import file_stem, write_text
from parabench.common.hardware import hardware_label
from parabench.common.names import FINAL_METRICS, SPLITS

SCHEMA_VERSION = 1
SUFFIX = ".json"
MAX_RECORD_BYTES = 8 * 1024 * 1024  # a record of all three MRPC splits is ~100 KB
# Instruction sets that change CPU numbers (kernels differ by them), as /proc/cpuinfo flags -> our names.
# Libraries whose versions can change a number.
LIBRARIES = ("torch", "transformers", "accelerate", "peft", "scikit-learn", "numpy", "mlflow")


class RecordError(ParabenchError):
    """A record that cannot be read, or whose content does not match its SHA-256."""


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Hardware(Frozen):
    """Where the numbers were made."""

    cpu: str
    isa: list[str]  # of ISA_FLAGS' names, those the CPU has
    threads: int
    device: str  # cpu | cuda | mps
    gpu: str | None = None
    kernels: str | None = (
        None  # the CPU kernels torch dispatches to (torch.backends.cpu.get_cpu_capability())
    )

    @property
    def label(self) -> str:
        """The hardware class throughput is grouped by: the GPU, else the CPU's short name and its widest
        vector ISA (AMX > AVX-512 > AVX2)."""
        return hardware_label(self.cpu, self.isa, self.gpu)


class SplitPredictions(Frozen):
    """One split's predictions in pair order: pair idx, paraphrase probability, predicted label."""

    idx: list[int]
    probability: list[float]
    label: str  # predicted, '0'/'1' per pair (exact, where a rounded probability at 0.5 would not be)
    gold: str  # the split's labels, '0'/'1' per pair: what McNemar's test and ensembles score against

    @field_validator("label", "gold")
    @classmethod
    def _binary(cls, value: str) -> str:
        if value.strip("01"):
            raise ValueError("must be a string of 0 and 1")
        return value

    @property
    def labels(self) -> np.ndarray:
        return bits(self.label)

    @property
    def references(self) -> np.ndarray:
        return bits(self.gold)


def bits(text: str) -> np.ndarray:
    """'0110' -> array([0, 1, 1, 0])."""
    return (np.frombuffer(text.encode(), dtype=np.uint8) - ord("0")).astype(np.int64)


Finite = Annotated[float, Field(allow_inf_nan=False)]


class ResultRecord(Frozen):
    """One FINISHED run; `sha256` is the hash of every other field (canonical JSON)."""

    schema_version: Literal[1]
    run_id: str
    model: str
    size_class: str
    family: str
    kind: Literal["fine-tuned", "baseline", "ensemble"]
    recipe_name: str
    recipe: dict[str, Any]
    recipe_fingerprint: str
    params: dict[str, str]  # the run's logged parameters (MLflow's, as text)
    training_revision: int
    seed: int
    data_version: str
    code_commit: str
    versions: dict[str, str]
    hardware: Hardware
    started_at: float  # epoch seconds
    finished_at: float
    curves: dict[str, list[Finite]]  # epoch -> the per-epoch metrics (train_loss, validation_*), epoch 1..n
    metrics: dict[str, Finite]
    timings: dict[str, Finite]
    predictions: dict[str, SplitPredictions]
    sha256: str

    @field_validator("metrics")
    @classmethod
    def _contract(cls, value: dict[str, float]) -> dict[str, float]:
        missing = [name for name in FINAL_METRICS if name not in value]
        if missing:
            raise ValueError(f"final metrics missing: {', '.join(missing)}")
        return value

    @field_validator("predictions")
    @classmethod
    def _splits(cls, value: dict[str, SplitPredictions]) -> dict[str, SplitPredictions]:
        for split in SPLITS:
            if split not in value:
                raise ValueError(f"predictions of the {split} split missing")
            found = value[split]
            if not len(found.idx) == len(found.probability) == len(found.label) == len(found.gold):
                raise ValueError(f"{split}: idx, probability, label and gold differ in length")
        return value

    @property
    def file_name(self) -> str:
        """data version, model, recipe, seed and run id: unique per run, so machines never conflict in git."""
        parts = (self.data_version[:12], file_stem(self.model), file_stem(self.recipe_name))
        return f"{'--'.join(parts)}--seed{self.seed}--{self.run_id}{SUFFIX}"

    def content_hash(self) -> str:
        return content_hash(self.model_dump(mode="json", exclude={"sha256"}))


def content_hash(document: dict[str, Any]) -> str:
    """SHA-256 of a document's canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def seal(document: dict[str, Any]) -> ResultRecord:
    """A record from its fields (no sha256 yet): validated, then hashed."""
    draft = ResultRecord.model_validate({**document, "schema_version": SCHEMA_VERSION, "sha256": ""})
    return draft.model_copy(update={"sha256": draft.content_hash()})


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def split_predictions(
    idx: Iterable[int], probabilities: np.ndarray, labels: np.ndarray, gold: Iterable[int]
) -> SplitPredictions:
    """A split's predictions as a record keeps them (probabilities to 6 decimals)."""
    return SplitPredictions(
        idx=[int(i) for i in idx],
        probability=[round(float(p), 6) for p in probabilities],
        label=text_bits(labels),
        gold=text_bits(gold),
    )


def text_bits(values: Iterable[int]) -> str:
    """[0, 1, 1, 0] -> '0110'."""
    return "".join("1" if value else "0" for value in values)


def write_record(folder: Path, record: ResultRecord) -> Path:
    """The record as `folder/<file_name>` (atomically)."""
    text = json.dumps(record.model_dump(mode="json"), indent=1, sort_keys=True, allow_nan=False)
    return write_text(folder / record.file_name, text + "\n")


def read_record(path: Path) -> ResultRecord:
    """A record file, validated and checked against its SHA-256; a RecordError names the file otherwise."""
    try:
        if path.stat().st_size > MAX_RECORD_BYTES:
            raise RecordError(f"{path}: {path.stat().st_size} bytes, larger than any result record")
        return parse_record(path.read_text(encoding="utf-8"), str(path))
    except OSError as error:
        raise RecordError(f"{path}: cannot be read ({error.strerror or error})") from error


def parse_record(text: str, source: str) -> ResultRecord:
    """A record from its JSON text; `source` names it in the error."""
    try:
        document = json.loads(text)
    except ValueError as error:
        raise RecordError(f"{source}: not a result record (invalid JSON: {error})") from error
    if not isinstance(document, dict) or document.get("schema_version") != SCHEMA_VERSION:
        found = document.get("schema_version") if isinstance(document, dict) else None
        raise RecordError(
            f"{source}: not a result record of schema version {SCHEMA_VERSION} (found {found!r})"
        )
    try:
        record = ResultRecord.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise RecordError(f"{source}: not a valid result record ({where}: {first['msg']})") from error
    if record.content_hash() != record.sha256:
        raise RecordError(
            f"{source}: content does not match its sha256 (edited or damaged); restore it from git"
        )
    return record


def read_records(folder: Path) -> list[ResultRecord]:
    """Every record in the folder (recursively), in name order; the first bad one fails in one line."""
    if not folder.is_dir():
        return []
    return [read_record(path) for path in sorted(folder.rglob(f"*{SUFFIX}"))]
