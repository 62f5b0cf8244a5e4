"""Knowledge distillation's teacher side: a fine-tuned model's logits on the train split, computed once and
cached as a DVC-tracked file (params.yaml `distill.dir`), so that students never run the teacher.

`parabench teacher --model KEY` takes the model's FINISHED run with the best validation accuracy on the
current data version (or `--run-id`), runs its logged model over the train split and writes
`<dir>/<key>.parquet` (idx, teacher_logit: the log-odds of a paraphrase) and `<dir>/<key>.json` (which run,
its accuracies, the data version). A student whose recipe names the teacher reads them before its run starts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from parabench.common.errors import first_line
from parabench.common.files import atomic_target, file_stem, require_writable, write_json
from parabench.common.names import VALIDATION_SCORE
from parabench.config import ParabenchError, Params
from parabench.data.prepare import load_frames
from parabench.data.validate import require_validated
from parabench.models.inference import encode_frame, predict
from parabench.models.zoo import get_spec, require_fine_tuned
from parabench.tracking import client as tracking
from parabench.training.metrics import classification_metrics

LOGIT_COLUMN = "teacher_logit"


def teacher_files(params: Params, teacher: str) -> tuple[Path, Path]:
    """The cached logits (parquet) and their description (JSON) of one teacher."""
    folder = params.path(params.distill.dir)
    return folder / f"{file_stem(teacher)}.parquet", folder / f"{file_stem(teacher)}.json"


def cache_teacher_logits(
    params: Params, teacher: str, run_id: str | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the teacher's logged model over the train split and write its logits; returns the description.
    Fails in one line, writing nothing, when the model is not fine-tuned or has no usable run on this data
    (see `tracking.require_trained_run`), or when its logits are not finite."""
    require_fine_tuned(get_spec(teacher, params), "--model", "it has no logits to distil from")
    data_version = require_validated(params)
    require_writable(*teacher_files(params, teacher))
    experiment_id = tracking.configure(params)
    if run_id is None:
        run = tracking.best_run(experiment_id, teacher, data_version)
        if run is None:
            raise ParabenchError(
                f"{teacher} has no FINISHED training run on data {data_version[:12]} in "
                f"{mlflow.get_tracking_uri()}: fine-tune it first (`parabench train --model {teacher}`)"
            )
    else:
        run = tracking.require_trained_run(run_id, teacher)
    log(
        f"teacher {teacher}: run {run.info.run_id} (validation accuracy "
        f"{run.data.metrics[VALIDATION_SCORE]:.4f}); computing its logits on the train split"
    )
    try:
        served = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").unwrap_python_model()
    except (MlflowException, OSError) as error:
        raise ParabenchError(
            f"cannot load the model of run {run.info.run_id}: {first_line(error)}"
        ) from error
    train = load_frames(params.path(params.data.processed_dir))["train"]
    started = time.perf_counter()
    encoded = encode_frame(served.tokenizer, train, served.max_length)
    predictions = predict(served.model, encoded, served.batch_size, served.tokenizer.pad_token_id)
    predictions.require_finite(f"the model of run {run.info.run_id}")
    seconds = time.perf_counter() - started
    scores = classification_metrics(encoded.labels, predictions.labels)
    description = {
        "teacher": teacher,
        "run_id": run.info.run_id,
        "data_version": data_version,
        "pairs": len(train),
        "train_accuracy": scores["accuracy"],
        "validation_accuracy": run.data.metrics[VALIDATION_SCORE],
        "test_accuracy": run.data.metrics.get("test_accuracy"),
        "seconds": round(seconds, 1),
        "column": f"{LOGIT_COLUMN}: log(p / (1 - p)) of the teacher's paraphrase probability p",
    }
    logits_file, description_file = teacher_files(params, teacher)
    with atomic_target(logits_file) as temp:
        frame = pd.DataFrame({"idx": train["idx"].to_numpy(), LOGIT_COLUMN: predictions.log_odds})
        frame.to_parquet(temp, index=False)
    write_json(description_file, description)
    log(
        f"wrote {logits_file} ({len(train)} pairs, teacher train accuracy {scores['accuracy']:.4f}, "
        f"{seconds:.0f} s)"
    )
    return description


def teacher_logits(
    params: Params, teacher: str, frame: pd.DataFrame, data_version: str
) -> tuple[np.ndarray, dict[str, Any]]:
    """The cached teacher logits of the frame's pairs (by idx) and their description; a ParabenchError in one
    line when they are missing, from other data, or lack a pair."""
    import json

    logits_file, description_file = teacher_files(params, teacher)
    redo = f"`parabench teacher --model {teacher}` (or `dvc repro teacher`)"
    if not logits_file.is_file() or not description_file.is_file():
        raise ParabenchError(f"no cached logits of the teacher {teacher} in {logits_file.parent}: run {redo}")
    description = json.loads(description_file.read_text(encoding="utf-8"))
    if description.get("data_version") != data_version:
        raise ParabenchError(
            f"the cached logits of the teacher {teacher} are of data "
            f"{str(description.get('data_version'))[:12]}, the data is now {data_version[:12]}: "
            f"run {redo} again"
        )
    try:
        table = pd.read_parquet(logits_file).set_index("idx")[LOGIT_COLUMN]
    except (OSError, ValueError, KeyError) as error:  # a damaged or foreign file
        raise ParabenchError(
            f"{logits_file} is not a teacher logits file ({error}): run {redo} again"
        ) from error
    missing = frame.loc[~frame["idx"].isin(table.index), "idx"]
    if len(missing):
        raise ParabenchError(
            f"the cached logits of the teacher {teacher} lack {len(missing)} train pair(s) "
            f"(idx {missing.iloc[0]}, …): run {redo} again"
        )
    logits = table.loc[frame["idx"]].to_numpy(dtype=np.float64)
    if not np.isfinite(logits).all():
        raise ParabenchError(
            f"{logits_file} holds {int((~np.isfinite(logits)).sum()):,} logits that are not finite (a "
            f"diverged teacher): run {redo} again with a teacher that trained"
        )
    return logits, description
