"""The served sentence-embedding baseline: the same pyfunc as a fine-tuned model (pairs in, label and
probability out, the same signature, request limits and models-from-code logging), computed by a frozen
encoder's mean-pooled embeddings and a head stored as JSON (models/embeddings.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from parabench.serving.pyfunc import (
    MODEL_CONFIG_KEYS,
    WEIGHTS_ARTIFACT,
    ParaphraseModel,
    RequestLimits,
    check_pairs,
    log_paraphrase_model,
)

HEAD_ARTIFACT = "head"
MODEL_CODE_FILE = Path(__file__).with_name("baseline_model.py")
CONFIG_KEYS = {**MODEL_CONFIG_KEYS, "embed_batch_size": "embed_batch_size"}


class BaselineModel(ParaphraseModel):
    """A frozen encoder and a fitted head (cosine threshold or logistic regression) on sentence pairs."""

    embed_batch_size: int | None = None  # None: the model's eval_batch_size

    def load_context(self, context: Any) -> None:
        from parabench.models.embeddings import Head, load_encoder
        from parabench.models.inference import prepare_for_inference

        self.apply_model_config(context, CONFIG_KEYS)
        self.tokenizer, encoder = load_encoder(context.artifacts[WEIGHTS_ARTIFACT])
        self.fit_length(encoder)
        self.model = prepare_for_inference(encoder, self.inference_path)
        self.head = Head.load(context.artifacts[HEAD_ARTIFACT])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        from parabench.models.embeddings import embed_pairs

        pairs = check_pairs(model_input, self.limits)  # before any tokenization
        u, v = embed_pairs(
            self.tokenizer,
            self.model,
            pairs["sentence1"].tolist(),
            pairs["sentence2"].tolist(),
            self.max_length,
            self.embed_batch_size or self.batch_size,
        )
        probabilities = self.head.probabilities(u, v)
        labels = (probabilities >= 0.5).astype(np.int64)
        return pd.DataFrame({"label": labels, "probability": probabilities})


def log_baseline_model(
    encoder_dir: Path,
    head_file: Path,
    max_length: int,
    batch_size: int,
    embed_batch_size: int,
    inference_path: str,
    limits: RequestLimits,
) -> str:
    """Log the encoder folder and the head's JSON as the run's MLflow model, from code (no pickle)."""
    return log_paraphrase_model(
        encoder_dir,
        max_length,
        batch_size,
        inference_path,
        limits,
        model_code=MODEL_CODE_FILE,
        extra=({HEAD_ARTIFACT: str(head_file)}, {"embed_batch_size": embed_batch_size}),
    )
