"""Tiny test models `tiny-<family>`: a small config from models.yaml, random seeded weights, built once.

Every tiny model shares the all-MiniLM-L6-v2 WordPiece tokenizer (vocab 30522, [PAD]=0, [CLS]=101,
[SEP]=102), so `[CLS] a [SEP] b [SEP]` pairs feed every family's sequence-classification head.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parabench.models.embedded import minilm_path
from parabench.models.hub import LABELS, quiet_transformers

if TYPE_CHECKING:
    from parabench.config import Params

# What every tiny config shares: the MiniLM vocabulary and its [PAD] id, and the two MRPC labels.
SHARED_CONFIG: dict[str, Any] = {
    "vocab_size": 30522,
    "pad_token_id": 0,
    "id2label": LABELS,
    "label2id": {name: index for index, name in LABELS.items()},
}
RECIPE_FILE = "parabench-tiny.json"


def tiny_recipe(config: dict[str, Any], params: Params) -> dict[str, Any]:
    """Everything the built weights depend on (the zoo entry's tiny config and the seed); a folder built from
    another recipe is rebuilt."""
    return {"seed": params.tiny.seed, **config}


def is_built(folder: Path, recipe: dict[str, Any]) -> bool:
    """True when the folder holds a tiny model built from exactly this recipe."""
    try:
        return json.loads((folder / RECIPE_FILE).read_text(encoding="utf-8")) == recipe
    except (OSError, ValueError):
        return False


def write_tiny(recipe: dict[str, Any], folder: Path) -> None:
    """Build the model (seeded random weights) and the shared tokenizer into the folder."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    input_names = ["input_ids", "token_type_ids", "attention_mask"]
    if not recipe["token_type_ids"]:
        input_names.remove("token_type_ids")
    config = AutoConfig.for_model(**{**recipe["config"], **SHARED_CONFIG})
    with torch.random.fork_rng(devices=[]), quiet_transformers():
        torch.manual_seed(recipe["seed"])
        model = AutoModelForSequenceClassification.from_config(config)
        model.save_pretrained(folder)  # safetensors: the only format transformers 5 writes
        AutoTokenizer.from_pretrained(minilm_path(), model_input_names=input_names).save_pretrained(folder)
    (folder / RECIPE_FILE).write_text(json.dumps(recipe, indent=2, sort_keys=True), encoding="utf-8")


def swap_in(built: Path, target: Path, scratch: Path, recipe: dict[str, Any]) -> None:
    """Move a freshly built folder to target, moving a stale one out of the way first; a current one that a
    concurrent build put there meanwhile is kept."""
    if is_built(target, recipe):
        return
    if target.exists():
        target.rename(scratch / "stale")
    try:
        built.rename(target)
    except OSError:
        if not is_built(target, recipe):
            raise


def build_tiny(name: str, config: dict[str, Any], params: Params) -> Path:
    """The tiny model `name` (from its zoo entry's tiny config) in <params tiny.dir>/<name>, built
    (atomically: temp folder, then rename) unless already current."""
    target = params.path(params.tiny.dir) / name
    recipe = tiny_recipe(config, params)
    if is_built(target, recipe):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    try:
        write_tiny(recipe, scratch / "model")
        swap_in(scratch / "model", target, scratch, recipe)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
