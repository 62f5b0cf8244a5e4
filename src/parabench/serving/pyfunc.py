"""The served model: sentence pairs in, label and paraphrase probability out (an MLflow pyfunc)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

INPUT_COLUMNS = ("sentence1", "sentence2")
WEIGHTS_ARTIFACT = "weights"
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", name) for name in INPUT_COLUMNS]),
    outputs=Schema([ColSpec("long", "label"), ColSpec("double", "probability")]),
)
INPUT_EXAMPLE = pd.DataFrame(
    {"sentence1": ["The cat sat on the mat."], "sentence2": ["A cat was sitting on the mat."]}
)


def check_pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """Both sentence columns present, all strings; else an MlflowException with a clear message that the
    scoring server answers with HTTP 400 (INVALID_PARAMETER_VALUE; a ValueError would give a generic 400)."""
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
    for column in INPUT_COLUMNS:
        bad = [i for i, value in enumerate(frame[column]) if not isinstance(value, str)]
        if bad:
            raise MlflowException.invalid_parameter_value(
                f"{column} must be a string in every pair; row {bad[0]} is not"
            )
    return frame


class ParaphraseModel(mlflow.pyfunc.PythonModel):
    """A fine-tuned sequence classifier and its tokenizer, predicting on (sentence1, sentence2) pairs."""

    def __init__(self, max_length: int = 128, batch_size: int = 64, inference_path: str = "fp32") -> None:
        self.max_length = max_length
        self.batch_size = batch_size
        self.inference_path = inference_path

    def load_context(self, context: Any) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        weights = context.artifacts[WEIGHTS_ARTIFACT]
        self.tokenizer = AutoTokenizer.from_pretrained(weights)
        from parabench.models.inference import prepare_for_inference

        model = AutoModelForSequenceClassification.from_pretrained(weights)
        self.model = prepare_for_inference(
            model, getattr(self, "inference_path", "fp32")
        )  # older pickles lack it

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        from parabench.models.inference import encode_pairs, predict

        pairs = check_pairs(model_input)
        encoded = encode_pairs(
            self.tokenizer, pairs["sentence1"].tolist(), pairs["sentence2"].tolist(), self.max_length
        )
        predictions = predict(self.model, encoded, self.batch_size, self.tokenizer.pad_token_id)
        return pd.DataFrame({"label": predictions.labels, "probability": predictions.probabilities})


def log_paraphrase_model(weights_dir: Path, max_length: int, batch_size: int, inference_path: str) -> str:
    """Log a saved model folder (save_pretrained output) as the run's MLflow model; returns its URI."""
    import parabench

    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=ParaphraseModel(max_length, batch_size, inference_path),
        artifacts={WEIGHTS_ARTIFACT: str(weights_dir)},
        signature=SIGNATURE,
        input_example=INPUT_EXAMPLE,
        code_paths=[str(Path(parabench.__file__).parent)],
        pip_requirements=_pip_requirements(),
    )
    return info.model_uri


def _pip_requirements() -> list[str]:
    """The libraries the served model imports, pinned to the versions it was logged with."""
    from importlib.metadata import version

    return [
        f"{name}=={version(name)}" for name in ("torch", "transformers", "mlflow", "pandas", "scikit-learn")
    ]
