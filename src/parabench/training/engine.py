"""One fine-tuning run: a model and a recipe in, per-epoch results and the trained model out.

No MLflow here: the caller gets each epoch's result through a callback and logs it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import PreTrainedModel, get_scheduler

from parabench.common.progress import progress
from parabench.config import Recipe
from parabench.models.inference import EncodedSplit, collate, model_inputs, predict
from parabench.training.metrics import classification_metrics

# Batches are drawn from windows of this many batches sorted by length: little padding, still shuffled.
LENGTH_GROUP_WINDOW = 50


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
    select_best_epoch: bool = False

    @property
    def kept_epoch(self) -> int:
        """The epoch whose weights the model ends with."""
        return self.best_epoch if self.select_best_epoch else len(self.epochs)

    @property
    def train_samples_per_second(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds else 0.0


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch so a run is repeatable."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    description: str = "training",
) -> list[float]:
    """One optimizer step per batch (dynamic padding, gradient clipping); returns the losses. A progress
    bar shows pairs/s and the running loss on a terminal."""
    model.train()
    losses = []
    with progress(sum(len(indices) for indices in batches), description) as bar:
        for indices in batches:
            loss = model(**model_inputs(model, collate(split, indices, pad_token_id))).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.update(len(indices))
            bar.set_postfix(loss=f"{np.mean(losses):.4f}", refresh=False)
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
    result = FineTuneResult(select_best_epoch=recipe.select_best_epoch)
    for epoch in range(1, recipe.epochs + 1):
        started = time.perf_counter()
        batches = length_grouped_batches(train.lengths, recipe.batch_size, rng)
        losses = train_steps(
            model,
            train,
            batches,
            optimizer,
            scheduler,
            pad_token_id,
            recipe.max_grad_norm,
            f"epoch {epoch}/{recipe.epochs}",
        )
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
