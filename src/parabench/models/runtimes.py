"""The CPU runtimes users deploy a classifier on, behind the forward() of a torch classifier: the model is
exported once to ONNX with torch's dynamo exporter (the legacy TorchScript exporter mis-traces the attention
masks of transformers 5), then run by ONNX Runtime (fp32, or its dynamic int8 quantization) or OpenVINO
(its CPU plugin's default precision, or int8 weights compressed by NNCF). bf16 runs the torch model under
autocast.

Each wrapper keeps the model's `config` and returns an object with `.logits`, so `inference.predict` and every
caller of it (evaluation, serving, the bench) run any path through the same code.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

# Example shapes of the export: dimensions above 1 so the exporter keeps batch and length dynamic.
EXAMPLE_BATCH, EXAMPLE_LENGTH = 2, 16


class RuntimeMissing(ImportError):
    """The path's runtime (onnxruntime, openvino, nncf) is not installed here."""


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The exporter's, the quantizers' and NNCF's chatter (registry notes, hints, progress tables) kept off
    the terminal while inside; errors still raise."""
    loggers = [logging.getLogger(name) for name in ("", "torch.onnx", "torch.export", "nncf", "onnxscript")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def model_input_names(model: torch.nn.Module) -> list[str]:
    """What the classifier's forward() takes (token_type_ids only where the model has a type vocabulary)."""
    names = ["input_ids", "attention_mask"]
    return [*names, "token_type_ids"] if getattr(model.config, "type_vocab_size", 0) > 1 else names


def export_onnx(model: torch.nn.Module, folder: Path) -> Path:
    """The classifier as folder/model.onnx (dynamic batch and length; weights beside it), fp32."""
    names = model_input_names(model)
    example = {
        "input_ids": torch.ones((EXAMPLE_BATCH, EXAMPLE_LENGTH), dtype=torch.long),
        "attention_mask": torch.ones((EXAMPLE_BATCH, EXAMPLE_LENGTH), dtype=torch.long),
        "token_type_ids": torch.zeros((EXAMPLE_BATCH, EXAMPLE_LENGTH), dtype=torch.long),
    }
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    path = folder / "model.onnx"
    with torch.inference_mode(False), torch.no_grad(), quiet():
        torch.onnx.export(
            model.eval(),
            args=(),
            kwargs={name: example[name] for name in names},
            f=str(path),
            dynamo=True,
            dynamic_shapes={name: {0: batch, 1: length} for name in names},
            input_names=names,
            output_names=["logits"],
            optimize=True,
            verbose=False,
        )
    return path


class Exported(torch.nn.Module):
    """A classifier run outside torch: forward(**inputs) feeds numpy arrays to `run`, returns `.logits`."""

    def __init__(
        self,
        config: Any,
        names: list[str],
        run: Callable[[dict[str, np.ndarray]], np.ndarray],
        folder: tempfile.TemporaryDirectory,
    ) -> None:
        super().__init__()
        self.config, self.names, self.run, self.folder = config, names, run, folder

    def forward(self, **inputs: torch.Tensor) -> SimpleNamespace:
        feed = {name: inputs[name].cpu().numpy() for name in self.names}
        return SimpleNamespace(logits=torch.from_numpy(np.asarray(self.run(feed))))


class Autocast(torch.nn.Module):
    """The torch model under CPU bf16 autocast (its outputs in bf16: callers take .float() of them)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, **inputs: torch.Tensor) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(**inputs)


def onnxruntime_model(model: torch.nn.Module, int8: bool) -> Exported:
    """ONNX Runtime's CPU provider on the exported model (its dynamic int8 quantization when asked)."""
    try:
        import onnxruntime
    except ImportError as error:
        raise RuntimeMissing("onnxruntime") from error
    folder = tempfile.TemporaryDirectory(prefix="parabench-onnx-")
    path = export_onnx(model, Path(folder.name))
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantized = path.with_name("model-int8.onnx")
        with quiet():
            quantize_dynamic(path, quantized, weight_type=QuantType.QInt8)
        path = quantized
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Exported(model.config, model_input_names(model), lambda feed: session.run(None, feed)[0], folder)


def openvino_model(model: torch.nn.Module, int8: bool) -> Exported:
    """OpenVINO's CPU plugin with its defaults (bf16 where the CPU has AMX, else fp32) on the exported
    model; with int8, its weights compressed to int8 by NNCF first."""
    try:
        import openvino
    except ImportError as error:
        raise RuntimeMissing("openvino") from error
    folder = tempfile.TemporaryDirectory(prefix="parabench-openvino-")
    core = openvino.Core()
    graph = core.read_model(str(export_onnx(model, Path(folder.name))))
    if int8:
        try:
            import nncf
        except ImportError as error:
            raise RuntimeMissing("nncf") from error
        nncf.set_log_level(logging.ERROR)
        with quiet():
            graph = nncf.compress_weights(graph, mode=nncf.CompressWeightsMode.INT8_ASYM)
    compiled = core.compile_model(graph, "CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads()})
    request = compiled.create_infer_request()

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        return request.infer(feed)[0].copy()

    return Exported(model.config, model_input_names(model), run, folder)
