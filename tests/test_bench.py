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
from parabench.common.hardware import cpu_isa, this_cpu
from parabench.config import PARAMS_ENV, load_params
from parabench.models.choice import bench_file
from parabench.models.inference import INFERENCE_PATHS, prepare_for_inference
from parabench.models.zoo import get_spec, load_tokenizer_and_model

BENCH_SETTINGS = (
    "bench:\n  passes: 1\n  eval_samples: 48\n  train_steps: 2\n  assumed_fma_units: 2\n"
    "  eligibility_points: 0.5\n  output: reports/bench.json\n  by_hardware_dir: reports/bench\n"
    "  gpu_output: reports/gpu_check.json\n"
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


def test_bench_cli_prints_every_path_with_accuracy_eligibility_and_the_auto_choice(
    bench_project: Path,
) -> None:
    result = CliRunner().invoke(app, ["bench", "--model", "tiny-bert"])
    assert result.exit_code == 0, result.output
    paths = [BASELINE, "trainer_dynamic", *(f"parabench_{p}" for p in INFERENCE_PATHS)]
    training = [
        "train_trainer_pad128",
        "train_trainer_group_by_length",
        "train_parabench",
        "train_parabench_bf16",
    ]
    for path in paths + training:
        assert f"| {path} |" in result.output
    assert "roofline on " in result.output and "GFLOP/s" in result.output
    document = json.loads((bench_project / "reports" / "bench.json").read_text())
    assert (
        json.loads((bench_file(load_params(bench_project / "params.yaml"), this_cpu())).read_text())
        == document
    )
    rows = {row["path"]: row for row in document["paths"]}
    assert set(rows) == set(paths + training)
    assert rows[BASELINE]["speedup"] == 1.0 and rows["train_trainer_pad128"]["speedup"] == 1.0
    # the same weights on the same pairs: fp32 paths agree with the Trainer on both whole splits
    assert rows["parabench_fp32"]["accuracy"] == rows[BASELINE]["accuracy"]
    assert set(rows["parabench_fp32"]["accuracy"]) == {"validation", "test"}
    for row in rows.values():
        if row["path"].startswith("parabench_"):
            within = all(
                abs(row["accuracy"][s] - rows["parabench_fp32"]["accuracy"][s]) <= 0.005
                for s in ("validation", "test")
            )
            assert row["eligible"] == within
    assert rows["parabench_onnxruntime"]["eligible"] and rows["parabench_openvino"]["eligible"]
    chosen = rows[f"parabench_{document['auto_path']}"]
    assert chosen["eligible"]
    assert chosen["samples_per_second"] == max(
        r["samples_per_second"] for r in rows.values() if r["eligible"]
    )
    assert document["auto_speedup_over_fp32"] == chosen["speedup_over_fp32"]
    assert f"auto on {this_cpu()}: {document['auto_path']}" in result.output


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
    assert roofline.peak("fp32") > 1e9
    assert roofline.peak("bf16") >= roofline.peak("fp32") and roofline.peak("int8") >= 2 * roofline.peak(
        "fp32"
    )
    assert roofline.isa == cpu_isa() and ", ".join(roofline.isa) in roofline.describe()
    _, model = load_tokenizer_and_model(get_spec("tiny-bert"), load_params(validated_project / "params.yaml"))
    assert forward_flops(model, np.array([10])) < forward_flops(model, np.array([20]))
