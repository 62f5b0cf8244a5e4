"""A fine-tuned model as a kind of tracked run: weights loaded and pairs tokenized before the run, trained by
the engine (accelerate: one process or several, exact resume from checkpoints), evaluated on the inference
path, logged as the served pyfunc model."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from accelerate.utils import set_seed

from parabench.config import Params
from parabench.models.inference import EncodedSplit, Predictions, encode_frame, predict, prepare_for_inference
from parabench.models.zoo import (
    check_max_length,
    count_parameters,
    load_tokenizer_and_model,
    merge_lora,
    model_size_mb,
    resolve_weights,
)
from parabench.serving.pyfunc import RequestLimits, log_paraphrase_model
from parabench.tracking import client as tracking
from parabench.training.checkpoints import Checkpoints
from parabench.training.engine import fine_tune, make_accelerator
from parabench.training.kind import Fitted
from parabench.training.plan import RunPlan
from parabench.training.state import EpochResult
from parabench.training.teacher import teacher_logits


class FineTuning:
    """A zoo model (or local folder) fine-tuned with the plan's recipe."""

    record_kind = "fine-tuned"
    not_logged: frozenset[str] = frozenset()

    def __init__(self, params: Params, plan: RunPlan, frames: dict[str, pd.DataFrame]) -> None:
        self.params, self.plan, self.frames = params, plan, frames
        self.recipe_name = plan.recipe_name
        self.accelerator = make_accelerator(plan.engine)
        self.main = self.accelerator.is_main_process
        self.device = self.accelerator.device
        self.checkpoints = (
            Checkpoints(params.path(params.train.checkpoint_dir) / plan.checkpoint_name)
            if plan.checkpoint
            else None
        )
        self.served: Any = None

    def prepare(self) -> dict[str, Any]:
        plan, spec = self.plan, self.plan.spec
        weights = resolve_weights(spec, self.params)
        teacher: dict[str, Any] = {}
        if plan.recipe.teacher is not None:  # distillation: the cached teacher logits, before any run exists
            logits, teacher = teacher_logits(
                self.params, plan.recipe.teacher, self.frames["train"], plan.data_version
            )
        set_seed(plan.seed)
        self.tokenizer, self.model = load_tokenizer_and_model(
            spec, self.params, weights=weights, load_in_4bit=plan.load_in_4bit
        )
        check_max_length(plan.max_length, spec.key, self.tokenizer, self.model)
        self.encoded: dict[str, EncodedSplit] = {
            split: encode_frame(self.tokenizer, frame, plan.max_length)
            for split, frame in self.frames.items()
        }
        if teacher:
            self.encoded["train"] = dataclasses.replace(self.encoded["train"], teacher_logits=logits)
        return {
            "model_source": str(weights),
            "dtype": str(next(self.model.parameters()).dtype),
            "num_processes": self.accelerator.num_processes,
            **(lora_params(self.params, self.model) if spec.lora else {}),
            **({"teacher_run_id": teacher["run_id"]} if teacher else {}),
        }

    def tags(self) -> dict[str, str]:
        return {}

    def resumable_run(self, say: Callable[[str], None]) -> str | None:
        resumed = self.checkpoints.run_id() if self.checkpoints is not None else None
        if self.main and resumed is not None and not tracking.run_exists(resumed):
            say(f"checkpoints of run {resumed} found, not in this tracking store: starting over")
            self.checkpoints.clear()
            resumed = None
        self.accelerator.wait_for_everyone()
        return resumed

    def fit(
        self, run_id: str | None, on_epoch: Callable[[EpochResult], Any], say: Callable[[str], None]
    ) -> Fitted:
        plan = self.plan
        if self.main and self.checkpoints is not None and run_id is not None:
            self.checkpoints.bind(run_id)
        say(
            f"training {plan.spec.key} (seed {plan.seed}) on {len(self.frames['train'])} pairs: {plan.recipe}"
        )
        model, fit = fine_tune(
            self.model,
            self.encoded["train"],
            self.encoded["validation"],
            plan.recipe,
            plan.seed,
            self.tokenizer.pad_token_id,
            plan.eval_batch_size,
            self.accelerator,
            plan.engine,
            self.checkpoints,
            on_epoch_end=on_epoch,
            log=say,
        )
        if self.main and fit.resumed_from:
            mlflow.set_tag("parabench.resumed_from", fit.resumed_from)
        self.model = merge_lora(model) if plan.spec.lora else model
        self.served = prepare_for_inference(self.model, plan.inference_path)
        return Fitted(
            fit.kept_epoch, fit.train_samples_per_second, fit.epochs, {"train_seconds": fit.train_seconds}
        )

    def predict(self, split: str) -> Predictions:
        pad = self.tokenizer.pad_token_id
        return predict(self.served, self.encoded[split], self.plan.eval_batch_size, pad, self.accelerator)

    def size(self) -> tuple[int, float]:
        return count_parameters(self.model), model_size_mb(self.model)

    def log_model(self) -> None:
        """The model saved whole (save_pretrained), logged as the served pyfunc model."""
        plan = self.plan
        with tempfile.TemporaryDirectory() as folder:
            weights_dir = Path(folder) / "weights"
            self.model.save_pretrained(weights_dir)
            self.tokenizer.save_pretrained(weights_dir)
            limits = RequestLimits.of(plan.serve)
            log_paraphrase_model(
                weights_dir, plan.max_length, plan.eval_batch_size, plan.inference_path, limits
            )

    def wait(self) -> None:
        self.accelerator.wait_for_everyone()

    def clean_up(self) -> None:
        if self.main and self.checkpoints is not None and not self.plan.keep_checkpoints:
            self.checkpoints.clear()


def lora_params(params: Params, model: Any) -> dict[str, Any]:
    """The LoRA settings and the modules they were applied to (peft picks them per architecture)."""
    config = model.peft_config["default"]
    return {
        **{f"lora_{k}": v for k, v in params.lora.model_dump().items()},
        "lora_target_modules": ",".join(sorted(config.target_modules or [])),
    }
