"""Sentence-embedding baselines as tracked runs: a frozen encoder, no fine-tuning, and a head chosen on
validation (zoo entries with `encoder` + `head`; params.yaml `baselines:`).

cosine: the pair's cosine similarity against the threshold with the best validation accuracy (ties: the lower
threshold). logreg: scikit-learn LogisticRegression on [u, v, |u-v|, u*v], fitted on train, with the C of the
`c_grid` that has the best validation accuracy (ties: the smaller C). The run logs what a fine-tuning run logs
(metrics of FINAL_METRICS, artifacts, a served model with the same signature), `kept_epoch` 0, and the chosen
threshold or C as a parameter instead of the (meaningless) recipe.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from parabench.config import BaselineParams, ParabenchError, Params, Recipe
from parabench.data.prepare import load_frames
from parabench.data.validate import require_validated
from parabench.models.embeddings import Head, cosine, embed_pairs, load_encoder, pair_features
from parabench.models.inference import Predictions, prepare_for_inference
from parabench.models.zoo import check_max_length, count_parameters, model_size_mb, resolve_weights
from parabench.serving.baseline import log_baseline_model
from parabench.serving.pyfunc import RequestLimits
from parabench.tracking import client as tracking
from parabench.training.engine import set_seed
from parabench.training.plan import RunPlan
from parabench.training.records import log_record, require_record_folder, save_record
from parabench.training.run import RunSummary, log_evaluation_artifacts, split_metrics, subsample

# Fine-tuning settings a baseline does not have: left out of its logged parameters.
NOT_LOGGED = {*Recipe.model_fields, "optimizer", "gradient_accumulation_steps", "checkpoint_every_steps"}
Embedded = tuple[np.ndarray, np.ndarray]


def accuracy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    return float(np.mean((probabilities >= 0.5) == labels))


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold t (label 1 when score >= t) with the best accuracy on these pairs; of equals the lowest.
    Candidates are the distinct scores (each the lowest t giving its labelling) and one above them all."""
    order = np.argsort(scores, kind="stable")
    ordered, positive = scores[order], labels[order] == 1
    # With t = ordered[i], pairs i.. are labelled 1: correct = negatives before i + positives from i.
    negatives_before = np.concatenate([[0], np.cumsum(~positive)])
    positives_from = np.concatenate([np.cumsum(positive[::-1])[::-1], [0]])
    correct = negatives_before + positives_from
    candidates = np.concatenate([np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]), [len(ordered)]])
    best = int(candidates[np.argmax(correct[candidates])])  # argmax: the first, i.e. lowest, of equals
    return float(ordered[best]) if best < len(ordered) else float(np.nextafter(ordered[-1], np.inf))


def fit_cosine(validation: Embedded, labels: np.ndarray) -> Head:
    """The validation-best threshold, and the slope of a 1-D logistic fit of (cosine - threshold) on
    validation for the probability (0 when the scores do not rise with the label)."""
    from sklearn.linear_model import LogisticRegression

    scores = cosine(*validation)
    threshold = best_threshold(scores, labels)
    slope = 0.0
    if len(np.unique(labels)) == 2:
        fit = LogisticRegression(fit_intercept=False, C=1e6).fit((scores - threshold)[:, None], labels)
        slope = max(float(fit.coef_[0, 0]), 0.0)
    return Head("cosine", threshold=threshold, slope=slope)


def fit_logreg(
    train: Embedded,
    train_labels: np.ndarray,
    validation: Embedded,
    validation_labels: np.ndarray,
    settings: BaselineParams,
    seed: int,
    log: Callable[[str], None],
) -> tuple[Head, dict[float, float]]:
    """LogisticRegression on standardized [u, v, |u-v|, u*v] of train for every C of the grid; the head with
    the best validation accuracy (ties: the smaller C), standardization folded into its weights. Returns it
    and every C's validation accuracy."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(train_labels)) < 2:
        raise ParabenchError("logreg needs both labels among the train pairs: use more (--max-train-samples)")
    features = pair_features(*train)
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale == 0] = 1.0
    standardized = (features - mean) / scale
    best: Head | None = None
    scores: dict[float, float] = {}
    for c in sorted(set(settings.c_grid)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            fit = LogisticRegression(C=c, max_iter=settings.max_iter, random_state=seed)
            fit.fit(standardized, train_labels)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            log(f"logreg C={c:g} did not converge in {settings.max_iter} iterations (baselines.max_iter)")
        weights = fit.coef_[0] / scale
        bias = float(fit.intercept_[0] - weights @ mean)
        head = Head("logreg", weights=weights.tolist(), bias=bias, C=c)
        scores[c] = accuracy(validation_labels, head.probabilities(*validation))
        if best is None or scores[c] > scores[best.C or 0.0]:
            best = head
    assert best is not None
    return best, scores


def track_baseline(
    params: Params,
    plan: RunPlan,
    log: Callable[[str], None] = print,
    nested: bool = False,
    extra_tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> RunSummary:
    """One baseline run, tracked like a fine-tuning run (train_and_track dispatches here for spec.head).
    Everything that can fail on the user's input fails before a run exists."""
    spec, seed = plan.spec, plan.seed
    settings = plan.baselines or params.baselines
    batch_size = settings.embed_batch_size or plan.eval_batch_size
    require_validated(params)
    if plan.record:
        require_record_folder(params)
    weights = resolve_weights(spec, params)
    if params.train.num_threads is not None:
        torch.set_num_threads(params.train.num_threads)
    frames = load_frames(params.path(params.data.processed_dir))
    frames["train"] = subsample(frames["train"], plan.max_train_samples, seed)
    for split in ("validation", "test"):
        frames[split] = subsample(frames[split], plan.max_eval_samples, seed)
    labels = {split: frame["label"].to_numpy() for split, frame in frames.items()}
    set_seed(seed)
    tokenizer, encoder = load_encoder(weights, spec.key)
    check_max_length(plan.max_length, spec.key, tokenizer, encoder)
    served = prepare_for_inference(encoder, plan.inference_path)

    def embed_split(frame: pd.DataFrame) -> Embedded:
        pairs = (frame["sentence1"].tolist(), frame["sentence2"].tolist())
        return embed_pairs(tokenizer, served, *pairs, plan.max_length, batch_size)

    experiment_id = tracking.configure(params)
    tags = {**plan.tags(), **(extra_tags or {})}
    with tracking.tracked_run(plan.run_name, tags, nested, parent_run_id=parent_run_id) as run:
        logged = {k: v for k, v in plan.logged_params().items() if k not in NOT_LOGGED}
        tracking.log_params(
            {
                **logged,
                "recipe": f"frozen+{spec.head}",
                "head": spec.head,
                "encoder": spec.encoder,
                "pooling": "mean",
                "embed_batch_size": batch_size,
                "model_source": str(weights),
                "train_samples": len(frames["train"]),
                "git_commit": tracking.git_commit(params.root),
                "dtype": str(next(encoder.parameters()).dtype),
                **tracking.hardware(next(encoder.parameters()).device),
                "num_processes": 1,
            }
        )
        log(f"fitting {spec.key} (seed {seed}) on {len(frames['train'])} pairs: frozen encoder + {spec.head}")
        started = time.perf_counter()
        embedded = {split: embed_split(frames[split]) for split in ("train", "validation")}
        if spec.head == "cosine":
            head = fit_cosine(embedded["validation"], labels["validation"])
            chosen: dict[str, Any] = {"threshold": head.threshold, "probability_slope": head.slope}
        else:
            head, c_scores = fit_logreg(
                embedded["train"], labels["train"], embedded["validation"], labels["validation"],
                settings, seed, log,
            )  # fmt: skip
            chosen = {"C": head.C, "c_grid": list(c_scores), "max_iter": settings.max_iter}
            chosen |= {"features": "u,v,|u-v|,u*v", "standardized": True}
            for c, score in c_scores.items():
                log(f"logreg C={c:g}: validation accuracy {score:.4f}")
        fit_seconds = time.perf_counter() - started
        choice = "threshold" if spec.head == "cosine" else "C"
        log(f"chosen on validation: {choice} {chosen[choice]}")

        started = time.perf_counter()  # test end to end: tokenize, embed, score
        test_probabilities = head.probabilities(*embed_split(frames["test"]))
        predictions = {
            split: Predictions(head.probabilities(*embedded[split]), 0.0) for split in ("train", "validation")
        } | {"test": Predictions(test_probabilities, time.perf_counter() - started)}
        final = split_metrics(labels, predictions, log)
        final |= {
            "kept_epoch": 0,
            "train_samples_per_second": len(frames["train"]) / fit_seconds if fit_seconds else 0.0,
            "eval_samples_per_second": predictions["test"].samples_per_second,
            "num_parameters": count_parameters(encoder) + head.num_parameters,
            "model_size_mb": model_size_mb(encoder) + head.size_mb,
        }
        tracking.log_params({**chosen, "num_parameters": final["num_parameters"]})
        test = (frames["test"], predictions["test"])
        log_baseline_artifacts(encoder, tokenizer, head, *test, final, plan, batch_size)
        tracking.log_final_metrics(final)
        if plan.record:
            timings = {"fit_seconds": fit_seconds, "test_inference_seconds": predictions["test"].seconds}
            record = log_record(params, plan, "baseline", frames, predictions, final, timings=timings)
    if plan.record:
        with tracking.completing(run.info.run_id):
            save_record(params, record, log)
    return RunSummary(run.info.run_id, experiment_id, spec.key, seed, final)


def log_baseline_artifacts(
    encoder: Any,
    tokenizer: Any,
    head: Head,
    test_frame: pd.DataFrame,
    test_predictions: Predictions,
    final: dict[str, float],
    plan: RunPlan,
    embed_batch_size: int,
) -> None:
    """As a fine-tuning run's: confusion matrix, test predictions, metrics JSON, and the model (the encoder
    folder and the head's JSON, logged from code)."""
    log_evaluation_artifacts(test_frame, test_predictions, final, plan)
    with tempfile.TemporaryDirectory() as folder:
        encoder_dir = Path(folder) / "encoder"
        encoder.save_pretrained(encoder_dir)
        tokenizer.save_pretrained(encoder_dir)
        head_file = head.save(Path(folder) / "head.json")
        sizes = (plan.max_length, plan.eval_batch_size, embed_batch_size)
        log_baseline_model(encoder_dir, head_file, *sizes, plan.inference_path, RequestLimits.of(plan.serve))
