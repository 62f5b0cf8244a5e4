"""Seed ensembles as tracked runs: the mean paraphrase probability of one model's FINISHED seed runs (same
recipe fingerprint, same data), evaluated and logged like any model (zoo entries with `members`).

Nothing is trained: the members' logged models are loaded from the store, every split is predicted by each,
and the run logs the full metric contract, its real throughput (N forward passes per pair: test pairs/s is
pairs over the members' summed inference time; train pairs/s likewise over their summed training time), the
members' parameters and size summed, and one served model that loads all of them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from parabench.config import ParabenchError, Params
from parabench.models.inference import (
    Predictions,
    encode_frame,
    mean_predictions,
    predict,
    prepare_for_inference,
)
from parabench.models.zoo import count_parameters, model_size_mb
from parabench.serving.ensemble import log_ensemble_model
from parabench.serving.pyfunc import RequestLimits
from parabench.tracking import client as tracking
from parabench.training.kind import Fitted
from parabench.training.plan import RunPlan

# Settings of a fine-tuning loop an ensemble does not run: left out of its logged parameters.
NOT_LOGGED = frozenset(
    {"optimizer", "gradient_accumulation_steps", "checkpoint_every_steps", "mixed_precision"}
)


def member_train_speed(runs: list[mlflow.entities.Run]) -> float:
    """Training pairs/s of the whole ensemble: each pair is trained once per member, so 1 / Σ 1/speed_i
    (0 when a member logged no speed)."""
    speeds = [run.data.metrics.get("train_samples_per_second", 0.0) for run in runs]
    return 1.0 / sum(1.0 / speed for speed in speeds) if all(speeds) else 0.0


class Ensemble:
    """The mean paraphrase probability of a model's FINISHED seed runs (with weights in this store)."""

    record_kind = "ensemble"
    not_logged = NOT_LOGGED
    main = True

    def __init__(self, params: Params, plan: RunPlan, frames: dict[str, pd.DataFrame]) -> None:
        self.params, self.plan, self.frames = params, plan, frames
        self.recipe_name = plan.recipe_name
        self.device = torch.device("cpu")
        self.folder = tempfile.TemporaryDirectory()

    def prepare(self) -> dict[str, Any]:
        """The members' logged models, downloaded and loaded; fails in one line, before a run exists, when
        fewer than two seeds are there."""
        spec, plan = self.plan.spec, self.plan
        assert spec.members is not None
        member_tags = {
            "model": spec.members,
            "recipe_fingerprint": plan.fingerprint,
            "data_version": plan.data_version,
        }
        self.members = tracking.seed_runs(tracking.configure(self.params), member_tags)
        if len(self.members) < 2:
            self.clean_up()
            raise ParabenchError(
                f"{spec.key} needs FINISHED runs of {spec.members} with at least 2 seeds "
                f"(recipe {plan.recipe_name}, fingerprint {plan.fingerprint}, "
                f"data {plan.data_version[:12]}); "
                f"found {len(self.members)}: run "
                f"`parabench sweep --models {spec.members} --seeds 2` with the same options first"
            )
        self.folders = [
            tracking.model_folder(run.info.run_id, Path(self.folder.name) / f"seed{seed}")
            for seed, run in self.members.items()
        ]
        tokenizer = AutoTokenizer.from_pretrained(self.folders[0])
        self.models = [AutoModelForSequenceClassification.from_pretrained(path) for path in self.folders]
        self.served = [prepare_for_inference(model, plan.inference_path) for model in self.models]
        self.pad = tokenizer.pad_token_id
        self.encoded = {
            split: encode_frame(tokenizer, frame, plan.max_length) for split, frame in self.frames.items()
        }
        self.device = next(self.models[0].parameters()).device
        return {
            "members": spec.members,
            "n_members": len(self.members),
            "member_seeds": ",".join(map(str, self.members)),
            **{f"member_seed{seed}": run.info.run_id for seed, run in self.members.items()},
            "num_processes": 1,
        }

    def tags(self) -> dict[str, str]:
        return {tracking.ENSEMBLE_TAG: str(len(self.members))}

    def resumable_run(self, say: Callable[[str], None]) -> str | None:
        return None

    def fit(self, run_id: str | None, on_epoch: Callable[[Any], Any], say: Callable[[str], None]) -> Fitted:
        """Nothing to train; the training speed is the members' together."""
        spec = self.plan.spec
        say(f"{spec.key}: the mean of {len(self.members)} seed runs of {spec.members} "
            f"(seeds {', '.join(map(str, self.members))})")  # fmt: skip
        return Fitted(0, member_train_speed(list(self.members.values())))

    def predict(self, split: str) -> Predictions:
        batch = self.plan.eval_batch_size
        return mean_predictions(
            [predict(model, self.encoded[split], batch, self.pad) for model in self.served]
        )

    def size(self) -> tuple[int, float]:
        return sum(map(count_parameters, self.models)), sum(map(model_size_mb, self.models))

    def log_model(self) -> None:
        """One served model that loads every member."""
        plan = self.plan
        limits = RequestLimits.of(plan.serve)
        log_ensemble_model(self.folders, plan.max_length, plan.eval_batch_size, plan.inference_path, limits)

    def wait(self) -> None:
        return None

    def clean_up(self) -> None:
        self.folder.cleanup()
