"""Bad input, round 3 (issue 24), as a user meets it: every case runs the real entry point
(`parabench.cli.main`) in-process and checks what the user sees — the exit code, exactly one `error:` line
and no traceback — and that nothing was left behind: no FINISHED run, no model, no record, no report.

One table per class of the issue: a diverged training, the model's own limits, one line from every command,
data checked where it enters, nothing half-written."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from transformers import AutoTokenizer

import parabench
from parabench.cli import main
from parabench.common.files import sha256_file
from parabench.config import PARAMS_ENV, ParabenchError, Params, RunOptions, load_params
from parabench.data.prepare import load_frames
from parabench.data.validate import require_validated
from parabench.models.inference import Predictions, truncated_pairs
from parabench.models.zoo import get_spec, resolve_weights
from parabench.serving.pyfunc import INPUT_EXAMPLE, SIGNATURE, ParaphraseModel, check_pairs
from parabench.tracking import client as tracking
from parabench.training import run as run_module
from parabench.training import teacher as teacher_module
from parabench.training.engine import require_finite
from parabench.training.plan import plan_run
from parabench.training.teacher import LOGIT_COLUMN, teacher_files

TINY = ("--epochs", "1", "--max-train-samples", "32", "--max-eval-samples", "32")
FAST_S = 10  # a refusal that reads nothing large and contacts nothing comes well within this
LONG = "word " * 780  # 3,900 characters: within serve.max_sentence_chars (4,000), ~780 tokens
Outcome = tuple[int, str, str]


# ------------------------------------------------------------------------------------------------ helpers


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def runs_in(uri: str) -> list[mlflow.entities.Run]:
    """Every run of a store (none when the store was never created)."""
    path = Path(uri.removeprefix("sqlite:///"))
    if uri.startswith("sqlite:///") and not path.exists():
        return []
    client = MlflowClient(tracking_uri=uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def one_error_line(outcome: Outcome, code: int, text: str) -> str:
    """The exit code, exactly one `error:` line containing `text`, and no traceback anywhere."""
    got, out, err = outcome
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert got == code, err
    assert len(lines) == 1, err
    assert "Traceback" not in err + out, err
    assert text in lines[0], lines[0]
    return lines[0]


def no_finished_run(uri: str) -> None:
    assert not [run for run in runs_in(uri) if run.info.status == "FINISHED"]


def edit_params(params: Params, change: Callable[[dict], None]) -> None:
    params_file = params.root / "params.yaml"
    raw = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    change(raw)
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> Outcome:
    """`parabench ARGS` as the console script runs it: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["parabench", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


@pytest.fixture
def project(validated_copy: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Params:
    """A validated copy of the project with its own (not yet created) SQLite store; the cwd is tmp_path."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store.db'}")
    monkeypatch.chdir(tmp_path)
    return validated_copy


@pytest.fixture
def user(
    project: Params, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Outcome]:
    return lambda *args: run_cli(capsys, monkeypatch, *args)


@pytest.fixture
def store(project: Params) -> str:
    return os.environ["MLFLOW_TRACKING_URI"]


@pytest.fixture(scope="module")
def trained(validated_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A project with two FINISHED runs: tiny-bert at --max-length 512 (its most) and tiny-electra at 5 (its
    fewest). Read-only: the cases on it must write nothing, which is what they check."""
    folder = Path(shutil.copytree(validated_project, tmp_path_factory.mktemp("trained") / "project"))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PARAMS_ENV, str(folder / "params.yaml"))
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        params = load_params(folder / "params.yaml")
        run_ids = {}
        for model, max_length in (("tiny-bert", 512), ("tiny-electra", 5)):
            options = RunOptions(epochs=1, max_train_samples=32, max_eval_samples=32, max_length=max_length)
            plan = plan_run(params, options, require_validated(params), model=model)
            run_ids[model] = run_module.train_and_track(params, plan, log=lambda _: None).run_id
        yield SimpleNamespace(params=params, uri=uri, runs=run_ids, folder=folder)


@pytest.fixture
def on_trained(
    trained: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[..., Outcome]:
    """`parabench ARGS` against the trained project (cwd: a fresh tmp_path)."""
    monkeypatch.setenv(PARAMS_ENV, str(trained.folder / "params.yaml"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.uri)
    monkeypatch.chdir(tmp_path)
    return lambda capsys, *args: run_cli(capsys, monkeypatch, *args)


def trained_state(trained: SimpleNamespace) -> tuple[Any, ...]:
    """What a refused command on the trained project must leave as it was: its runs and its output files."""
    runs = sorted((run.info.run_id, run.info.status) for run in runs_in(trained.uri))
    params = trained.params
    outputs = [
        params.path(params.bench.output),
        params.path(params.distill.dir),
        params.path(params.loadtest.report_file),
    ]
    return runs, [path.exists() for path in outputs]


# ------------------------------------------------------------------------ 1. divergence fails the run

DIVERGING = [
    # (model, extra options): an absurd learning rate turns the loss into NaN within the first epoch
    ("tiny-bert", ("--learning-rate", "1e6", "--batch-size", "8")),
    ("tiny-distilbert", ("--learning-rate", "1e8", "--batch-size", "8", "--max-grad-norm", "1000")),
]


@pytest.mark.parametrize(("model", "options"), DIVERGING, ids=[row[0] for row in DIVERGING])
def test_a_diverged_training_ends_failed_in_one_line_with_nothing_promotable(
    user: Callable[..., Outcome], store: str, project: Params, model: str, options: tuple[str, ...]
) -> None:
    line = one_error_line(user("train", "--model", model, *TINY, *options), 1, "training diverged at epoch 1")
    assert "step" in line and "lower the learning rate" in line
    [run] = runs_in(store)
    assert run.info.status == "FAILED"
    client = MlflowClient(tracking_uri=store)
    assert "model" not in {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert "result_record" not in run.data.tags
    assert not list(project.path(project.results.dir).glob("*.json"))
    assert not (project.path(project.train.reports_dir) / "metrics.json").exists()


def test_an_infinite_gradient_norm_stops_training_naming_it(
    user: Callable[..., Outcome], store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from accelerate import Accelerator

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", lambda *_, **__: torch.tensor(float("inf")))
    one_error_line(user("train", "--model", "tiny-bert", *TINY), 1, "step 1: the gradient norm is inf")
    assert [run.info.status for run in runs_in(store)] == ["FAILED"]


def scheduled_optimizer() -> SimpleNamespace:
    """An optimizer whose schedule started at a peak of 1e-4 and is at 5e-5 now."""
    return SimpleNamespace(param_groups=[{"lr": 5e-5, "initial_lr": 1e-4}])


FINITENESS = [
    # (losses of the step's micro-batches, gradient norm, fp16 scaler, what the refusal names or None)
    ([0.7], 1.0, None, None),
    ([0.7, float("nan")], 1.0, None, "the loss is nan"),
    ([float("inf")], 1.0, None, "the loss is inf"),
    ([0.7], float("nan"), None, "the gradient norm is nan"),
    ([0.7], float("inf"), object(), None),  # fp16: the scaler skips an overflowing step itself
    ([float("nan")], float("inf"), object(), "the loss is nan"),
    ([0.7], None, None, None),
]


@pytest.mark.parametrize(("losses", "norm", "scaler", "named"), FINITENESS)
def test_require_finite_names_epoch_step_and_a_lower_learning_rate(
    losses: list[float], norm: float | None, scaler: object, named: str | None
) -> None:
    accelerator = SimpleNamespace(scaler=scaler, num_processes=1)
    if named is None:
        require_finite(accelerator, scheduled_optimizer(), losses, norm, 3, 7)
        return
    with pytest.raises(ParabenchError, match="training diverged at epoch 3, step 7") as caught:
        require_finite(accelerator, scheduled_optimizer(), losses, norm, 3, 7)
    assert named in str(caught.value) and "now 0.0001" in str(caught.value)


def finished_nan_run(uri: str, model: str, data_version: str) -> str:
    """A FINISHED run whose loss became NaN, as runs were recorded before divergence failed them."""
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("parabench") or client.get_experiment(
        client.create_experiment("parabench")
    )
    tags = {"model": model, "seed": "1", "data_version": data_version, "recipe_fingerprint": "x"}
    run_id = client.create_run(experiment.experiment_id, tags=tags).info.run_id
    for name, value in {
        "train_loss": float("nan"),
        "final_validation_accuracy": 0.9,
        "test_accuracy": 0.9,
    }.items():
        client.log_metric(run_id, name, value)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def test_a_finished_run_with_nan_metrics_is_never_a_teacher_a_seed_or_a_benchmark(
    user: Callable[..., Outcome], store: str, project: Params
) -> None:
    run_id = finished_nan_run(store, "tiny-bert", require_validated(project))
    one_error_line(user("teacher", "--model", "tiny-bert"), 1, "has no FINISHED training run")
    one_error_line(user("teacher", "--model", "tiny-bert", "--run-id", run_id), 1, "not finite")
    one_error_line(user("bench", "--model", "tiny-bert", "--run-id", run_id), 1, "not finite")
    mlflow.set_tracking_uri(store)
    experiment_id = MlflowClient().get_experiment_by_name("parabench").experiment_id
    assert tracking.seed_runs(experiment_id, {"model": "tiny-bert"}) == {}
    assert not project.path(project.distill.dir).exists()
    assert not project.path(project.bench.output).exists()


TEACHER_CACHES = [
    # (the cached logits of every pair but the first, that of the first): any non-finite one is refused
    (float("nan"), 0.5),
    (float("inf"), 0.5),
    (0.5, -float("inf")),
]


@pytest.mark.parametrize(("rest", "first"), TEACHER_CACHES, ids=["nan", "inf", "-inf"])
def test_a_teacher_cache_with_non_finite_logits_is_refused_when_read(
    user: Callable[..., Outcome], store: str, project: Params, rest: float, first: float
) -> None:
    train = load_frames(project.path(project.data.processed_dir))["train"]
    logits = np.full(len(train), rest)
    logits[0] = first
    logits_file, description_file = teacher_files(project, "tiny-bert")
    logits_file.parent.mkdir(parents=True)
    pd.DataFrame({"idx": train["idx"], LOGIT_COLUMN: logits}).to_parquet(logits_file, index=False)
    description_file.write_text(json.dumps({"data_version": require_validated(project)}), encoding="utf-8")
    distill = ("--teacher", "tiny-bert", "--distill-temperature", "2", "--distill-weight", "0.5")
    outcome = user("train", "--model", "tiny-distilbert", "--max-train-samples", "3668", *distill)
    one_error_line(outcome, 1, "logits that are not finite")
    assert runs_in(store) == []


def test_a_teacher_whose_model_answers_nan_writes_no_cache(
    trained: SimpleNamespace,
    on_trained: Callable[..., Outcome],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = trained_state(trained)
    monkeypatch.setattr(
        teacher_module, "predict", lambda _, split, *__, **___: Predictions(np.full(len(split), np.nan), 1.0)
    )
    outcome = on_trained(capsys, "teacher", "--model", "tiny-bert")
    one_error_line(outcome, 1, "gives no probability (NaN) for 3,668 of 3,668 pairs")
    assert trained_state(trained) == before


# -------------------------------------------------------------------- 2. the model's own limits, enforced

LIMITS = [
    # (arguments, exit code, text of the one line)
    (["train", "--model", "tiny-bert", "--max-length", "100000", *TINY], 2, "tiny-bert takes 5..512 tokens"),
    (["train", "--model", "tiny-bert", "--max-length", "513", *TINY], 2, "tiny-bert takes 5..512 tokens"),
    (["train", "--model", "tiny-bert", "--max-length", "4", *TINY], 2, "at least its 3 special tokens"),
    (["train", "--model", "tiny-roberta", "--max-length", "514", *TINY], 2, "tiny-roberta takes 5..512"),
    (["train", "--model", "tiny-mpnet", "--max-length", "513", *TINY], 2, "tiny-mpnet takes 5..512"),
    (["train", "--model", "tiny-bert+cosine", "--max-length", "1000"], 2, "tiny-bert+cosine takes 5..512"),
    (["sweep", "--models", "tiny-bert", "--seeds", "1", "--max-length", "600", *TINY], 2, "takes 5..512"),
    (["train", "--epochs", "10000000000"], 2, "--epochs 10,000,000,000 is above the limit of 1,000"),
    (["train", "--max-train-samples", "999999999999"], 2, "limits.samples"),
    (["train", "--max-eval-samples", "5000000"], 2, "limits.samples"),
    (["train", "--batch-size", "100000000"], 2, "--batch-size 100,000,000 is above"),
    (["train", "--checkpoint-every-steps", "10000000"], 2, "limits.optimizer_steps"),
    (["train", "--gradient-accumulation-steps", "99999999"], 2, "limits.optimizer_steps"),
    (["sweep", "--models", "tiny-bert", "--epochs", "5000"], 2, "--epochs 5,000 is above"),
    (["tune", "--trials", "1000000"], 2, "--trials 1,000,000 is above the limit of 1,000"),
    (["tune", "--max-epochs", "100000"], 2, "--max-epochs 100,000 is above"),
    (["gpu-check", "--epochs", "100000"], 2, "--epochs 100,000 is above the limit of 1,000"),
    (["predict", "", ""], 1, "sentence1 in row 0 is empty"),
    (["predict", "A cat.", " \t "], 1, "sentence2 in row 0 is empty"),
    (["predict", "\n", "A dog."], 1, "sentence1 in row 0 is empty (or only whitespace)"),
]


@pytest.mark.parametrize(("args", "code", "text"), LIMITS, ids=[" ".join(row[0])[:60] for row in LIMITS])
def test_a_value_beyond_the_models_limits_is_one_line_before_any_run(
    user: Callable[..., Outcome], store: str, args: list[str], code: int, text: str
) -> None:
    started = time.monotonic()
    one_error_line(user(*args), code, text)
    assert runs_in(store) == [], "a refused command created a run"
    assert time.monotonic() - started < FAST_S * 3


def test_a_limit_in_params_yaml_is_named_there(user: Callable[..., Outcome], project: Params) -> None:
    edit_params(project, lambda raw: raw["recipes"]["tuned"].update(epochs=100000))
    one_error_line(user("train"), 2, "epochs 100,000 is above the limit of 1,000 (params.yaml limits.epochs")


def test_a_csv_with_a_blank_sentence_is_refused_naming_the_row(
    user: Callable[..., Outcome], tmp_path: Path
) -> None:
    pairs = pd.DataFrame({"sentence1": ["A cat.", "A dog.", "  "], "sentence2": ["A cat!", "Dogs.", "x"]})
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    one_error_line(user("predict", "--input", str(tmp_path / "pairs.csv")), 1, "sentence1 in row 2 is empty")


BLANK_REQUESTS = [
    # (rows of a request, the row and column the 400 names)
    ([("", "A dog.")], "sentence1 in row 0"),
    ([("A cat.", "A dog."), ("A cat.", "   ")], "sentence2 in row 1"),
    ([("A cat.", "A dog."), ("\t\n", "x"), (" ", " ")], "sentence1 in row 1 is empty"),
]


@pytest.mark.parametrize(("rows", "named"), BLANK_REQUESTS)
def test_the_served_model_answers_a_blank_sentence_with_a_400_naming_the_row(
    trained: SimpleNamespace, rows: list[tuple[str, str]], named: str
) -> None:
    frame = pd.DataFrame(rows, columns=["sentence1", "sentence2"])
    with pytest.raises(MlflowException) as caught:
        check_pairs(frame)
    assert named in caught.value.message and caught.value.get_http_status_code() == 400
    mlflow.set_tracking_uri(trained.uri)
    served = mlflow.pyfunc.load_model(f"runs:/{trained.runs['tiny-bert']}/model")
    with pytest.raises(MlflowException, match=named):
        served.predict(frame)


@pytest.mark.parametrize(("model", "max_length"), [("tiny-bert", 512), ("tiny-electra", 5)])
def test_a_model_trained_at_an_accepted_max_length_serves_every_request_within_the_limits(
    trained: SimpleNamespace,
    on_trained: Callable[..., Outcome],
    capsys: pytest.CaptureFixture[str],
    model: str,
    max_length: int,
) -> None:
    uri = f"runs:/{trained.runs[model]}/model"
    code, out, err = on_trained(capsys, "predict", "--model", uri, LONG, LONG + "and more.")
    assert code == 0 and "Traceback" not in err, err
    assert pd.read_csv(io.StringIO(out))["label"].isin([0, 1]).all()
    mlflow.set_tracking_uri(trained.uri)
    config = mlflow.models.get_model_info(uri).flavors["python_function"]["config"]
    assert config["max_length"] == max_length  # the length it was trained with, which it truncates to
    tokenizer = AutoTokenizer.from_pretrained(resolve_weights(get_spec(model), trained.params))
    assert len(tokenizer(LONG, LONG, truncation=True, max_length=max_length)["input_ids"]) == max_length


@pytest.mark.parametrize("max_length", [5, 7, 64, 512])
@pytest.mark.parametrize("model", ["tiny-bert", "tiny-roberta"])
def test_pairs_truncate_as_the_tokenizer_does_in_time_linear_in_the_text(
    trained: SimpleNamespace, processed_dir: Path, model: str, max_length: int
) -> None:
    """A request within the limits (25 pairs of two 3,900-character sentences fill serve.max_request_chars)
    is tokenized in well under a second at any accepted length, to the ids the tokenizer's own pair
    truncation gives (which at a small length takes seconds per pair)."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_weights(get_spec(model), trained.params))
    frame = load_frames(processed_dir)["validation"].head(64)
    # long enough to be cut, short enough for the tokenizer's own (quadratic) truncation to check against
    first = [*frame["sentence1"], "word " * 150, "a b", "word " * 90]
    second = [*frame["sentence2"], "text " * 120, "c " * 150, "text " * 90]
    expected = tokenizer(first, second, truncation=True, max_length=max_length)
    assert truncated_pairs(tokenizer, first, second, max_length) == (
        expected["input_ids"],
        expected.get("token_type_ids"),
    )
    started = time.monotonic()
    truncated_pairs(tokenizer, [LONG] * 25, [LONG + "and more."] * 25, max_length)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("logged_length", [100_000, 1])
def test_a_version_logged_with_a_length_beyond_the_model_still_serves_long_pairs(
    trained: SimpleNamespace,
    on_trained: Callable[..., Outcome],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    logged_length: int,
) -> None:
    """Versions logged before lengths were checked carry any max_length: serving fits it to the model."""
    mlflow.set_tracking_uri(trained.uri)
    weights = tracking.model_folder(trained.runs["tiny-bert"], tmp_path / "download")
    saved = tmp_path / "legacy"
    mlflow.pyfunc.save_model(
        str(saved),
        python_model=ParaphraseModel(logged_length, 8, "fp32"),
        artifacts={"weights": str(weights)},
        signature=SIGNATURE,
        input_example=INPUT_EXAMPLE,
        code_paths=[str(Path(parabench.__file__).parent)],
        pip_requirements=[],  # nothing to infer: it is served here
    )
    code, out, err = on_trained(capsys, "predict", "--model", str(saved), LONG, LONG)
    assert code == 0 and "Traceback" not in err, err
    assert len(pd.read_csv(io.StringIO(out))) == 1


# ------------------------------------------------------------------- 3. every command answers in one line


@contextlib.contextmanager
def listening_port() -> Iterator[int]:
    """A port of 127.0.0.1 that another socket listens on while inside."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


SERVE = [
    # (arguments, given a port nobody listens on as {free} and one in use as {taken}), exit code, text
    (["serve", "--port", "70000"], 2, "'--port'"),
    (["serve", "--port", "0"], 2, "'--port'"),
    (["serve", "--port", "-5"], 2, "'--port'"),
    (["serve", "--port", "eighty"], 2, "'--port'"),
    (["serve", "--port", "{taken}"], 1, "is in use by another process"),
    (["serve", "--port", "{free}", "--host", "no.such.host.invalid"], 2, "--host 'no.such.host.invalid'"),
    (["serve", "--port", "{free}", "--host", ""], 2, "--host"),
    (["serve", "--port", "{free}", "--host", "192.0.2.1"], 2, "--host 192.0.2.1: cannot listen there"),
    (
        ["serve", "--port", "{free}", "--model", "models:/nonexistent@champion"],
        1,
        "cannot load models:/nonex",
    ),
    (["serve", "--port", "{free}", "--model", "runs:/0123456789abcdef/model"], 1, "cannot load runs:/"),
    (["serve", "--port", "{free}", "--model", "/no/such/folder"], 1, "cannot load /no/such/folder"),
    (["serve", "--port", "{free}"], 1, "cannot load models:/parabench-small@champion"),
]


@pytest.mark.parametrize(("args", "code", "text"), SERVE, ids=[" ".join(row[0]) for row in SERVE])
def test_serve_answers_a_mistake_in_one_line(
    user: Callable[..., Outcome], store: str, args: list[str], code: int, text: str
) -> None:
    with listening_port() as taken:
        filled = [arg.format(free=free_port(), taken=taken) for arg in args]
        one_error_line(user(*filled), code, text)
    no_finished_run(store)


LOADTEST = [
    (["loadtest", "--requests", "-1"], 2, "--requests -1: give 1..100,000"),
    (["loadtest", "--requests", "0"], 2, "--requests 0: give 1..100,000"),
    (["loadtest", "--requests", "1000000"], 2, "--requests 1,000,000"),
    (["loadtest", "--requests", "many"], 2, "'--requests'"),
    (["loadtest", "--concurrency", "0"], 2, "--concurrency 0"),
    (["loadtest", "--concurrency", "1000"], 2, "--concurrency 1,000: give 1..64"),
    (["loadtest", "--url", "localhost:5001"], 2, "is not a server address"),
    (["loadtest", "--url", "ftp://127.0.0.1:21"], 2, "is not a server address"),
    (["loadtest", "--url", "http://127.0.0.1:99999"], 2, "Port out of range"),
    (["loadtest", "--url", "http://example.com:5001"], 1, "only targets localhost"),
    (["loadtest", "--url", "http://127.0.0.1:{free}"], 1, "no scoring server answers"),
    (["loadtest", "--url", "http://127.0.0.1:{free}", "--model", "runs:/x/model"], 2, "not both"),
    (["loadtest", "--model", "models:/nonexistent@champion"], 1, "cannot load models:/nonexistent@champion"),
]


@pytest.mark.parametrize(("args", "code", "text"), LOADTEST, ids=[" ".join(row[0]) for row in LOADTEST])
def test_loadtest_answers_a_mistake_in_one_line_and_writes_nothing(
    user: Callable[..., Outcome], project: Params, args: list[str], code: int, text: str
) -> None:
    report = project.path(project.loadtest.report_file)
    one_error_line(user(*[arg.format(free=free_port()) for arg in args]), code, text)
    assert not report.parent.exists() or not any(report.parent.glob("loadtest*")), (
        "the load test wrote a file"
    )


TRAINED_PROJECT = [
    # (arguments with {bert} and {electra} for the two runs' ids, exit code, text)
    (
        ["bench", "--model", "tiny-bert", "--run-id", "{electra}"],
        1,
        "is a run of tiny-electra, not of tiny-bert",
    ),
    (["bench", "--model", "tiny-electra", "--run-id", "nonexistent"], 1, "--run-id nonexistent: no such run"),
    (["bench", "--model", "tiny-bert+cosine"], 2, "is a frozen-encoder baseline"),
    (["bench", "--model", "tiny-bert+ensemble"], 2, "is a seed ensemble"),
    (["teacher", "--model", "tiny-bert+cosine"], 2, "it has no logits to distil from"),
    (["teacher", "--model", "tiny-bert+ensemble"], 2, "it has no logits to distil from"),
    (["teacher", "--model", "tiny-bert", "--run-id", "{electra}"], 1, "is a run of tiny-electra"),
    (["teacher", "--model", "tiny-bert", "--run-id", "nonexistent"], 1, "no such run"),
    (["teacher", "--model", "no-such-model"], 1, "unknown model 'no-such-model'"),
    (["predict", "--model", "runs:/{bert}/nowhere", "a", "b"], 1, "cannot load runs:/"),
    (["promote", "--models", "tiny-bert"], 1, "no FINISHED sweep runs with weights of tiny-bert"),
    (["report", "--data-version", "nope"], 1, "no result records"),
    (["report", "--models", "nope"], 1, "unknown model 'nope'"),
]


@pytest.mark.parametrize(
    ("args", "code", "text"), TRAINED_PROJECT, ids=[" ".join(row[0]) for row in TRAINED_PROJECT]
)
def test_bench_teacher_predict_report_promote_answer_in_one_line_and_write_nothing(
    trained: SimpleNamespace,
    on_trained: Callable[..., Outcome],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    code: int,
    text: str,
) -> None:
    before = trained_state(trained)
    filled = [
        arg.format(bert=trained.runs["tiny-bert"], electra=trained.runs["tiny-electra"]) for arg in args
    ]
    one_error_line(on_trained(capsys, *filled), code, text)
    assert trained_state(trained) == before


def test_teacher_and_bench_refuse_a_run_that_did_not_finish(
    user: Callable[..., Outcome], store: str, project: Params
) -> None:
    outcome = user("train", "--model", "tiny-bert", *TINY, "--learning-rate", "1e6", "--batch-size", "8")
    one_error_line(outcome, 1, "training diverged")
    [failed] = runs_in(store)
    for command in ("teacher", "bench"):
        run_id = failed.info.run_id
        one_error_line(
            user(command, "--model", "tiny-bert", "--run-id", run_id), 1, "did not finish (it is FAILED)"
        )
    assert [run.info.status for run in runs_in(store)] == ["FAILED"]


def closed_port_uri(scheme: str) -> str:
    return f"{scheme}127.0.0.1:{free_port()}" + ("/db" if scheme.startswith("postgresql") else "")


TRACKING_URIS = [
    # (MLFLOW_TRACKING_URI, made from tmp_path, text of the one line)
    (lambda tmp: "garbage://x", "unsupported URI 'garbage://x'"),
    (lambda tmp: f"sqlite:///{tmp / 'notes.txt'}", "is not an SQLite database"),
    (lambda tmp: f"sqlite:///{tmp}", "is a folder, not an SQLite database file"),
    (lambda tmp: f"sqlite:///{tmp / 'notes.txt' / 'mlflow.db'}", "is a file, not a folder"),
    (lambda tmp: closed_port_uri("postgresql://user@"), "does not answer"),
    (lambda tmp: closed_port_uri("mysql://user@"), "does not answer"),
    (lambda tmp: closed_port_uri("http://"), "tracking server http://127.0.0.1:"),
    (lambda tmp: "postgresql://user@no.such.host.invalid/db", "does not answer"),
]
STORE_COMMANDS = [
    ["train", "--model", "tiny-bert", *TINY],
    ["report"],
    ["promote"],
    ["results", "import"],
    ["teacher", "--model", "tiny-bert"],
    ["predict", "--model", "models:/parabench-small@champion", "a", "b"],
]


@pytest.mark.parametrize(("make_uri", "text"), TRACKING_URIS, ids=[row[1][:30] for row in TRACKING_URIS])
def test_a_bad_tracking_uri_is_one_line_naming_it_within_seconds(
    user: Callable[..., Outcome],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_uri: Callable[[Path], str],
    text: str,
) -> None:
    (tmp_path / "notes.txt").write_text("not a database, just notes\n" * 10, encoding="utf-8")
    uri = make_uri(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for command in STORE_COMMANDS:
        started = time.monotonic()
        line = one_error_line(user(*command), 1, text)
        assert "MLFLOW_TRACKING_URI" in line
        assert time.monotonic() - started < FAST_S, command
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8").startswith("not a database")


SERVER = [
    (["server", "start", "--database-url", "garbage"], 2, "is not a PostgreSQL URL"),
    (["server", "start", "--database-url", "mysql://u@127.0.0.1/db"], 2, "is not a PostgreSQL URL"),
    (
        ["server", "start", "--database-url", "postgresql+psycopg://u@127.0.0.1:{free}/db"],
        1,
        "does not answer",
    ),
]


@pytest.mark.parametrize(("args", "code", "text"), SERVER, ids=[" ".join(row[0])[:50] for row in SERVER])
def test_server_answers_a_mistake_in_one_line(
    user: Callable[..., Outcome], project: Params, args: list[str], code: int, text: str
) -> None:
    one_error_line(user(*[arg.format(free=free_port()) for arg in args]), code, text)
    assert not project.path(project.tracking_server.dir).exists()


@pytest.mark.parametrize("state", ["{broken", "[]", '{"tracking_uri": "http://127.0.0.1:1"}'])
@pytest.mark.parametrize("command", ["stop", "status", "start"])
def test_a_damaged_server_state_file_is_one_line_naming_it(
    user: Callable[..., Outcome], project: Params, state: str, command: str
) -> None:
    state_file = project.path(project.tracking_server.dir) / "server.json"
    state_file.parent.mkdir(parents=True)
    state_file.write_text(state, encoding="utf-8")
    one_error_line(user("server", command), 1, "server.json is not what `parabench server start` wrote")
    assert state_file.read_text(encoding="utf-8") == state


# ----------------------------------------------------------------------- 4. data is checked where it enters


def edit_line(data: bytes, number: int, change: Callable[[bytes], bytes]) -> bytes:
    lines = data.split(b"\n")
    lines[number - 1] = change(lines[number - 1])
    return b"\n".join(lines)


def flip_label(line: bytes) -> bytes:
    return (b"0" if line[:1] == b"1" else b"1") + line[1:]


TRAIN_FILE, TEST_FILE, DEV_IDS = "msr_paraphrase_train.txt", "msr_paraphrase_test.txt", "mrpc_dev_ids.tsv"
RAW_EDITS = [
    # (raw file, how it is changed, the raw file the count refusal names once params.yaml's sums match it)
    ("flipped label", TRAIN_FILE, lambda data: edit_line(data, 6, flip_label), TRAIN_FILE),
    ("flipped test label", TEST_FILE, lambda data: edit_line(data, 2, flip_label), TEST_FILE),
    (
        "extra line",
        TEST_FILE,
        lambda data: data.rstrip() + b"\n1\t1\t2\tOne more.\tOne more line.\n",
        TEST_FILE,
    ),
    ("lines missing", TRAIN_FILE, lambda data: b"\n".join(data.split(b"\n")[:-3]) + b"\n", TRAIN_FILE),
    ("a dev id missing", DEV_IDS, lambda data: b"\n".join(data.split(b"\n")[1:]), DEV_IDS),
]


@pytest.mark.parametrize(("name", "edit", "named"), [r[1:] for r in RAW_EDITS], ids=[r[0] for r in RAW_EDITS])
def test_prepare_and_validate_refuse_raw_files_that_are_not_mrpc(
    user: Callable[..., Outcome], project: Params, name: str, edit: Callable[[bytes], bytes], named: str
) -> None:
    raw = project.path(project.data.raw_dir) / name
    raw.write_bytes(edit(raw.read_bytes()))
    processed = project.path(project.data.processed_dir)
    result_file = project.path(project.validate.result_file)
    before = {path.name: path.read_bytes() for path in [*processed.iterdir(), result_file]}
    for command in (["data", "prepare"], ["data", "validate"]):
        one_error_line(user(*command), 1, f"data/raw/{name} does not match its SHA-256")
    assert {path.name: path.read_bytes() for path in [*processed.iterdir(), result_file]} == before
    edit_params(project, lambda params: params["data"]["sha256"].update({name: sha256_file(raw)}))
    line = one_error_line(user("data", "prepare"), 1, "GLUE's MRPC has")
    assert named in line
    assert {path.name: path.read_bytes() for path in [*processed.iterdir(), result_file]} == before


def test_validate_checks_the_exact_label_totals(user: Callable[..., Outcome], project: Params) -> None:
    processed = project.path(project.data.processed_dir)
    frame = pd.read_parquet(processed / "test.parquet")
    frame.loc[0, "label"] = 1 - frame.loc[0, "label"]
    frame.to_parquet(processed / "test.parquet", index=False)
    code, _, err = user("data", "validate")
    assert code == 1 and "Traceback" not in err
    assert "test: expect_column_sum_to_be_between(label)" in err


# --------------------------------------------------------------------------------- 5. nothing half-written


def block(path: Path) -> None:
    """Make a file stand where a folder must be, so nothing can be written below it."""
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("a file where a folder should be\n", encoding="utf-8")


def occupy(path: Path) -> None:
    """Make a folder stand where a file must be written."""
    path.mkdir(parents=True)


BLOCKED = [
    # (name, arguments, the output (params.yaml) made unwritable, how)
    ("train reports", ["train", "--model", "tiny-bert", *TINY], lambda p: p.path(p.train.reports_dir), block),
    ("train record", ["train", "--model", "tiny-bert", *TINY], lambda p: p.path(p.results.dir), block),
    (
        "sweep record",
        ["sweep", "--models", "tiny-bert", "--seeds", "1", *TINY],
        lambda p: p.path(p.results.dir),
        block,
    ),
    (
        "sweep summary",
        ["sweep", "--models", "tiny-bert", *TINY],
        lambda p: p.path(p.sweep.summary_file),
        occupy,
    ),
    ("report plots", ["report"], lambda p: p.path(p.report.plots_dir), block),
    ("report table", ["report"], lambda p: p.path(p.report.results_md), occupy),
    ("promote state", ["promote"], lambda p: p.path(p.promote.state_file), occupy),
    ("bench output", ["bench", "--model", "tiny-bert"], lambda p: p.path(p.bench.output), occupy),
    ("teacher cache", ["teacher", "--model", "tiny-bert"], lambda p: p.path(p.distill.dir), block),
    (
        "loadtest report",
        ["loadtest", "--url", "http://127.0.0.1:1"],
        lambda p: p.path(p.loadtest.report_file).parent,
        block,
    ),
]


@pytest.mark.parametrize(("args", "output", "spoil"), [r[1:] for r in BLOCKED], ids=[r[0] for r in BLOCKED])
def test_an_output_that_cannot_be_written_is_refused_before_any_run(
    user: Callable[..., Outcome],
    store: str,
    project: Params,
    args: list[str],
    output: Callable,
    spoil: Callable,
) -> None:
    spoil(output(project))
    one_error_line(user(*args), 1, "cannot write")
    assert runs_in(store) == []


def test_a_record_that_fails_to_write_after_the_run_leaves_it_failed(
    user: Callable[..., Outcome], store: str, project: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*_: object) -> None:
        raise OSError(28, "No space left on device", "results/record.json")

    monkeypatch.setattr(run_module, "save_record", disk_full)
    one_error_line(user("train", "--model", "tiny-bert", *TINY), 1, "No space left on device")
    [run] = runs_in(store)
    assert run.info.status == "FAILED" and "No space left" in run.data.tags[tracking.FAILED_AFTER_TAG]
    assert not (project.path(project.train.reports_dir) / "metrics.json").exists()


def sparse(path: Path, size: int = 1 << 30) -> Path:
    """A file of `size` bytes that takes no disk space: reading it whole would take seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.truncate(size)
    return path


LARGE_INPUTS = [
    # (arguments (a 1 GiB file as {big}), where the file goes, text of the one line)
    (["predict", "--input", "{big}"], lambda p, tmp: tmp / "pairs.csv", "over the limit of 803,072"),
    (["data", "prepare"], lambda p, tmp: p.path(p.data.raw_dir) / TEST_FILE, "over the limit of 33,554,432"),
    (
        ["data", "fetch", "--source", "{folder}"],
        lambda p, tmp: tmp / "src" / TRAIN_FILE,
        "more than 33,554,432",
    ),
]


@pytest.mark.parametrize(
    ("args", "where", "text"), LARGE_INPUTS, ids=[" ".join(r[0][:2]) for r in LARGE_INPUTS]
)
def test_a_huge_input_file_is_refused_before_it_is_read_whole(
    user: Callable[..., Outcome], project: Params, tmp_path: Path, args: list[str], where: Callable, text: str
) -> None:
    big = sparse(where(project, tmp_path))
    raw_before = {path.name: path.stat().st_size for path in project.path(project.data.raw_dir).iterdir()}
    started = time.monotonic()
    one_error_line(user(*[arg.format(big=big, folder=big.parent) for arg in args]), 1, text)
    assert time.monotonic() - started < FAST_S
    assert {
        path.name: path.stat().st_size for path in project.path(project.data.raw_dir).iterdir()
    } == raw_before


def test_a_huge_params_file_is_refused_before_it_is_read(
    user: Callable[..., Outcome], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PARAMS_ENV, str(sparse(tmp_path / "huge" / "params.yaml")))
    started = time.monotonic()
    one_error_line(user("train"), 2, "has 1,073,741,824 bytes: not a params.yaml")
    assert time.monotonic() - started < FAST_S


def test_a_huge_split_is_a_failure_line_of_validate(user: Callable[..., Outcome], project: Params) -> None:
    sparse(project.path(project.data.processed_dir) / "validation.parquet")
    code, _, err = user("data", "validate")
    assert code == 1 and "Traceback" not in err
    assert "validation: cannot read" in err and "over the limit of 33,554,432" in err


def test_an_unexpected_error_is_one_line_not_a_traceback(
    user: Callable[..., Outcome], monkeypatch: pytest.MonkeyPatch
) -> None:
    from parabench.models import zoo

    def broken(*_: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(zoo, "format_table", broken)
    line = one_error_line(user("models"), 1, "unexpected KeyError")
    assert "PARABENCH_DEBUG=1" in line
