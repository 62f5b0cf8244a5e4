"""`parabench loadtest`: a bounded load test of the served model, on localhost only.

It starts `mlflow models serve` of a model (or uses a running server's URL), sends a fixed number of requests
from a few threads, a mix of valid, malformed and oversized bodies (a 10,000,000-character sentence, 100,000
pairs, ...), and reports status counts, 5xx count, connection errors, p50/p95 latency (of all requests, of the
valid ones answered while the oversized ones arrive, and of the refusals), requests/s, and whether the server
still answers afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from parabench.common.files import require_writable, write_json
from parabench.common.processes import free_port, http_ok, stop_process_group, wait_until
from parabench.config import ConfigError, ParabenchError, Params
from parabench.serving.predict import model_flavors, serve_command

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
PAIR = {"sentence1": "The cat sat on the mat.", "sentence2": "A cat was sitting on the mat."}
# Bodies the server must answer 200.
VALID = {
    "one pair": json.dumps({"dataframe_records": [PAIR]}),
    "eight pairs": json.dumps({"dataframe_records": [PAIR] * 8}),
    "400-character sentences": json.dumps(
        {"dataframe_records": [{"sentence1": "word " * 80, "sentence2": "text " * 80}]}
    ),
}
# Bodies the server must refuse with a 4xx and a message.
MALFORMED = {
    "missing field": json.dumps({"dataframe_records": [{"sentence1": "only one"}]}),
    "wrong type": json.dumps({"dataframe_records": [{**PAIR, "sentence1": 7}]}),
    "null sentence": json.dumps({"dataframe_records": [{**PAIR, "sentence2": None}]}),
    "records not a list": json.dumps({"dataframe_records": "text"}),
    "empty body": "",
    "empty list": json.dumps({"dataframe_records": []}),
    "invalid JSON": "{not json",
    "empty sentence": json.dumps({"dataframe_records": [{**PAIR, "sentence1": ""}]}),
    "whitespace sentence": json.dumps({"dataframe_records": [PAIR, {**PAIR, "sentence2": " \t\n"}]}),
}
# Bodies beyond the request limits (params.yaml serve:, defaults or anything near them), which the server must
# refuse with a 4xx naming the limit before tokenizing anything; built when first sent.
OVERSIZED: dict[str, Callable[[], str]] = {
    "10,000,000-character sentence": lambda: json.dumps(
        {"dataframe_records": [{**PAIR, "sentence1": "word " * 2_000_000}]}
    ),
    "100,000 pairs": lambda: json.dumps({"dataframe_records": [PAIR] * 100_000}),
    "1,200,000 characters in 200 pairs": lambda: json.dumps(
        {"dataframe_records": [{"sentence1": "word " * 600, "sentence2": "text " * 600}] * 200}
    ),
}
REFUSED = (*MALFORMED, *OVERSIZED)


@functools.cache
def body(case: str) -> bytes:
    """The request body of a case, UTF-8 (an oversized one built once)."""
    text = OVERSIZED[case]() if case in OVERSIZED else (VALID | MALFORMED)[case]
    return text.encode()


@dataclass(frozen=True)
class Answer:
    """One request's outcome: case, HTTP status (0 = no HTTP answer), seconds."""

    case: str
    status: int
    seconds: float

    @property
    def expected(self) -> bool:
        return self.status == 200 if self.case in VALID else 400 <= self.status < 500


def post(url: str, data: bytes, timeout: float) -> int:
    """POST a body to url/invocations; the HTTP status, or 0 when the connection failed."""
    request = urllib.request.Request(
        f"{url}/invocations", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        error.read()
        return error.code
    except OSError:
        return 0


def answers(url: str, timeout: float = 5.0) -> bool:
    """True when the scoring server answers /ping."""
    return http_ok(f"{url}/ping", timeout)


def require_local(url: str) -> None:
    """The load test only ever targets this machine."""
    host = urllib.parse.urlparse(url).hostname
    if host not in LOCAL_HOSTS:
        raise ParabenchError(f"the load test only targets localhost ({', '.join(LOCAL_HOSTS)}), not '{host}'")


def checked_url(url: str) -> str:
    """A scoring server's address as --url takes it: http(s)://HOST[:PORT] on this machine, without a
    trailing slash; ConfigError in one line otherwise."""
    parsed = urllib.parse.urlparse(url.strip())
    try:
        parsed.port  # noqa: B018  # raises ValueError for a port that is not 0..65535
    except ValueError as error:
        raise ConfigError(f"--url {url!r}: {error}") from error
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"--url {url!r} is not a server address such as http://127.0.0.1:5001")
    require_local(url)
    return url.strip().rstrip("/")


def checked_count(option: str, given: int | None, default: int, most: int, key: str) -> int:
    """A count option (None: params.yaml's value): 1..most, else ConfigError naming the option and limit."""
    value = default if given is None else given
    if not 1 <= value <= most:
        raise ConfigError(f"{option} {value:,}: give 1..{most:,} (params.yaml loadtest.{key})")
    return value


def request_plan(requests: int, valid_fraction: float, seed: int) -> list[str]:
    """Which case each request sends: valid_fraction of them valid, cycling through the cases, shuffled."""
    valid = round(requests * valid_fraction)
    plan = [list(VALID)[i % len(VALID)] for i in range(valid)]
    plan += [REFUSED[i % len(REFUSED)] for i in range(requests - valid)]
    random.Random(seed).shuffle(plan)
    return plan


def load(
    url: str, requests: int, concurrency: int, valid_fraction: float, timeout: float, seed: int = 0
) -> dict[str, Any]:
    """Send the planned requests from `concurrency` threads; the summary of what came back."""
    require_local(url)
    if not answers(url):
        raise ParabenchError(f"no scoring server answers {url}/ping")
    plan = request_plan(requests, valid_fraction, seed)
    for case in set(plan):
        body(case)  # built before the clock starts

    def send(case: str) -> Answer:
        started = time.perf_counter()
        status = post(url, body(case), timeout)
        return Answer(case, status, time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(send, plan))
    wall = time.perf_counter() - started
    statuses = Counter(result.status for result in results)
    return {
        "url": url,
        "requests": requests,
        "concurrency": concurrency,
        "valid_requests": sum(result.case in VALID for result in results),
        "oversized_requests": sum(result.case in OVERSIZED for result in results),
        "status_counts": {str(status): count for status, count in sorted(statuses.items())},
        "server_errors_5xx": sum(count for status, count in statuses.items() if status >= 500),
        "connection_errors": statuses.get(0, 0),
        "unexpected_answers": sum(not result.expected for result in results),
        **latencies("latency_ms", results),
        # valid requests answered while the oversized ones arrive, and how fast those are refused
        **latencies("valid_latency_ms", [result for result in results if result.case in VALID]),
        **latencies("oversized_latency_ms", [result for result in results if result.case in OVERSIZED]),
        "requests_per_second": requests / wall,
        # pairs the model labelled (valid requests answered 200) per second of the whole load
        "pairs_per_second": sum(
            len(json.loads(body(result.case))["dataframe_records"])
            for result in results
            if result.case in VALID and result.status == 200
        )
        / wall,
        "wall_seconds": wall,
        "still_answering": answers(url),
    }


def latencies(name: str, results: list[Answer]) -> dict[str, float | None]:
    """p50, p95 and max of the results' latencies in ms, as name_p50, ...; None when there are none."""
    if not results:
        return {f"{name}_{stat}": None for stat in ("p50", "p95", "max")}
    ms = np.array([result.seconds for result in results]) * 1000
    return {
        f"{name}_p50": float(np.percentile(ms, 50)),
        f"{name}_p95": float(np.percentile(ms, 95)),
        f"{name}_max": float(ms.max()),
    }


@contextlib.contextmanager
def serving(params: Params, model_uri: str, log_file: Path, start_timeout_s: float) -> Iterator[str]:
    """`mlflow models serve` of the model on a free 127.0.0.1 port while inside; yields its URL."""
    host = "127.0.0.1"
    port = free_port(host)
    command, env = serve_command(params, model_uri, host, port)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("w") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://{host}:{port}"
    try:
        if not wait_until(
            lambda: answers(url), start_timeout_s, interval_s=1, give_up=lambda: process.poll() is not None
        ):
            raise ParabenchError(f"serving {model_uri} did not answer {url}/ping; see {log_file}")
        yield url
    finally:
        stop_process_group(process.pid)  # the server's own session: mlflow and its uvicorn
        process.wait(timeout=30)


def run_loadtest(
    params: Params, model_uri: str | None, url: str | None, requests: int | None, concurrency: int | None
) -> dict[str, Any]:
    """Load-test a running server (url) or one started for the model; params.yaml `loadtest:` fills in.
    Every argument is checked, and the model found, before anything is started or written."""
    settings = params.loadtest
    options = {
        "requests": checked_count(
            "--requests", requests, settings.requests, settings.max_requests, "max_requests"
        ),
        "concurrency": checked_count(
            "--concurrency", concurrency, settings.concurrency, settings.max_concurrency, "max_concurrency"
        ),
        "valid_fraction": settings.valid_fraction,
        "timeout": settings.request_timeout_s,
    }
    report_file = params.path(settings.report_file)
    if url is not None and model_uri is not None:
        raise ConfigError("give either --url (a running server) or --model (one to start), not both")
    url = checked_url(url) if url is not None else None
    require_writable(report_file, report_file.with_name("loadtest-server.log"))
    if url:
        summary = load(url, **options)
    else:
        model_uri = model_uri or params.serve.model_uri
        model_flavors(params, model_uri)  # a model that is not there: one line, no server started
        log_file = report_file.with_name("loadtest-server.log")
        with serving(params, model_uri, log_file, settings.server_start_timeout_s) as served:
            summary = load(served, **options)
        summary["model_uri"] = model_uri
    write_json(report_file, summary)
    return summary | {"report_file": str(report_file)}
