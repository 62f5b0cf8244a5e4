"""Bad input on every command, as a user types it: one line on stderr naming the option or key, exit 2 for a
value the user gave (1 for a failure past the checks), no traceback, and nothing in the tracking store.

Each row runs the real entry point (`parabench.cli.main`) in-process on a validated copy of the project."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from parabench.cli import main
from parabench.config import PARAMS_ENV, Params

BAD_OPTIONS = [
    # (arguments, exit code, text the one line must contain)
    (["train", "--epochs", "-1"], 2, "--epochs = '-1'"),
    (["train", "--epochs", "0"], 2, "--epochs = '0'"),
    (["train", "--epochs", "2.5"], 2, "--epochs = '2.5'"),
    (["train", "--batch-size", "-4"], 2, "--batch-size = '-4'"),
    (["train", "--weight-decay", "-1"], 2, "--weight-decay = '-1'"),
    (["train", "--learning-rate", "inf"], 2, "--learning-rate = 'inf'"),
    (["train", "--learning-rate", "-1"], 2, "--learning-rate = '-1'"),
    (["train", "--learning-rate", "nan"], 2, "--learning-rate = 'nan'"),
    (["train", "--learning-rate", "0"], 2, "--learning-rate = '0'"),
    (["train", "--seed", "-1"], 2, "--seed = '-1'"),
    (["train", "--seed", "4294967296"], 2, "--seed = '4294967296'"),
    (["train", "--seed", "99999999999999999999"], 2, "--seed = '99999999999999999999'"),
    (["train", "--seed", "abc"], 2, "--seed = 'abc'"),
    (["train", "--max-train-samples", "-5"], 2, "--max-train-samples = '-5'"),
    (["train", "--max-train-samples", "0"], 2, "--max-train-samples 0 leaves no pair"),
    (["train", "--max-eval-samples", "-1"], 2, "--max-eval-samples = '-1'"),
    (["train", "--warmup-ratio", "1"], 2, "--warmup-ratio = '1'"),
    (["train", "--warmup-ratio", "-0.1"], 2, "--warmup-ratio = '-0.1'"),
    (["train", "--scheduler", "sideways"], 2, "--scheduler = 'sideways'"),
    (["train", "--max-grad-norm", "0"], 2, "--max-grad-norm = '0'"),
    (["train", "--max-length", "0"], 2, "--max-length = '0'"),
    (["train", "--recipe", "nope"], 2, "unknown recipe 'nope'"),
    (["train", "--model", "no-such-model"], 1, "unknown model 'no-such-model'"),
    (["train", "--epochs"], 2, "--epochs"),
    (["train", "--bogus", "3"], 2, "No such option: --bogus"),
    (["trian"], 2, "No such command 'trian'"),
    (["sweep", "--models", ""], 2, "--models '' names no model"),
    (["sweep", "--models", ","], 2, "--models ',' names no model"),
    (["sweep", "--models", "tiny-bert,,tiny-electra"], 2, "empty name"),
    (["sweep", "--models", "tiny-bert,nope"], 1, "unknown model 'nope'"),
    (["sweep", "--models", "tiny-bert", "--seeds", "abc"], 2, "--seeds must be a count"),
    (["sweep", "--models", "tiny-bert", "--seeds", "0"], 2, "--seeds 0"),
    (["sweep", "--models", "tiny-bert", "--seeds", "-1,"], 2, "seed -1 is outside"),
    (["sweep", "--models", "tiny-bert", "--epochs", "-2"], 2, "--epochs = '-2'"),
    (["sweep", "--models", "tiny-bert", "--engine", "banana"], 2, "--engine 'banana'"),
    (["sweep", "--models", "tiny-bert", "--cpus-per-run", "2"], 2, "are options of --engine ray"),
    (["sweep", "--engine", "ray", "--cpus-per-run", "0"], 2, "--cpus-per-run = '0'"),
    (["sweep", "--engine", "ray", "--gpus-per-run", "-1"], 2, "--gpus-per-run = '-1'"),
    (["sweep", "--engine", "ray", "--max-retries", "-1"], 2, "--max-retries = '-1'"),
    (["sweep", "--engine", "ray", "--start-server", "maybe"], 2, "--start-server = 'maybe'"),
    (["sweep", "--models", "tiny-bert", "--recipe", "tune:tiny-bert"], 2, "no tuned recipe for tiny-bert"),
    (["train", "--recipe", "tune"], 2, "no tuned recipe for all-MiniLM-L6-v2"),
    (["tune", "--trials", "0"], 2, "--trials = '0'"),
    (["tune", "--max-epochs", "x"], 2, "--max-epochs = 'x'"),
    (["tune", "--time-budget-s", "-5"], 2, "--time-budget-s = '-5'"),
    (["tune", "--model", "tiny-bert+cosine"], 2, "frozen-encoder baseline"),
    (["tune", "--model", "nope"], 1, "unknown model 'nope'"),
    (["tune", "--model", "tiny-bert+ensemble"], 2, "is a seed ensemble"),
    (["train", "--teacher", "tiny-bert"], 2, "given together or not at all"),
    (["train", "--distill-weight", "1.5"], 2, "--distill-weight = '1.5'"),
    (["train", "--distill-temperature", "0"], 2, "--distill-temperature = '0'"),
    (
        ["train", "--model", "tiny-distilbert", "--recipe", "distill"],
        1,
        "no cached logits of the teacher all-mpnet-base-v2",
    ),
    (["report", "--models", ""], 2, "--models '' names no model"),
    (["promote", "--models", ","], 2, "--models ',' names no model"),
    (["data", "fetch", "--source", "/nonexistent"], 1, "/nonexistent (from --source) does not exist"),
    (["predict", "only one sentence"], 1, "give exactly two sentences"),
]


def edit_params(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(params_file: Path) -> None:
        raw = yaml.safe_load(params_file.read_text(encoding="utf-8"))
        change(raw)
        params_file.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")

    return apply


BAD_PARAMS = [
    # (how params.yaml is broken, exit code, text the one line must contain)
    (edit_params(lambda raw: raw.update(trian=raw["train"])), 2, "unknown key 'trian'"),
    (edit_params(lambda raw: raw["train"].update(seed="abc")), 2, "train.seed = 'abc'"),
    (edit_params(lambda raw: raw["train"].update(sed=3)), 2, "unknown key 'train.sed'"),
    (edit_params(lambda raw: raw.pop("recipes")), 2, "'recipes' is missing"),
    (
        edit_params(lambda raw: raw["recipes"]["tuned"].update(learning_rate=-1)),
        2,
        "recipes.tuned.learning_rate",
    ),
    (edit_params(lambda raw: raw["train"].update(recipe="absent")), 2, "train.recipe 'absent'"),
    (edit_params(lambda raw: raw["sweep"].update(seeds=[])), 2, "sweep.seeds"),
    (edit_params(lambda raw: raw["validate"]["row_counts"].update(train="many")), 2, "row_counts.train"),
    (edit_params(lambda raw: raw["inference"].update(path="fp8")), 2, "inference.path = 'fp8'"),
    (edit_params(lambda raw: raw["ray"]["cpus_per_run"].pop("large")), 2, "ray.cpus_per_run"),
    (edit_params(lambda raw: raw["tune"]["space"].update(colour=[1])), 2, "'colour' is not a recipe field"),
    (
        edit_params(lambda raw: raw["tune"]["space"].update(learning_rate={"low": 1e-3, "high": 1e-5})),
        2,
        "low must be below high",
    ),
    (
        edit_params(lambda raw: raw["recipes"]["distill"].pop("distill_weight")),
        2,
        "given together or not at all",
    ),
    (lambda params_file: params_file.write_text("train: [1, 2\n", encoding="utf-8"), 2, "is not valid YAML"),
]


@pytest.fixture
def user(validated_copy: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple]:
    """Runs `parabench ARGS` as the console script does; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store.db'}")
    monkeypatch.chdir(tmp_path)

    def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["parabench", *args])
        with pytest.raises(SystemExit) as exited:
            main()
        captured = capsys.readouterr()
        return exited.value.code, captured.out, captured.err

    return run


def assert_one_line(code: int, err: str, expected_code: int, text: str, store: Path) -> None:
    lines = err.strip().splitlines()
    assert code == expected_code, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert text in lines[0], err
    assert not store.exists(), "a rejected command touched the tracking store"


@pytest.mark.parametrize(("args", "code", "text"), BAD_OPTIONS, ids=[" ".join(row[0]) for row in BAD_OPTIONS])
def test_a_bad_option_is_one_line_and_records_nothing(
    user: Callable[..., tuple],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    args: list[str],
    code: int,
    text: str,
) -> None:
    got, _, err = user(capsys, *args)
    assert_one_line(got, err, code, text, tmp_path / "store.db")


@pytest.mark.parametrize(("breakage", "code", "text"), BAD_PARAMS, ids=[row[2] for row in BAD_PARAMS])
def test_a_bad_params_yaml_is_one_line_naming_the_key(
    user: Callable[..., tuple],
    capsys: pytest.CaptureFixture[str],
    validated_copy: Params,
    tmp_path: Path,
    breakage: Callable[[Path], None],
    code: int,
    text: str,
) -> None:
    breakage(validated_copy.root / "params.yaml")
    for command in (["train", "--model", "tiny-bert"], ["sweep"], ["data", "validate"]):
        got, _, err = user(capsys, *command)
        assert_one_line(got, err, code, text, tmp_path / "store.db")


def test_a_missing_params_file_is_one_line(
    user: Callable[..., tuple],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PARAMS_ENV, str(tmp_path / "absent.yaml"))
    got, _, err = user(capsys, "train")
    assert_one_line(got, err, 2, "absent.yaml: no such file", tmp_path / "store.db")


@pytest.mark.parametrize(
    ("config", "text"),
    [
        ("{not json", "is not a readable model config"),
        ('{"model_type": "bert", "hidden_size": "x"}', "cannot load"),
    ],
)
def test_a_broken_model_folder_fails_in_one_line_before_any_run(
    user: Callable[..., tuple], capsys: pytest.CaptureFixture[str], tmp_path: Path, config: str, text: str
) -> None:
    folder = tmp_path / "broken-model"
    folder.mkdir()
    (folder / "config.json").write_text(config, encoding="utf-8")
    (folder / "model.safetensors").write_bytes(b"")
    got, _, err = user(capsys, "train", "--model", str(folder), "--epochs", "1", "--max-train-samples", "8")
    assert_one_line(got, err, 1, text, tmp_path / "store.db")


def test_an_unreachable_tracking_server_is_one_line_before_any_run(
    user: Callable[..., tuple],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    got, _, err = user(capsys, "train", "--model", "tiny-bert", "--epochs", "1", "--max-train-samples", "8")
    assert_one_line(got, err, 1, "tracking server http://127.0.0.1:9 does not answer", tmp_path / "store.db")
