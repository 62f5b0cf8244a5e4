"""One tracked training run: validated data → model → fine-tune → evaluate → MLflow (+ reports/runs)."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch

from parabench import tracking
from parabench.config import Params, Recipe
from parabench.data.fetch import atomic_target
from parabench.data.prepare import load_frames
from parabench.data.validate import require_validated
from parabench.inference import check_path, prepare_for_inference
from parabench.metrics import classification_metrics
from parabench.pyfunc import log_paraphrase_model
from parabench.train import EncodedSplit, Predictions, encode_frame, fine_tune, predict, set_seed
from parabench.zoo import (
    ModelSpec,
    count_parameters,
    get_spec,
    load_tokenizer_and_model,
    merge_lora,
    model_size_mb,
    resolve_weights,
)

FIELD_DEFAULTS = {f.name: f.default for f in fields(Recipe) if f.default is not MISSING}
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    experiment_id: str
    model: str
    seed: int
    metrics: dict[str, float]


def resolve_recipe_name(params: Params, spec: ModelSpec, recipe_name: str) -> str:
    """'auto' (or '') = the model's own recipe: its zoo entry's, else params.yaml `train.recipe`."""
    return (spec.recipe or params.train.recipe) if recipe_name in ("", "auto") else recipe_name


def choose_recipe(params: Params, spec: ModelSpec, recipe_name: str, overrides: dict[str, Any]) -> Recipe:
    """The named (or the model's own) recipe with CLI/MLproject overrides (0 or None = keep)."""
    name = resolve_recipe_name(params, spec, recipe_name)
    return params.recipe(name).with_overrides(**{k: v for k, v in overrides.items() if v})


def recipe_fingerprint(params: Params, recipe: Recipe, max_train_samples: int) -> str:
    """A short hash of everything that shapes a run besides model, seed and data: equal runs share it."""
    # Fields at their default are left out, so adding a field to Recipe keeps earlier runs' fingerprints.
    chosen = {f.name: getattr(recipe, f.name) for f in fields(recipe)}
    values = {k: v for k, v in chosen.items() if FIELD_DEFAULTS.get(k, MISSING) != v}
    values |= {"max_train_samples": max_train_samples, "max_length": params.train.max_length}
    if params.train.max_eval_samples:
        values["max_eval_samples"] = params.train.max_eval_samples
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def subsample(frame: pd.DataFrame, max_samples: int, seed: int) -> pd.DataFrame:
    """At most max_samples rows (0 = all), drawn with the run's seed, in file order."""
    if not max_samples or max_samples >= len(frame):
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


def write_metrics_file(path: Path, values: dict[str, Any]) -> None:
    """Write JSON atomically (temp file then rename) so DVC never sees half a file."""
    with atomic_target(path) as temp:
        temp.write_text(json.dumps(values, indent=2, sort_keys=True), encoding="utf-8")


def train_and_track(
    params: Params,
    model_key: str,
    seed: int,
    recipe_name: str = "auto",
    overrides: dict[str, Any] | None = None,
    max_train_samples: int | None = None,
    log: Callable[[str], None] = print,
    nested: bool = False,
    extra_tags: dict[str, str] | None = None,
) -> RunSummary:
    """Fine-tune one model with one seed on validated MRPC and log everything to MLflow."""
    spec = get_spec(model_key, params)
    data_version = require_validated(params)
    weights = resolve_weights(spec, params)
    recipe = choose_recipe(params, spec, recipe_name, overrides or {})
    inference_path = check_path(params.raw["inference"]["path"])
    max_train_samples = params.train.max_train_samples if max_train_samples is None else max_train_samples
    if params.train.num_threads:
        torch.set_num_threads(params.train.num_threads)

    frames = load_frames(params.path(params.data.processed_dir))
    frames["train"] = subsample(frames["train"], max_train_samples, seed)
    for split in ("validation", "test"):
        frames[split] = subsample(frames[split], params.train.max_eval_samples, seed)
    set_seed(seed)
    tokenizer, model = load_tokenizer_and_model(spec, params, weights=weights)
    encoded = {
        split: encode_frame(tokenizer, frame, params.train.max_length) for split, frame in frames.items()
    }

    experiment_id = tracking.configure(params)
    tags = {
        "model": spec.key,
        "size_class": spec.size_class,
        "family": spec.family,
        "seed": str(seed),
        "data_version": data_version,
        "recipe_fingerprint": recipe_fingerprint(params, recipe, max_train_samples),
        **(extra_tags or {}),
    }
    with tracking.tracked_run(run_name=f"{spec.key}-seed{seed}", tags=tags, nested=nested) as run:
        tracking.log_params(
            {
                **asdict(recipe),
                "recipe": resolve_recipe_name(params, spec, recipe_name),
                "model": spec.key,
                "model_source": str(weights),
                "size_class": spec.size_class,
                "family": spec.family,
                "seed": seed,
                "max_train_samples": max_train_samples,
                "max_eval_samples": params.train.max_eval_samples,
                "train_samples": len(frames["train"]),
                "max_length": params.train.max_length,
                "eval_batch_size": params.train.eval_batch_size,
                "optimizer": "AdamW",
                "lora": spec.lora,
                "data_version": data_version,
                "git_commit": tracking.git_commit(params.root),
                "dtype": str(next(model.parameters()).dtype),
                "eval_path": f"{inference_path}-inference_mode-length_sorted-dynamic_padding",
                **tracking.hardware(),
                **({f"lora_{k}": v for k, v in asdict(params.lora).items()} if spec.lora else {}),
            }
        )
        pad_token_id = tokenizer.pad_token_id
        log(f"training {spec.key} (seed {seed}) on {len(frames['train'])} pairs: {recipe}")
        fit = fine_tune(
            model,
            encoded["train"],
            encoded["validation"],
            recipe,
            seed,
            pad_token_id,
            params.train.eval_batch_size,
            on_epoch_end=lambda epoch: tracking.log_epoch(
                epoch.epoch,
                {
                    "train_loss": epoch.train_loss,
                    "validation_accuracy": epoch.validation_accuracy,
                    "validation_f1": epoch.validation_f1,
                },
            ),
            log=log,
        )
        if recipe.select_best_epoch:
            tracking.log_params({"best_epoch": fit.best_epoch})
        model = merge_lora(model) if spec.lora else model
        final, test_predictions = evaluate_splits(
            prepare_for_inference(model, inference_path),
            encoded,
            params.train.eval_batch_size,
            pad_token_id,
            log,
        )
        final |= {
            "train_samples_per_second": fit.train_samples_per_second,
            "eval_samples_per_second": test_predictions.samples_per_second,
            "num_parameters": count_parameters(model),
            "model_size_mb": model_size_mb(model),
        }
        tracking.log_params({"num_parameters": final["num_parameters"]})
        log_run_artifacts(
            model, tokenizer, frames["test"], encoded["test"], test_predictions, final, params, spec
        )
        tracking.log_final_metrics(final, step=recipe.epochs)
    return RunSummary(run.info.run_id, experiment_id, spec.key, seed, final)


def evaluate_splits(
    model: Any,
    encoded: dict[str, EncodedSplit],
    batch_size: int,
    pad_token_id: int,
    log: Callable[[str], None],
) -> tuple[dict[str, float], Predictions]:
    """Accuracy and F1 on every split; returns them with the test predictions (timed, for throughput)."""
    metrics: dict[str, float] = {}
    predictions: dict[str, Predictions] = {}
    for split in SPLITS:
        predictions[split] = predict(model, encoded[split], batch_size, pad_token_id)
        scores = classification_metrics(encoded[split].labels, predictions[split].labels)
        metrics |= {f"{split}_{name}": value for name, value in scores.items()}
        log(
            f"evaluated {split}: accuracy {scores['accuracy']:.4f}  f1 {scores['f1']:.4f}  "
            f"({predictions[split].samples_per_second:.0f} pairs/s)"
        )
    return metrics, predictions["test"]


def log_run_artifacts(
    model: Any,
    tokenizer: Any,
    test_frame: pd.DataFrame,
    test: EncodedSplit,
    test_predictions: Predictions,
    final: dict[str, float],
    params: Params,
    spec: ModelSpec,
) -> None:
    """Confusion matrix, test predictions, metrics JSON, and the model (saved whole, then logged)."""
    figure = confusion_matrix_figure(test.labels, test_predictions.labels, f"{spec.key} — MRPC test")
    mlflow.log_figure(figure, "confusion_matrix_test.png")
    with tempfile.TemporaryDirectory() as folder:
        csv_path = Path(folder) / "predictions_test.csv"
        predictions_table(test_frame, test_predictions).to_csv(csv_path, index=False)
        mlflow.log_artifact(str(csv_path))
        tracking.log_json(final, "metrics.json")
        weights_dir = Path(folder) / "weights"
        model.save_pretrained(weights_dir)
        tokenizer.save_pretrained(weights_dir)
        log_paraphrase_model(
            weights_dir,
            params.train.max_length,
            params.train.eval_batch_size,
            params.raw["inference"]["path"],
        )
