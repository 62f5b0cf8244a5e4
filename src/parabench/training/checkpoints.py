"""Checkpoints for an exact resume: accelerate's `save_state` (model, optimizer, scheduler, every RNG) plus
parabench's own training state (`state.TrainingState`).

A checkpoint is written into a temporary folder and renamed into place once whole, with a manifest of its
files' SHA-256 written last; a checkpoint without a manifest, or whose files do not match it, is skipped on
restore (saying so) in favour of the previous one. The newest `KEEP` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from parabench.common.files import sha256_file, write_json
from parabench.training.state import TrainingState

if TYPE_CHECKING:
    from accelerate import Accelerator

KEEP = 2
MANIFEST = "manifest.json"
STATE_FILE = "training_state.json"
BEST_WEIGHTS = "best_weights.safetensors"
RUN_FILE = "run.json"


class Checkpoints:
    """The checkpoints of one run (one model, seed, recipe and data) in one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def complete(self) -> list[Path]:
        """Checkpoints with a manifest, newest first (names sort by epoch and step)."""
        if not self.folder.is_dir():
            return []
        found = [path for path in self.folder.glob("checkpoint-*") if (path / MANIFEST).is_file()]
        return sorted(found, reverse=True)

    def run_id(self) -> str | None:
        """The MLflow run the checkpoints belong to, if any checkpoint is there."""
        path = self.folder / RUN_FILE
        if not self.complete() or not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8")).get("run_id")

    def bind(self, run_id: str) -> None:
        """Record which MLflow run these checkpoints continue."""
        write_json(self.folder / RUN_FILE, {"run_id": run_id})

    def save(self, accelerator: Accelerator, state: TrainingState, model: torch.nn.Module) -> Path:
        """Save the full training state atomically (each process writes its RNG state); returns the folder."""
        name = f"checkpoint-{state.epoch:04d}-{state.step:07d}"
        target, scratch = self.folder / name, self.folder / f".{name}.partial"
        if accelerator.is_main_process:
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(scratch), safe_serialization=True)
        if accelerator.is_main_process:
            write_json(scratch / STATE_FILE, state.document())
            if state.best_weights is not None:
                from safetensors.torch import save_file

                save_file({k: v.contiguous() for k, v in state.best_weights.items()}, scratch / BEST_WEIGHTS)
            files = sorted(p for p in scratch.rglob("*") if p.is_file())
            write_json(scratch / MANIFEST, {str(p.relative_to(scratch)): sha256_file(p) for p in files})
            shutil.rmtree(target, ignore_errors=True)
            os.replace(scratch, target)
            for old in self.complete()[KEEP:]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return target

    def restore(
        self, accelerator: Accelerator, log: Callable[[str], None]
    ) -> tuple[TrainingState, str] | None:
        """Load the newest intact checkpoint into the prepared objects; None when there is none."""
        for path in self.complete():
            problem = self.problem(path)
            if problem is None:
                try:
                    accelerator.load_state(str(path))
                    return self.read_state(path), path.name
                except Exception as error:  # a checkpoint that does not load is as bad as a corrupt one
                    problem = " ".join(str(error).split())[:200]
            log(f"checkpoint {path.name} is unusable ({problem}); trying the one before it")
        return None

    @staticmethod
    def problem(path: Path) -> str | None:
        """Why a checkpoint cannot be trusted (a file missing or changed since it was written), or None."""
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        for name, digest in manifest.items():
            file = path / name
            if not file.is_file():
                return f"{name} is missing"
            if sha256_file(file) != digest:
                return f"{name} does not match its SHA-256"
        return None

    @staticmethod
    def read_state(path: Path) -> TrainingState:
        state = TrainingState.from_document(json.loads((path / STATE_FILE).read_text(encoding="utf-8")))
        if (path / BEST_WEIGHTS).is_file():
            from safetensors.torch import load_file

            state.best_weights = load_file(path / BEST_WEIGHTS)
        return state

    def clear(self) -> None:
        """Remove every checkpoint of the run (it finished and its model is logged)."""
        shutil.rmtree(self.folder, ignore_errors=True)
