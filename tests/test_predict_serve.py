"""The promoted model in use: `parabench predict` on a pair and on a CSV, and `mlflow models serve` answering
good requests with 200 and malformed ones with a 4xx and a message, still answering afterwards; every request
limit at its edge (at the limit 200, one past it 400 naming the limit), oversized bodies refused fast, and a
model that loads from code (and an older, pickled one that still loads)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from helpers import SWEPT_MODELS, invoke
from mlflow.exceptions import MlflowException
from pydantic import ValidationError

import parabench
from parabench.config import Params, ServeParams, load_params
from parabench.models.choice import choose_path
from parabench.serving.loadtest import (
    OVERSIZED,
    PAIR,
    REFUSED,
    answers,
    body,
    request_plan,
    run_loadtest,
    serving,
)
from parabench.serving.predict import REQUEST_TIMEOUT, SERVING_MODEL_CONFIG, serve_command
from parabench.serving.pyfunc import (
    INPUT_EXAMPLE,
    SIGNATURE,
    ParaphraseModel,
    RequestLimits,
    check_pairs,
    logged_from_code,
)

MODEL_URI = "models:/parabench-small@champion"
SERVER_START_S = 180
REFUSED_WITHIN_S = 20  # "well under a second" measured by hand; only a hang fails it on a loaded machine
# The load test's malformed and oversized bodies: (expected status, a piece of the expected message)
BAD_REQUESTS = {
    "missing field": (400, "sentence2"),
    "wrong type": (400, "must be a string"),
    "null sentence": (400, "sentence2"),
    "records not a list": (400, "list of records"),
    "empty body": (400, "valid JSON"),
    "empty list": (400, "sentence1"),
    "invalid JSON": (400, "valid JSON"),
    "empty sentence": (400, "sentence1 in row 0 is empty"),
    "whitespace sentence": (400, "sentence2 in row 1 is empty"),
    "10,000,000-character sentence": (400, "has 10,000,000 characters; the limit is 4,000"),
    "100,000 pairs": (400, "has 100,000 sentence pairs; the limit is 256"),
    "1,200,000 characters in 200 pairs": (400, "1,200,000 characters in all; the limit is 200,000"),
}


@pytest.fixture(scope="module")
def champion(swept_module_copy: Params) -> Params:
    """The swept project once `parabench promote` made a champion of the small class."""
    invoke("promote", "--models", ",".join(SWEPT_MODELS))
    return swept_module_copy


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
            "sentence2": ["He refused.", "null", "Shares fell."],
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


def test_predict_names_the_rows_over_the_sentence_limit(champion: Params, tmp_path: Path) -> None:
    limit = champion.serve.max_sentence_chars
    pairs = pd.DataFrame(
        {
            "sentence1": ["A cat.", "x" * limit, "y" * (limit + 1), "z" * (limit + 5)],
            "sentence2": ["A dog.", "A dog.", "A dog.", "w" * (limit + 1)],
        }
    )
    pairs.to_csv(tmp_path / "long.csv", index=False)
    result = invoke("predict", "--input", str(tmp_path / "long.csv"), exit_code=1)
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert f"3 sentence(s) over the limit of {limit:,} characters (serve.max_sentence_chars)" in result.stderr
    assert (
        f"row 3 sentence1 ({limit + 1:,}); row 4 sentence1 ({limit + 5:,}); row 4 sentence2 ({limit + 1:,})"
        in result.stderr
    )
    pairs.iloc[:2].to_csv(tmp_path / "at-limit.csv", index=False)
    assert len(predicted(invoke("predict", "--input", str(tmp_path / "at-limit.csv")).stdout)) == 2


def test_predict_applies_the_pair_limit_to_a_file(champion: Params, tmp_path: Path) -> None:
    limit = champion.serve.max_pairs
    pd.DataFrame([PAIR] * (limit + 1)).to_csv(tmp_path / "many.csv", index=False)
    result = invoke("predict", "--input", str(tmp_path / "many.csv"), exit_code=1)
    assert f"has {limit + 1:,} sentence pairs; the limit is {limit:,} pairs per request" in result.stderr


def post(url: str, body: str | bytes) -> tuple[int, str]:
    data = body if isinstance(body, bytes) else body.encode()
    request = urllib.request.Request(
        f"{url}/invocations", data=data, headers={"Content-Type": "application/json"}
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


def records(pairs: list[dict[str, str]]) -> str:
    return json.dumps({"dataframe_records": pairs})


def totalling(total: int, per_sentence: int) -> list[dict[str, str]]:
    """Pairs whose sentences (each at most per_sentence characters) have exactly `total` characters."""
    full, rest = divmod(total, per_sentence)
    lengths = [per_sentence] * full + [rest] * (rest > 0)
    lengths += [0] * (len(lengths) % 2)
    return [
        {"sentence1": "a" * one, "sentence2": "b" * two}
        for one, two in zip(lengths[::2], lengths[1::2], strict=True)
    ]


def edge_requests(limits: ServeParams) -> dict[str, tuple[list[dict[str, str]], list[dict[str, str]]]]:
    """Per limit: pairs exactly at it, and pairs one past it (within the other limits)."""
    chars, pairs, total = limits.max_sentence_chars, limits.max_pairs, limits.max_request_chars
    assert pairs * 2 * chars > total, "the request limit must be reachable within the other two"
    return {
        "max_sentence_chars": (
            [{**PAIR, "sentence1": "x" * chars}],
            [{**PAIR, "sentence2": "x" * (chars + 1)}],
        ),
        "max_pairs": ([PAIR] * pairs, [PAIR] * (pairs + 1)),
        "max_request_chars": (totalling(total, chars), totalling(total + 1, chars)),
    }


@pytest.mark.parametrize("limit", ["max_sentence_chars", "max_pairs", "max_request_chars"])
def test_each_limit_at_its_edge(champion: Params, server: str, limit: str) -> None:
    at_limit, past_limit = edge_requests(champion.serve)[limit]
    status, answer = post(server, records(at_limit))
    assert status == 200, answer
    assert len(json.loads(answer)["predictions"]) == len(at_limit)
    status, answer = post(server, records(past_limit))
    assert status == 400, answer
    error = json.loads(answer)
    assert error["error_code"] == "INVALID_PARAMETER_VALUE"
    assert f"the limit is {getattr(champion.serve, limit):,}" in error["message"]
    assert f"(serve.{limit})" in error["message"]


@pytest.mark.parametrize("case", list(OVERSIZED))
def test_an_oversized_request_is_refused_fast_naming_the_limit(server: str, case: str) -> None:
    started = time.perf_counter()
    status, answer = post(server, body(case))
    seconds = time.perf_counter() - started
    assert status == 400, answer[:500]
    assert BAD_REQUESTS[case][1] in json.loads(answer)["message"]
    assert seconds < REFUSED_WITHIN_S
    assert post(server, records([PAIR]))[0] == 200


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_a_malformed_request_gets_a_4xx_with_a_message(server: str, case: str) -> None:
    expected_status, message = BAD_REQUESTS[case]
    status, answer = post(server, body(case))
    assert status == expected_status, answer[:500]
    assert message in json.loads(answer)["message"]
    assert answers(server)
    assert post(server, records([PAIR]))[0] == 200


def test_every_refused_body_of_the_load_test_has_a_case_here() -> None:
    assert set(BAD_REQUESTS) == set(REFUSED)


def test_the_load_test_sends_oversized_bodies_among_the_malformed() -> None:
    plan = request_plan(100, 0.6, seed=0)
    assert sum(case in OVERSIZED for case in plan) >= len(OVERSIZED) and len(plan) == 100


def test_a_bounded_load_gets_no_5xx_and_the_server_keeps_answering(champion: Params, server: str) -> None:
    summary = run_loadtest(champion, None, server, requests=60, concurrency=4)
    assert summary["server_errors_5xx"] == 0 and summary["connection_errors"] == 0
    assert summary["unexpected_answers"] == 0 and summary["still_answering"]
    assert summary["valid_requests"] == 36 and sum(summary["status_counts"].values()) == 60
    assert summary["oversized_requests"] > 0
    # every valid request holds one pair or eight: the pairs labelled per second are at least the requests'
    assert summary["pairs_per_second"] >= summary["valid_requests"] / summary["wall_seconds"] > 0
    assert 0 < summary["latency_ms_p50"] <= summary["latency_ms_p95"]
    assert 0 < summary["valid_latency_ms_p50"] <= summary["valid_latency_ms_p95"]
    assert 0 < summary["oversized_latency_ms_p50"] <= summary["oversized_latency_ms_p95"]
    written = json.loads(Path(summary["report_file"]).read_text())
    assert written["requests"] == 60 and written["status_counts"] == summary["status_counts"]


def test_the_load_test_refuses_a_remote_url(champion: Params) -> None:
    result = invoke("loadtest", "--url", "http://example.com:5001", exit_code=1)
    assert "only targets localhost" in result.stderr


def test_serve_passes_workers_timeout_and_limits(champion: Params) -> None:
    command, env = serve_command(champion, MODEL_URI, "127.0.0.1", 5001)
    settings = champion.serve
    assert command[command.index("--workers") + 1] == str(settings.workers)
    assert command[command.index("--timeout") + 1] == str(settings.request_timeout_s)
    assert env[REQUEST_TIMEOUT] == str(settings.request_timeout_s)
    assert json.loads(env[SERVING_MODEL_CONFIG]) == {
        "max_sentence_chars": settings.max_sentence_chars,
        "max_pairs": settings.max_pairs,
        "max_request_chars": settings.max_request_chars,
        "inference_path": choose_path(champion)[0],
    }


@pytest.mark.parametrize("key", ["workers", "request_timeout_s", "max_sentence_chars", "max_pairs"])
def test_serve_settings_must_be_positive(key: str) -> None:
    settings = load_params().serve.model_dump()
    with pytest.raises(ValidationError, match=key):
        ServeParams.model_validate({**settings, key: 0})


@pytest.mark.parametrize(
    ("limits", "pairs", "message"),
    [
        (RequestLimits(max_sentence_chars=3), [("abc", "de")], None),
        (RequestLimits(max_sentence_chars=3), [("abc", "defg")], "sentence2 in row 0 has 4 characters"),
        (RequestLimits(max_pairs=2), [("a", "b")] * 2, None),
        (RequestLimits(max_pairs=2), [("a", "b")] * 3, "the request has 3 sentence pairs"),
        (RequestLimits(max_request_chars=5), [("ab", "c"), ("d", "e")], None),
        (RequestLimits(max_request_chars=5), [("ab", "c"), ("d", "ef")], "have 6 characters in all"),
        (RequestLimits(max_pairs=1, max_sentence_chars=1), [("abc", 7)] * 2, "2 sentence pairs"),
    ],
)
def test_limits_at_the_edge_without_a_server(
    limits: RequestLimits, pairs: list[tuple[object, object]], message: str | None
) -> None:
    frame = pd.DataFrame(pairs, columns=["sentence1", "sentence2"])
    if message is None:
        assert check_pairs(frame, limits) is frame
    else:
        with pytest.raises(MlflowException, match=message) as error:
            check_pairs(frame, limits)
        assert error.value.get_http_status_code() == 400


def test_the_champion_loads_from_code_with_its_limits(champion: Params) -> None:
    flavors = mlflow.models.get_model_info(MODEL_URI).flavors
    assert logged_from_code(flavors) and "python_model" not in flavors["python_function"]
    config = flavors["python_function"]["config"]
    assert config["max_pairs"] == champion.serve.max_pairs and config["max_length"] > 0


@pytest.mark.slow
def test_a_version_logged_as_a_pickle_still_loads(champion: Params, tmp_path: Path) -> None:
    """Versions logged before models-from-code were cloudpickled ParaphraseModel objects: they still predict,
    with a warning that says to re-log them."""
    mlflow.artifacts.download_artifacts(MODEL_URI, dst_path=str(tmp_path / "champion"))
    pickled = tmp_path / "pickled"
    mlflow.pyfunc.save_model(
        str(pickled),
        python_model=ParaphraseModel(64, 16, "fp32"),
        artifacts={"weights": str(tmp_path / "champion" / "artifacts" / "weights")},
        signature=SIGNATURE,
        input_example=INPUT_EXAMPLE,
        code_paths=[str(Path(parabench.__file__).parent)],
    )
    assert not logged_from_code(mlflow.models.get_model_info(str(pickled)).flavors)
    result = invoke("predict", "--model", str(pickled), PAIR["sentence1"], PAIR["sentence2"])
    assert len(predicted(result.stdout)) == 1
    assert "logged as a pickled Python object" in result.stderr
