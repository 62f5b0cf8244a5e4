"""One tracked training run: validated data → model → fine-tune → evaluate → MLflow (+ reports/runs)."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch

from parabench.common.names import SPLITS
from parabench.config import Params
from parabench.data.prepare import load_frames
from parabench.data.validate import require_validated
from parabench.models.inference import EncodedSplit, Predictions, encode_frame, predict, prepare_for_inference
from parabench.models.zoo import (
    check_max_length,
    count_parameters,
    load_tokenizer_and_model,
    merge_lora,
    model_size_mb,
    resolve_weights,
)
from parabench.serving.pyfunc import RequestLimits, log_paraphrase_model
from parabench.tracking import client as tracking
from parabench.training.checkpoints import Checkpoints
from parabench.training.engine import EpochResult, fine_tune, make_accelerator, set_seed
from parabench.training.metrics import classification_metrics
from parabench.training.plan import RunPlan
from parabench.training.records import log_record, require_record_folder, save_record
from parabench.training.teacher import teacher_logits


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    experiment_id: str
    model: str
    seed: int
    metrics: dict[str, float]
    main_process: bool = True  # False in the other processes of a multi-process launch (they log nothing)


def subsample(frame: pd.DataFrame, max_samples: int | None, seed: int) -> pd.DataFrame:
    """At most max_samples rows (None = all), drawn with the run's seed, in file order."""
    if max_samples is None or max_samples >= len(frame):
        return frame
    return frame.sample(n=max_samples, random_state=seed).sort_index()


def confusion_matrix_figure(references: np.ndarray, predictions: np.ndarray, title: str) -> Any:
    """A labelled confusion-matrix figure."""
    import matplotlib

    matplotlib.use("Agg")
    from sklearn.metrics import ConfusionMatrixDisplay

    display = ConfusionMatrixDisplay.from_predictions(
        references,
        predictions,
        labels=[0, 1],
        display_labels=["not paraphrase", "paraphrase"],
        colorbar=False,
    )
    display.ax_.set_title(title)
    return display.figure_


def predictions_table(frame: pd.DataFrame, predictions: Predictions) -> pd.DataFrame:
    """Per-example test predictions: the pair, the gold label, the predicted label and probability."""
    return frame.assign(predicted_label=predictions.labels, probability=predictions.probabilities)


def train_and_track(
    params: Params,
    plan: RunPlan,
    log: Callable[[str], None] = print,
    nested: bool = False,
    extra_tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> RunSummary:
    """Fine-tune one model with one seed on validated MRPC, as the plan says, and log everything to MLflow.

    Everything that can fail on the user's input (data, weights, model folder) fails before a run exists.
    Under a multi-process launch every process trains its share and only the main one talks to MLflow: one
    run. When checkpoints of the same run are on disk (a crash, a kill -9), it goes on from the newest intact
    one, in the same MLflow run (unless the plan says not to checkpoint). `parent_run_id` nests the run under
    a run of another process (a Ray sweep's parent); `on_epoch` sees every epoch's result (a Tune trial
    reports it)."""
    spec, recipe, seed = plan.spec, plan.recipe, plan.seed
    if spec.head is not None:  # a sentence-embedding baseline: frozen encoder + head, no fine-tuning
        from parabench.training.baselines import track_baseline

        return track_baseline(params, plan, log, nested, extra_tags, parent_run_id)
    if spec.members is not None:  # a seed ensemble of FINISHED runs: nothing to train
        from parabench.training.ensemble import track_ensemble

        return track_ensemble(params, plan, log, nested, extra_tags, parent_run_id)
    require_validated(params)
    if plan.record:
        require_record_folder(params)
    weights = resolve_weights(spec, params)
    if params.train.num_threads is not None:
        torch.set_num_threads(params.train.num_threads)
    accelerator = make_accelerator(plan.engine)
    main = accelerator.is_main_process
    say = log if main else lambda _: None  # one process speaks for all

    frames = load_frames(params.path(params.data.processed_dir))
    frames["train"] = subsample(frames["train"], plan.max_train_samples, seed)
    for split in ("validation", "test"):
        frames[split] = subsample(frames[split], plan.max_eval_samples, seed)
    teacher: dict[str, Any] = {}
    if recipe.teacher is not None:  # distillation: the cached teacher logits, before any run exists
        logits, teacher = teacher_logits(params, recipe.teacher, frames["train"], plan.data_version)
    set_seed(seed)
    tokenizer, model = load_tokenizer_and_model(spec, params, weights=weights, load_in_4bit=plan.load_in_4bit)
    check_max_length(plan.max_length, spec.key, tokenizer, model)
    encoded = {split: encode_frame(tokenizer, frame, plan.max_length) for split, frame in frames.items()}
    if teacher:
        encoded["train"] = dataclasses.replace(encoded["train"], teacher_logits=logits)
    checkpoints = (
        Checkpoints(params.path(params.train.checkpoint_dir) / plan.checkpoint_name)
        if plan.checkpoint
        else None
    )
    resumed = checkpoints.run_id() if checkpoints is not None else None

    experiment_id = tracking.configure(params) if main else ""
    if main and resumed is not None and not tracking.run_exists(resumed):
        say(f"checkpoints of run {resumed} found, but that run is not in this tracking store: starting over")
        checkpoints.clear()
        resumed = None
    accelerator.wait_for_everyone()
    tags = {**plan.tags(), **(extra_tags or {})}
    run_context = (
        tracking.tracked_run(plan.run_name, tags, nested, resumed, parent_run_id) if main else nullcontext()
    )
    with run_context as run:
        if main and resumed is None:
            tracking.log_params(
                {
                    **plan.logged_params(),
                    "model_source": str(weights),
                    "train_samples": len(frames["train"]),
                    "git_commit": tracking.git_commit(params.root),
                    "dtype": str(next(model.parameters()).dtype),
                    **tracking.hardware(accelerator.device),
                    "num_processes": accelerator.num_processes,
                    **(lora_params(params, model) if spec.lora else {}),
                    **({"teacher_run_id": teacher["run_id"]} if teacher else {}),
                }
            )
        if main and checkpoints is not None:
            checkpoints.bind(run.info.run_id)
        pad_token_id = tokenizer.pad_token_id
        say(f"training {spec.key} (seed {seed}) on {len(frames['train'])} pairs: {recipe}")
        model, fit = fine_tune(
            model,
            encoded["train"],
            encoded["validation"],
            recipe,
            seed,
            pad_token_id,
            plan.eval_batch_size,
            accelerator,
            plan.engine,
            checkpoints,
            on_epoch_end=lambda epoch: main and epoch_ended(epoch, on_epoch),
            log=say,
        )
        if main and fit.resumed_from:
            mlflow.set_tag("parabench.resumed_from", fit.resumed_from)
        model = merge_lora(model) if spec.lora else model
        final, predictions = evaluate_splits(
            prepare_for_inference(model, plan.inference_path),
            encoded,
            plan.eval_batch_size,
            pad_token_id,
            say,
            accelerator,
        )
        test_predictions = predictions["test"]
        final |= {
            "kept_epoch": fit.kept_epoch,
            "train_samples_per_second": fit.train_samples_per_second,
            "eval_samples_per_second": test_predictions.samples_per_second,
            "num_parameters": count_parameters(model),
            "model_size_mb": model_size_mb(model),
        }
        if main:
            tracking.log_params({"num_parameters": final["num_parameters"]})
            test = (frames["test"], encoded["test"], test_predictions)
            log_run_artifacts(model, tokenizer, *test, final, plan)
            tracking.log_final_metrics(final)
            if plan.record:
                timings = {
                    "train_seconds": fit.train_seconds,
                    "test_inference_seconds": test_predictions.seconds,
                }
                device = accelerator.device.type
                record = log_record(
                    params,
                    plan,
                    "fine-tuned",
                    frames,
                    predictions,
                    final,
                    fit.epochs,
                    timings,
                    device_type=device,
                )
        accelerator.wait_for_everyone()
    if main and plan.record:
        with tracking.completing(run.info.run_id):
            save_record(params, record, say)
    if main and checkpoints is not None and not plan.keep_checkpoints:
        checkpoints.clear()
    run_id = run.info.run_id if main else ""
    return RunSummary(run_id, experiment_id, spec.key, seed, final, main)


def epoch_ended(epoch: EpochResult, on_epoch: Callable[[EpochResult], None] | None) -> None:
    """Log one epoch's point of the curve (main process), then hand it to the caller's hook."""
    tracking.log_epoch(
        epoch.epoch,
        {
            "train_loss": epoch.train_loss,
            "validation_accuracy": epoch.validation_accuracy,
            "validation_f1": epoch.validation_f1,
        },
    )
    if on_epoch is not None:
        on_epoch(epoch)


def lora_params(params: Params, model: Any) -> dict[str, Any]:
    """The LoRA settings and the modules they were applied to (peft picks them per architecture)."""
    config = model.peft_config["default"]
    return {
        **{f"lora_{k}": v for k, v in params.lora.model_dump().items()},
        "lora_target_modules": ",".join(sorted(config.target_modules or [])),
    }


def evaluate_splits(
    model: Any,
    encoded: dict[str, EncodedSplit],
    batch_size: int,
    pad_token_id: int,
    log: Callable[[str], None],
    accelerator: Any = None,
) -> tuple[dict[str, float], dict[str, Predictions]]:
    """Accuracy and F1 on every split; returns them with every split's predictions (timed, for throughput)."""
    predictions = {
        split: predict(model, encoded[split], batch_size, pad_token_id, accelerator).require_finite(
            f"the trained model on the {split} split"
        )
        for split in SPLITS
    }
    labels = {split: encoded[split].labels for split in SPLITS}
    return split_metrics(labels, predictions, log), predictions


def split_metrics(
    labels: dict[str, np.ndarray], predictions: dict[str, Predictions], log: Callable[[str], None]
) -> dict[str, float]:
    """Accuracy and F1 of every split's predictions under the names every run logs (the validation split's
    `final_validation_*`: the per-epoch curve keeps `validation_*`)."""
    metrics: dict[str, float] = {}
    for split in SPLITS:
        scores = classification_metrics(labels[split], predictions[split].labels)
        prefix = "final_validation" if split == "validation" else split
        metrics |= {f"{prefix}_{name}": value for name, value in scores.items()}
        speed = predictions[split].samples_per_second
        log(
            f"evaluated {split}: accuracy {scores['accuracy']:.4f}  f1 {scores['f1']:.4f}"
            + (f"  ({speed:.0f} pairs/s)" if speed else "")
        )
    return metrics


def log_evaluation_artifacts(
    test_frame: pd.DataFrame, test_predictions: Predictions, final: dict[str, float], plan: RunPlan
) -> None:
    """What every run logs about its evaluation: the test confusion matrix, every test pair with its
    prediction, and the final metrics as JSON."""
    references = test_frame["label"].to_numpy()
    figure = confusion_matrix_figure(references, test_predictions.labels, f"{plan.spec.key} — MRPC test")
    mlflow.log_figure(figure, "confusion_matrix_test.png")
    with tempfile.TemporaryDirectory() as folder:
        csv_path = Path(folder) / "predictions_test.csv"
        predictions_table(test_frame, test_predictions).to_csv(csv_path, index=False)
        mlflow.log_artifact(str(csv_path))
    tracking.log_json(final, "metrics.json")


def log_run_artifacts(
    model: Any,
    tokenizer: Any,
    test_frame: pd.DataFrame,
    test: EncodedSplit,
    test_predictions: Predictions,
    final: dict[str, float],
    plan: RunPlan,
) -> None:
    """Confusion matrix, test predictions, metrics JSON, and the model (saved whole, then logged)."""
    log_evaluation_artifacts(test_frame, test_predictions, final, plan)
    with tempfile.TemporaryDirectory() as folder:
        weights_dir = Path(folder) / "weights"
        model.save_pretrained(weights_dir)
        tokenizer.save_pretrained(weights_dir)
        limits = RequestLimits.of(plan.serve)
        log_paraphrase_model(weights_dir, plan.max_length, plan.eval_batch_size, plan.inference_path, limits)
