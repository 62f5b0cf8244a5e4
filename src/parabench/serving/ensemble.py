"""The served seed ensemble: the same pyfunc as a fine-tuned model (pairs in, label and probability out, the
same signature, request limits and models-from-code logging), whose probability is the mean of its members'
(each a fine-tuned model folder, one artifact per member). It costs N forward passes per pair."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from parabench.serving.pyfunc import (
    MODEL_CONFIG_KEYS,
    WEIGHTS_ARTIFACT,
    ParaphraseModel,
    RequestLimits,
    log_paraphrase_model,
)

MODEL_CODE_FILE = Path(__file__).with_name("ensemble_model.py")
# MLflow also logs model_config as run parameters: `n_members` equals the run's own parameter of that name.
CONFIG_KEYS = {**MODEL_CONFIG_KEYS, "n_members": "members"}


def member_artifact(index: int) -> str:
    """The artifact name of member `index` (the first is the usual weights artifact)."""
    return WEIGHTS_ARTIFACT if index == 0 else f"member_{index}"


class EnsembleModel(ParaphraseModel):
    """N fine-tuned classifiers of one model (its seeds) sharing a tokenizer; their mean probability."""

    members: int = 0

    def load_context(self, context: Any) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from parabench.models.inference import prepare_for_inference

        self.apply_model_config(context, CONFIG_KEYS)
        folders = [context.artifacts[member_artifact(index)] for index in range(self.members)]
        self.tokenizer = AutoTokenizer.from_pretrained(folders[0])
        members = [AutoModelForSequenceClassification.from_pretrained(folder) for folder in folders]
        self.fit_length(members[0])  # the members are seeds of one model: one shape
        self.models = [prepare_for_inference(member, self.inference_path) for member in members]

    def predictions(self, encoded: Any) -> Any:
        from parabench.models.inference import mean_predictions, predict

        pad = self.tokenizer.pad_token_id
        return mean_predictions([predict(model, encoded, self.batch_size, pad) for model in self.models])


def log_ensemble_model(
    member_dirs: list[Path],
    max_length: int,
    batch_size: int,
    inference_path: str,
    limits: RequestLimits,
) -> str:
    """Log the members' weights folders as the run's MLflow model, from code (no pickle)."""
    return log_paraphrase_model(
        member_dirs[0],
        max_length,
        batch_size,
        inference_path,
        limits,
        model_code=MODEL_CODE_FILE,
        extra=(
            {member_artifact(i): str(folder) for i, folder in enumerate(member_dirs) if i},
            {"n_members": len(member_dirs)},
        ),
    )
