"""One tracked run, whatever its kind: validated data → the kind prepares → an MLflow run with the common
params → fit → every split scored under the metric contract → artifacts, the served model, the result record.

This is the only code that opens a training run. A fine-tuned model (`finetune.FineTuning`), a frozen-encoder
head (`baselines.Baseline`) and a seed ensemble (`ensemble.Ensemble`) differ only in the steps of
`kind.RunKind`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import pandas as pd
import torch

from parabench.common.names import SPLITS
from parabench.config import Params
from parabench.data.prepare import load_frames
from parabench.data.validate import require_validated
from parabench.tracking import client as tracking
from parabench.training.baselines import Baseline
from parabench.training.ensemble import Ensemble
from parabench.training.evaluation import log_evaluation_artifacts, split_metrics, subsample
from parabench.training.finetune import FineTuning
from parabench.training.kind import RunKind
from parabench.training.plan import RunPlan
from parabench.training.records import log_record, require_record_folder, save_record
from parabench.training.state import EpochResult


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    experiment_id: str
    model: str
    seed: int
    metrics: dict[str, float]
    main_process: bool = True  # False in the other processes of a multi-process launch (they log nothing)


def run_frames(params: Params, plan: RunPlan) -> dict[str, pd.DataFrame]:
    """The validated splits, subsampled as the plan says (with its seed)."""
    frames = load_frames(params.path(params.data.processed_dir))
    frames["train"] = subsample(frames["train"], plan.max_train_samples, plan.seed)
    for split in ("validation", "test"):
        frames[split] = subsample(frames[split], plan.max_eval_samples, plan.seed)
    return frames


def kind_of(params: Params, plan: RunPlan, frames: dict[str, pd.DataFrame]) -> RunKind:
    """The kind of run the plan's model is: a baseline (encoder + head), an ensemble (members) or a
    fine-tuned model."""
    if plan.spec.head is not None:
        return Baseline(params, plan, frames)
    if plan.spec.members is not None:
        return Ensemble(params, plan, frames)
    return FineTuning(params, plan, frames)


def train_and_track(
    params: Params,
    plan: RunPlan,
    log: Callable[[str], None] = print,
    nested: bool = False,
    extra_tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> RunSummary:
    """Run the plan's model with its seed on validated MRPC, tracked in MLflow, with a result record.

    Everything that can fail on the user's input (data, weights, members) fails before a run exists. Under a
    multi-process launch every process trains its share and only the main one talks to MLflow: one run. An
    interrupted fine-tuning goes on from its newest checkpoint, in the same MLflow run. `parent_run_id` nests
    the run under a run of another process (a Ray sweep's parent); `on_epoch` sees every epoch's result (a
    Tune trial reports it)."""
    require_validated(params)
    if plan.record:
        require_record_folder(params)
    if params.train.num_threads is not None:
        torch.set_num_threads(params.train.num_threads)
    frames = run_frames(params, plan)
    kind = kind_of(params, plan, frames)
    kind_params = kind.prepare()
    main = kind.main
    say = log if main else lambda _: None  # one process speaks for all
    experiment_id = tracking.configure(params) if main else ""
    resumed = kind.resumable_run(say)
    tags = {**plan.tags(), **kind.tags(), **(extra_tags or {})}
    run_context = (
        tracking.tracked_run(plan.run_name, tags, nested, resumed, parent_run_id) if main else nullcontext()
    )
    with run_context as run:
        run_id = run.info.run_id if main else None
        if main and resumed is None:
            logged = {k: v for k, v in plan.logged_params().items() if k not in kind.not_logged}
            tracking.log_params(
                {
                    **logged,
                    "recipe": kind.recipe_name,
                    "train_samples": len(frames["train"]),
                    "git_commit": tracking.git_commit(params.root),
                    **tracking.hardware(kind.device),
                    **kind_params,
                }
            )
        fitted = kind.fit(run_id, lambda epoch: main and epoch_ended(epoch, on_epoch), say)
        predictions = {
            split: kind.predict(split).require_finite(f"the {kind.record_kind} model on the {split} split")
            for split in SPLITS
        }
        labels = {split: frame["label"].to_numpy() for split, frame in frames.items()}
        num_parameters, size_mb = kind.size()
        final = split_metrics(labels, predictions, say) | {
            "kept_epoch": fitted.kept_epoch,
            "train_samples_per_second": fitted.train_samples_per_second,
            "eval_samples_per_second": predictions["test"].samples_per_second,
            "num_parameters": num_parameters,
            "model_size_mb": size_mb,
        }
        if main:
            tracking.log_params({**fitted.chosen, "num_parameters": num_parameters})
            log_evaluation_artifacts(plan.spec.key, frames["test"], predictions["test"], final)
            kind.log_model()
            tracking.log_final_metrics(final)
            if plan.record:
                timings = {**fitted.timings, "test_inference_seconds": predictions["test"].seconds}
                record = log_record(params, plan, kind, frames, predictions, final, fitted.epochs, timings)
        kind.wait()
    if main and plan.record:
        with tracking.completing(run_id or ""):
            save_record(params, record, say)
    kind.clean_up()
    return RunSummary(run_id or "", experiment_id, plan.spec.key, plan.seed, final, main)


def epoch_ended(epoch: EpochResult, on_epoch: Callable[[EpochResult], None] | None) -> None:
    """Log one epoch's point of the curve (main process), then hand it to the caller's hook."""
    tracking.log_epoch(
        epoch.epoch,
        {
            "train_loss": epoch.train_loss,
            "validation_accuracy": epoch.validation_accuracy,
            "validation_f1": epoch.validation_f1,
        },
    )
    if on_epoch is not None:
        on_epoch(epoch)
