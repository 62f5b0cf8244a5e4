"""The kinds of tracked run (a fine-tuned model, a frozen-encoder head, a seed ensemble): what differs between
them, behind one small protocol that `training.run.train_and_track` drives. A kind never opens a run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from parabench.models.inference import Predictions
from parabench.training.state import EpochResult


@dataclass(frozen=True)
class Fitted:
    """What fitting gave: the kept epoch, training speed, the curve (fine-tuning only), seconds spent, and
    what it chose (a head's threshold or C) to log as parameters."""

    kept_epoch: int = 0
    train_samples_per_second: float = 0.0
    epochs: Sequence[EpochResult] = ()
    timings: dict[str, float] = field(default_factory=dict)
    chosen: dict[str, Any] = field(default_factory=dict)


class RunKind(Protocol):
    """One kind of run. `prepare` does everything that can fail on the user's input, before a run exists;
    `fit` and `predict` run inside it; `log_model` logs the served model; `clean_up` runs after it ended."""

    record_kind: str  # the result record's `kind`
    recipe_name: str
    not_logged: frozenset[str]  # plan parameters this kind does not have
    main: bool  # False in the other processes of a multi-process launch: they log nothing
    device: torch.device

    def prepare(self) -> dict[str, Any]:
        """Load what the run needs; returns the kind's own parameters to log."""
        ...

    def tags(self) -> dict[str, str]:
        """Tags of the run beyond the plan's."""
        ...

    def resumable_run(self, say: Callable[[str], None]) -> str | None:
        """The run id to go on in (checkpoints of an interrupted run), else None."""
        ...

    def fit(
        self, run_id: str | None, on_epoch: Callable[[EpochResult], Any], say: Callable[[str], None]
    ) -> Fitted: ...

    def predict(self, split: str) -> Predictions:
        """The split's predictions (test timed end to end: its pairs/s is the run's throughput)."""
        ...

    def size(self) -> tuple[int, float]:
        """Parameters and megabytes of what is served."""
        ...

    def log_model(self) -> None: ...

    def wait(self) -> None:
        """Wait for the other processes of a multi-process launch (a no-op for one process)."""
        ...

    def clean_up(self) -> None: ...
