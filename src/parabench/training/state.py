"""Where a fine-tuning stands: one record the engine updates and the checkpoints save and restore whole (the
epoch and the micro-batches of it already run, the batch order's RNG state, the results so far, the running
totals, the best epoch and its weights)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    validation_accuracy: float
    validation_f1: float
    seconds: float


@dataclass
class TrainingState:
    """The next epoch and the micro-batches of it already run, the batch order's RNG state at that epoch's
    start, every finished epoch, the totals, and the best epoch's weights (best-epoch recipes)."""

    epoch: int
    step: int
    epoch_rng_state: dict[str, Any]
    epoch_losses: list[float] = field(default_factory=list)
    epoch_seconds: float = 0.0
    epochs: list[EpochResult] = field(default_factory=list)
    train_seconds: float = 0.0
    train_samples: int = 0
    best_epoch: int = 0
    best_validation_accuracy: float = -1.0
    select_best_epoch: bool = False
    best_weights: dict[str, torch.Tensor] | None = None
    resumed_from: str | None = None  # the checkpoint the run went on from, if any

    @classmethod
    def start(cls, rng: np.random.Generator, select_best_epoch: bool = False) -> TrainingState:
        return cls(
            epoch=1, step=0, epoch_rng_state=rng.bit_generator.state, select_best_epoch=select_best_epoch
        )

    @property
    def kept_epoch(self) -> int:
        """The epoch whose weights the model ends with."""
        return self.best_epoch if self.select_best_epoch else len(self.epochs)

    @property
    def train_samples_per_second(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds else 0.0

    def finish_epoch(self, rng: np.random.Generator, result: EpochResult, samples: int) -> bool:
        """Count a finished epoch; the next one starts at step 0 with the batch order where `rng` stands.
        Returns True when it is the best so far (best-epoch recipes)."""
        self.epochs.append(result)
        self.train_seconds += result.seconds
        self.train_samples += samples
        self.epoch, self.step, self.epoch_losses, self.epoch_seconds = result.epoch + 1, 0, [], 0.0
        self.epoch_rng_state = rng.bit_generator.state
        best = self.select_best_epoch and result.validation_accuracy > self.best_validation_accuracy
        if best:
            self.best_epoch, self.best_validation_accuracy = result.epoch, result.validation_accuracy
        return best

    def document(self) -> dict[str, Any]:
        """Everything but the weights, as JSON."""
        values = asdict(self)
        values.pop("best_weights")
        return values

    @classmethod
    def from_document(cls, values: dict[str, Any]) -> TrainingState:
        return cls(**{**values, "epochs": [EpochResult(**epoch) for epoch in values.get("epochs", [])]})
