"""`parabench bench`: parabench's inference and training paths side by side with what users would run
instead, on the same weights and pairs, in one process.

Inference: the HF Trainer padding every pair to 128 (run_glue's default: the baseline) and with dynamic
padding, then every `inference.path` (torch fp32 / bf16 / int8, ONNX Runtime fp32 / int8, OpenVINO default /
NNCF int8). Each path predicts all of validation and test once for its accuracy; a path more than
`bench.eligibility_points` from fp32 on either split is not eligible. Speed: timed passes over the same
`bench.eval_samples` pairs, interleaved path by path within each pass (a slow moment hits every path), the
median kept. Training: the Trainer padding to 128 (baseline) and with dynamic padding and
`train_sampling_strategy="group_by_length"` (the honest peer), against parabench's engine in fp32 and bf16.
The fastest eligible path is what `inference.path: auto` runs on this CPU class (`models.choice`); the
roofline states the peak it assumed for the instruction sets found.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate.utils import set_seed
from datasets import Dataset
from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

from parabench.common.files import require_writable, write_json, write_text
from parabench.common.hardware import cpu_flags, cpu_isa, cpu_model, this_cpu
from parabench.common.names import INFERENCE_PATHS
from parabench.common.tables import markdown_table
from parabench.config import Params, RunOptions
from parabench.data.prepare import load_frames
from parabench.data.validate import require_validated
from parabench.models.choice import bench_file
from parabench.models.inference import EncodedSplit, encode_frame, predict, prepare_for_inference
from parabench.models.zoo import (
    get_spec,
    load_tokenizer_and_model,
    merge_lora,
    require_fine_tuned,
    resolve_weights,
)
from parabench.tracking import client as tracking
from parabench.training.engine import (
    EngineSettings,
    batch_loader,
    build_optimizer,
    length_grouped_batches,
    make_accelerator,
    train_steps,
)
from parabench.training.metrics import classification_metrics
from parabench.training.plan import plan_run

BASELINE = "trainer_pad128"
TRAIN_BASELINE = f"train_{BASELINE}"
EVAL_SPLITS = ("validation", "test")
# The runtime each exported path needs (a path whose runtime is missing is reported, not measured).
RUNTIME_OF = {"onnxruntime": "onnxruntime", "openvino": "openvino", "openvino_int8": "nncf"}
RUNTIME_OF["onnxruntime_int8"] = "onnxruntime"


@dataclass(frozen=True)
class PathResult:
    path: str
    kind: str  # "inference" or "training"
    samples_per_second: float
    precision: str  # the arithmetic the roofline counts it at: fp32 | bf16 | int8
    accuracy: dict[str, float] = field(default_factory=dict)  # split -> accuracy (inference only)
    speedup: float = 0.0  # × the baseline of its kind
    speedup_over_fp32: float = 0.0  # × parabench's fp32 path of its kind
    eligible: bool | None = None  # inference paths of parabench: within the points of fp32 on every split
    roofline_fraction: float = 0.0


@dataclass(frozen=True)
class Roofline:
    """Peak FLOP/s per precision from cores × clock × FLOP per cycle of the widest unit found (assumptions
    printed): fp32 FMA lanes × FMA units × 2; bf16 on AMX tiles (1,024 FLOP/cycle/core), AVX512-BF16 (2× fp32)
    or none (fp32's); int8 on AMX tiles (2,048 ops/cycle/core), VNNI (4× fp32) or AVX2 (2× fp32)."""

    cores: int
    ghz: float
    isa: list[str]
    fp32_per_cycle: int
    bf16_per_cycle: int
    int8_per_cycle: int
    units: dict[str, str]

    def peak(self, precision: str) -> float:
        per_cycle = {"fp32": self.fp32_per_cycle, "bf16": self.bf16_per_cycle, "int8": self.int8_per_cycle}
        return self.cores * self.ghz * 1e9 * per_cycle[precision]

    def describe(self) -> str:
        peaks = ", ".join(
            f"{p} {self.peak(p) / 1e9:,.0f} GFLOP/s ({self.units[p]})" for p in ("fp32", "bf16", "int8")
        )
        isa = ", ".join(self.isa) or "no AVX2"
        return f"roofline on {isa}: {self.cores} cores × {self.ghz:.2f} GHz; peaks {peaks}"


def detect_roofline(assumed_fma_units: int) -> Roofline:
    """This CPU's peaks: the cores torch uses, its clock, and the units its instruction sets give."""
    flags = cpu_flags()
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    clocks = [float(line.split(":")[1]) for line in text.splitlines() if line.startswith("cpu MHz")]
    ghz = max(clocks) / 1000 if clocks else 2.0
    lanes = 16 if "avx512f" in flags else 8 if flags & {"avx2", "avx"} else 4
    fp32 = lanes * assumed_fma_units * 2
    fp32_unit = f"{lanes} lanes × {assumed_fma_units} FMA × 2"
    if "amx_bf16" in flags:
        bf16, bf16_unit = 1024, "AMX-BF16 tiles"
    elif "avx512_bf16" in flags:
        bf16, bf16_unit = 2 * fp32, "AVX512-BF16, 2× fp32"
    else:
        bf16, bf16_unit = fp32, "no bf16 unit: fp32's"
    if "amx_int8" in flags:
        int8, int8_unit = 2048, "AMX-INT8 tiles"
    elif flags & {"avx512_vnni", "avx_vnni"}:
        int8, int8_unit = 4 * fp32, "VNNI, 4× fp32"
    else:
        int8, int8_unit = 2 * fp32, "AVX2 multiply-add pairs, 2× fp32"
    units = {"fp32": fp32_unit, "bf16": bf16_unit, "int8": int8_unit}
    return Roofline(torch.get_num_threads(), ghz, cpu_isa(), fp32, bf16, int8, units)


def precision_of(path: str, roofline: Roofline) -> str:
    """The arithmetic a path runs at: OpenVINO's CPU default is bf16 where AMX is (its int8 path compresses
    weights only), int8 paths quantize activations too."""
    if path.startswith("openvino"):
        return "bf16" if "AMX-BF16" in roofline.isa else "fp32"
    if path == "bf16":
        return "bf16"
    return "int8" if "int8" in path else "fp32"


def missing_runtime(path: str) -> str | None:
    """The package a path needs that is not installed here, or None."""
    package = RUNTIME_OF.get(path)
    return package if package and importlib.util.find_spec(package) is None else None


def timed(run_pass: Callable[[], Any]) -> float:
    started = time.perf_counter()
    run_pass()
    return time.perf_counter() - started


def interleaved_rates(passes: dict[str, Callable[[], Any]], samples: int, count: int) -> dict[str, float]:
    """Samples/s of each pass: one warm-up call of each, then `count` rounds calling every pass once per
    round (so a busy moment slows all of them), the median time kept."""
    for run_pass in passes.values():
        run_pass()
    seconds: dict[str, list[float]] = {name: [] for name in passes}
    for _ in range(count):
        for name, run_pass in passes.items():
            seconds[name].append(timed(run_pass))
    return {name: samples / statistics.median(times) for name, times in seconds.items()}


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
    model: Any, tokenizer: Any, batch_size: int, pad_to_max: bool
) -> Callable[[Dataset], np.ndarray]:
    """Trainer.predict over a dataset, as paraphrase probabilities."""
    folder = tempfile.mkdtemp(prefix="parabench-bench-")
    collator = None if pad_to_max else DataCollatorWithPadding(tokenizer)
    trainer = Trainer(model=model, args=trainer_args(folder, batch_size), data_collator=collator)

    def run_pass(dataset: Dataset) -> np.ndarray:
        logits = torch.from_numpy(np.asarray(trainer.predict(dataset).predictions)).float()
        return torch.softmax(logits, dim=-1)[:, 1].numpy()

    return run_pass


def trainer_training(
    model: Any, tokenizer: Any, dataset: Dataset, batch_size: int, steps: int, pad_to_max: bool, recipe: Any
) -> Callable[[], None]:
    """A pass of Trainer.train for `steps` optimizer steps on the same pairs: every pair padded to max_length,
    or dynamic padding with batches grouped by length (`train_sampling_strategy="group_by_length"`)."""
    folder = tempfile.mkdtemp(prefix="parabench-bench-")
    grouping = {} if pad_to_max else {"train_sampling_strategy": "group_by_length"}
    args = trainer_args(
        folder,
        batch_size,
        max_steps=steps,
        learning_rate=recipe.learning_rate,
        weight_decay=recipe.weight_decay,
        max_grad_norm=recipe.max_grad_norm,
        **grouping,
    )
    collator = None if pad_to_max else DataCollatorWithPadding(tokenizer)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    trainer.remove_callback(PrinterCallback)  # it prints a metrics dict after every pass
    return lambda: trainer.train()


def parabench_training(
    model: Any, split: EncodedSplit, recipe: Any, steps: int, seed: int, pad_token_id: int, precision: str
) -> Callable[[], None]:
    """A pass of parabench's engine (accelerate; length-grouped batches, dynamic padding) for `steps`
    optimizer steps in the given mixed precision (no | bf16)."""
    accelerator = make_accelerator(EngineSettings(mixed_precision=precision))
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


def accuracy_of(probabilities: np.ndarray, labels: Any) -> float:
    return classification_metrics(np.asarray(labels), (probabilities >= 0.5).astype(int))["accuracy"]


def timed_subset(frames: dict[str, pd.DataFrame], count: int) -> pd.DataFrame:
    """`count` pairs spread evenly over validation + test (their length mix), the same for every path."""
    both = pd.concat([frames[split] for split in EVAL_SPLITS], ignore_index=True)
    positions = np.linspace(0, len(both) - 1, min(count, len(both))).round().astype(int)
    return both.iloc[np.unique(positions)].reset_index(drop=True)


def bench(
    params: Params, model_key: str, run_id: str | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Measure every path side by side; print the table, write the bench files, log to MLflow."""
    settings = params.bench
    spec = require_fine_tuned(get_spec(model_key, params), "--model", "it has no training or inference paths")
    plan = plan_run(params, RunOptions(), require_validated(params), model=spec.key)
    label = this_cpu()
    require_writable(params.path(settings.output), bench_file(params, label))
    experiment_id = tracking.configure(params)
    if run_id is not None:  # before anything is measured, written or logged
        tracking.require_trained_run(run_id, model_key)
    tokenizer, model, source = load_bench_model(
        params, model_key, run_id or latest_run_id(experiment_id, model_key)
    )
    recipe, length, pad = plan.recipe, plan.max_length, tokenizer.pad_token_id
    batch_size, passes = params.train.eval_batch_size, settings.passes
    frames = load_frames(params.path(params.data.processed_dir))
    timed_frame = timed_subset(frames, settings.eval_samples)
    timed_split = encode_frame(tokenizer, timed_frame, length)
    splits = {split: encode_frame(tokenizer, frames[split], length) for split in EVAL_SPLITS}
    roofline = detect_roofline(settings.assumed_fma_units)
    log(f"bench {model_key} on {label} ({cpu_model()}): {source}")
    log(
        f"accuracy on all {' + '.join(f'{len(frames[s])} {s}' for s in EVAL_SPLITS)} pairs per path; speed: "
        f"{len(timed_frame)} of them, {passes} interleaved rounds after a warm-up"
    )
    log(roofline.describe())

    inference: dict[str, Callable[[], Any]] = {}
    accuracy: dict[str, dict[str, float]] = {}
    for pad_to_max, name in ((True, BASELINE), (False, "trainer_dynamic")):
        run = trainer_probabilities(model, tokenizer, batch_size, pad_to_max)
        accuracy[name] = {
            split: accuracy_of(
                run(trainer_dataset(tokenizer, frames[split], length, pad_to_max)), frames[split]["label"]
            )
            for split in EVAL_SPLITS
        }
        dataset = trainer_dataset(tokenizer, timed_frame, length, pad_to_max)
        inference[name] = lambda r=run, d=dataset: r(d)
    skipped = []
    for path in INFERENCE_PATHS:
        if (package := missing_runtime(path)) is not None:
            skipped.append(f"parabench_{path} (needs {package})")
            continue
        prepared = prepare_for_inference(copy.deepcopy(model), path)
        name = f"parabench_{path}"
        accuracy[name] = {
            split: accuracy_of(predict(prepared, encoded, batch_size, pad).probabilities, encoded.labels)
            for split, encoded in splits.items()
        }
        inference[name] = lambda m=prepared: predict(m, timed_split, batch_size, pad)
        log(f"  {name}: " + ", ".join(f"{s} {100 * a:.2f}" for s, a in accuracy[name].items()))
    rates = interleaved_rates(inference, len(timed_frame), passes)

    steps, samples = settings.train_steps, settings.train_steps * recipe.batch_size
    train_frame = frames["train"].head(samples)
    train_split = encode_frame(tokenizer, train_frame, length)
    training: dict[str, Callable[[], Any]] = {}
    for pad_to_max, name in ((True, TRAIN_BASELINE), (False, "train_trainer_group_by_length")):
        set_seed(0)
        dataset = trainer_dataset(tokenizer, train_frame, length, pad_to_max)
        training[name] = trainer_training(
            copy.deepcopy(model), tokenizer, dataset, recipe.batch_size, steps, pad_to_max, recipe
        )
    for precision, name in (("no", "train_parabench"), ("bf16", "train_parabench_bf16")):
        training[name] = parabench_training(
            copy.deepcopy(model), train_split, recipe, steps, 0, pad, precision
        )
    rates |= interleaved_rates(training, samples, passes)

    flops = {"inference": forward_flops(model, timed_split.lengths)}
    flops["training"] = 3 * forward_flops(model, train_split.lengths)
    results = []
    for name, rate in rates.items():
        kind = "training" if name.startswith("train_") else "inference"
        path = name.removeprefix("parabench_")
        precision = "bf16" if name.endswith("_bf16") else precision_of(path, roofline)
        if name.startswith("trainer") or name.startswith("train_trainer"):
            precision = "fp32"
        fraction = rate * flops[kind] / roofline.peak(precision)
        results.append(
            PathResult(name, kind, rate, precision, accuracy.get(name, {}), roofline_fraction=fraction)
        )
    return summarize(params, model_key, source, label, roofline, results, skipped, log)


def with_comparisons(results: list[PathResult], points: float) -> list[PathResult]:
    """Each path's speed against its kind's baseline and parabench's fp32 path; eligibility of parabench's
    inference paths (every split within `points` of fp32)."""
    rate = {r.path: r.samples_per_second for r in results}
    fp32 = results[[r.path for r in results].index("parabench_fp32")].accuracy
    compared = []
    for r in results:
        training = r.kind == "training"
        eligible = None
        if r.path.startswith("parabench_"):
            eligible = all(abs(r.accuracy[s] - fp32[s]) * 100 <= points for s in EVAL_SPLITS)
        compared.append(
            PathResult(
                **{
                    **asdict(r),
                    "speedup": r.samples_per_second / rate[TRAIN_BASELINE if training else BASELINE],
                    "speedup_over_fp32": r.samples_per_second
                    / rate["train_parabench" if training else "parabench_fp32"],
                    "eligible": eligible,
                }
            )
        )
    return compared


def summarize(
    params: Params,
    model_key: str,
    source: str,
    label: str,
    roofline: Roofline,
    results: list[PathResult],
    skipped: list[str],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Print the table, write reports/bench.json and this CPU class's file, log the run; returns the JSON."""
    results = with_comparisons(results, params.bench.eligibility_points)
    by_path = {r.path: r for r in results}
    eligible = [r for r in results if r.eligible]
    chosen = max(eligible, key=lambda r: r.samples_per_second)
    fastest_peer = max(
        (
            r
            for r in results
            if r.path.startswith("parabench_onnxruntime") or r.path.startswith("parabench_openvino")
        ),
        key=lambda r: r.samples_per_second if r.eligible else 0.0,
        default=None,
    )
    document = {
        "model": model_key,
        "weights": source,
        "hardware": label,
        "cpu": cpu_model(),
        "isa": roofline.isa,
        "threads": roofline.cores,
        "roofline_assumptions": roofline.describe(),
        "fp32_peak_gflops": roofline.peak("fp32") / 1e9,
        "eligibility_points": params.bench.eligibility_points,
        "auto_path": chosen.path.removeprefix("parabench_"),
        "auto_speedup_over_fp32": chosen.speedup_over_fp32,
        "inference_speedup": chosen.speedup,
        "fastest_runtime_peer": fastest_peer.path if fastest_peer else None,
        "training_speedup": by_path["train_parabench"].speedup,
        "training_speedup_bf16": by_path["train_parabench_bf16"].speedup,
        "training_speedup_over_group_by_length": by_path["train_parabench"].samples_per_second
        / by_path["train_trainer_group_by_length"].samples_per_second,
        "roofline_fraction": chosen.roofline_fraction,
        "not_measured": skipped,
        "paths": [asdict(r) for r in results],
    }
    log(format_table(results))
    for line in skipped:
        log(f"not measured: {line}")
    log(
        f"auto on {label}: {document['auto_path']} ({chosen.speedup_over_fp32:.2f}× parabench fp32, "
        f"{chosen.speedup:.2f}× {BASELINE}); training {document['training_speedup']:.2f}× {TRAIN_BASELINE}"
    )
    write_json(params.path(params.bench.output), document)
    write_json(bench_file(params, label), document)
    write_text(bench_file(params, label).with_suffix(".md"), as_markdown(document, results))
    with tracking.tracked_run(run_name=f"bench-{model_key}", tags={"bench": "true", "model": model_key}):
        tracking.log_params({"bench_model": model_key, "bench_weights": source, **tracking.hardware()})
        import mlflow

        mlflow.log_param("auto_path", document["auto_path"])
        mlflow.log_metrics(
            {k: float(document[k]) for k in ("inference_speedup", "training_speedup", "roofline_fraction")}
        )
        mlflow.log_metrics({f"{r.path}_samples_per_second": r.samples_per_second for r in results})
        mlflow.log_text(json.dumps(document, indent=2), "bench.json")
    return document


def as_markdown(document: dict[str, Any], results: list[PathResult]) -> str:
    """The bench of one CPU class as the docs include it: where, what, the table, the choice."""
    lines = [
        f"### {document['hardware']}",
        "",
        f"`parabench bench --model {document['model']}` on {document['cpu']} ({', '.join(document['isa'])}), "
        f"{document['threads']} threads; {document['weights']}. {document['roofline_assumptions']}.",
        "",
        format_table(results),
        "",
        f"`inference.path: auto` here: **{document['auto_path']}**, "
        f"{document['auto_speedup_over_fp32']:.2f}× parabench fp32 and {document['inference_speedup']:.2f}× "
        f"{BASELINE}. Training: parabench fp32 {document['training_speedup']:.2f}× {TRAIN_BASELINE}, "
        f"{document['training_speedup_over_group_by_length']:.2f}× the Trainer with group_by_length.",
    ]
    return "\n".join(lines) + "\n"


def format_table(results: list[PathResult]) -> str:
    """The benchmark as a Markdown table."""
    headers = ("path", "kind", "samples/s", "× baseline", "× fp32", "val acc", "test acc", "eligible",
               "precision", "roofline")  # fmt: skip
    rows = [
        (
            r.path,
            r.kind,
            f"{r.samples_per_second:.1f}",
            f"{r.speedup:.2f}",
            f"{r.speedup_over_fp32:.2f}",
            *(f"{100 * r.accuracy[s]:.2f}" if s in r.accuracy else "" for s in EVAL_SPLITS),
            {None: "", True: "yes", False: "no"}[r.eligible],
            r.precision,
            f"{100 * r.roofline_fraction:.1f}%",
        )
        for r in results
    ]
    return "\n".join(markdown_table(headers, rows))
