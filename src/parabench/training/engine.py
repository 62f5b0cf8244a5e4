"""Where models are trained: one fine-tuning loop for every machine, through `accelerate`.

accelerate puts the model, the batches and the optimizer on the machine's device (CUDA, Apple MPS, the CPU),
applies mixed precision and gradient accumulation, shards the batches when several processes train one model
(`torchrun` / `accelerate launch`), and saves and restores the full training state for an exact resume.
parabench keeps its length-grouped, dynamically padded batches: they are the batch sampler accelerate shards.

No MLflow here: the caller gets each epoch's result through a callback and logs it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate.utils import set_seed
from transformers import PreTrainedModel, get_scheduler

from parabench.common.progress import progress
from parabench.config import ConfigError, ParabenchError, Recipe
from parabench.models.inference import TEACHER_LOGITS, EncodedSplit, collate, model_inputs, predict
from parabench.training.checkpoints import Checkpoints
from parabench.training.metrics import classification_metrics
from parabench.training.state import EpochResult, TrainingState

if TYPE_CHECKING:
    from accelerate import Accelerator

# Batches are drawn from windows of this many batches sorted by length: little padding, still shuffled.
LENGTH_GROUP_WINDOW = 50
MIXED_PRECISIONS = ("no", "fp16", "bf16")


@dataclass(frozen=True)
class EngineSettings:
    """How the loop runs on this machine (not what it learns: that is the recipe)."""

    mixed_precision: str = "no"
    gradient_accumulation_steps: int = 1
    checkpoint_every_steps: int | None = None  # optimizer steps between checkpoints; None: after epochs only


def default_mixed_precision() -> str:
    """bf16 on GPUs that support it, else fp16 on CUDA, no on the CPU (and MPS)."""
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def check_mixed_precision(value: str) -> str:
    """The value when this machine can run it; ConfigError otherwise (fp16 needs a GPU)."""
    if value not in MIXED_PRECISIONS:
        raise ConfigError(f"--mixed-precision {value!r}: choose one of {', '.join(MIXED_PRECISIONS)}")
    if value == "fp16" and not (torch.cuda.is_available() or torch.backends.mps.is_available()):
        raise ConfigError("--mixed-precision fp16 needs a GPU; on the CPU use bf16 or no")
    return value


def make_accelerator(settings: EngineSettings) -> Accelerator:
    """The Accelerator for these settings. accelerate keeps one state per process; a process that trains
    runs of different precision one after another (a sweep, the tests) gets it reset between them."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", settings.mixed_precision) != settings.mixed_precision:
        AcceleratorState._reset_state()
    no_accelerator = not (torch.cuda.is_available() or torch.backends.mps.is_available())
    return Accelerator(
        cpu=no_accelerator,  # on the CPU accelerate joins the processes of torchrun only when told so
        mixed_precision=settings.mixed_precision,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
    )


def finish_processes() -> None:
    """End the process group a multi-process launch (torchrun, accelerate launch) opened, so that every
    process exits 0 instead of being aborted with the group left open."""
    from accelerate import PartialState

    state = PartialState()
    if state.use_distributed:
        state.wait_for_everyone()
        state.destroy_process_group()


def length_grouped_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shuffled batches of similar-length pairs: shuffle, sort within windows, then shuffle the batches."""
    order = rng.permutation(len(lengths))
    window = batch_size * LENGTH_GROUP_WINDOW
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def micro_batch_size(batch_size: int, accumulation: int, processes: int) -> int:
    """Pairs per process and forward pass, so that the recipe's batch size stays the effective one."""
    share = accumulation * processes
    if batch_size % share:
        raise ConfigError(
            f"batch size {batch_size} is not divisible by gradient accumulation steps × processes "
            f"({accumulation} × {processes}); choose values whose product divides it"
        )
    return batch_size // share


def batch_loader(
    split: EncodedSplit, batches: list[np.ndarray], pad_token_id: int
) -> torch.utils.data.DataLoader:
    """A DataLoader over precomputed batches of indices (accelerate shards it between processes)."""
    return torch.utils.data.DataLoader(
        range(len(split)),
        batch_sampler=[batch.tolist() for batch in batches],
        collate_fn=lambda indices: collate(split, np.asarray(indices), pad_token_id),
    )


def build_optimizer(
    model: PreTrainedModel, recipe: Recipe, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with weight decay on weights only (not biases or LayerNorm), as the HF Trainer does, and the
    recipe's learning-rate schedule over total_steps."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 or "norm" in name.lower() else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=recipe.learning_rate)
    warmup_steps = int(recipe.warmup_ratio * total_steps)
    scheduler = get_scheduler(recipe.scheduler, optimizer, warmup_steps, num_training_steps=total_steps)
    return optimizer, scheduler


@dataclass(frozen=True)
class Distillation:
    """Soft targets of a teacher mixed with the labels (Hinton et al.): weight · T² · KL(teacher ‖ student)
    at temperature T + (1 − weight) · cross-entropy. A pair's teacher is its log-odds d: logits (0, d)."""

    temperature: float
    weight: float

    @classmethod
    def of(cls, recipe: Recipe) -> Distillation | None:
        if recipe.teacher is None:
            return None
        assert recipe.distill_temperature is not None and recipe.distill_weight is not None
        return cls(recipe.distill_temperature, recipe.distill_weight)

    def loss(
        self, logits: torch.Tensor, hard_loss: torch.Tensor, teacher_log_odds: torch.Tensor
    ) -> torch.Tensor:
        t = self.temperature
        teacher = torch.stack([torch.zeros_like(teacher_log_odds), teacher_log_odds], dim=-1).to(logits)
        soft = torch.nn.functional.kl_div(
            torch.log_softmax(logits.float() / t, dim=-1),
            torch.log_softmax(teacher.float() / t, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        return self.weight * t * t * soft + (1 - self.weight) * hard_loss


def train_steps(
    accelerator: Accelerator,
    model: Any,
    loader: Any,
    optimizer: Any,
    scheduler: Any,
    max_grad_norm: float,
    description: str = "training",
    on_optimizer_step: Callable[[int, list[float]], None] = lambda step, losses: None,
    losses: list[float] | None = None,
    distillation: Distillation | None = None,
    epoch: int = 1,
) -> list[float]:
    """One pass over a prepared loader: forward, backward, clip and step as accelerate accumulates them.
    With `distillation` the loss mixes in the batch's teacher logits. Returns the loss of every micro-batch
    this process ran (appended to `losses` when given). A progress bar shows pairs/s and the running loss on
    a terminal. A loss or gradient norm that is not finite stops it before the optimizer steps on it
    (ParabenchError naming the epoch and step: see `require_finite`)."""
    model.train()
    losses = [] if losses is None else losses
    steps, window = 0, []  # window: the losses of the micro-batches the coming optimizer step sums
    with progress(len(loader), description, unit="batch") as bar:
        for batch in loader:
            with accelerator.accumulate(model):
                outputs = model(**model_inputs(accelerator.unwrap_model(model), batch))
                loss = outputs.loss
                if distillation is not None:
                    loss = distillation.loss(outputs.logits, loss, batch[TEACHER_LOGITS])
                accelerator.backward(loss)
                value = loss.item()
                window.append(value)
                if accelerator.sync_gradients:
                    norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
                    require_finite(accelerator, optimizer, window, norm, epoch, steps + 1)
                    window = []
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses):.4f}", refresh=False)
            if accelerator.sync_gradients:
                steps += 1
                on_optimizer_step(steps, losses)
    return losses


def require_finite(
    accelerator: Accelerator,
    optimizer: torch.optim.Optimizer,
    losses: list[float],
    grad_norm: torch.Tensor | float | None,
    epoch: int,
    step: int,
) -> None:
    """Stop a diverged training: a loss of the step's micro-batches, or the gradient norm, that is NaN or
    infinite raises a ParabenchError naming the epoch and the optimizer step and suggesting a lower learning
    rate, so the run ends FAILED instead of training on to a model that predicts nothing. Under fp16 the
    gradient scaler skips an overflowing step itself, so only the loss counts there. Every process of a
    launch stops at the same step."""
    norm = None if grad_norm is None else float(grad_norm)
    bad_loss = next((value for value in losses if not math.isfinite(value)), None)
    bad_norm = norm is not None and not math.isfinite(norm) and accelerator.scaler is None
    diverged = bad_loss is not None or bad_norm
    if accelerator.num_processes > 1:
        flag = torch.tensor(float(diverged), device=accelerator.device)
        diverged = bool(accelerator.reduce(flag, "sum").item())
    if not diverged:
        return
    what = f"the loss is {bad_loss}" if bad_loss is not None else f"the gradient norm is {norm}"
    peak = optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"])
    raise ParabenchError(
        f"training diverged at epoch {epoch}, step {step}: {what}; lower the learning rate "
        f"(--learning-rate, now {peak:g}) and train again"
    )


def fine_tune(
    model: PreTrainedModel,
    train: EncodedSplit,
    validation: EncodedSplit,
    recipe: Recipe,
    seed: int,
    pad_token_id: int,
    eval_batch_size: int,
    accelerator: Accelerator,
    settings: EngineSettings = EngineSettings(),
    checkpoints: Checkpoints | None = None,
    on_epoch_end: Callable[[EpochResult], None] = lambda _: None,
    log: Callable[[str], None] = print,
) -> tuple[PreTrainedModel, TrainingState]:
    """Fine-tune `model` on `train` with the recipe, validating after each epoch; returns the trained model
    (unwrapped) and the per-epoch results. With `checkpoints`, the full training state is saved after every
    epoch (and every settings.checkpoint_every_steps optimizer steps) and, when one is there, training goes
    on from the newest intact checkpoint exactly where it stopped."""
    set_seed(seed)
    micro = micro_batch_size(
        recipe.batch_size, settings.gradient_accumulation_steps, accelerator.num_processes
    )
    micro_batches_per_epoch = len(length_grouped_batches(train.lengths, micro, np.random.default_rng(seed)))
    total_steps = math.ceil(micro_batches_per_epoch / settings.gradient_accumulation_steps) * recipe.epochs
    optimizer, scheduler = build_optimizer(model, recipe, total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    state = TrainingState.start(np.random.default_rng(seed), recipe.select_best_epoch)
    if checkpoints is not None:
        restored = checkpoints.restore(accelerator, log)
        if restored is not None:
            state, state.resumed_from = restored
            log(f"resumed from checkpoint {state.resumed_from}: epoch {state.epoch}, step {state.step}")

    def save(step: int, losses: list[float], epoch_seconds: float) -> None:
        if checkpoints is not None:
            state.step, state.epoch_losses, state.epoch_seconds = step, list(losses), epoch_seconds
            checkpoints.save(accelerator, state, accelerator.unwrap_model(model))

    while state.epoch <= recipe.epochs:
        epoch = state.epoch
        rng = np.random.default_rng()
        rng.bit_generator.state = state.epoch_rng_state
        batches = length_grouped_batches(train.lengths, micro, rng)
        loader = accelerator.prepare(batch_loader(train, batches, pad_token_id))
        consumed, losses = state.step, list(state.epoch_losses)
        if consumed:
            loader = accelerator.skip_first_batches(loader, consumed)
        started, earlier = time.perf_counter(), state.epoch_seconds

        def every_steps(
            step: int, losses: list[float], started: float = started, earlier: float = earlier
        ) -> None:
            every = settings.checkpoint_every_steps
            if every and step % every == 0:  # one loss per micro-batch run this epoch, restored ones included
                save(len(losses), losses, earlier + time.perf_counter() - started)

        description = f"epoch {epoch}/{recipe.epochs}"
        train_steps(
            accelerator,
            model,
            loader,
            optimizer,
            scheduler,
            recipe.max_grad_norm,
            description,
            every_steps,
            losses,
            Distillation.of(recipe),
            epoch,
        )
        seconds = earlier + time.perf_counter() - started
        trained = accelerator.unwrap_model(model)
        validation_predictions = predict(trained, validation, eval_batch_size, pad_token_id, accelerator)
        scores = classification_metrics(validation.labels, validation_predictions.labels)
        mean_loss = accelerator.reduce(
            torch.tensor(float(np.mean(losses)), device=accelerator.device), "mean"
        )
        epoch_result = EpochResult(epoch, float(mean_loss), scores["accuracy"], scores["f1"], seconds)
        log(
            f"epoch {epoch}/{recipe.epochs}: train_loss {epoch_result.train_loss:.4f}  "
            f"validation_accuracy {epoch_result.validation_accuracy:.4f}  "
            f"validation_f1 {epoch_result.validation_f1:.4f}  ({epoch_result.seconds:.0f} s)"
        )
        on_epoch_end(epoch_result)
        if state.finish_epoch(rng, epoch_result, len(train)):
            state.best_weights = {name: t.detach().clone() for name, t in trained.state_dict().items()}
        save(0, [], 0.0)

    trained = accelerator.unwrap_model(model)
    if recipe.select_best_epoch and state.best_epoch != recipe.epochs and state.best_weights is not None:
        trained.load_state_dict(state.best_weights)
        log(f"kept epoch {state.best_epoch}'s weights (best validation accuracy)")
    return trained, state
