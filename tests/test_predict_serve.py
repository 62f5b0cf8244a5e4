"""The promoted model in use: `parabench predict` on a pair and on a CSV, and `mlflow models serve` answering
good requests with 200 and malformed ones with a 4xx and a message, still answering afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest
from test_sweep import SWEPT_MODELS, invoke, swept  # noqa: F401

from parabench.config import Params
from parabench.predict import serve_command

MODEL_URI = "models:/parabench-small@champion"
PAIR = {"sentence1": "The cat sat on the mat.", "sentence2": "A cat was sitting on the mat."}
SERVER_START_S = 180
# (request body, expected status, a piece of the expected message)
BAD_REQUESTS = {
    "missing field": (json.dumps({"dataframe_records": [{"sentence1": "only one"}]}), 400, "sentence2"),
    "wrong type": (json.dumps({"dataframe_records": [{**PAIR, "sentence1": 7}]}), 400, "must be a string"),
    "null sentence": (json.dumps({"dataframe_records": [{**PAIR, "sentence2": None}]}), 400, "sentence2"),
    "records not a list": (json.dumps({"dataframe_records": "text"}), 400, "list of records"),
    "empty body": ("", 400, "valid JSON"),
    "empty list": (json.dumps({"dataframe_records": []}), 400, "sentence1"),
    "invalid JSON": ("{not json", 400, "valid JSON"),
}


@pytest.fixture(scope="module")
def champion(swept: Params) -> Params:  # noqa: F811
    """The swept project once `parabench promote` made a champion of the small class."""
    invoke("promote", "--models", ",".join(SWEPT_MODELS))
    return swept


def predicted(output: str) -> pd.DataFrame:
    table = pd.read_csv(StringIO(output), keep_default_na=False)
    assert list(table.columns) == ["sentence1", "sentence2", "label", "probability"]
    assert table["label"].isin([0, 1]).all() and table["probability"].between(0, 1).all()
    return table


def test_predict_a_pair(champion: Params) -> None:
    table = predicted(invoke("predict", "--model", MODEL_URI, PAIR["sentence1"], PAIR["sentence2"]).stdout)
    assert table.loc[0, "sentence2"] == PAIR["sentence2"] and len(table) == 1


def test_predict_a_csv(champion: Params, tmp_path: Path) -> None:
    pairs = pd.DataFrame(
        {
            "sentence1": ['He said, "no".', "NA", "Stocks rose."],
            "sentence2": ["He refused.", "", "Shares fell."],
        }
    )
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    table = predicted(invoke("predict", "--input", str(tmp_path / "pairs.csv")).stdout)
    assert table["sentence1"].tolist() == pairs["sentence1"].tolist() and len(table) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "{folder}/bad.csv"], "missing column(s) sentence2"),
        (["--input", "{folder}/absent.csv"], "not found"),
        (["--input", "{folder}/unquoted.csv"], "more fields than the header"),
        (["only one sentence"], "give exactly two sentences"),
        (["--model", "models:/nothing@champion", "a", "b"], "cannot load models:/nothing@champion"),
    ],
)
def test_predict_errors_are_one_line(champion: Params, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "bad.csv").write_text("sentence1,other\nA cat.,A dog.\n", encoding="utf-8")
    unquoted_comma = "sentence1,sentence2\nIt rose.,It rose, he said.\n"
    (tmp_path / "unquoted.csv").write_text(unquoted_comma, encoding="utf-8")
    result = invoke("predict", *[arg.format(folder=tmp_path) for arg in args], exit_code=1)
    assert message in result.stderr and result.stderr.strip().count("\n") == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url: str, body: str) -> tuple[int, str]:
    request = urllib.request.Request(
        f"{url}/invocations", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(champion: Params, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow models serve` of the champion on a free 127.0.0.1 port, as `parabench serve` starts it."""
    port = free_port()
    command, env = serve_command(champion, MODEL_URI, "127.0.0.1", port)
    log = (tmp_path_factory.mktemp("serve") / "serve.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not answers(url):
            assert process.poll() is None, f"the server exited: see {log.name}"
            assert time.monotonic() < deadline, f"no answer on {url}/ping in {SERVER_START_S} s"
            time.sleep(1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)  # the server's own session: mlflow and its uvicorn
        process.wait(timeout=30)
        log.close()


def test_a_good_request_gets_label_and_probability(server: str) -> None:
    status, body = post(server, json.dumps({"dataframe_records": [PAIR, PAIR]}))
    assert status == 200, body
    predictions = json.loads(body)["predictions"]
    assert len(predictions) == 2 and set(predictions[0]) == {"label", "probability"}


def test_a_100000_character_sentence_is_truncated_not_refused(server: str) -> None:
    status, body = post(server, json.dumps({"dataframe_records": [{**PAIR, "sentence1": "word " * 20_000}]}))
    assert status == 200, body
    assert len(json.loads(body)["predictions"]) == 1


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_a_malformed_request_gets_a_4xx_with_a_message(server: str, case: str) -> None:
    body, expected_status, message = BAD_REQUESTS[case]
    status, answer = post(server, body)
    assert status == expected_status, answer
    assert message in json.loads(answer)["message"]
    assert answers(server)
    assert post(server, json.dumps({"dataframe_records": [PAIR]}))[0] == 200
