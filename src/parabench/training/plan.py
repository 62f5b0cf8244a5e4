"""The resolved, frozen description of one training run, built once from params.yaml and the user's options.

`train`, `sweep` (its skip/resume identity), `bench` and the logged params and tags all read this one object,
so what a run is, what it is called and what it logs cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parabench.common.files import file_stem
from parabench.config import (
    BaselineParams,
    ConfigError,
    Params,
    Recipe,
    RunOptions,
    ServeParams,
    require_within,
)
from parabench.models.choice import choose_path
from parabench.models.zoo import ModelSpec, get_spec, require_hardware
from parabench.training.engine import EngineSettings, check_mixed_precision, default_mixed_precision

# Bumped whenever the training code changes so that the same plan would now train to other numbers: runs and
# records of an older revision are then neither skipped by a sweep nor averaged with newer ones.
TRAINING_REVISION = 1
FIELD_DEFAULTS = {
    name: field.default for name, field in Recipe.model_fields.items() if not field.is_required()
}


@dataclass(frozen=True)
class RunPlan:
    """One run: which model, seed, recipe (after overrides), data and sample caps, inference path."""

    spec: ModelSpec
    seed: int
    recipe_name: str
    recipe: Recipe
    max_train_samples: int | None
    max_eval_samples: int | None
    max_length: int
    eval_batch_size: int
    inference_path: str
    data_version: str
    inference_choice: str = ""  # why this path: params.yaml's, or what `auto` read from the bench
    engine: EngineSettings = field(default_factory=EngineSettings)
    keep_checkpoints: bool = False
    checkpoint: bool = True  # False: no checkpoints at all (a Tune trial; ASHA may stop it anyway)
    record: bool = True  # False: no result record (a Tune trial is a search step, not a result)
    load_in_4bit: bool = False
    baselines: BaselineParams | None = None  # params.yaml `baselines:`, for a baseline (spec.head) only
    # params.yaml `serve:` as read when the run was planned: its request limits go with the logged model
    # (read once: a long run must not re-read a params.yaml edited meanwhile).
    serve: ServeParams | None = None

    @property
    def fingerprint(self) -> str:
        """A short hash of everything that shapes a run besides model, seed and data: equal runs share it.
        Recipe fields at their default are left out, so adding a field keeps earlier runs' fingerprints."""
        values: dict[str, Any] = {
            name: value
            for name, value in self.recipe.model_dump().items()
            if name not in FIELD_DEFAULTS or FIELD_DEFAULTS[name] != value
        }
        if self.spec.head is not None and self.baselines is not None:  # no recipe: what the head is fit by
            values = {"head": self.spec.head}
            if self.spec.head == "logreg":
                values |= self.baselines.model_dump(include={"c_grid", "max_iter"})
        values |= {"max_train_samples": self.max_train_samples or 0, "max_length": self.max_length}
        if self.max_eval_samples is not None:
            values["max_eval_samples"] = self.max_eval_samples
        # How the numbers are computed, where it differs from the CPU's fp32 default.
        if self.engine.mixed_precision != "no":
            values["mixed_precision"] = self.engine.mixed_precision
        if self.engine.gradient_accumulation_steps != 1:
            values["gradient_accumulation_steps"] = self.engine.gradient_accumulation_steps
        if self.load_in_4bit:
            values["load_in_4bit"] = True
        if self.inference_path != "fp32":  # the final metrics come from this path: grouped apart from fp32's
            values["inference_path"] = self.inference_path
        if TRAINING_REVISION > 1:
            values["training_revision"] = TRAINING_REVISION
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def run_name(self) -> str:
        return f"{self.spec.key}-seed{self.seed}"

    @property
    def checkpoint_name(self) -> str:
        """The folder of this run's checkpoints: the same run resumes from it, any other run cannot."""
        return f"{file_stem(self.spec.key)}-seed{self.seed}-{self.fingerprint}-{self.data_version[:12]}"

    def tags(self) -> dict[str, str]:
        """What identifies the run in searches: model, class, family, seed, data version, fingerprint."""
        return {
            "model": self.spec.key,
            "size_class": self.spec.size_class,
            "family": self.spec.family,
            "seed": str(self.seed),
            "data_version": self.data_version,
            "recipe_fingerprint": self.fingerprint,
        }

    def logged_params(self) -> dict[str, Any]:
        """The run's parameters as MLflow shows them (the recipe after overrides, caps, model, data)."""
        return {
            **self.recipe.model_dump(exclude_none=True),
            "recipe": self.recipe_name,
            "model": self.spec.key,
            "size_class": self.spec.size_class,
            "family": self.spec.family,
            "seed": self.seed,
            "max_train_samples": self.max_train_samples,
            "max_eval_samples": self.max_eval_samples,
            "max_length": self.max_length,
            "eval_batch_size": self.eval_batch_size,
            "optimizer": "AdamW",
            "lora": self.spec.lora,
            "data_version": self.data_version,
            "recipe_fingerprint": self.fingerprint,
            "eval_path": f"{self.inference_path}-inference_mode-length_sorted-dynamic_padding",
            "inference_path": self.inference_path,
            "inference_choice": self.inference_choice,
            "mixed_precision": self.engine.mixed_precision,
            "gradient_accumulation_steps": self.engine.gradient_accumulation_steps,
            "checkpoint_every_steps": self.engine.checkpoint_every_steps,
            "load_in_4bit": self.load_in_4bit,
        }


TUNED_PREFIX = "tune"


def recipe_name_for(params: Params, spec: ModelSpec, name: str | None) -> str:
    """None = the model's own recipe: its zoo entry's, else params.yaml `train.recipe`. `tune` = the recipe
    `parabench tune` found for this model (`tune:<model>`)."""
    if name == TUNED_PREFIX:
        return f"{TUNED_PREFIX}:{spec.key}"
    return name or spec.recipe or params.train.recipe


def tuned_recipe_file(params: Params, model: str) -> Path:
    """Where `parabench tune --model <model>` writes the best recipe it found."""
    return params.path(params.tune.output_dir) / f"{file_stem(model)}.json"


def tuned_recipes(params: Params) -> dict[str, dict[str, Any]]:
    """Every search result `parabench tune` wrote (model -> its JSON: recipe, values, trial, validation)."""
    folder = params.path(params.tune.output_dir)
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            found[document["model"]] = document
        except (ValueError, KeyError, TypeError):
            continue  # not a search result
    return found


def resolve_recipe(params: Params, name: str) -> Recipe:
    """A recipe of params.yaml, or `tune:<model>`: the best recipe `parabench tune` wrote for that model."""
    prefix, _, model = name.partition(":")
    if prefix != TUNED_PREFIX or not model:
        return params.recipe(name)
    path = tuned_recipe_file(params, model)
    if not path.is_file():
        raise ConfigError(
            f"--recipe {name}: no tuned recipe for {model} ({path} is missing); "
            f"run `parabench tune --model {model}` first"
        )
    try:
        return Recipe.model_validate(json.loads(path.read_text(encoding="utf-8"))["recipe"])
    except (ValueError, KeyError, TypeError) as error:
        reason = " ".join(str(error).split())[:200]
        raise ConfigError(f"--recipe {name}: {path} holds no valid recipe ({reason})") from error


def plan_run(
    params: Params, options: RunOptions, data_version: str, model: str | None = None, seed: int | None = None
) -> RunPlan:
    """The run the options describe (model and seed may be given apart, as a sweep does per model/seed)."""
    spec = get_spec(model or options.model or params.train.model, params)
    require_hardware(spec, bool(options.load_in_4bit))
    recipe_name = recipe_name_for(params, spec, options.recipe)
    recipe = resolve_recipe(params, recipe_name).with_overrides(**options.recipe_overrides())
    caps = {
        "max_train_samples": pick(options.max_train_samples, params.train.max_train_samples),
        "max_eval_samples": pick(options.max_eval_samples, params.train.max_eval_samples),
    }
    for name, cap in caps.items():
        if cap == 0:
            option = f"--{name.replace('_', '-')}"
            raise ConfigError(
                f"{option} 0 leaves no pair to use; give at least 1, or leave it out for all pairs"
            )
    check_counts(params, options, recipe, caps)
    inference_path, inference_choice = choose_path(params)
    return RunPlan(
        spec=spec,
        seed=pick(seed, pick(options.seed, params.train.seed)),
        recipe_name=recipe_name,
        recipe=recipe,
        max_length=pick(options.max_length, params.train.max_length),
        eval_batch_size=params.train.eval_batch_size,
        inference_path=inference_path,
        inference_choice=inference_choice,
        data_version=data_version,
        engine=EngineSettings(
            mixed_precision=check_mixed_precision(options.mixed_precision or default_mixed_precision()),
            gradient_accumulation_steps=options.gradient_accumulation_steps or 1,
            checkpoint_every_steps=options.checkpoint_every_steps or None,
        ),
        keep_checkpoints=bool(options.keep_checkpoints),
        load_in_4bit=bool(options.load_in_4bit),
        baselines=params.baselines if spec.head else None,
        serve=params.serve,
        **caps,
    )


def check_counts(params: Params, options: RunOptions, recipe: Recipe, caps: dict[str, int | None]) -> None:
    """Every count of a run within params.yaml `limits:` (ConfigError naming the option, or the params.yaml
    value, the limit and why)."""
    counts = {
        "epochs": ("epochs", recipe.epochs),
        "batch_size": ("samples", recipe.batch_size),
        **{name: ("samples", cap) for name, cap in caps.items()},
        "gradient_accumulation_steps": ("optimizer_steps", options.gradient_accumulation_steps),
        "checkpoint_every_steps": ("optimizer_steps", options.checkpoint_every_steps),
    }
    for name, (limit, value) in counts.items():
        shown = f"--{name.replace('_', '-')}" if getattr(options, name) is not None else name
        require_within(params.limits, limit, value, shown)


def pick(given: Any, default: Any) -> Any:
    """The given value unless it is None ("not given")."""
    return default if given is None else given
