"""Names shared by every layer: the splits, the size classes, the metrics every run logs, the numeric paths.
Each is defined here once."""

from __future__ import annotations

SPLITS = ("train", "validation", "test")
SIZE_CLASSES = ("small", "regular", "large")
# Scores of the model the run ends with. The validation scores carry `final_`, since `validation_accuracy` and
# `validation_f1` are the per-epoch curves (one point per epoch), and with best-epoch selection they differ.
SCORE_METRICS = (
    "train_accuracy",
    "train_f1",
    "final_validation_accuracy",
    "final_validation_f1",
    "test_accuracy",
    "test_f1",
)
VALIDATION_SCORE = "final_validation_accuracy"  # what sweeps, reports and promotions choose by
FINAL_METRICS = (
    *SCORE_METRICS,
    "kept_epoch",
    "train_samples_per_second",
    "eval_samples_per_second",
    "num_parameters",
    "model_size_mb",
)
EPOCH_METRICS = ("train_loss", "validation_accuracy", "validation_f1")
INFERENCE_PATHS = ("fp32", "int8_dynamic", "int8_per_channel", "int8_ffn_per_channel")
