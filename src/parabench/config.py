"""params.yaml, the single source of every knob, validated once into frozen, typed objects (pydantic).

An unknown key, a wrong type or an impossible value stops the command with one line naming the key and the
value (`ConfigError`, exit 2). Values a user gives on the command line or as `mlflow run -P` parameters are
checked by the same types (`parse_options`). `None` always means "not given", never 0.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from parabench.common.errors import ConfigError, ParabenchError
from parabench.common.names import AUTO_PATH, INFERENCE_PATHS, SIZE_CLASSES, SPLITS

__all__ = ["INFERENCE_PATHS", "SIZE_CLASSES", "SPLITS", "ConfigError", "ParabenchError"]

PARAMS_ENV = "PARABENCH_PARAMS"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# params.yaml has a few KB: a file over this is a wrong file, refused before it is read whole.
MAX_PARAMS_BYTES = 1 << 20
# numpy's and torch's seeds must fit in an unsigned 32-bit integer.
MAX_SEED = 2**32 - 1
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, AfterValidator(_finite), Field(gt=0)]
NonNegativeFloat = Annotated[float, AfterValidator(_finite), Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
OpenFraction = Annotated[float, Field(gt=0, lt=1)]
Port = Annotated[int, Field(ge=1, le=65535)]
Name = Annotated[str, AfterValidator(_not_blank)]


class Section(BaseModel):
    """A params.yaml section: frozen, no unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _exact_keys(value: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    if set(value) != set(keys):
        raise ValueError(f"needs exactly the keys {', '.join(keys)}")
    return value


def _band(value: dict[str, Any]) -> dict[str, Any]:
    _exact_keys(value, ("min", "max"))
    if value["min"] > value["max"]:
        raise ValueError("min must not exceed max")
    return value


class DataParams(Section):
    source: str | None
    local_fallback: str
    raw_dir: Path
    processed_dir: Path
    files: dict[str, Name]
    official_urls: dict[str, Name]
    sha256: dict[str, Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]]
    download_timeout_s: PositiveFloat

    _files = field_validator("files")(lambda v: _exact_keys(v, ("train", "test", "dev_ids")))

    @model_validator(mode="after")
    def _every_file_has_a_sum(self) -> DataParams:
        for name in self.files.values():
            if name not in self.sha256:
                raise ValueError(f"sha256 has no sum for {name}")
        return self


class ValidateParams(Section):
    report_dir: Path
    result_file: Path
    row_counts: dict[str, NonNegative]
    positives: dict[str, NonNegative]  # pairs labelled paraphrase, per split: GLUE's exact totals
    positive_rate: dict[str, Fraction]
    sentence_chars: dict[str, NonNegative]

    _rows = field_validator("row_counts", "positives")(lambda v: _exact_keys(v, SPLITS))
    _bands = field_validator("positive_rate", "sentence_chars")(_band)


class TrainParams(Section):
    model: Name
    seed: Seed
    recipe: Name
    max_train_samples: NonNegative | None = None  # None: the whole train split
    max_eval_samples: NonNegative | None = None  # None: every validation/test pair
    max_length: Positive
    eval_batch_size: Positive
    num_threads: Positive | None = None  # None: torch's default
    reports_dir: Path
    checkpoint_dir: Path  # one folder per run (model, seed, recipe, data) while it trains


class Recipe(Section):
    """How one model is fine-tuned: the study's hyper-parameters and their kin."""

    epochs: Positive
    batch_size: Positive
    learning_rate: PositiveFloat
    weight_decay: NonNegativeFloat
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.0
    scheduler: Literal[SCHEDULERS] = "linear"  # type: ignore[valid-type]
    max_grad_norm: PositiveFloat = 1.0
    # Keep the weights of the epoch with the best validation accuracy (early stopping chosen by validation).
    select_best_epoch: bool = False
    # Knowledge distillation: the soft targets of `teacher` (a zoo key whose train-split logits `parabench
    # teacher` cached) at `distill_temperature`, mixed with the labels' cross-entropy: loss =
    # distill_weight · T² · KL(teacher ‖ student) + (1 − distill_weight) · CE. None: no teacher.
    teacher: Name | None = None
    distill_temperature: PositiveFloat | None = None
    distill_weight: Annotated[float, Field(ge=0, le=1)] | None = None

    def __str__(self) -> str:
        return " ".join(f"{name}={value!r}" for name, value in self.model_dump(exclude_none=True).items())

    @model_validator(mode="after")
    def _distillation_is_whole(self) -> Recipe:
        given = [
            self.teacher is not None,
            self.distill_temperature is not None,
            self.distill_weight is not None,
        ]
        if any(given) and not all(given):
            raise ValueError(
                "teacher, distill_temperature and distill_weight are given together or not at all"
            )
        return self

    def with_overrides(self, **overrides: Any) -> Recipe:
        """A copy with the given non-None fields replaced (CLI options, MLproject parameters)."""
        given = {k: v for k, v in overrides.items() if v is not None and k in type(self).model_fields}
        try:
            return Recipe.model_validate({**self.model_dump(), **given})
        except ValidationError as error:
            raise ConfigError(describe(error, "the recipe with the options given")) from error


class LoraParams(Section):
    task_type: Literal["SEQ_CLS"]
    r: Positive
    lora_alpha: Positive
    lora_dropout: Annotated[float, Field(ge=0, lt=1)]
    bias: Literal["none", "all", "lora_only"]


class BaselineParams(Section):
    """The sentence-embedding baselines (zoo entries with a `head`): a frozen encoder's mean-pooled embeddings
    scored by a cosine threshold or a logistic regression, both chosen on the validation split."""

    c_grid: Annotated[list[PositiveFloat], Field(min_length=1)]  # logreg: the C values tried
    max_iter: Positive  # logreg: lbfgs iterations
    embed_batch_size: Positive | None = None  # sentences per batch; None: train.eval_batch_size


class DistillParams(Section):
    """Where `parabench teacher` caches a fine-tuned teacher's train-split logits (one file per teacher)."""

    dir: Path


class HubParams(Section):
    reachability_timeout_s: PositiveFloat


class TinyParams(Section):
    dir: Path
    seed: Seed


class InferenceParams(Section):
    path: Literal[(*INFERENCE_PATHS, AUTO_PATH)]  # type: ignore[valid-type]


class BenchParams(Section):
    passes: Positive
    eval_samples: Positive
    train_steps: Positive
    assumed_fma_units: Positive
    eligibility_points: Annotated[float, Field(ge=0, le=100)]
    output: Path
    by_hardware_dir: Path
    gpu_output: Path


class MlflowParams(Section):
    experiment: Name
    tracking_uri: Name


class TrackingServerParams(Section):
    dir: Path
    host: Name
    postgres_port: Port
    mlflow_port: Port
    database: Name
    user: Name
    workers: Positive
    start_timeout_s: PositiveFloat


class SweepParams(Section):
    models: Annotated[list[Name], Field(min_length=1)]
    seeds: Annotated[list[Seed], Field(min_length=1)]
    summary_file: Path


def _per_class(value: dict[str, Any]) -> dict[str, Any]:
    return _exact_keys(value, SIZE_CLASSES)


class RayParams(Section):
    """Where Ray runs and what one run reserves there."""

    address: Name | None = None  # None or "local": a local Ray; "auto": the running cluster; ray://HOST:10001
    num_cpus: Positive | None = None  # a local Ray's CPUs; None: all
    cpus_per_run: dict[str, PositiveFloat]
    gpus_per_run: dict[str, NonNegativeFloat]
    max_retries: NonNegative
    start_server: bool
    storage_dir: Path
    cancel_grace_s: PositiveFloat

    _classes = field_validator("cpus_per_run", "gpus_per_run")(_per_class)


class Range(Section):
    """A continuous search dimension: uniform, or log-uniform with `log: true`."""

    low: Annotated[float, AfterValidator(_finite)]
    high: Annotated[float, AfterValidator(_finite)]
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError("low must be below high")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class TuneParams(Section):
    """`parabench tune`: the trials, ASHA's schedule and the space Optuna samples (recipe fields)."""

    trials: Positive
    max_epochs: Positive
    min_epochs: Positive
    grace_period: Positive
    reduction_factor: Annotated[int, Field(ge=2)]
    sampler_seed: Seed
    output_dir: Path
    # Recipe field -> a Range or a list of choices; epochs are sampled from min_epochs..max_epochs.
    space: Annotated[dict[str, Range | Annotated[list[Any], Field(min_length=1)]], Field(min_length=1)]

    @model_validator(mode="after")
    def _recipe_fields(self) -> TuneParams:
        searchable = set(Recipe.model_fields) - {"epochs"}
        for name in self.space:
            if name not in searchable:
                raise ValueError(
                    f"space: '{name}' is not a recipe field one can search ({', '.join(sorted(searchable))})"
                )
        if self.min_epochs > self.max_epochs:
            raise ValueError("min_epochs must not exceed max_epochs")
        return self


class ScalingParams(Section):
    """`parabench scaling`: what each timed Ray sweep trains, at which widths, how many rounds."""

    model: Name
    runs: Positive
    epochs: Positive
    max_train_samples: Positive
    max_eval_samples: Positive
    widths: Annotated[list[Positive], Field(min_length=1)]
    rounds: Positive
    report_file: Path


class ResultsParams(Section):
    dir: Path


class Limits(Section):
    """Upper bounds on the counts a user gives (options, recipes, `tune`): far above any run on MRPC, so that
    a typo (an extra zero, or ten) is refused in one line instead of training until killed."""

    epochs: Positive
    optimizer_steps: Positive  # --checkpoint-every-steps, --gradient-accumulation-steps
    samples: Positive  # --max-train-samples, --max-eval-samples, --batch-size
    trials: Positive  # `tune --trials`


# Why each limit exists, as the one-line refusal says it.
LIMIT_REASONS = {
    "epochs": "no run on MRPC needs more, and a larger count would train until killed",
    "optimizer_steps": "more optimizer steps than any run on MRPC takes",
    "samples": "more pairs than MRPC (5,801) has many times over",
    "trials": "a search that size would not end",
}


def require_within(limits: Limits, key: str, value: int | None, option: str) -> None:
    """ConfigError naming the option, the limit and why, when a count given is above params.yaml limits."""
    limit = getattr(limits, key)
    if value is not None and value > limit:
        raise ConfigError(
            f"{option} {value:,} is above the limit of {limit:,} (params.yaml limits.{key}: "
            f"{LIMIT_REASONS[key]})"
        )


class ReportParams(Section):
    results_md: Path
    results_csv: Path
    results_json: Path
    plots_dir: Path
    confidence: OpenFraction
    significance_level: OpenFraction
    paper_hardware: Name
    majority_rate: Fraction
    collapse_margin: Fraction


class Aliases(Section):
    champion: Name
    previous: Name


class PromoteParams(Section):
    name_prefix: Name
    aliases: Aliases
    state_file: Path
    lock_timeout_s: PositiveFloat
    allow_ensembles: bool = False  # seed ensembles cost N forward passes per pair: never champion unless true


class ServeParams(Section):
    model_uri: Name
    host: Name
    port: Port
    workers: Positive  # uvicorn worker processes of `mlflow models serve`
    request_timeout_s: Positive  # MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT (whole seconds)
    max_sentence_chars: Positive
    max_pairs: Positive
    max_request_chars: Positive


class LoadtestParams(Section):
    requests: Positive
    concurrency: Positive
    max_requests: Positive  # the most --requests takes: a load test is bounded, never a flood
    max_concurrency: Positive  # the most --concurrency takes: threads of this process, one connection each
    valid_fraction: Fraction
    request_timeout_s: PositiveFloat
    server_start_timeout_s: PositiveFloat
    report_file: Path


class ReliabilityParams(Section):
    model: Name
    epochs: Positive
    long_epochs: Positive
    max_train_samples: Positive
    max_eval_samples: Positive
    concurrent_trainings: Positive
    promote_models: Annotated[list[Name], Field(min_length=2)]
    report_dir: Path


class Params(Section):
    """Every section of params.yaml, typed; `root` is the folder holding params.yaml."""

    root: Path
    data: DataParams
    validate_: ValidateParams = Field(alias="validate")
    train: TrainParams
    recipes: Annotated[dict[Name, Recipe], Field(min_length=1)]
    lora: LoraParams
    baselines: BaselineParams
    distill: DistillParams
    hub: HubParams
    tiny: TinyParams
    inference: InferenceParams
    bench: BenchParams
    mlflow: MlflowParams
    tracking_server: TrackingServerParams
    sweep: SweepParams
    ray: RayParams
    tune: TuneParams
    scaling: ScalingParams
    results: ResultsParams
    limits: Limits
    report: ReportParams
    promote: PromoteParams
    serve: ServeParams
    loadtest: LoadtestParams
    reliability: ReliabilityParams

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _default_recipe_exists(self) -> Params:
        if self.train.recipe not in self.recipes:
            raise ValueError(
                f"train.recipe '{self.train.recipe}' is not one of recipes: {', '.join(self.recipes)}"
            )
        if self.loadtest.requests > self.loadtest.max_requests:
            raise ValueError("loadtest.requests must not exceed loadtest.max_requests")
        if self.loadtest.concurrency > self.loadtest.max_concurrency:
            raise ValueError("loadtest.concurrency must not exceed loadtest.max_concurrency")
        return self

    @property
    def validate(self) -> ValidateParams:  # type: ignore[override]  # `validate` is a params.yaml section
        return self.validate_

    def path(self, relative: str | Path) -> Path:
        """A path from params.yaml, taken relative to the folder that holds params.yaml."""
        relative = Path(relative)
        return relative if relative.is_absolute() else self.root / relative

    def recipe(self, name: str) -> Recipe:
        if name not in self.recipes:
            raise ConfigError(f"unknown recipe '{name}'; params.yaml defines: {', '.join(self.recipes)}")
        return self.recipes[name]


class GivenOptions(Section):
    """Values a user gives on the command line or as `mlflow run -P` parameters: None, or the word `auto`,
    means "not given" (params.yaml's value, or the recipe's), except in the fields of `auto_is_a_value`."""

    auto_is_a_value: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="before")
    @classmethod
    def _auto_is_not_given(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name in cls.auto_is_a_value:
            return value
        return None if isinstance(value, str) and value.strip().lower() == "auto" else value


class RunOptions(GivenOptions):
    """What a user may set for one training run (CLI options, `mlflow run -P` parameters). None, or the word
    `auto`, means "not given": params.yaml's value, or the recipe's."""

    model: Name | None = None
    seed: Seed | None = None
    recipe: Name | None = None
    epochs: Positive | None = None
    batch_size: Positive | None = None
    learning_rate: PositiveFloat | None = None
    weight_decay: NonNegativeFloat | None = None
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] | None = None
    scheduler: Literal[SCHEDULERS] | None = None  # type: ignore[valid-type]
    max_grad_norm: PositiveFloat | None = None
    teacher: Name | None = None
    distill_temperature: PositiveFloat | None = None
    distill_weight: Annotated[float, Field(ge=0, le=1)] | None = None
    max_length: Positive | None = None
    max_train_samples: NonNegative | None = None
    max_eval_samples: NonNegative | None = None
    mixed_precision: Literal["no", "fp16", "bf16"] | None = None  # None: bf16/fp16 on GPUs, no on the CPU
    gradient_accumulation_steps: Positive | None = None
    checkpoint_every_steps: NonNegative | None = None  # optimizer steps; 0 = only after epochs
    keep_checkpoints: bool | None = None
    load_in_4bit: bool | None = None

    def recipe_overrides(self) -> dict[str, Any]:
        """The given values of Recipe fields."""
        return {
            name: getattr(self, name) for name in Recipe.model_fields if getattr(self, name, None) is not None
        }


class RayOptions(GivenOptions):
    """Where and how wide a study runs on Ray (`sweep --engine ray`, `tune`); None: params.yaml `ray:`."""

    auto_is_a_value: ClassVar[frozenset[str]] = frozenset({"address"})  # auto: the running cluster

    address: Name | None = None  # "local" = not given
    cpus_per_run: PositiveFloat | None = None
    gpus_per_run: NonNegativeFloat | None = None
    max_retries: NonNegative | None = None
    start_server: bool | None = None

    @field_validator("address", mode="before")
    @classmethod
    def _local_is_not_given(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() == "local" else value


class TuneLimits(GivenOptions):
    """`parabench tune`'s size: None = params.yaml `tune:` (no time budget)."""

    trials: Positive | None = None
    max_epochs: Positive | None = None
    time_budget_s: PositiveFloat | None = None


def shown(value: Any) -> str:
    """A value as the user wrote it, short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(error: ValidationError, where: str, name_of: dict[str, str] | None = None) -> str:
    """One line for a validation error: where, the key (or option), the value, and what is allowed."""
    name_of = name_of or {}
    first = error.errors()[0]
    location = [str(part) for part in first["loc"]]
    key = ".".join(location)
    key = name_of.get(key, name_of.get(location[0], key) if location else key)
    message = first["msg"].removeprefix("Value error, ")
    if not location:  # a check of the whole section (a model validator)
        line = f"{where}: {message}"
    elif first["type"] == "extra_forbidden":
        line = f"{where}: unknown key '{key}'"
    elif first["type"] == "missing":
        line = f"{where}: '{key}' is missing"
    else:
        line = f"{where}: {key} = {shown(first.get('input'))}: {message}"
    more = len(error.errors()) - 1
    return line + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def find_params_file() -> Path:
    """params.yaml from $PARABENCH_PARAMS, else the current folder, else the project checkout."""
    given = os.environ.get(PARAMS_ENV)
    if given:
        if not Path(given).is_file():
            raise ConfigError(f"{PARAMS_ENV}={given}: no such file")
        return Path(given).resolve()
    for candidate in (Path.cwd() / "params.yaml", PACKAGE_ROOT / "params.yaml"):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError("params.yaml not found: run parabench from the project folder or set PARABENCH_PARAMS")


def load_params(path: Path | None = None) -> Params:
    """Read and validate params.yaml; ConfigError (one line) on anything it does not allow."""
    path = path or find_params_file()
    try:
        if (size := path.stat().st_size) > MAX_PARAMS_BYTES:
            raise ConfigError(f"{path} has {size:,} bytes: not a params.yaml (they have a few KB)")
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from error
    except yaml.YAMLError as error:
        reason = " ".join(str(error).split())
        raise ConfigError(f"{path} is not valid YAML: {reason}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping of sections, got {type(raw).__name__}")
    if "root" in raw:
        raise ConfigError(f"{path}: unknown key 'root'")
    try:
        return Params.model_validate({**raw, "root": path.parent})
    except ValidationError as error:
        raise ConfigError(describe(error, str(path))) from error


Options = TypeVar("Options", bound=BaseModel)


def parse_options(model: type[Options], values: dict[str, Any], option_names: dict[str, str]) -> Options:
    """Command-line options or MLproject parameters checked by the same types as params.yaml: one line
    naming the option on a violation (ConfigError, exit 2)."""
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise ConfigError(describe(error, "invalid option", option_names)) from error
