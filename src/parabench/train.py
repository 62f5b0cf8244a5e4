"""One fine-tuning run: a model and a recipe in, per-epoch results and the trained model out.

No MLflow here: the caller gets each epoch's result through a callback and logs it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from parabench.config import Recipe
from parabench.metrics import classification_metrics

Batch = dict[str, torch.Tensor]
# Batches are drawn from windows of this many batches sorted by length: little padding, still shuffled.
LENGTH_GROUP_WINDOW = 50


@dataclass(frozen=True)
class EncodedSplit:
    """A split tokenized once: token ids per pair (unpadded) and labels."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self))


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    validation_accuracy: float
    validation_f1: float
    seconds: float


@dataclass
class FineTuneResult:
    epochs: list[EpochResult] = field(default_factory=list)
    train_seconds: float = 0.0
    train_samples: int = 0
    best_epoch: int = 0
    best_validation_accuracy: float = -1.0

    @property
    def train_samples_per_second(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds else 0.0


@dataclass(frozen=True)
class Predictions:
    """Per-pair paraphrase probabilities and predicted labels, with the time inference took."""

    probabilities: np.ndarray
    seconds: float

    @property
    def labels(self) -> np.ndarray:
        return (self.probabilities >= 0.5).astype(np.int64)

    @property
    def samples_per_second(self) -> float:
        return len(self.probabilities) / self.seconds if self.seconds else 0.0


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch so a run is repeatable."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    sentence1: list[str],
    sentence2: list[str],
    max_length: int,
    labels: np.ndarray | None = None,
) -> EncodedSplit:
    """Tokenize sentence pairs together (both sentences always reach the model), truncating to max_length."""
    encoded = tokenizer(list(sentence1), list(sentence2), truncation=True, max_length=max_length)
    token_types = encoded.get("token_type_ids")
    labels = (
        np.zeros(len(sentence1), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    )
    return EncodedSplit(encoded["input_ids"], token_types, labels)


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
    return batch


def length_grouped_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shuffled batches of similar-length pairs: shuffle, sort within windows, then shuffle the batches."""
    order = rng.permutation(len(lengths))
    window = batch_size * LENGTH_GROUP_WINDOW
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def sorted_batches(lengths: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Batches in order of length, for inference: the least padding possible."""
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def model_inputs(model: PreTrainedModel, batch: Batch) -> Batch:
    """Drop token_type_ids for models whose forward() has none (RoBERTa-like with type vocab 1, BART, …)."""
    accepts_types = getattr(model.config, "type_vocab_size", 0) > 1
    return {k: v for k, v in batch.items() if k != "token_type_ids" or accepts_types}


def predict(model: PreTrainedModel, split: EncodedSplit, batch_size: int, pad_token_id: int) -> Predictions:
    """Paraphrase probability for every pair: inference mode, length-sorted batches, dynamic padding."""
    model.eval()
    probabilities = np.empty(len(split), dtype=np.float64)
    started = time.perf_counter()
    with torch.inference_mode():
        for indices in sorted_batches(split.lengths, batch_size):
            batch = model_inputs(model, collate(split, indices, pad_token_id))
            batch.pop("labels")
            logits = model(**batch).logits.float()
            probabilities[indices] = torch.softmax(logits, dim=-1)[:, 1].numpy()
    return Predictions(probabilities, time.perf_counter() - started)


def build_optimizer(
    model: PreTrainedModel, recipe: Recipe, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with weight decay on weights only (not biases or LayerNorm), as the HF Trainer does, and the
    recipe's learning-rate schedule over total_steps."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 or "norm" in name.lower() else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=recipe.learning_rate)
    warmup_steps = int(recipe.warmup_ratio * total_steps)
    scheduler = get_scheduler(recipe.scheduler, optimizer, warmup_steps, num_training_steps=total_steps)
    return optimizer, scheduler


def train_steps(
    model: PreTrainedModel,
    split: EncodedSplit,
    batches: list[np.ndarray],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    pad_token_id: int,
    max_grad_norm: float,
) -> list[float]:
    """One optimizer step per batch (dynamic padding, gradient clipping); returns the losses."""
    model.train()
    losses = []
    for indices in batches:
        loss = model(**model_inputs(model, collate(split, indices, pad_token_id))).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def fine_tune(
    model: PreTrainedModel,
    train: EncodedSplit,
    validation: EncodedSplit,
    recipe: Recipe,
    seed: int,
    pad_token_id: int,
    eval_batch_size: int,
    on_epoch_end: Callable[[EpochResult], None] = lambda _: None,
    log: Callable[[str], None] = print,
) -> FineTuneResult:
    """Fine-tune `model` on `train` with the recipe, validating after each epoch."""
    set_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer, scheduler = build_optimizer(
        model, recipe, math.ceil(len(train) / recipe.batch_size) * recipe.epochs
    )
    result = FineTuneResult()
    for epoch in range(1, recipe.epochs + 1):
        started = time.perf_counter()
        batches = length_grouped_batches(train.lengths, recipe.batch_size, rng)
        losses = train_steps(model, train, batches, optimizer, scheduler, pad_token_id, recipe.max_grad_norm)
        result.train_seconds += time.perf_counter() - started
        result.train_samples += len(train)
        validation_predictions = predict(model, validation, eval_batch_size, pad_token_id)
        scores = classification_metrics(validation.labels, validation_predictions.labels)
        epoch_result = EpochResult(
            epoch, float(np.mean(losses)), scores["accuracy"], scores["f1"], time.perf_counter() - started
        )
        result.epochs.append(epoch_result)
        log(
            f"epoch {epoch}/{recipe.epochs}: train_loss {epoch_result.train_loss:.4f}  "
            f"validation_accuracy {epoch_result.validation_accuracy:.4f}  "
            f"validation_f1 {epoch_result.validation_f1:.4f}  ({epoch_result.seconds:.0f} s)"
        )
        on_epoch_end(epoch_result)
        if recipe.select_best_epoch and epoch_result.validation_accuracy > result.best_validation_accuracy:
            best_state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
            result.best_epoch, result.best_validation_accuracy = epoch, epoch_result.validation_accuracy
    if recipe.select_best_epoch and result.best_epoch != recipe.epochs:
        model.load_state_dict(best_state)
        log(f"kept epoch {result.best_epoch}'s weights (best validation accuracy)")
    return result
