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
# How a trained model runs inference: torch fp32 / bf16 autocast / dynamic int8 (all or feed-forward Linear
# layers), ONNX Runtime (fp32, dynamic int8) and OpenVINO (its default precision, NNCF int8 weights).
INFERENCE_PATHS = (
    "fp32",
    "bf16",
    "int8_dynamic",
    "int8_per_channel",
    "int8_ffn_per_channel",
    "onnxruntime",
    "onnxruntime_int8",
    "openvino",
    "openvino_int8",
)
# inference.path: auto = the fastest path `parabench bench` proved eligible on this CPU class, else fp32.
AUTO_PATH = "auto"
