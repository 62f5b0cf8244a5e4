"""`parabench predict` and `parabench serve`: the promoted model on sentence pairs, from the command line
or over HTTP (MLflow's scoring server), both under the request limits of params.yaml `serve:`."""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException

from parabench.common.errors import first_line
from parabench.common.files import require_size
from parabench.config import ConfigError, ParabenchError, Params
from parabench.models.choice import choose_path
from parabench.models.hub import quiet_transformers
from parabench.serving.pyfunc import INPUT_COLUMNS, RequestLimits, check_pairs, logged_from_code
from parabench.tracking import client as tracking

SHOWN_ROWS = 10
# The scoring server loads the model with this model_config when the variable holds one (MLflow's name).
SERVING_MODEL_CONFIG = "SERVING_MODEL_CONFIG"
REQUEST_TIMEOUT = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"


def checked_pairs(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """The sentence columns of a table the served model accepts; ParabenchError naming `where` otherwise."""
    try:
        return check_pairs(frame)[list(INPUT_COLUMNS)].reset_index(drop=True)
    except MlflowException as error:
        raise ParabenchError(f"{where}: {first_line(error)}") from error


def csv_limit_bytes(limits: RequestLimits) -> int:
    """The most bytes a CSV of pairs within the request limits can have: every character of its sentences in
    at most 4 UTF-8 bytes, and per pair two quoted cells, a comma and a line end, plus a header."""
    assert limits.max_request_chars is not None and limits.max_pairs is not None
    return 4 * limits.max_request_chars + 8 * limits.max_pairs + 1024


def read_pairs(path: Path, limits: RequestLimits) -> pd.DataFrame:
    """Sentence pairs from a CSV with columns sentence1 and sentence2 (every cell read as text). A row with
    more fields than the header (an unquoted comma) is an error, not a silently shifted pair. A file larger
    than any within the request limits is refused before it is read."""
    if not path.is_file():
        raise ParabenchError(f"{path} not found")
    require_size(
        path, csv_limit_bytes(limits), "no CSV within serve.max_request_chars and serve.max_pairs is larger"
    )
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


def pairs_from(params: Params, sentences: list[str] | None, input_csv: Path | None) -> pd.DataFrame:
    """The pairs to predict: two sentences on the command line, or a CSV file, not both."""
    sentences = sentences or []
    if input_csv is not None and sentences:
        raise ParabenchError("give either two sentences or --input, not both")
    if input_csv is not None:
        return read_pairs(input_csv, RequestLimits.of(params.serve))
    if len(sentences) != len(INPUT_COLUMNS):
        raise ParabenchError(f"give exactly two sentences (got {len(sentences)}) or --input pairs.csv")
    return checked_pairs(pd.DataFrame([sentences], columns=list(INPUT_COLUMNS)), "the sentences")


def check_limits(params: Params, pairs: pd.DataFrame) -> None:
    """The request limits of params.yaml `serve:` on pairs from the command line: ParabenchError naming the
    rows whose sentences are too long (counted from 1, the first pair after a CSV's header), or the limit on
    pairs or characters the input exceeds."""
    limits = RequestLimits.of(params.serve)
    too_long = limits.too_long_rows(pairs)
    if too_long:
        rows = "; ".join(f"row {row + 1} {column} ({size:,})" for row, column, size in too_long[:SHOWN_ROWS])
        more = f"; and {len(too_long) - SHOWN_ROWS:,} more" if len(too_long) > SHOWN_ROWS else ""
        raise ParabenchError(
            f"{len(too_long):,} sentence(s) over the limit of {limits.max_sentence_chars:,} characters "
            f"(serve.max_sentence_chars), rows counted from 1: {rows}{more}"
        )
    try:
        limits.check(pairs)
    except MlflowException as error:
        raise ParabenchError(f"the input is too large: {first_line(error)}") from error


def model_flavors(params: Params, model_uri: str) -> dict[str, Any]:
    """The MLmodel flavors of the model at the URI (models:/ URIs resolve in the project's tracking store); a
    ParabenchError in one line when there is no model there."""
    import mlflow

    tracking.connect(params)
    try:
        return mlflow.models.get_model_info(model_uri).flavors
    except (MlflowException, OSError) as error:
        raise ParabenchError(f"cannot load {model_uri}: {first_line(error)}") from error


def pickle_warning(model_uri: str, flavors: dict[str, Any] | None) -> str | None:
    """A warning when the model was logged as a cloudpickled object (before models-from-code): it loads, but
    loading unpickles code, and served by `mlflow models serve` it enforces no request limits; None for a
    model logged from code (or flavors that could not be read)."""
    if flavors is None or logged_from_code(flavors):
        return None
    return (
        f"warning: {model_uri} was logged as a pickled Python object (before models-from-code): loading it "
        "unpickles code and, served, it enforces no request limits; train it again to re-log it from code"
    )


def serving_config(params: Params) -> dict[str, Any]:
    """What a model logged from code is loaded with here: params.yaml's request limits, and the inference
    path of this machine (`inference.path`, `auto` resolved by this CPU class's bench)."""
    return RequestLimits.of(params.serve).as_config() | {"inference_path": choose_path(params)[0]}


def load_model(params: Params, model_uri: str) -> Any:
    """The pyfunc at the URI, with params.yaml's request limits when it was logged from code (a warning on
    stderr when it is an older, pickled one); models:/ URIs resolve in the project's tracking store."""
    import mlflow

    flavors = model_flavors(params, model_uri)
    config = serving_config(params) if logged_from_code(flavors) else None
    if warning := pickle_warning(model_uri, flavors):
        print(warning, file=sys.stderr)
    try:
        with quiet_transformers():
            return mlflow.pyfunc.load_model(model_uri, model_config=config)
    except (MlflowException, OSError) as error:
        raise ParabenchError(f"cannot load {model_uri}: {first_line(error)}") from error


def predict_pairs(params: Params, model_uri: str, pairs: pd.DataFrame) -> pd.DataFrame:
    """The pairs with the model's label (1 = paraphrase) and paraphrase probability; pairs beyond the
    request limits are refused before the model is loaded."""
    check_limits(params, pairs)
    model = load_model(params, model_uri)
    try:
        predictions = model.predict(pairs)
    except MlflowException as error:  # the limits the model was logged with, if lower than params.yaml's
        raise ParabenchError(f"{model_uri} refused the input: {first_line(error)}") from error
    return pd.concat([pairs, predictions.reset_index(drop=True)], axis=1)


def require_listenable(host: str, port: int) -> None:
    """The scoring server can listen on host:port now: the host names an address of this machine and no
    process listens on the port there. ConfigError (or, for a port in use, ParabenchError) in one line."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as error:
        raise ConfigError(
            f"--host {host!r} is not a host name or address this machine knows ({error})"
        ) from error
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ParabenchError(
                    f"port {port} on {host} is in use by another process: stop it, or give another --port"
                ) from error
            raise ConfigError(
                f"--host {host}: cannot listen there ({error.strerror or error}); give an address of this "
                "machine, such as 127.0.0.1"
            ) from error


def serve_command(params: Params, model_uri: str, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """`mlflow models serve` in this environment, and the environment it needs: the project's tracking store
    (the registry behind models:/ URIs), this interpreter's bin folder on PATH (mlflow starts uvicorn), the
    worker count and request timeout of params.yaml `serve:`, and its request limits as the model_config the
    scoring server loads the model with (a version logged from code takes them; an older one ignores them)."""
    settings = params.serve
    serve = ["models", "serve", "-m", model_uri, "--env-manager", "local", "-h", host, "-p", str(port)]
    serve += ["--workers", str(settings.workers), "--timeout", str(settings.request_timeout_s)]
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking.tracking_uri(params),
        "PATH": path,
        REQUEST_TIMEOUT: str(settings.request_timeout_s),
        SERVING_MODEL_CONFIG: json.dumps(serving_config(params)),
    }
    return [sys.executable, "-m", "mlflow", *serve], env
