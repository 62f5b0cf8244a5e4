"""Accuracy and F1 of paraphrase predictions: through `evaluate` when its scripts load, else locally."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

log = logging.getLogger(__name__)

# evaluate loads its metric scripts from the Hub: ask it only when the Hub answers this fast.
HUB_TIMEOUT_S = 3.0
MetricFn = Callable[[Sequence[int], Sequence[int]], dict[str, float]]


def local_metrics(references: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """The computation of evaluate's `accuracy` and `f1` scripts (scikit-learn, binary F1, positive = 1)."""
    return {
        "accuracy": float(accuracy_score(references, predictions)),
        "f1": float(f1_score(references, predictions, pos_label=1, average="binary", zero_division=0.0)),
    }


@functools.cache
def evaluate_metrics() -> MetricFn | None:
    """evaluate's `accuracy` + `f1` combined, or None when the scripts cannot load (offline, no cache)."""
    from parabench.models.hub import hub_endpoint, hub_offline, hub_reachable

    if hub_offline() or not hub_reachable(hub_endpoint(), HUB_TIMEOUT_S):
        return None
    try:
        import evaluate

        combined = evaluate.combine(["accuracy", "f1"])
    except Exception as error:  # any loading failure means: compute locally
        log.info("evaluate's metric scripts could not be loaded (%s); computing metrics locally", error)
        return None

    def compute(references: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
        result = combined.compute(references=list(references), predictions=list(predictions))
        return {"accuracy": float(result["accuracy"]), "f1": float(result["f1"])}

    return compute


def classification_metrics(
    references: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray
) -> dict[str, float]:
    """Accuracy and F1 (fractions in [0, 1]) of binary predictions against the references."""
    references, predictions = np.asarray(references).tolist(), np.asarray(predictions).tolist()
    compute = evaluate_metrics() or local_metrics
    return compute(references, predictions)
