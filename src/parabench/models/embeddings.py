"""Sentence embeddings of a frozen encoder and the heads that score a pair from them (the baselines).

Each sentence is encoded alone and mean-pooled over its attention mask, as the sentence-transformers models
were trained. A head is plain numbers, stored as JSON (never a pickle): `cosine` labels a pair a paraphrase
when the cosine similarity of its embeddings reaches a threshold; `logreg` is a logistic regression on the
SBERT classifier's features [u, v, |u-v|, u*v]. Either way the probability is >= 0.5 exactly when the label is
1. Fitting heads is training/baselines.py; serving them serving/baseline.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import expit

from parabench.common.files import write_json
from parabench.common.progress import progress
from parabench.config import ParabenchError
from parabench.models.hub import quiet_transformers
from parabench.models.inference import EncodedSplit, collate, model_inputs, sorted_batches

BELOW_HALF = float(np.nextafter(0.5, 0.0))  # the largest probability that still means label 0


def load_encoder(location: Path | str, key: str = "") -> tuple[Any, Any]:
    """Tokenizer and bare encoder (AutoModel: no classification head) from a model folder, in eval mode."""
    from transformers import AutoModel, AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
            encoder = AutoModel.from_pretrained(location, trust_remote_code=False)
    except Exception as error:  # a broken folder raises OSError, ValueError, validation errors, …
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        message = f"cannot load encoder '{key or location}' from {location}: {first_line}"
        raise ParabenchError(message) from error
    return tokenizer, encoder.eval()


def embed(tokenizer: Any, encoder: Any, sentences: list[str], max_length: int, batch_size: int) -> np.ndarray:
    """Mean-pooled embedding of every sentence (float32, one row each): length-sorted batches, no grad."""
    encoded = tokenizer(list(sentences), truncation=True, max_length=max_length)
    split = EncodedSplit(
        encoded["input_ids"], encoded.get("token_type_ids"), np.zeros(len(sentences), dtype=np.int64)
    )
    device = next(encoder.parameters()).device
    rows = np.zeros((len(split), encoder.config.hidden_size), dtype=np.float32)
    with torch.inference_mode(), progress(len(split), "embedding", unit="sentence") as bar:
        for indices in sorted_batches(split.lengths, batch_size):
            batch = model_inputs(encoder, collate(split, indices, tokenizer.pad_token_id))
            batch.pop("labels")
            batch = {name: tensor.to(device) for name, tensor in batch.items()}
            hidden = encoder(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            rows[indices] = pooled.cpu().numpy()
            bar.update(len(indices))
    return rows


def embed_pairs(
    tokenizer: Any, encoder: Any, sentence1: list[str], sentence2: list[str], max_length: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(u, v): the embeddings of each pair's two sentences, embedded in one length-sorted pass."""
    both = embed(tokenizer, encoder, [*sentence1, *sentence2], max_length, batch_size)
    return both[: len(sentence1)], both[len(sentence1) :]


def cosine(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row pair (float64; 0 for a zero vector)."""
    u, v = u.astype(np.float64), v.astype(np.float64)
    norms = np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1)
    return np.einsum("ij,ij->i", u, v) / np.where(norms > 0, norms, 1.0)


def pair_features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The SBERT classifier's features [u, v, |u-v|, u*v] (float64)."""
    u, v = u.astype(np.float64), v.astype(np.float64)
    return np.hstack([u, v, np.abs(u - v), u * v])


@dataclass(frozen=True)
class Head:
    """A fitted head. cosine: label 1 when cos(u, v) >= threshold; probability sigmoid(slope * (cos -
    threshold)), the slope fitted on validation. logreg: probability sigmoid(weights . features + bias), the
    weights on the raw features (standardization folded in), C the regularization it was fitted with."""

    kind: str
    threshold: float | None = None
    slope: float | None = None
    weights: list[float] | None = None
    bias: float | None = None
    C: float | None = None

    def probabilities(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Paraphrase probability of each pair; >= 0.5 exactly when the head says paraphrase."""
        if self.kind == "cosine":
            assert self.threshold is not None and self.slope is not None
            scores = cosine(u, v)
            raw = expit(self.slope * (scores - self.threshold))
            return np.where(scores >= self.threshold, np.maximum(raw, 0.5), np.minimum(raw, BELOW_HALF))
        assert self.weights is not None and self.bias is not None
        return expit(pair_features(u, v) @ np.asarray(self.weights) + self.bias)

    @property
    def num_parameters(self) -> int:
        return 2 if self.kind == "cosine" else len(self.weights or []) + 1

    @property
    def size_mb(self) -> float:
        return self.num_parameters * 8 / 2**20  # float64

    def save(self, path: Path) -> Path:
        return write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path | str) -> Head:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(**{name: document.get(name) for name in cls.__dataclass_fields__})
