"""Loads params.yaml, the single source of every knob, into typed objects."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

PARAMS_ENV = "PARABENCH_PARAMS"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class ParabenchError(Exception):
    """An error whose message is meant for the user as it is: one clear line, no traceback."""


@dataclass(frozen=True)
class DataParams:
    source: str | None
    local_fallback: str
    raw_dir: Path
    processed_dir: Path
    files: dict[str, str]
    official_urls: dict[str, str]
    sha256: dict[str, str]
    download_timeout_s: float


@dataclass(frozen=True)
class ValidateParams:
    report_dir: Path
    result_file: Path
    row_counts: dict[str, int]
    positive_rate: dict[str, float]
    sentence_chars: dict[str, int]


@dataclass(frozen=True)
class TrainParams:
    model: str
    seed: int
    recipe: str
    max_train_samples: int
    max_eval_samples: int
    max_length: int
    eval_batch_size: int
    num_threads: int
    reports_dir: Path


@dataclass(frozen=True)
class Recipe:
    """How one model is fine-tuned: the study's hyper-parameters and their kin."""

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    warmup_ratio: float = 0.0
    scheduler: str = "linear"
    max_grad_norm: float = 1.0
    # Keep the weights of the epoch with the best validation accuracy (early stopping chosen by validation).
    select_best_epoch: bool = False

    def with_overrides(self, **overrides: Any) -> Recipe:
        """A copy with the given non-None fields replaced (CLI and MLproject parameters)."""
        known = {f.name for f in fields(self)}
        given = {k: v for k, v in overrides.items() if v is not None and k in known}
        return Recipe(**{**self.__dict__, **given})


@dataclass(frozen=True)
class LoraParams:
    task_type: str
    r: int
    lora_alpha: int
    lora_dropout: float
    bias: str


@dataclass(frozen=True)
class Params:
    root: Path
    data: DataParams
    validate: ValidateParams
    train: TrainParams
    recipes: dict[str, Recipe]
    lora: LoraParams
    hub: dict[str, Any]
    tiny: dict[str, Any]
    mlflow: dict[str, Any]
    sweep: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def path(self, relative: str | Path) -> Path:
        """A path from params.yaml, taken relative to the folder that holds params.yaml."""
        relative = Path(relative)
        return relative if relative.is_absolute() else self.root / relative

    def recipe(self, name: str) -> Recipe:
        if name not in self.recipes:
            raise ParabenchError(f"unknown recipe '{name}'; params.yaml defines: {', '.join(self.recipes)}")
        return self.recipes[name]


def find_params_file() -> Path:
    """params.yaml from $PARABENCH_PARAMS, else the current folder, else the project checkout."""
    candidates = [os.environ.get(PARAMS_ENV), Path.cwd() / "params.yaml", PACKAGE_ROOT / "params.yaml"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    raise ParabenchError(
        "params.yaml not found: run parabench from the project folder or set PARABENCH_PARAMS"
    )


def load_params(path: Path | None = None) -> Params:
    """Read params.yaml into a Params object."""
    path = path or find_params_file()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ParabenchError(f"{path} is not valid YAML: {error}") from error
    data, validate, train = raw["data"], raw["validate"], raw["train"]
    return Params(
        root=path.parent,
        data=DataParams(
            **{**data, "raw_dir": Path(data["raw_dir"]), "processed_dir": Path(data["processed_dir"])}
        ),
        validate=ValidateParams(
            **{
                **validate,
                "report_dir": Path(validate["report_dir"]),
                "result_file": Path(validate["result_file"]),
            }
        ),
        train=TrainParams(**{**train, "reports_dir": Path(train["reports_dir"])}),
        recipes={name: Recipe(**values) for name, values in raw["recipes"].items()},
        lora=LoraParams(**raw["lora"]),
        hub=raw["hub"],
        tiny=raw["tiny"],
        mlflow=raw["mlflow"],
        sweep=raw["sweep"],
        raw=raw,
    )
