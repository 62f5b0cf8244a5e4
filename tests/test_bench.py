"""The benchmark runs every path side by side on a tiny model and writes its table and JSON (no timings)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
from typer.testing import CliRunner

from parabench.checks.bench import BASELINE, detect_roofline, forward_flops
from parabench.cli import app
from parabench.config import PARAMS_ENV, load_params
from parabench.models.inference import INFERENCE_PATHS, prepare_for_inference
from parabench.models.zoo import get_spec, load_tokenizer_and_model

BENCH_SETTINGS = (
    "bench:\n  passes: 1\n  eval_samples: 48\n  train_steps: 2\n  assumed_fma_units: 2\n"
    "  output: reports/bench.json\n  gpu_output: reports/gpu_check.json\n"
)


@pytest.fixture
def bench_project(validated_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = Path(shutil.copytree(validated_project, tmp_path / "project"))
    params_file = folder / "params.yaml"
    text = params_file.read_text()
    start, end = text.index("bench:\n"), text.index("\nmlflow:\n")
    params_file.write_text(text[:start] + BENCH_SETTINGS + text[end:])
    monkeypatch.setenv(PARAMS_ENV, str(params_file))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    return folder


def test_bench_cli_prints_the_table_and_writes_the_json(bench_project: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "--model", "tiny-bert"])
    assert result.exit_code == 0, result.output
    for path in (
        BASELINE,
        "trainer_dynamic",
        "train_parabench",
        *(f"parabench_{p}" for p in INFERENCE_PATHS),
    ):
        assert f"| {path} |" in result.output
    document = json.loads((bench_project / "reports" / "bench.json").read_text())
    assert {"inference_speedup", "training_speedup", "inference_accuracy_delta", "roofline_fraction"} <= set(
        document
    )
    rows = {row["path"]: row for row in document["paths"]}
    assert rows[BASELINE]["speedup"] == 1.0 and rows[f"train_{BASELINE}"]["speedup"] == 1.0
    assert document["inference_speedup"] == rows["parabench_fp32"]["speedup"] > 0
    assert 0 < document["roofline_fraction"] < 1
    # the same weights on the same pairs: fp32 paths agree exactly with the baseline
    assert rows["parabench_fp32"]["accuracy"] == rows[BASELINE]["accuracy"]


def test_unknown_bench_model_is_a_clear_error(bench_project: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "--model", "nope"])
    assert result.exit_code == 1 and "unknown model 'nope'" in result.output


def test_int8_paths_quantize_only_what_they_say(validated_project: Path) -> None:
    params = load_params(validated_project / "params.yaml")
    spec = get_spec("tiny-bert")
    _, model = load_tokenizer_and_model(spec, params)
    ffn_only = prepare_for_inference(model, "int8_ffn_per_channel")
    quantized = {name for name, module in ffn_only.named_modules() if isinstance(module, DynamicInt8Linear)}
    assert quantized and all("intermediate" in name or name.endswith("output.dense") for name in quantized)
    assert not any("attention" in name or "classifier" in name for name in quantized)
    with pytest.raises(ValueError, match="unknown inference path"):
        prepare_for_inference(model, "fp8")


def test_roofline_and_flops_are_positive(validated_project: Path) -> None:
    import numpy as np

    roofline = detect_roofline(assumed_fma_units=2)
    assert roofline.fp32_peak > 1e9 and roofline.int8_peak == 4 * roofline.fp32_peak
    _, model = load_tokenizer_and_model(get_spec("tiny-bert"), load_params(validated_project / "params.yaml"))
    assert forward_flops(model, np.array([10])) < forward_flops(model, np.array([20]))
