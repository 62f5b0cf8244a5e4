"""Side-by-side speed of parabench's training and inference paths against the HF Trainer baseline.

Everything runs in one process on the same data and weights; each path's samples/s is the median of timed
passes after a warm-up, so the ratios hold on a noisy machine where the absolute numbers do not.
"""

from __future__ import annotations

import copy
import json
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed
from datasets import Dataset
from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

from parabench.common.files import require_writable, write_json
from parabench.common.tables import markdown_table
from parabench.config import Params, RunOptions
from parabench.data.prepare import load_frames
from parabench.data.validate import require_validated
from parabench.models.inference import (
    INFERENCE_PATHS,
    EncodedSplit,
    encode_frame,
    predict,
    prepare_for_inference,
)
from parabench.models.zoo import (
    get_spec,
    load_tokenizer_and_model,
    merge_lora,
    require_fine_tuned,
    resolve_weights,
)
from parabench.tracking import client as tracking
from parabench.tracking.client import cpu_model
from parabench.training.engine import (
    EngineSettings,
    batch_loader,
    build_optimizer,
    default_mixed_precision,
    length_grouped_batches,
    make_accelerator,
    train_steps,
)
from parabench.training.metrics import classification_metrics
from parabench.training.plan import plan_run

BASELINE = "trainer_pad128"


@dataclass(frozen=True)
class PathResult:
    path: str
    kind: str  # "inference" or "training"
    samples_per_second: float
    speedup: float
    accuracy: float | None
    f1: float | None
    roofline_fraction: float


@dataclass(frozen=True)
class Roofline:
    """Peak FLOP/s of this CPU from cores × clock × vector lanes × FMA units (printed as assumptions)."""

    cores: int
    ghz: float
    fp32_lanes: int
    fma_units: int

    @property
    def fp32_peak(self) -> float:
        return self.cores * self.ghz * 1e9 * self.fp32_lanes * self.fma_units * 2

    @property
    def int8_peak(self) -> float:
        return 4 * self.fp32_peak  # four int8 multiply-adds fit where one fp32 does

    def describe(self) -> str:
        return (
            f"peak = {self.cores} cores × {self.ghz:.2f} GHz × {self.fp32_lanes} fp32 lanes × "
            f"{self.fma_units} FMA units × 2 = {self.fp32_peak / 1e9:.0f} GFLOP/s fp32 "
            f"(int8 paths: 4× that); FLOPs per pair from the config at each pair's real length"
        )


def detect_roofline(assumed_fma_units: int) -> Roofline:
    """Cores torch uses, the CPU clock and its widest vector unit, read from /proc/cpuinfo."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    clocks = [float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", text)]
    flags = set(re.findall(r"\b(avx512f|avx2|avx)\b", text))
    lanes = 16 if "avx512f" in flags else 8 if flags & {"avx2", "avx"} else 4
    ghz = max(clocks) / 1000 if clocks else 2.0
    return Roofline(torch.get_num_threads(), ghz, lanes, assumed_fma_units)


def config_dims(config: Any) -> tuple[int, int]:
    """(layers, hidden size) under the names different families use."""
    layers = next(
        getattr(config, n) for n in ("num_hidden_layers", "n_layers", "encoder_layers") if hasattr(config, n)
    )
    hidden = next(getattr(config, n) for n in ("hidden_size", "dim", "d_model") if hasattr(config, n))
    return int(layers), int(hidden)


def forward_flops(model: torch.nn.Module, lengths: np.ndarray) -> float:
    """Mean useful forward FLOPs per pair: 2 × non-embedding parameters × tokens + attention (4·L·d·T²)."""
    embedding_params = sum(p.numel() for name, p in model.named_parameters() if "embed" in name)
    dense_params = sum(p.numel() for p in model.parameters()) - embedding_params
    layers, hidden = config_dims(model.config)
    tokens = lengths.astype(np.float64)
    return float(np.mean(2 * dense_params * tokens + 4 * layers * hidden * tokens**2))


def median_rate(run_pass: Callable[[], Any], samples: int, passes: int) -> tuple[float, Any]:
    """Samples/s as the median of `passes` timed calls after one warm-up call; returns the last output."""
    output = run_pass()
    seconds = []
    for _ in range(passes):
        started = time.perf_counter()
        output = run_pass()
        seconds.append(time.perf_counter() - started)
    return samples / statistics.median(seconds), output


def trainer_args(folder: str, batch_size: int, **extra: Any) -> TrainingArguments:
    return TrainingArguments(
        output_dir=folder,
        per_device_eval_batch_size=batch_size,
        per_device_train_batch_size=batch_size,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        **extra,
    )


def trainer_dataset(tokenizer: Any, frame: Any, max_length: int, pad_to_max: bool) -> Dataset:
    """The split as run_glue.py prepares it: padded to max_length, or left for dynamic padding."""
    padding = "max_length" if pad_to_max else False
    encoded = tokenizer(
        list(frame["sentence1"]),
        list(frame["sentence2"]),
        truncation=True,
        max_length=max_length,
        padding=padding,
    )
    return Dataset.from_dict({**encoded, "labels": frame["label"].tolist()})


def trainer_probabilities(
    model: Any, tokenizer: Any, dataset: Dataset, batch_size: int, pad_to_max: bool
) -> Callable[[], np.ndarray]:
    """A pass of Trainer.predict over the dataset, returning paraphrase probabilities."""
    folder = tempfile.mkdtemp(prefix="parabench-bench-")
    collator = None if pad_to_max else DataCollatorWithPadding(tokenizer)
    trainer = Trainer(model=model, args=trainer_args(folder, batch_size), data_collator=collator)

    def run_pass() -> np.ndarray:
        logits = torch.from_numpy(np.asarray(trainer.predict(dataset).predictions)).float()
        return torch.softmax(logits, dim=-1)[:, 1].numpy()

    return run_pass


def trainer_training(
    model: Any, tokenizer: Any, dataset: Dataset, batch_size: int, steps: int, pad_to_max: bool, recipe: Any
) -> Callable[[], None]:
    """A pass of Trainer.train for `steps` optimizer steps on the same pairs."""
    folder = tempfile.mkdtemp(prefix="parabench-bench-")
    args = trainer_args(
        folder,
        batch_size,
        max_steps=steps,
        learning_rate=recipe.learning_rate,
        weight_decay=recipe.weight_decay,
        max_grad_norm=recipe.max_grad_norm,
    )
    collator = None if pad_to_max else DataCollatorWithPadding(tokenizer)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    trainer.remove_callback(PrinterCallback)  # it prints a metrics dict after every pass
    return lambda: trainer.train()


def parabench_training(
    model: Any, split: EncodedSplit, recipe: Any, steps: int, seed: int, pad_token_id: int
) -> Callable[[], None]:
    """A pass of parabench's engine (accelerate; length-grouped batches, dynamic padding) for `steps`
    optimizer steps, on this machine's default device and precision."""
    accelerator = make_accelerator(EngineSettings(mixed_precision=default_mixed_precision()))
    optimizer, scheduler = build_optimizer(model, recipe, total_steps=10**6)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    rng = np.random.default_rng(seed)

    def run_pass() -> None:
        batches = length_grouped_batches(split.lengths, recipe.batch_size, rng)[:steps]
        loader = accelerator.prepare(batch_loader(split, batches, pad_token_id))
        train_steps(accelerator, model, loader, optimizer, scheduler, recipe.max_grad_norm)

    return run_pass


def load_bench_model(params: Params, model_key: str, run_id: str | None) -> tuple[Any, Any, str]:
    """Tokenizer and model: a trained run's weights when a run id is given, else the zoo's weights (then the
    accuracies only show that all paths agree)."""
    spec = get_spec(model_key, params)
    weights: Any = resolve_weights(spec, params)
    source = f"zoo weights of {spec.key} (not fine-tuned)"
    if run_id:
        weights, source = tracking.model_folder(run_id), f"fine-tuned weights of run {run_id}"
    tokenizer, model = load_tokenizer_and_model(spec, params, weights=weights)
    return tokenizer, merge_lora(model) if spec.lora and not run_id else model, source


def latest_run_id(experiment_id: str, model_key: str) -> str | None:
    """The newest FINISHED training run of the model in the experiment, if any."""
    import mlflow

    runs = mlflow.search_runs(
        [experiment_id],
        f"tags.model = '{tracking.quoted(model_key)}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    trained = (
        run
        for run in runs
        if "test_accuracy" in run.data.metrics
        and tracking.finite_metrics(run)
        and tracking.IMPORTED_TAG not in run.data.tags
    )
    return next((run.info.run_id for run in trained), None)


def bench(
    params: Params, model_key: str, run_id: str | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Measure every path side by side; print the table, write reports/bench.json, log to MLflow."""
    settings = params.bench
    spec = require_fine_tuned(get_spec(model_key, params), "--model", "it has no training or inference paths")
    plan = plan_run(params, RunOptions(), require_validated(params), model=spec.key)
    require_writable(params.path(settings.output))
    experiment_id = tracking.configure(params)
    if run_id is not None:  # before anything is measured, written or logged
        tracking.require_trained_run(run_id, model_key)
    tokenizer, model, source = load_bench_model(
        params, model_key, run_id or latest_run_id(experiment_id, model_key)
    )
    recipe = plan.recipe
    frames = load_frames(params.path(params.data.processed_dir))
    frame = frames["validation"].head(settings.eval_samples)
    train_frame = frames["train"].head(settings.train_steps * recipe.batch_size)
    split = encode_frame(tokenizer, frame, plan.max_length)
    train_split = encode_frame(tokenizer, train_frame, plan.max_length)
    roofline = detect_roofline(settings.assumed_fma_units)
    flops = forward_flops(model, split.lengths)
    batch_size, passes, pad = params.train.eval_batch_size, settings.passes, tokenizer.pad_token_id
    log(f"bench {model_key}: {source}; {len(frame)} validation pairs, {passes} timed passes after a warm-up")
    log(roofline.describe())

    def scored(
        path: str, kind: str, rate: float, probabilities: np.ndarray | None, peak: float
    ) -> PathResult:
        scores = (
            classification_metrics(split.labels, (probabilities >= 0.5).astype(int))
            if probabilities is not None
            else {}
        )
        per_sample = flops if kind == "inference" else 3 * forward_flops(model, train_split.lengths)
        return PathResult(
            path, kind, rate, 0.0, scores.get("accuracy"), scores.get("f1"), rate * per_sample / peak
        )

    results: list[PathResult] = []
    for pad_to_max, name in ((True, BASELINE), (False, "trainer_dynamic")):
        dataset = trainer_dataset(tokenizer, frame, plan.max_length, pad_to_max)
        rate, probabilities = median_rate(
            trainer_probabilities(model, tokenizer, dataset, batch_size, pad_to_max), len(frame), passes
        )
        results.append(scored(name, "inference", rate, probabilities, roofline.fp32_peak))
    for path in INFERENCE_PATHS:
        prepared = prepare_for_inference(copy.deepcopy(model), path)
        rate, output = median_rate(lambda m=prepared: predict(m, split, batch_size, pad), len(frame), passes)
        peak = roofline.fp32_peak if path == "fp32" else roofline.int8_peak
        results.append(scored(f"parabench_{path}", "inference", rate, output.probabilities, peak))
    steps, samples = settings.train_steps, settings.train_steps * recipe.batch_size
    for pad_to_max, name in ((True, f"train_{BASELINE}"), (False, "train_trainer_dynamic")):
        set_seed(0)
        dataset = trainer_dataset(tokenizer, train_frame, plan.max_length, pad_to_max)
        rate, _ = median_rate(
            trainer_training(
                copy.deepcopy(model), tokenizer, dataset, recipe.batch_size, steps, pad_to_max, recipe
            ),
            samples,
            passes,
        )
        results.append(scored(name, "training", rate, None, roofline.fp32_peak))
    rate, _ = median_rate(
        parabench_training(copy.deepcopy(model), train_split, recipe, steps, 0, pad), samples, passes
    )
    results.append(scored("train_parabench", "training", rate, None, roofline.fp32_peak))
    return summarize(params, model_key, source, roofline, results, log)


def with_speedups(results: list[PathResult]) -> list[PathResult]:
    """Each path's samples/s as a multiple of the baseline of its kind."""
    base = {r.kind: r.samples_per_second for r in results if r.path in (BASELINE, f"train_{BASELINE}")}
    return [PathResult(**{**asdict(r), "speedup": r.samples_per_second / base[r.kind]}) for r in results]


def summarize(
    params: Params,
    model_key: str,
    source: str,
    roofline: Roofline,
    results: list[PathResult],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Print the table, write reports/bench.json, log the run to MLflow; returns the JSON document."""
    results = with_speedups(results)
    by_path = {r.path: r for r in results}
    default = by_path[f"parabench_{params.inference.path}"]
    baseline = by_path[BASELINE]
    document = {
        "model": model_key,
        "weights": source,
        "hardware": cpu_model(),
        "threads": roofline.cores,
        "roofline_assumptions": roofline.describe(),
        "fp32_peak_gflops": roofline.fp32_peak / 1e9,
        "default_inference_path": default.path,
        "inference_speedup": default.speedup,
        "training_speedup": by_path["train_parabench"].speedup,
        "inference_accuracy_delta": (default.accuracy or 0.0) - (baseline.accuracy or 0.0),
        "roofline_fraction": default.roofline_fraction,
        "paths": [asdict(r) for r in results],
    }
    log(format_table(results))
    write_json(params.path(params.bench.output), document)
    tracking.configure(params)
    with tracking.tracked_run(run_name=f"bench-{model_key}", tags={"bench": "true", "model": model_key}):
        tracking.log_params({"bench_model": model_key, "bench_weights": source, **tracking.hardware()})
        import mlflow

        mlflow.log_metrics(
            {
                k: v
                for k, v in document.items()
                if k
                in ("inference_speedup", "training_speedup", "inference_accuracy_delta", "roofline_fraction")
            }
        )
        mlflow.log_metrics({f"{r.path}_samples_per_second": r.samples_per_second for r in results})
        mlflow.log_text(json.dumps(document, indent=2), "bench.json")
    return document


def format_table(results: list[PathResult]) -> str:
    """The benchmark as a Markdown table."""
    headers = ("path", "kind", "samples/s", "× baseline", "val acc", "val F1", "roofline")
    rows = [
        (
            r.path,
            r.kind,
            f"{r.samples_per_second:.1f}",
            f"{r.speedup:.2f}",
            "" if r.accuracy is None else f"{100 * r.accuracy:.2f}",
            "" if r.f1 is None else f"{100 * r.f1:.2f}",
            f"{100 * r.roofline_fraction:.1f}%",
        )
        for r in results
    ]
    return "\n".join(markdown_table(headers, rows))
