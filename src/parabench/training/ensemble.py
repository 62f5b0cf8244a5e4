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

import mlflow
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from parabench.config import ParabenchError, Params
from parabench.data.prepare import load_frames
from parabench.data.validate import require_validated
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
from parabench.training.plan import RunPlan
from parabench.training.records import log_record, require_record_folder, save_record
from parabench.training.run import SPLITS, RunSummary, log_evaluation_artifacts, split_metrics, subsample

# Settings of a fine-tuning loop an ensemble does not run: left out of its logged parameters.
NOT_LOGGED = {"optimizer", "gradient_accumulation_steps", "checkpoint_every_steps", "mixed_precision"}


def member_train_speed(runs: list[mlflow.entities.Run]) -> float:
    """Training pairs/s of the whole ensemble: each pair is trained once per member, so 1 / Σ 1/speed_i
    (0 when a member logged no speed)."""
    speeds = [run.data.metrics.get("train_samples_per_second", 0.0) for run in runs]
    return 1.0 / sum(1.0 / speed for speed in speeds) if all(speeds) else 0.0


def track_ensemble(
    params: Params,
    plan: RunPlan,
    log: Callable[[str], None] = print,
    nested: bool = False,
    extra_tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> RunSummary:
    """One ensemble run of the members' FINISHED seeds (train_and_track dispatches here for spec.members).
    Fails in one line, before a run exists, when fewer than two seeds are there."""
    spec = plan.spec
    assert spec.members is not None
    require_validated(params)
    if params.train.num_threads is not None:
        torch.set_num_threads(params.train.num_threads)
    experiment_id = tracking.configure(params)
    member_tags = {
        "model": spec.members,
        "recipe_fingerprint": plan.fingerprint,
        "data_version": plan.data_version,
    }
    members = tracking.seed_runs(experiment_id, member_tags)
    if len(members) < 2:
        raise ParabenchError(
            f"{spec.key} needs FINISHED runs of {spec.members} with at least 2 seeds "
            f"(recipe {plan.recipe_name}, fingerprint {plan.fingerprint}, data {plan.data_version[:12]}); "
            f"found {len(members)}: run "
            f"`parabench sweep --models {spec.members} --seeds 2` with the same options first"
        )
    frames = load_frames(params.path(params.data.processed_dir))
    frames["train"] = subsample(frames["train"], plan.max_train_samples, plan.seed)
    for split in ("validation", "test"):
        frames[split] = subsample(frames[split], plan.max_eval_samples, plan.seed)
    if plan.record:
        require_record_folder(params)

    with tempfile.TemporaryDirectory() as folder:
        log(
            f"{spec.key}: the mean of {len(members)} seed runs of {spec.members} "
            f"(seeds {', '.join(map(str, members))})"
        )
        folders = [
            tracking.model_folder(run.info.run_id, Path(folder) / f"seed{seed}")
            for seed, run in members.items()
        ]
        tokenizer = AutoTokenizer.from_pretrained(folders[0])
        models = [AutoModelForSequenceClassification.from_pretrained(path) for path in folders]
        served = [prepare_for_inference(model, plan.inference_path) for model in models]
        encoded = {split: encode_frame(tokenizer, frame, plan.max_length) for split, frame in frames.items()}
        pad = tokenizer.pad_token_id
        predictions: dict[str, Predictions] = {
            split: mean_predictions([predict(m, encoded[split], plan.eval_batch_size, pad) for m in served])
            for split in SPLITS
        }
        tags = {**plan.tags(), **(extra_tags or {}), tracking.ENSEMBLE_TAG: str(len(members))}
        with tracking.tracked_run(plan.run_name, tags, nested, parent_run_id=parent_run_id) as run:
            member_runs = {f"member_seed{seed}": r.info.run_id for seed, r in members.items()}
            logged = {k: v for k, v in plan.logged_params().items() if k not in NOT_LOGGED}
            tracking.log_params(
                {
                    **logged,
                    "members": spec.members,
                    "n_members": len(members),
                    "member_seeds": ",".join(map(str, members)),
                    **member_runs,
                    "train_samples": len(frames["train"]),
                    "git_commit": tracking.git_commit(params.root),
                    **tracking.hardware(next(models[0].parameters()).device),
                    "num_processes": 1,
                }
            )
            final = split_metrics({split: encoded[split].labels for split in SPLITS}, predictions, log)
            final |= {
                "kept_epoch": 0,
                "train_samples_per_second": member_train_speed(list(members.values())),
                "eval_samples_per_second": predictions["test"].samples_per_second,
                "num_parameters": sum(count_parameters(model) for model in models),
                "model_size_mb": sum(model_size_mb(model) for model in models),
            }
            tracking.log_params({"num_parameters": final["num_parameters"]})
            log_evaluation_artifacts(frames["test"], predictions["test"], final, plan)
            limits = RequestLimits.of(plan.serve)
            log_ensemble_model(folders, plan.max_length, plan.eval_batch_size, plan.inference_path, limits)
            tracking.log_final_metrics(final)
            if plan.record:
                timings = {"test_inference_seconds": predictions["test"].seconds}
                record = log_record(params, plan, "ensemble", frames, predictions, final, timings=timings)
    if plan.record:
        with tracking.completing(run.info.run_id):
            save_record(params, record, log)
    return RunSummary(run.info.run_id, experiment_id, spec.key, plan.seed, final)
