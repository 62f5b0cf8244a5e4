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
from accelerate.utils import set_seed

from parabench.config import BaselineParams, ParabenchError, Params, Recipe
from parabench.models.embeddings import Head, cosine, embed_pairs, load_encoder, pair_features
from parabench.models.inference import Predictions, prepare_for_inference
from parabench.models.zoo import check_max_length, count_parameters, model_size_mb, resolve_weights
from parabench.serving.baseline import log_baseline_model
from parabench.serving.pyfunc import RequestLimits
from parabench.training.kind import Fitted
from parabench.training.plan import RunPlan

# Fine-tuning settings a baseline does not have: left out of its logged parameters.
NOT_LOGGED = frozenset(
    {*Recipe.model_fields, "optimizer", "gradient_accumulation_steps", "checkpoint_every_steps"}
)
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


class Baseline:
    """A frozen encoder's mean-pooled sentence embeddings and a head (cosine threshold or logistic
    regression) chosen on validation: nothing is fine-tuned."""

    record_kind = "baseline"
    not_logged = NOT_LOGGED
    main = True

    def __init__(self, params: Params, plan: RunPlan, frames: dict[str, pd.DataFrame]) -> None:
        self.params, self.plan, self.frames = params, plan, frames
        self.settings = plan.baselines or params.baselines
        self.batch_size = self.settings.embed_batch_size or plan.eval_batch_size
        self.recipe_name = f"frozen+{plan.spec.head}"
        self.device = torch.device("cpu")
        self.labels = {split: frame["label"].to_numpy() for split, frame in frames.items()}
        self.embedded: dict[str, Embedded] = {}

    def prepare(self) -> dict[str, Any]:
        spec = self.plan.spec
        weights = resolve_weights(spec, self.params)
        set_seed(self.plan.seed)
        self.tokenizer, self.encoder = load_encoder(weights, spec.key)
        check_max_length(self.plan.max_length, spec.key, self.tokenizer, self.encoder)
        self.served = prepare_for_inference(self.encoder, self.plan.inference_path)
        self.device = next(self.encoder.parameters()).device
        return {
            "head": spec.head,
            "encoder": spec.encoder,
            "pooling": "mean",
            "embed_batch_size": self.batch_size,
            "model_source": str(weights),
            "dtype": str(next(self.encoder.parameters()).dtype),
            "num_processes": 1,
        }

    def tags(self) -> dict[str, str]:
        return {}

    def resumable_run(self, say: Callable[[str], None]) -> str | None:
        return None

    def embed(self, split: str) -> Embedded:
        frame = self.frames[split]
        pairs = (frame["sentence1"].tolist(), frame["sentence2"].tolist())
        return embed_pairs(self.tokenizer, self.served, *pairs, self.plan.max_length, self.batch_size)

    def fit(self, run_id: str | None, on_epoch: Callable[[Any], Any], say: Callable[[str], None]) -> Fitted:
        head_kind = self.plan.spec.head
        say(f"fitting {self.plan.spec.key} (seed {self.plan.seed}) on {len(self.frames['train'])} pairs: "
            f"frozen encoder + {head_kind}")  # fmt: skip
        started = time.perf_counter()
        self.embedded = {split: self.embed(split) for split in ("train", "validation")}
        if head_kind == "cosine":
            self.head = fit_cosine(self.embedded["validation"], self.labels["validation"])
            chosen: dict[str, Any] = {"threshold": self.head.threshold, "probability_slope": self.head.slope}
        else:
            self.head, c_scores = fit_logreg(
                self.embedded["train"], self.labels["train"], self.embedded["validation"],
                self.labels["validation"], self.settings, self.plan.seed, say,
            )  # fmt: skip
            chosen = {"C": self.head.C, "c_grid": list(c_scores), "max_iter": self.settings.max_iter}
            chosen |= {"features": "u,v,|u-v|,u*v", "standardized": True}
            for c, score in c_scores.items():
                say(f"logreg C={c:g}: validation accuracy {score:.4f}")
        seconds = time.perf_counter() - started
        choice = "threshold" if head_kind == "cosine" else "C"
        say(f"chosen on validation: {choice} {chosen[choice]}")
        speed = len(self.frames["train"]) / seconds if seconds else 0.0
        return Fitted(0, speed, timings={"fit_seconds": seconds}, chosen=chosen)

    def predict(self, split: str) -> Predictions:
        if split in self.embedded:  # embedded while fitting: its time is the fit's
            return Predictions(self.head.probabilities(*self.embedded[split]), 0.0)
        started = time.perf_counter()  # end to end: tokenize, embed, score
        probabilities = self.head.probabilities(*self.embed(split))
        return Predictions(probabilities, time.perf_counter() - started)

    def size(self) -> tuple[int, float]:
        return count_parameters(self.encoder) + self.head.num_parameters, model_size_mb(
            self.encoder
        ) + self.head.size_mb

    def log_model(self) -> None:
        """The encoder folder and the head's JSON, logged as the served model (from code)."""
        plan = self.plan
        with tempfile.TemporaryDirectory() as folder:
            encoder_dir = Path(folder) / "encoder"
            self.encoder.save_pretrained(encoder_dir)
            self.tokenizer.save_pretrained(encoder_dir)
            head_file = self.head.save(Path(folder) / "head.json")
            sizes = (plan.max_length, plan.eval_batch_size, self.batch_size)
            log_baseline_model(
                encoder_dir, head_file, *sizes, plan.inference_path, RequestLimits.of(plan.serve)
            )

    def wait(self) -> None:
        return None

    def clean_up(self) -> None:
        return None
