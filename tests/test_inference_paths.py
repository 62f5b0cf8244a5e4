"""Every inference path runs behind the same predict(): the exported runtimes give fp32's probabilities, a
missing runtime falls back to fp32 with one warning line, and `inference.path: auto` runs what the bench of
this CPU class chose (fp32 without one; a damaged bench file is one line)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import copy_project, invoke, project_env

from parabench.common.errors import ConfigError
from parabench.common.hardware import this_cpu
from parabench.common.names import INFERENCE_PATHS
from parabench.config import Params, RunOptions, load_params
from parabench.data.prepare import load_frames
from parabench.models import runtimes
from parabench.models.choice import bench_file, choose_path
from parabench.models.inference import encode_frame, predict, prepare_for_inference
from parabench.models.zoo import get_spec, load_tokenizer_and_model
from parabench.training.plan import plan_run

# Largest difference from fp32's probabilities per path on a random tiny model.
TOLERANCE = {"onnxruntime": 1e-5, "openvino": 1e-4, "bf16": 0.05}


@pytest.fixture(scope="module")
def tiny(validated_params: Params) -> tuple:
    tokenizer, model = load_tokenizer_and_model(get_spec("tiny-bert"), validated_params)
    frame = load_frames(validated_params.path(validated_params.data.processed_dir))["validation"].head(64)
    return tokenizer, model, encode_frame(tokenizer, frame, 128)


def probabilities(model: object, tokenizer: object, split: object) -> np.ndarray:
    return predict(model, split, 16, tokenizer.pad_token_id).probabilities


@pytest.mark.parametrize("path", INFERENCE_PATHS)
def test_every_path_predicts_through_the_same_code_close_to_fp32(tiny: tuple, path: str) -> None:
    tokenizer, model, split = tiny
    fp32 = probabilities(model, tokenizer, split)
    got = probabilities(prepare_for_inference(model, path), tokenizer, split)
    assert got.shape == fp32.shape and np.isfinite(got).all()
    assert np.abs(got - fp32).max() <= TOLERANCE.get(path, 0.05)


def test_a_missing_runtime_falls_back_to_fp32_with_one_warning_line(
    tiny: tuple, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, model, _ = tiny

    def missing(*_: object) -> None:
        raise runtimes.RuntimeMissing("openvino")

    monkeypatch.setattr(runtimes, "openvino_model", missing)
    from parabench.models import inference

    monkeypatch.setitem(inference.EXPORTED, "openvino", (missing, False))
    assert prepare_for_inference(model, "openvino") is model
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("warning: inference path openvino needs openvino")


def write_bench(params: Params, document: dict | str) -> Path:
    file = bench_file(params, this_cpu())
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(document if isinstance(document, str) else json.dumps(document), encoding="utf-8")
    return file


def test_auto_runs_the_bench_choice_of_this_cpu_class_and_logs_why(validated_copy: Params) -> None:
    assert validated_copy.inference.path == "auto"
    path, why = choose_path(validated_copy)
    assert path == "fp32" and "no `parabench bench`" in why
    write_bench(validated_copy, {"auto_path": "onnxruntime", "auto_speedup_over_fp32": 1.7})
    plan = plan_run(validated_copy, RunOptions(), "data", model="tiny-bert")
    assert plan.inference_path == "onnxruntime"
    assert plan.logged_params()["inference_choice"] == f"auto: onnxruntime, 1.70x fp32 on {this_cpu()} " + (
        f"({bench_file(validated_copy, this_cpu()).name})"
    )


def test_a_path_given_in_params_is_run_as_given(validated_project: Path, tmp_path: Path) -> None:
    folder = copy_project(validated_project, tmp_path / "project", inference={"path": "int8_dynamic"})
    assert choose_path(load_params(folder / "params.yaml")) == ("int8_dynamic", "inference.path int8_dynamic")


@pytest.mark.parametrize(
    "content",
    ["{not json", json.dumps({"auto_path": "fp64", "auto_speedup_over_fp32": 2}), json.dumps({"x": 1})],
)
def test_a_damaged_bench_file_is_one_line_naming_it(validated_copy: Params, content: str) -> None:
    file = write_bench(validated_copy, content)
    with pytest.raises(ConfigError, match=str(file)):
        choose_path(validated_copy)
    with project_env(validated_copy.root):
        result = invoke("train", "--model", "tiny-bert", exit_code=2)
    assert str(file) in result.output and "Traceback" not in result.output
