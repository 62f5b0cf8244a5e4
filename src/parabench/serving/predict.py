"""`parabench predict` and `parabench serve`: the promoted model on sentence pairs, from the command line
or over HTTP (MLflow's scoring server)."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException

from parabench.config import ParabenchError, Params
from parabench.data.validate import first_line
from parabench.models.hub import quiet_transformers
from parabench.serving.pyfunc import INPUT_COLUMNS, check_pairs
from parabench.tracking import client as tracking


def checked_pairs(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """The sentence columns of a table the served model accepts; ParabenchError naming `where` otherwise."""
    try:
        return check_pairs(frame)[list(INPUT_COLUMNS)].reset_index(drop=True)
    except MlflowException as error:
        raise ParabenchError(f"{where}: {first_line(error)}") from error


def read_pairs(path: Path) -> pd.DataFrame:
    """Sentence pairs from a CSV with columns sentence1 and sentence2 (every cell read as text). A row with
    more fields than the header (an unquoted comma) is an error, not a silently shifted pair."""
    if not path.is_file():
        raise ParabenchError(f"{path} not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False)
    except pd.errors.ParserWarning as error:
        raise ParabenchError(
            f"{path}: a row has more fields than the header; quote sentences that contain commas"
        ) from error
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ParabenchError(f"{path} is not a readable CSV: {first_line(error)}") from error
    return checked_pairs(frame, str(path))


def pairs_from(sentences: list[str] | None, input_csv: Path | None) -> pd.DataFrame:
    """The pairs to predict: two sentences on the command line, or a CSV file, not both."""
    sentences = sentences or []
    if input_csv is not None and sentences:
        raise ParabenchError("give either two sentences or --input, not both")
    if input_csv is not None:
        return read_pairs(input_csv)
    if len(sentences) != len(INPUT_COLUMNS):
        raise ParabenchError(f"give exactly two sentences (got {len(sentences)}) or --input pairs.csv")
    return checked_pairs(pd.DataFrame([sentences], columns=list(INPUT_COLUMNS)), "the sentences")


def load_model(params: Params, model_uri: str) -> Any:
    """The pyfunc at the URI; models:/ URIs resolve in the project's tracking store (its registry)."""
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri(params))
    try:
        with quiet_transformers():
            return mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as error:
        raise ParabenchError(f"cannot load {model_uri}: {first_line(error)}") from error


def predict_pairs(params: Params, model_uri: str, pairs: pd.DataFrame) -> pd.DataFrame:
    """The pairs with the model's label (1 = paraphrase) and paraphrase probability."""
    predictions = load_model(params, model_uri).predict(pairs)
    return pd.concat([pairs, predictions.reset_index(drop=True)], axis=1)


def serve_command(params: Params, model_uri: str, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """`mlflow models serve` in this environment, and the environment it needs: the project's tracking store
    (the registry behind models:/ URIs) and this interpreter's bin folder on PATH (mlflow starts uvicorn)."""
    serve = ["models", "serve", "-m", model_uri, "--env-manager", "local", "-h", host, "-p", str(port)]
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.tracking_uri(params), "PATH": path}
    return [sys.executable, "-m", "mlflow", *serve], env
