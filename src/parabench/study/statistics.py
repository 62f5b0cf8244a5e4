"""The report's statistics: confidence intervals over seeds, McNemar's exact test on paired predictions, a
paired t-test over shared seeds, the Pareto front, a seed that collapsed to one class, and a seed ensemble
rebuilt from the records' probabilities."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from parabench.common.names import SIZE_CLASSES, VALIDATION_SCORE
from parabench.results.groups import SeedGroup, mean_std
from parabench.results.record import ResultRecord, SplitPredictions
from parabench.training.metrics import classification_metrics


def interval(values: list[float], confidence: float) -> tuple[float, float]:
    """The t-distribution confidence interval of the mean (NaN bounds for fewer than two values)."""
    from scipy import stats

    if len(values) < 2:
        return float("nan"), float("nan")
    mean, std = mean_std(values)
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * std / math.sqrt(len(values))
    return mean - half, mean + half


def mcnemar_exact(first: SplitPredictions, second: SplitPredictions) -> tuple[int, int, int, float]:
    """Pairs compared (those both predicted, by idx), pairs only the first got right, pairs only the second
    got right, and the exact two-sided p-value."""
    from scipy import stats

    right_a = dict(zip(first.idx, first.labels == first.references, strict=True))
    right_b = dict(zip(second.idx, second.labels == second.references, strict=True))
    shared = [idx for idx in right_a if idx in right_b]
    only_a = sum(1 for idx in shared if right_a[idx] and not right_b[idx])
    only_b = sum(1 for idx in shared if right_b[idx] and not right_a[idx])
    p_value = stats.binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return len(shared), only_a, only_b, float(p_value)


def paired_seed_test(first: SeedGroup, second: SeedGroup) -> dict[str, Any]:
    """A paired t-test of test accuracy (points) over the seeds both groups share; NaN with fewer than two."""
    from scipy import stats

    shared = sorted(set(first.runs) & set(second.runs))
    row: dict[str, Any] = {"shared_seeds": ",".join(map(str, shared))}
    if len(shared) < 2:
        return row | {"seed_mean_difference": math.nan, "seed_p_value": math.nan}
    a = [100 * first.runs[seed].metrics["test_accuracy"] for seed in shared]
    b = [100 * second.runs[seed].metrics["test_accuracy"] for seed in shared]
    differences = np.subtract(a, b)
    p_value = 1.0 if not differences.any() else float(stats.ttest_rel(a, b).pvalue)
    return row | {"seed_mean_difference": float(differences.mean()), "seed_p_value": p_value}


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indexes of the points no other point beats on both coordinates (higher is better on each)."""
    return [
        i
        for i, (x, y) in enumerate(points)
        if not any(ox >= x and oy >= y and (ox, oy) != (x, y) for ox, oy in points)
    ]


def collapse_reason(record: ResultRecord, majority_rate: float, margin: float) -> str | None:
    """Why a run looks stuck at the majority class, or None when it learned something."""
    test = record.predictions["test"].labels
    if len(set(test.tolist())) == 1:
        return f"every test prediction is {int(test[0])}"
    validation = record.metrics[VALIDATION_SCORE]
    if abs(validation - majority_rate) <= margin:
        return (
            f"validation accuracy {validation:.1%} is within {margin:.1%} "
            f"of the majority rate {majority_rate:.1%}"
        )
    return None


def class_order(size_classes: Any) -> list[str]:
    """The study's classes first (small, regular, large), then any other, each once."""
    present = set(size_classes)
    return [c for c in SIZE_CLASSES if c in present] + sorted(present - set(SIZE_CLASSES))


def records_ensemble(group: SeedGroup, split: str) -> dict[str, float]:
    """The seed ensemble of a group built from its records alone: per pair (by idx, the pairs every seed
    predicted), the mean paraphrase probability over the seeds, label 1 at >= 0.5; its accuracy and F1 on the
    split's gold labels, and the seeds' mean accuracy on the same pairs."""
    splits = [record.predictions[split] for record in group.runs.values()]
    common = sorted(set.intersection(*(set(s.idx) for s in splits)))
    probabilities, accuracies = [], []
    gold = None
    for predictions in splits:
        position = {idx: i for i, idx in enumerate(predictions.idx)}
        rows = np.array([position[idx] for idx in common], dtype=int)
        probabilities.append(np.asarray(predictions.probability)[rows])
        references = predictions.references[rows]
        gold = references if gold is None else gold
        accuracies.append(float(np.mean(predictions.labels[rows] == references)))
    labels = (np.mean(probabilities, axis=0) >= 0.5).astype(int)
    scores = classification_metrics(gold, labels)
    return {"pairs": len(common), **scores, "seed_mean_accuracy": float(np.mean(accuracies))}
