"""Accuracy and F1 as every run logs them: evaluate's metrics when its Hub-hosted modules load, else the same
computation from scikit-learn; either way the textbook definitions, and the Hub asked once a process."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from parabench.training import metrics


def by_definition(references: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Accuracy = correct / all; F1 of the paraphrase class = 2 TP / (2 TP + FP + FN), 0 without positives."""
    tp = int(np.sum((predictions == 1) & (references == 1)))
    fp = int(np.sum((predictions == 1) & (references == 0)))
    fn = int(np.sum((predictions == 0) & (references == 1)))
    return {
        "accuracy": float(np.mean(predictions == references)),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
    }


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No Hub: evaluate's modules cannot load, so the scikit-learn computation answers."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metrics.evaluate_metrics.cache_clear()
    yield
    metrics.evaluate_metrics.cache_clear()


@pytest.mark.parametrize("seed", range(20))
def test_offline_metrics_agree_with_the_definitions_evaluate_computes(offline: None, seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 500))
    references = rng.integers(0, 2, size)
    predictions = np.where(rng.random(size) < rng.random(), references, 1 - references)
    got = metrics.classification_metrics(references, predictions)
    assert got == pytest.approx(by_definition(references, predictions), abs=1e-12)


@pytest.mark.parametrize(
    ("references", "predictions", "expected"),
    [
        ([0, 0, 0], [0, 0, 0], {"accuracy": 1.0, "f1": 0.0}),  # no positive anywhere: F1 is 0, not an error
        ([1, 1, 0], [0, 0, 0], {"accuracy": 1 / 3, "f1": 0.0}),
        ([1, 0, 1, 1], [1, 1, 1, 0], {"accuracy": 0.5, "f1": 2 / 3}),
    ],
)
def test_edge_cases(offline: None, references: list[int], predictions: list[int], expected: dict) -> None:
    assert metrics.classification_metrics(references, predictions) == pytest.approx(expected)


def test_the_hub_is_asked_once_per_process_not_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    from parabench.models import hub

    probes: list[str] = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_offline", lambda: False)
    monkeypatch.setattr(hub, "hub_reachable", lambda endpoint, timeout: probes.append(endpoint) or False)
    metrics.evaluate_metrics.cache_clear()
    try:
        for _ in range(5):
            assert metrics.classification_metrics([1, 0], [1, 1])["accuracy"] == 0.5
    finally:
        metrics.evaluate_metrics.cache_clear()
    assert len(probes) == 1
