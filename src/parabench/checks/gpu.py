"""`parabench gpu-check`: what the training engine does on a CUDA machine, in a few minutes.

Fine-tunes tiny-bert and all-MiniLM-L6-v2 for one epoch on MRPC in the machine's default mixed precision
(bf16 where supported), measures training and inference pairs/s (fp32 and autocast) on the GPU, and checks
that a training stopped after epoch 1 goes on from its checkpoint to the result of an uninterrupted one.
Writes params.yaml `bench.gpu_output`. Needs only the engine's libraries (no MLflow, DVC or Great
Expectations), so it also runs on a bare GPU box given the processed splits and the model folders.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed

from parabench.common.files import write_json
from parabench.config import ParabenchError, Params
from parabench.data.prepare import load_frames
from parabench.models.inference import encode_frame, predict
from parabench.models.zoo import get_spec, load_tokenizer_and_model, resolve_weights
from parabench.training.checkpoints import Checkpoints
from parabench.training.engine import (
    EngineSettings,
    default_mixed_precision,
    fine_tune,
    make_accelerator,
)
from parabench.training.metrics import classification_metrics

MODELS = ("tiny-bert", "all-MiniLM-L6-v2")
SEED = 42


class Stop(Exception):
    """Raised after an epoch to stop a training the way a crash would."""


def machine() -> dict[str, Any]:
    """The GPU, its capabilities and the library versions."""
    import accelerate
    import transformers

    return {
        "device": torch.cuda.get_device_name(0),
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
        "bf16_supported": torch.cuda.is_bf16_supported(),
        "mixed_precision": default_mixed_precision(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
    }


def synchronize() -> None:
    """Wait for the GPU's queued work, so timings end when the work does."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def inference_rate(model: Any, split: Any, batch_size: int, pad_token_id: int, accelerator: Any) -> float:
    """Pairs/s of one timed pass after a warm-up pass (synchronised with the GPU)."""
    predict(model, split, batch_size, pad_token_id, accelerator)
    synchronize()
    started = time.perf_counter()
    predict(model, split, batch_size, pad_token_id, accelerator)
    synchronize()
    return len(split) / (time.perf_counter() - started)


def train_one(
    params: Params, key: str, weights: Path | None, epochs: int, log: Callable[[str], None]
) -> dict:
    """One model: fine-tune `epochs` epochs in the default mixed precision, then score and time it."""
    spec = get_spec(key, params)
    tokenizer, model = load_tokenizer_and_model(
        spec, params, weights=weights or resolve_weights(spec, params)
    )
    frames = load_frames(params.path(params.data.processed_dir))
    encoded = {
        split: encode_frame(tokenizer, frame, params.train.max_length) for split, frame in frames.items()
    }
    recipe = params.recipe(spec.recipe or params.train.recipe).with_overrides(epochs=epochs)
    settings = EngineSettings(mixed_precision=default_mixed_precision())
    accelerator = make_accelerator(settings)
    set_seed(SEED)
    batch, pad = params.train.eval_batch_size, tokenizer.pad_token_id
    trained, fit = fine_tune(
        model,
        encoded["train"],
        encoded["validation"],
        recipe,
        SEED,
        pad,
        batch,
        accelerator,
        settings,
        log=log,
    )
    test = predict(trained, encoded["test"], batch, pad, accelerator)
    rates = {settings.mixed_precision: inference_rate(trained, encoded["test"], batch, pad, accelerator)}
    rates["fp32"] = inference_rate(trained, encoded["test"], batch, pad, make_accelerator(EngineSettings()))
    return {
        "epochs": epochs,
        "recipe": recipe.model_dump(),
        "train_pairs_per_second": fit.train_samples_per_second,
        "validation_accuracy": fit.epochs[-1].validation_accuracy,
        "test": classification_metrics(encoded["test"].labels, test.labels),
        "inference_pairs_per_second": rates,
    }


def resume_check(params: Params, log: Callable[[str], None]) -> dict[str, Any]:
    """tiny-bert, 3 epochs: uninterrupted, then stopped after epoch 1 and resumed from its checkpoint."""
    spec = get_spec("tiny-bert", params)
    settings = EngineSettings(mixed_precision=default_mixed_precision())
    frames = load_frames(params.path(params.data.processed_dir))
    recipe = params.recipe("tuned").with_overrides(epochs=3)

    def run(checkpoints: Checkpoints | None, stop_after: int | None) -> list[float]:
        tokenizer, model = load_tokenizer_and_model(spec, params)
        train = encode_frame(tokenizer, frames["train"], params.train.max_length)
        validation = encode_frame(tokenizer, frames["validation"], params.train.max_length)
        set_seed(SEED)

        def on_epoch_end(epoch: Any) -> None:
            if stop_after is not None and epoch.epoch == stop_after:
                raise Stop

        try:
            _, fit = fine_tune(
                model, train, validation, recipe, SEED, tokenizer.pad_token_id, params.train.eval_batch_size,
                make_accelerator(settings), settings, checkpoints, on_epoch_end, log,
            )  # fmt: skip
        except Stop:
            return []
        return [e.validation_accuracy for e in fit.epochs] + [e.train_loss for e in fit.epochs]

    whole = run(None, None)
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = Checkpoints(Path(folder))
        run(checkpoints, 1)
        resumed = run(checkpoints, None)
    gap = float(np.max(np.abs(np.subtract(whole, resumed))))
    return {"uninterrupted": whole, "resumed": resumed, "max_abs_difference": gap, "equal": gap == 0.0}


def gpu_check(
    params: Params, minilm: Path | None = None, epochs: int = 1, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run every check; write the report to params.yaml `bench.gpu_output` (reports/gpu_check.json)."""
    if not torch.cuda.is_available():
        raise ParabenchError(
            "no CUDA device here: `parabench gpu-check` runs on a machine with an NVIDIA GPU"
        )
    started = time.perf_counter()
    report: dict[str, Any] = {"machine": machine(), "models": {}}
    for key in MODELS:
        log(f"gpu-check: {key}, {epochs} epoch(s) in {report['machine']['mixed_precision']}")
        weights = minilm if key == "all-MiniLM-L6-v2" else None
        report["models"][key] = train_one(params, key, weights, epochs, log)
    log("gpu-check: resume after a stop at epoch 1")
    report["resume"] = resume_check(params, log)
    report["seconds"] = time.perf_counter() - started
    write_json(params.path(params.bench.gpu_output), report)
    return report
