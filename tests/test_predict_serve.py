"""The promoted model in use: `parabench predict` on a pair and on a CSV, and `mlflow models serve` answering
good requests with 200 and malformed ones with a 4xx and a message, still answering afterwards."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest
from test_sweep import SWEPT_MODELS, invoke, swept  # noqa: F401

from parabench.config import Params
from parabench.serving.loadtest import MALFORMED, PAIR, answers, run_loadtest, serving

MODEL_URI = "models:/parabench-small@champion"
SERVER_START_S = 180
# The load test's malformed bodies: (expected status, a piece of the expected message)
BAD_REQUESTS = {
    "missing field": (400, "sentence2"),
    "wrong type": (400, "must be a string"),
    "null sentence": (400, "sentence2"),
    "records not a list": (400, "list of records"),
    "empty body": (400, "valid JSON"),
    "empty list": (400, "sentence1"),
    "invalid JSON": (400, "valid JSON"),
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


def post(url: str, body: str) -> tuple[int, str]:
    request = urllib.request.Request(
        f"{url}/invocations", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture(scope="module")
def server(champion: Params, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow models serve` of the champion on a free 127.0.0.1 port, as `parabench serve` starts it."""
    log_file = tmp_path_factory.mktemp("serve") / "serve.log"
    with serving(champion, MODEL_URI, log_file, SERVER_START_S) as url:
        yield url


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
    expected_status, message = BAD_REQUESTS[case]
    status, answer = post(server, MALFORMED[case])
    assert status == expected_status, answer
    assert message in json.loads(answer)["message"]
    assert answers(server)
    assert post(server, json.dumps({"dataframe_records": [PAIR]}))[0] == 200


def test_every_malformed_body_of_the_load_test_has_a_case_here() -> None:
    assert set(BAD_REQUESTS) == set(MALFORMED)


def test_a_bounded_load_gets_no_5xx_and_the_server_keeps_answering(champion: Params, server: str) -> None:
    summary = run_loadtest(champion, None, server, requests=60, concurrency=4)
    assert summary["server_errors_5xx"] == 0 and summary["connection_errors"] == 0
    assert summary["unexpected_answers"] == 0 and summary["still_answering"]
    assert summary["valid_requests"] == 36 and sum(summary["status_counts"].values()) == 60
    assert 0 < summary["latency_ms_p50"] <= summary["latency_ms_p95"]
    written = json.loads(Path(summary["report_file"]).read_text())
    assert written["requests"] == 60 and written["status_counts"] == summary["status_counts"]


def test_the_load_test_refuses_a_remote_url(champion: Params) -> None:
    result = invoke("loadtest", "--url", "http://example.com:5001", exit_code=1)
    assert "only targets localhost" in result.stderr
