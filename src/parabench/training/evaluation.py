"""What every tracked run does with its predictions: the splits it scores (subsampled with its seed), the
metric names of the contract, and the evaluation artifacts (confusion matrix, test predictions, metrics)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from parabench.common.names import SPLITS
from parabench.models.inference import Predictions
from parabench.tracking import client as tracking
from parabench.training.metrics import classification_metrics


def subsample(frame: pd.DataFrame, max_samples: int | None, seed: int) -> pd.DataFrame:
    """At most max_samples rows (None = all), drawn with the run's seed, in file order."""
    if max_samples is None or max_samples >= len(frame):
        return frame
    return frame.sample(n=max_samples, random_state=seed).sort_index()


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


def log_evaluation_artifacts(
    model: str, test_frame: pd.DataFrame, test_predictions: Predictions, final: dict[str, float]
) -> None:
    """What every run logs about its evaluation: the test confusion matrix, every test pair with its
    prediction, and the final metrics as JSON."""
    references = test_frame["label"].to_numpy()
    figure = confusion_matrix_figure(references, test_predictions.labels, f"{model} — MRPC test")
    mlflow.log_figure(figure, "confusion_matrix_test.png")
    import matplotlib.pyplot as plt

    plt.close(figure)  # pyplot keeps every figure it made until closed
    with tempfile.TemporaryDirectory() as folder:
        csv_path = Path(folder) / "predictions_test.csv"
        predictions_table(test_frame, test_predictions).to_csv(csv_path, index=False)
        mlflow.log_artifact(str(csv_path))
    tracking.log_json(final, "metrics.json")
