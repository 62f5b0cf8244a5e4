"""How a trained model runs inference: fp32, or int8 weights (dynamic quantization) on all or some layers.

The path is chosen in params.yaml (`inference.path`); training, evaluation, serving and the benchmark use it.
"""

from __future__ import annotations

import re
import warnings

import torch
from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

# Linear layers kept in fp32 by the *_ffn paths: attention projections and the classification head, which
# int8 error hurts most; the feed-forward blocks (two thirds of an encoder layer's FLOPs) go int8.
SENSITIVE_LINEAR = re.compile(
    r"attention|attn|query|key|value|classifier|score|pooler|out_proj|q_proj|k_proj|v_proj"
)
INFERENCE_PATHS = {
    "fp32": None,
    "int8_dynamic": (default_dynamic_qconfig, False),
    "int8_per_channel": (per_channel_dynamic_qconfig, False),
    "int8_ffn_per_channel": (per_channel_dynamic_qconfig, True),
}


def check_path(path: str) -> str:
    """The path itself, or a ValueError listing the known ones."""
    if path not in INFERENCE_PATHS:
        raise ValueError(f"unknown inference path '{path}'; known: {', '.join(INFERENCE_PATHS)}")
    return path


def prepare_for_inference(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """The model in eval mode, with its Linear layers quantized to int8 as the path says (a new module)."""
    model.eval()
    choice = INFERENCE_PATHS[check_path(path)]
    if choice is None:
        return model
    qconfig, feed_forward_only = choice
    layers = {
        name: qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not (feed_forward_only and SENSITIVE_LINEAR.search(name))
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantize.*deprecated", category=UserWarning)
        return quantize_dynamic(model, layers, dtype=torch.qint8, inplace=False)
