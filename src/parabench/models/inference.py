"""How a model runs inference: pairs tokenized once, length-sorted dynamically padded batches, and the
path: torch fp32, bf16 autocast or int8 weights (dynamic quantization) on all or some layers, or the model
exported to ONNX Runtime or OpenVINO (`models.runtimes`).

The path is chosen in params.yaml (`inference.path`, `auto` resolved by `models.choice`); evaluation, serving,
the teacher and the benchmark all go through `prepare_for_inference` and `predict`.
"""

from __future__ import annotations

import contextlib
import copy
import re
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic
from transformers import PreTrainedModel, PreTrainedTokenizerBase

if TYPE_CHECKING:
    from accelerate import Accelerator

from parabench.common.errors import ParabenchError
from parabench.common.names import INFERENCE_PATHS
from parabench.common.progress import progress
from parabench.models import runtimes

# Linear layers kept in fp32 by the *_ffn paths: attention projections and the classification head, which
# int8 error hurts most; the feed-forward blocks (two thirds of an encoder layer's FLOPs) go int8.
SENSITIVE_LINEAR = re.compile(
    r"attention|attn|query|key|value|classifier|score|pooler|out_proj|q_proj|k_proj|v_proj"
)
QUANTIZED = {
    "int8_dynamic": (default_dynamic_qconfig, False),
    "int8_per_channel": (per_channel_dynamic_qconfig, False),
    "int8_ffn_per_channel": (per_channel_dynamic_qconfig, True),
}
EXPORTED = {
    "onnxruntime": (runtimes.onnxruntime_model, False),
    "onnxruntime_int8": (runtimes.onnxruntime_model, True),
    "openvino": (runtimes.openvino_model, False),
    "openvino_int8": (runtimes.openvino_model, True),
}


def check_path(path: str) -> str:
    """The path itself, or a ValueError listing the known ones."""
    if path not in INFERENCE_PATHS:
        raise ValueError(f"unknown inference path '{path}'; known: {', '.join(INFERENCE_PATHS)}")
    return path


def prepare_for_inference(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """The model in eval mode as the path runs it: itself (fp32), under bf16 autocast, with int8 Linear
    layers (a new module), or exported to ONNX Runtime / OpenVINO (pair classifiers only). A path whose
    runtime is not installed falls back to fp32 with one warning line on stderr; on a GPU every path is the
    model itself."""
    model.eval()
    check_path(path)
    if model_device(model).type != "cpu":  # the other paths are CPU paths: a GPU runs its own precision
        return model
    if path == "bf16":
        return runtimes.Autocast(model)
    if path in EXPORTED and not type(model).__name__.endswith("ForSequenceClassification"):
        return model  # exported paths serve pair classifiers; an encoder (baselines) stays in torch fp32
    if path in EXPORTED:
        build, int8 = EXPORTED[path]
        try:
            return build(model, int8)
        except runtimes.RuntimeMissing as missing:
            print(f"warning: inference path {path} needs {missing}, not installed: fp32", file=sys.stderr)
            return model
    if path not in QUANTIZED:
        return model
    qconfig, feed_forward_only = QUANTIZED[path]
    layers = {
        name: qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not (feed_forward_only and SENSITIVE_LINEAR.search(name))
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantize.*deprecated", category=UserWarning)
        return quantize_dynamic(model, layers, dtype=torch.qint8, inplace=False)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's weights are (the CPU for a model run by another runtime)."""
    return next(model.parameters(), torch.empty(0)).device


Batch = dict[str, torch.Tensor]
TEACHER_LOGITS = "teacher_logits"  # a batch's teacher log-odds (distillation), never given to forward()


@dataclass(frozen=True)
class EncodedSplit:
    """A split tokenized once: token ids per pair (unpadded) and labels; for a distilled student's train split
    also the teacher's logit (log-odds of a paraphrase) per pair."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: np.ndarray
    teacher_logits: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self))


@dataclass(frozen=True)
class Predictions:
    """Per-pair paraphrase probabilities and predicted labels, with the time inference took."""

    probabilities: np.ndarray
    seconds: float

    @property
    def labels(self) -> np.ndarray:
        return (self.probabilities >= 0.5).astype(np.int64)

    @property
    def log_odds(self) -> np.ndarray:
        """log(p / (1 − p)) per pair: a two-class model's logit difference, finite (p clipped to float32's
        resolution, where the softmax computing p saturates)."""
        eps = float(np.finfo(np.float32).eps)
        p = np.clip(self.probabilities, eps, 1 - eps)
        return np.log(p) - np.log1p(-p)

    @property
    def samples_per_second(self) -> float:
        return len(self.probabilities) / self.seconds if self.seconds else 0.0

    def require_finite(self, what: str) -> Predictions:
        """These predictions, when every probability is a number; a ParabenchError naming `what` otherwise (a
        diverged model answers NaN: it must never be scored, logged or distilled from)."""
        bad = int(np.count_nonzero(~np.isfinite(self.probabilities)))
        if bad:
            raise ParabenchError(
                f"{what} gives no probability (NaN) for {bad:,} of {len(self.probabilities):,} pairs: its "
                "weights are not finite (a diverged training); train it again with a lower learning rate"
            )
        return self


def mean_predictions(members: list[Predictions]) -> Predictions:
    """A seed ensemble's predictions: the members' mean probability, the time of all of them together."""
    return Predictions(
        np.mean([member.probabilities for member in members], axis=0),
        sum(member.seconds for member in members),
    )


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    sentence1: list[str],
    sentence2: list[str],
    max_length: int,
    labels: np.ndarray | None = None,
) -> EncodedSplit:
    """Tokenize sentence pairs together (both sentences always reach the model), truncating to max_length."""
    input_ids, token_types = truncated_pairs(tokenizer, list(sentence1), list(sentence2), max_length)
    labels = (
        np.zeros(len(sentence1), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    )
    return EncodedSplit(input_ids, token_types, labels)


def truncated_pairs(
    tokenizer: PreTrainedTokenizerBase, first: list[str], second: list[str], max_length: int
) -> tuple[list[list[int]], list[list[int]] | None]:
    """The token ids of each pair, and its segment ids where the model takes them, exactly as
    `tokenizer(first, second, truncation=True, max_length=max_length)` gives them, in time linear in the
    text. That call pairs every overflowing window of one sentence with every window of the other: a pair of
    4,000-character sentences at a small max_length takes seconds, a request of them minutes. Here each
    sentence is tokenized alone and cut to max_length tokens (the longer of two over it to one more, so that
    the pair truncates, longest first, as it would whole) before the tokenizer puts the pair together."""
    if not tokenizer.is_fast:
        encoded = tokenizer(first, second, truncation=True, max_length=max_length)
        return encoded["input_ids"], encoded.get("token_type_ids")
    backend = copy.deepcopy(tokenizer.backend_tokenizer)  # its truncation and padding are shared state
    backend.no_padding()
    backend.no_truncation()
    side = tokenizer.truncation_side
    singles = zip(
        backend.encode_batch(first, add_special_tokens=False),
        backend.encode_batch(second, add_special_tokens=False),
        strict=True,
    )
    backend.enable_truncation(max_length, stride=0, strategy="longest_first", direction=side)
    input_ids, token_types = [], []
    for one, other in singles:
        lengths = len(one.ids), len(other.ids)
        for encoding, own, rival in ((one, *lengths), (other, *reversed(lengths))):
            if own > max_length:
                encoding.truncate(max_length + (own > rival), 0, side)
        pair = backend.post_process(one, other, add_special_tokens=True)
        input_ids.append(pair.ids)
        token_types.append(pair.type_ids)
    return input_ids, token_types if "token_type_ids" in tokenizer.model_input_names else None


def encode_frame(tokenizer: PreTrainedTokenizerBase, frame: pd.DataFrame, max_length: int) -> EncodedSplit:
    """Tokenize a GLUE-schema DataFrame (sentence1, sentence2, label)."""
    return encode_pairs(
        tokenizer,
        frame["sentence1"].tolist(),
        frame["sentence2"].tolist(),
        max_length,
        frame["label"].to_numpy(),
    )


def collate(split: EncodedSplit, indices: np.ndarray, pad_token_id: int) -> Batch:
    """Pad the chosen pairs to the longest among them (dynamic padding)."""
    width = max(len(split.input_ids[i]) for i in indices)
    input_ids = torch.full((len(indices), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
    token_type_ids = torch.zeros((len(indices), width), dtype=torch.long) if split.token_type_ids else None
    for row, index in enumerate(indices):
        ids = split.input_ids[index]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        if token_type_ids is not None:
            token_type_ids[row, : len(ids)] = torch.tensor(split.token_type_ids[index])
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": torch.from_numpy(split.labels[indices]),
    }
    if token_type_ids is not None:
        batch["token_type_ids"] = token_type_ids
    if split.teacher_logits is not None:
        batch[TEACHER_LOGITS] = torch.from_numpy(split.teacher_logits[indices]).float()
    return batch


def sorted_batches(lengths: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Batches in order of length, for inference: the least padding possible."""
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def model_inputs(model: PreTrainedModel, batch: Batch) -> Batch:
    """What forward() takes: no teacher logits, and no token_type_ids for models whose forward() has none
    (RoBERTa-like with type vocab 1, BART, …)."""
    accepts_types = getattr(model.config, "type_vocab_size", 0) > 1
    return {
        k: v for k, v in batch.items() if k != TEACHER_LOGITS and (k != "token_type_ids" or accepts_types)
    }


def predict(
    model: PreTrainedModel,
    split: EncodedSplit,
    batch_size: int,
    pad_token_id: int,
    accelerator: Accelerator | None = None,
) -> Predictions:
    """Paraphrase probability for every pair: inference mode, length-sorted batches, dynamic padding, on the
    model's device. With an accelerator of several processes each takes a share of the batches and the
    shares are gathered, so every pair is counted exactly once; its mixed precision applies (autocast)."""
    model.eval()
    device = model_device(model)
    batches = list(sorted_batches(split.lengths, batch_size))
    sharded = accelerator is not None and accelerator.num_processes > 1
    probabilities = np.full(len(split), np.nan, dtype=np.float64)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        mine = stack.enter_context(accelerator.split_between_processes(batches)) if sharded else batches
        if accelerator is not None:
            stack.enter_context(accelerator.autocast())
        stack.enter_context(torch.inference_mode())
        bar = stack.enter_context(progress(sum(len(indices) for indices in mine), "evaluating"))
        for indices in mine:
            batch = model_inputs(model, collate(split, indices, pad_token_id))
            batch.pop("labels")
            logits = model(**{name: tensor.to(device) for name, tensor in batch.items()}).logits
            probabilities[indices] = torch.softmax(logits.float(), dim=-1)[:, 1].cpu().numpy()
            bar.update(len(indices))
    if sharded:
        from accelerate.utils import gather_object

        done = [int(i) for indices in mine for i in indices]
        for index, probability in gather_object(list(zip(done, probabilities[done].tolist(), strict=True))):
            probabilities[index] = probability
    return Predictions(probabilities, time.perf_counter() - started)
