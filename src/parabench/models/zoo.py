"""The model zoo (models.yaml): which models exist, where their weights come from, and how to load them."""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from parabench.common.errors import first_line
from parabench.config import ConfigError, LoraParams, ParabenchError, Params
from parabench.models.embedded import embedded_installed, embedded_path, is_model_folder
from parabench.models.hub import (
    LABELS,
    cached_snapshot,
    hub_endpoint,
    hub_offline,
    hub_reachable,
    quiet_transformers,
)
from parabench.models.tiny import build_tiny

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ZOO_FILE = Path(__file__).with_name("models.yaml")
TINY_PREFIX = "tiny:"
EMBEDDED_PREFIX = "embedded:"
SIZE_CLASSES = ("small", "regular", "large")
HEADS = ("cosine", "logreg")  # the sentence-embedding baselines' heads (training/baselines.py)
CUSTOM_SIZE_CLASS = "custom"


@dataclass(frozen=True)
class ModelSpec:
    """One model of the zoo (or a local folder): where its weights are, its class, and how it is trained."""

    key: str
    source: str
    family: str
    size_class: str
    recipe: str | None  # None: params.yaml `train.recipe`, the default recipe
    lora: bool = False
    paper: dict[str, Any] = field(default_factory=dict)
    tiny: dict[str, Any] = field(default_factory=dict)
    # A sentence-embedding baseline: `encoder` (a zoo key) frozen, its embeddings scored by `head` (HEADS).
    head: str | None = None
    encoder: str | None = None
    # A seed ensemble: the mean probability of the FINISHED seed runs of `members` (a zoo key), same recipe.
    members: str | None = None

    def __hash__(self) -> int:  # the dict fields are not hashable; key and source identify a spec
        return hash((self.key, self.source))

    @property
    def is_tiny(self) -> bool:
        return self.source.startswith(TINY_PREFIX)

    @property
    def is_embedded(self) -> bool:
        return self.source.startswith(EMBEDDED_PREFIX)

    @property
    def is_local(self) -> bool:
        """A folder on this machine (`--model /path/to/folder`)."""
        return not (self.is_tiny or self.is_embedded) and Path(self.source).is_absolute()

    @property
    def embedded_name(self) -> str | None:
        return self.source.removeprefix(EMBEDDED_PREFIX) if self.is_embedded else None

    @property
    def hub_id(self) -> str | None:
        """The Hugging Face Hub id, or None for tiny, embedded and local models."""
        return None if self.is_tiny or self.is_embedded or self.is_local else self.source


# ----------------------------------------------------------------------------------------------- the table


@functools.cache
def zoo_document() -> dict[str, Any]:
    """models.yaml as read."""
    return yaml.safe_load(ZOO_FILE.read_text(encoding="utf-8"))


def families() -> dict[str, dict[str, Any]]:
    """Family -> its class in the study (and recipe/lora where it differs from the default)."""
    return zoo_document()["families"]


def make_spec(key: str, entry: dict[str, Any]) -> ModelSpec:
    """A ModelSpec from one models.yaml entry, checked against the known families and size classes. A baseline
    entry (`encoder` + `head`) takes source, family, size class and tiny config from its encoder's entry, an
    ensemble entry (`members`) everything but the study's numbers from its members' entry."""
    if "encoder" in entry:
        encoder = zoo_document()["models"].get(entry["encoder"])
        if encoder is None or "encoder" in encoder or entry.get("head") not in HEADS:
            raise ParabenchError(f"{ZOO_FILE}: baseline '{key}' needs an encoder model and a head in {HEADS}")
        entry = {**encoder, "recipe": None, "lora": False, "paper": None, **entry}
    if "members" in entry:
        member = zoo_document()["models"].get(entry["members"])
        if member is None or "encoder" in member or "members" in member:
            raise ParabenchError(f"{ZOO_FILE}: ensemble '{key}' needs a fine-tuned model as its members")
        entry = {**member, "paper": None, **entry}  # the members' source, family, class and recipe
    spec = ModelSpec(
        key=key,
        source=entry["source"],
        family=entry["family"],
        size_class=entry["size_class"],
        recipe=entry.get("recipe"),
        lora=bool(entry.get("lora", False)),
        paper=dict(entry.get("paper") or {}),
        tiny=dict(entry.get("tiny") or {}),
        head=entry.get("head"),
        encoder=entry.get("encoder"),
        members=entry.get("members"),
    )
    if spec.family not in families() or spec.size_class not in SIZE_CLASSES:
        raise ParabenchError(f"{ZOO_FILE}: model '{key}' has an unknown family or size class")
    return spec


@functools.cache
def load_zoo() -> dict[str, ModelSpec]:
    """Every model of models.yaml, by key, in file order."""
    return {key: make_spec(key, entry) for key, entry in zoo_document()["models"].items()}


def local_spec(key: str, folder: Path) -> ModelSpec:
    """A spec for a local model folder: family from config.json; class, recipe and paper numbers from the
    zoo entry of the same name (e.g. /models/albert-base-v2), else from the family (or 'custom')."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ParabenchError(f"{folder} is not a model folder: it has no config.json")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = " ".join(str(error).split())
        raise ParabenchError(f"{config_file} is not a readable model config (JSON): {reason}") from error
    if not isinstance(config, dict):
        raise ParabenchError(f"{config_file} is not a model config: expected a JSON object")
    family = str(config.get("model_type", "unknown"))
    source = str(folder.resolve())
    for spec in load_zoo().values():
        if spec.hub_id and spec.hub_id.split("/")[-1] == folder.name and spec.family == family:
            return dataclasses.replace(spec, key=key, source=source)
    defaults = families().get(family, {"size_class": CUSTOM_SIZE_CLASS})
    return ModelSpec(
        key=key,
        source=source,
        family=family,
        size_class=defaults["size_class"],
        recipe=defaults.get("recipe"),
        lora=bool(defaults.get("lora", False)),
    )


def get_spec(key: str, params: Params | None = None) -> ModelSpec:
    """The zoo entry for key, or a spec for a local model folder; ParabenchError for anything else.
    (params is accepted for symmetry with the other calls; the zoo does not depend on it.)"""
    zoo = load_zoo()
    if key in zoo:
        return zoo[key]
    folder = Path(key).expanduser()
    if folder.is_dir():
        return local_spec(key, folder)
    raise ParabenchError(f"unknown model '{key}'; `parabench models` lists the zoo")


def require_fine_tuned(spec: ModelSpec, option: str, why: str) -> ModelSpec:
    """The spec, when it is a fine-tuned model; ConfigError naming the option and why otherwise (a
    frozen-encoder baseline has no classifier logits and no recipe, a seed ensemble is several models)."""
    if spec.head is not None or spec.members is not None:
        kind = "a frozen-encoder baseline" if spec.head else "a seed ensemble"
        raise ConfigError(f"{option} {spec.key} is {kind}: {why}; give a fine-tuned model")
    return spec


def unreachable_error(spec: ModelSpec, endpoint: str) -> ParabenchError:
    """The one line that says how to get a Hub model's weights onto a machine without the Hub."""
    why = "HF_HUB_OFFLINE is set" if hub_offline() else f"the Hub ({endpoint}) is unreachable"
    return ParabenchError(
        f"model '{spec.key}' is not in the local Hugging Face cache and {why}: "
        f"on a machine with internet run `hf download {spec.hub_id}` and copy ~/.cache/huggingface here, "
        f"or pass a local folder with --model /path/to/{spec.source.split('/')[-1]}"
    )


# ------------------------------------------------------------------------------------- weights and loading


def resolve_weights(spec: ModelSpec, params: Params) -> Path | str:
    """Where from_pretrained should load the model from: a local folder, or the Hub id when the Hub answers.
    Tiny models are built on first use; a Hub model not cached and not reachable fails within seconds."""
    if spec.is_tiny:
        return build_tiny(spec.encoder or spec.key, spec.tiny, params)
    if spec.is_embedded:
        return embedded_path(spec.embedded_name or "")
    if spec.is_local:
        return Path(spec.source)
    assert spec.hub_id is not None
    cached = cached_snapshot(spec.hub_id)
    if cached is not None:
        return cached
    endpoint = hub_endpoint()
    if not hub_offline() and hub_reachable(endpoint, params.hub.reachability_timeout_s):
        return spec.hub_id
    raise unreachable_error(spec, endpoint)


def available_locally(spec: ModelSpec, params: Params) -> bool:
    """True when the model loads without the Hub (tiny ones need only the MiniLM tokenizer to be built)."""
    if spec.is_tiny:
        return embedded_installed("all-MiniLM-L6-v2")
    if spec.is_embedded:
        return embedded_installed(spec.embedded_name or "")
    if spec.is_local:
        return is_model_folder(Path(spec.source))
    return cached_snapshot(spec.hub_id or "") is not None


def label_names(num_labels: int) -> dict[int, str]:
    return LABELS if num_labels == len(LABELS) else {index: f"LABEL_{index}" for index in range(num_labels)}


def add_lora(model: PreTrainedModel, lora: LoraParams) -> PreTrainedModel:
    """Wrap the model with LoRA adapters as params.yaml `lora:` says (the classifier head stays trainable)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        task_type=lora.task_type,
        r=lora.r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        bias=lora.bias,
    )
    with warnings.catch_warnings():  # peft still calls transformers' deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def require_hardware(spec: ModelSpec, load_in_4bit: bool = False) -> None:
    """Refuse at once, before any download, what this machine cannot train: the large class (Llama-2-7B with
    LoRA) and 4-bit loading need a CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    if spec.size_class == "large" and not spec.is_tiny:
        raise ParabenchError(
            f"model '{spec.key}' (7B parameters) trains only on a CUDA GPU: about 24 GB of GPU memory in "
            "bf16, about 16 GB with --load-in-4bit (QLoRA); this machine has no CUDA device"
        )
    if load_in_4bit:
        raise ParabenchError(
            "--load-in-4bit (QLoRA through bitsandbytes) needs a CUDA GPU; this machine has none"
        )


def large_model_options(spec: ModelSpec, load_in_4bit: bool) -> dict[str, Any]:
    """from_pretrained options for LoRA models on CUDA: bf16 weights (fp16 on cards without bf16), and 4-bit
    NF4 quantization (QLoRA) when asked. Nothing on the CPU."""
    import torch

    if not (spec.lora and torch.cuda.is_available()):
        return {}
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    options: dict[str, Any] = {"dtype": dtype}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        options["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    return options


def load_tokenizer_and_model(
    spec: ModelSpec,
    params: Params,
    num_labels: int = 2,
    weights: Path | str | None = None,
    load_in_4bit: bool = False,
) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Tokenizer and sequence-classification model (LoRA-wrapped for spec.lora) from the resolved weights.
    Pass `weights` from an earlier resolve_weights to skip resolving again. Never runs remote code;
    safetensors are preferred and .bin is used only where no safetensors file exists. LoRA models on CUDA
    load in bf16 (or 4-bit) with gradient checkpointing on, as the study trained Llama-2."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    location = weights if weights is not None else resolve_weights(spec, params)
    id2label = label_names(num_labels)
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
            model = AutoModelForSequenceClassification.from_pretrained(
                location,
                trust_remote_code=False,
                num_labels=num_labels,
                id2label=id2label,
                label2id={name: index for index, name in id2label.items()},
                ignore_mismatched_sizes=True,
                **large_model_options(spec, load_in_4bit),
            )
    except Exception as error:  # a broken folder raises OSError, ValueError, validation errors, …
        raise ParabenchError(
            f"cannot load model '{spec.key}' from {location}: {first_line(error)}"
        ) from error
    if tokenizer.pad_token is None:  # Llama ships without one: pad with eos
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if not spec.lora:
        return tokenizer, model
    if large_model_options(spec, load_in_4bit):
        if load_in_4bit:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model)
        model.gradient_checkpointing_enable()
    return tokenizer, add_lora(model, params.lora)


# transformers' stand-in for "no maximum" in a tokenizer's model_max_length (int(1e30)); anything this large
# is not a real limit.
NO_TOKENIZER_LIMIT = 10**9


def length_bounds(tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module) -> tuple[int, int]:
    """The fewest and the most tokens a pair may be truncated to for this model. The fewest: its special
    tokens and one token of each sentence (below that the tokenizer cannot truncate and silently does not).
    The most: its position table, less the padding offset where positions count from the padding index
    (RoBERTa, MPNet), and its tokenizer's declared maximum where it has one."""
    fewest = tokenizer.num_special_tokens_to_add(pair=True) + 2
    limits = [tokenizer.model_max_length] if tokenizer.model_max_length < NO_TOKENIZER_LIMIT else []
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None:
        offsets = [
            module.padding_idx + 1
            for name, module in model.named_modules()
            if name.endswith("position_embeddings") and isinstance(getattr(module, "padding_idx", None), int)
        ]
        limits.append(positions - max(offsets, default=0))
    return fewest, min(limits, default=NO_TOKENIZER_LIMIT)


def check_max_length(max_length: int, key: str, tokenizer: PreTrainedTokenizerBase, model: Any) -> None:
    """ConfigError, before any run exists, for a max_length the model cannot take (see `length_bounds`)."""
    fewest, most = length_bounds(tokenizer, model)
    if not fewest <= max_length <= most:
        raise ConfigError(
            f"--max-length {max_length} (or params.yaml train.max_length): {key} takes {fewest}..{most} "
            f"tokens per pair (at most its {most} positions; at least its "
            f"{fewest - 2} special tokens and one token of each sentence)"
        )


def fitted_length(max_length: int, tokenizer: PreTrainedTokenizerBase, model: Any) -> int:
    """The max_length a served model truncates to: the one it was trained with, within what it can take (a
    version logged before lengths were checked may carry one beyond its positions)."""
    fewest, most = length_bounds(tokenizer, model)
    return min(max(max_length, fewest), most)


def require_length_fits(spec: ModelSpec, params: Params, max_length: int) -> None:
    """check_max_length from the model's tokenizer and its structure alone (built on the meta device: no
    weights are read), for a sweep or a search to refuse a length before its parent run exists."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    location = resolve_weights(spec, params)
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
            config = AutoConfig.from_pretrained(location, trust_remote_code=False)
            with torch.device("meta"):
                model = AutoModel.from_config(config)
    except Exception as error:  # a broken folder: the training's own load names it
        raise ParabenchError(
            f"cannot load model '{spec.key}' from {location}: {first_line(error)}"
        ) from error
    check_max_length(max_length, spec.key, tokenizer, model)


def merge_lora(model: PreTrainedModel) -> PreTrainedModel:
    """A plain transformers model: LoRA adapters merged into the weights (a model without them as is)."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def count_parameters(model: torch.nn.Module) -> int:
    """Every parameter, trainable or frozen."""
    return sum(parameter.numel() for parameter in model.parameters())


def model_size_mb(model: torch.nn.Module) -> float:
    """Bytes of parameters and buffers, in MiB."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors) / 2**20


# ---------------------------------------------------------------------------------------------- listing


def zoo_table(params: Params) -> list[dict[str, Any]]:
    """One row per zoo model for `parabench models`."""
    return [
        {
            "key": spec.key,
            "family": spec.family,
            "size_class": spec.size_class,
            "recipe": f"frozen + {spec.head}"
            if spec.head
            else (spec.recipe or params.train.recipe) + (" + LoRA" if spec.lora else ""),
            "source": spec.source,
            "paper_test_accuracy": spec.paper.get("test_accuracy"),
            "available": "yes" if available_locally(spec, params) else "no",
        }
        for spec in load_zoo().values()
    ]


def cell(value: Any) -> str:
    """A table cell: '-' for None, two decimals for numbers as the study prints them."""
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rows as aligned text columns."""
    headers = {
        "key": "model",
        "family": "family",
        "size_class": "size",
        "recipe": "recipe",
        "source": "source",
        "paper_test_accuracy": "paper test acc",
        "available": "local",
    }
    cells = [list(headers.values())] + [[cell(row[key]) for key in headers] for row in rows]
    widths = [max(len(line[column]) for line in cells) for column in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )


def study_models() -> dict[str, tuple[str, dict[str, Any]]]:
    """The study's models in the zoo with its reported numbers: key -> (size class, numbers)."""
    return {
        key: (spec.size_class, spec.paper)
        for key, spec in load_zoo().items()
        if spec.paper and spec.paper.get("test_accuracy") is not None  # RoBERTa base: no numbers in the study
    }


def paper_numbers(model: str) -> dict[str, Any]:
    """The study's reported numbers for a zoo model (percent), empty for models outside the study."""
    try:
        return get_spec(model).paper or {}
    except ParabenchError:
        return {}
