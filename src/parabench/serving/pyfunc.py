"""The served model: sentence pairs in, label and paraphrase probability out (an MLflow pyfunc).

It is logged as MLflow "models from code": `paraphrase_model.py` (recorded with the model) builds a
`ParaphraseModel` from the parabench code logged beside it, and its settings (max_length, batch size,
inference path, request limits) are the model's `model_config`, so loading a version imports code instead of
unpickling an object. Versions logged before were cloudpickled instances of this class; they still load.

Every request is bounded before any tokenization: characters per sentence, pairs per request and characters
per request (params.yaml `serve:`). Beyond a limit, predict raises INVALID_PARAMETER_VALUE naming the field,
its size and the limit, which the scoring server answers with HTTP 400.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

INPUT_COLUMNS = ("sentence1", "sentence2")
WEIGHTS_ARTIFACT = "weights"
MODEL_CODE_FILE = Path(__file__).with_name("paraphrase_model.py")
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", name) for name in INPUT_COLUMNS]),
    outputs=Schema([ColSpec("long", "label"), ColSpec("double", "probability")]),
)
INPUT_EXAMPLE = pd.DataFrame(
    {"sentence1": ["The cat sat on the mat."], "sentence2": ["A cat was sitting on the mat."]}
)


@dataclass(frozen=True)
class RequestLimits:
    """How much one request may ask: characters per sentence, pairs, characters of all its sentences.
    None: that limit is not enforced (versions logged before limits existed)."""

    max_sentence_chars: int | None = None
    max_pairs: int | None = None
    max_request_chars: int | None = None

    @classmethod
    def of(cls, settings: Any) -> RequestLimits:
        """The limits of params.yaml `serve:` (or of any object or mapping with the three names)."""
        get = settings.get if isinstance(settings, dict) else lambda name: getattr(settings, name, None)
        return cls(**{name: get(name) for name in cls.__dataclass_fields__})

    def as_config(self) -> dict[str, int]:
        """The given limits, as model_config entries."""
        return {name: value for name, value in asdict(self).items() if value is not None}

    def check(self, pairs: pd.DataFrame) -> None:
        """MlflowException (INVALID_PARAMETER_VALUE, HTTP 400) on the first limit the pairs exceed; the pairs
        are a checked table (`check_pairs`)."""
        self.check_count(pairs)
        self.check_lengths(pairs)

    def check_count(self, pairs: pd.DataFrame) -> None:
        """The pair count, first: it costs nothing however large the request."""
        if self.max_pairs is not None and len(pairs) > self.max_pairs:
            raise too_large(
                f"the request has {len(pairs):,} sentence pairs; the limit is {self.max_pairs:,} pairs "
                "per request (serve.max_pairs)"
            )

    def check_lengths(self, pairs: pd.DataFrame) -> None:
        """Characters per sentence, then per request (vectorized); the sentences are strings."""
        lengths = {column: pairs[column].str.len().to_numpy() for column in INPUT_COLUMNS}
        if self.max_sentence_chars is not None:
            over = self._over(lengths)
            if over:
                row, column, size = over[0]
                more = f" ({len(over) - 1:,} more sentences are too long)" if len(over) > 1 else ""
                raise too_large(
                    f"{column} in row {row} has {size:,} characters; the limit is "
                    f"{self.max_sentence_chars:,} characters per sentence (serve.max_sentence_chars){more}"
                )
        total = int(sum(int(values.sum()) for values in lengths.values()))
        if self.max_request_chars is not None and total > self.max_request_chars:
            raise too_large(
                f"the request's sentences have {total:,} characters in all; the limit is "
                f"{self.max_request_chars:,} characters per request (serve.max_request_chars)"
            )

    def _over(self, lengths: dict[str, Any]) -> list[tuple[int, str, int]]:
        """(row, column, characters) of the sentences over max_sentence_chars, by row."""
        limit = self.max_sentence_chars
        return sorted(
            (int(row), column, int(values[row]))
            for column, values in lengths.items()
            for row in (values > limit).nonzero()[0]
        )

    def too_long_rows(self, pairs: pd.DataFrame) -> list[tuple[int, str, int]]:
        """(row, column, characters) of every sentence longer than max_sentence_chars, in row order."""
        if self.max_sentence_chars is None:
            return []
        return self._over({column: pairs[column].str.len().to_numpy() for column in INPUT_COLUMNS})


def too_large(message: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(message)


def check_pairs(frame: pd.DataFrame, limits: RequestLimits | None = None) -> pd.DataFrame:
    """Both sentence columns present, all strings, within the limits and not blank; else an MlflowException
    with a clear message that the scoring server answers with HTTP 400 (INVALID_PARAMETER_VALUE; a ValueError
    would give a generic 400). The pair count is checked before anything that reads every sentence, the
    lengths before anything that copies one."""
    limits = limits or RequestLimits()
    if not isinstance(frame, pd.DataFrame):
        raise MlflowException.invalid_parameter_value(
            f"expected a table with columns {', '.join(INPUT_COLUMNS)}, got {type(frame).__name__}"
        )
    missing = [column for column in INPUT_COLUMNS if column not in frame.columns]
    if missing:
        raise MlflowException.invalid_parameter_value(
            f"missing column(s) {', '.join(missing)}: each pair needs sentence1 and sentence2"
        )
    if frame.empty:
        raise MlflowException.invalid_parameter_value("no sentence pairs given")
    limits.check_count(frame)
    for column in INPUT_COLUMNS:
        values = frame[column]
        if isinstance(values.dtype, pd.StringDtype):  # strings or missing values: find them vectorized
            bad = values.isna().to_numpy().nonzero()[0]
        else:
            bad = [i for i, value in enumerate(values) if not isinstance(value, str)]
        if len(bad):
            raise MlflowException.invalid_parameter_value(
                f"{column} must be a string in every pair; row {bad[0]} is not"
            )
    limits.check_lengths(frame)
    for column in INPUT_COLUMNS:
        blank = frame[column].str.strip().eq("").to_numpy().nonzero()[0]
        if len(blank):
            more = f" ({len(blank) - 1:,} more rows too)" if len(blank) > 1 else ""
            raise MlflowException.invalid_parameter_value(
                f"{column} in row {blank[0]} is empty (or only whitespace): a pair needs two sentences{more}"
            )
    return frame


class ParaphraseModel(mlflow.pyfunc.PythonModel):
    """A fine-tuned sequence classifier and its tokenizer, predicting on (sentence1, sentence2) pairs."""

    # Class-level defaults: instances unpickled from versions logged before limits existed lack them.
    max_sentence_chars: int | None = None
    max_pairs: int | None = None
    max_request_chars: int | None = None
    inference_path: str = "fp32"

    def __init__(self, max_length: int = 128, batch_size: int = 64, inference_path: str = "fp32") -> None:
        self.max_length = max_length
        self.batch_size = batch_size
        self.inference_path = inference_path

    @property
    def limits(self) -> RequestLimits:
        return RequestLimits.of(self)

    def load_context(self, context: Any) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from parabench.models.inference import prepare_for_inference

        self.apply_model_config(context, MODEL_CONFIG_KEYS)
        weights = context.artifacts[WEIGHTS_ARTIFACT]
        self.tokenizer = AutoTokenizer.from_pretrained(weights)
        model = AutoModelForSequenceClassification.from_pretrained(weights)
        self.fit_length(model)
        self.model = prepare_for_inference(model, self.inference_path)

    def fit_length(self, model: Any) -> None:
        """Truncate to the length the model was trained with, within what it can take: no request within the
        limits can then reach past its positions (see `parabench.models.zoo.fitted_length`)."""
        from parabench.models.zoo import fitted_length

        self.max_length = fitted_length(self.max_length, self.tokenizer, model)

    def apply_model_config(self, context: Any, keys: dict[str, str]) -> None:
        """Models from code: every setting is in model_config (the limits possibly overridden when serving);
        an unpickled instance already has its settings and gets no model_config. `keys`: config key ->
        attribute, the class's own."""
        for key, value in (getattr(context, "model_config", None) or {}).items():
            if key in keys:
                setattr(self, keys[key], value)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        from parabench.models.inference import encode_pairs

        pairs = check_pairs(model_input, self.limits)  # before any tokenization
        encoded = encode_pairs(
            self.tokenizer, pairs["sentence1"].tolist(), pairs["sentence2"].tolist(), self.max_length
        )
        predictions = self.predictions(encoded)
        return pd.DataFrame({"label": predictions.labels, "probability": predictions.probabilities})

    def predictions(self, encoded: Any) -> Any:
        """The model's predictions of checked, tokenized pairs (a seed ensemble averages its members')."""
        from parabench.models.inference import predict

        return predict(self.model, encoded, self.batch_size, self.tokenizer.pad_token_id)


# model_config key -> ParaphraseModel attribute. MLflow also logs the model_config as run parameters: the keys
# are those the run already has with the same values (max_length, eval_batch_size) or new ones.
MODEL_CONFIG_KEYS = {
    "max_length": "max_length",
    "eval_batch_size": "batch_size",
    "inference_path": "inference_path",
    **{name: name for name in RequestLimits.__dataclass_fields__},
}


def log_paraphrase_model(
    weights_dir: Path,
    max_length: int,
    batch_size: int,
    inference_path: str,
    limits: RequestLimits,
    model_code: Path = MODEL_CODE_FILE,
    extra: tuple[dict[str, str], dict[str, Any]] = ({}, {}),
) -> str:
    """Log a saved model folder (save_pretrained output) as the run's MLflow model, from code (no pickle);
    returns its URI. The request limits are params.yaml `serve:`'s as the run read them; `parabench serve`
    can still change them without re-logging (SERVING_MODEL_CONFIG). Another served class (baseline.py)
    passes its own code file and `extra` (more artifacts, more model_config)."""
    import parabench

    config = {"max_length": max_length, "eval_batch_size": batch_size, "inference_path": inference_path}
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(model_code),
        model_config={**config, **extra[1], **limits.as_config()},
        artifacts={WEIGHTS_ARTIFACT: str(weights_dir), **extra[0]},
        signature=SIGNATURE,
        input_example=INPUT_EXAMPLE,
        code_paths=[str(Path(parabench.__file__).parent)],
        pip_requirements=_pip_requirements(),
    )
    return info.model_uri


def logged_from_code(flavors: dict[str, Any]) -> bool:
    """Whether a logged model (its MLmodel flavors) loads from code; False: it unpickles a Python object."""
    from mlflow.models.model import MODEL_CODE_PATH

    return MODEL_CODE_PATH in flavors.get("python_function", {})


def _pip_requirements() -> list[str]:
    """The libraries the served model imports, pinned to the versions it was logged with."""
    from importlib.metadata import version

    return [
        f"{name}=={version(name)}" for name in ("torch", "transformers", "mlflow", "pandas", "scikit-learn")
    ]
