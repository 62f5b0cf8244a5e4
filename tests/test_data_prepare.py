"""`parabench data prepare`: the GLUE MRPC splits, their schema, robust raw reading, atomic writes."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from parabench.cli import app
from parabench.common.files import sha256_file
from parabench.config import ParabenchError, Params
from parabench.data.prepare import COLUMNS, SPLITS, load_frames, load_splits, prepare_splits

EXPECTED_SPLITS = {"train": (3668, 2474), "validation": (408, 279), "test": (1725, 1147)}
TRAIN, TEST, DEV_IDS = "msr_paraphrase_train.txt", "msr_paraphrase_test.txt", "mrpc_dev_ids.tsv"
BOM = b"\xef\xbb\xbf"


def install_raw(params: Params, shared: Path, edit: Callable[[str, bytes], bytes] | None = None) -> Params:
    """Copy the raw files into params' raw folder, passing each file's bytes through `edit(name, data)`;
    returns the params with data.sha256 giving the installed files' sums (prepare refuses any other)."""
    raw_dir = params.path(params.data.raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    for name in (TRAIN, TEST, DEV_IDS):
        data = (shared / name).read_bytes()
        (raw_dir / name).write_bytes(edit(name, data) if edit else data)
    sums = {name: sha256_file(raw_dir / name) for name in (TRAIN, TEST, DEV_IDS)}
    return params.model_copy(update={"data": params.data.model_copy(update={"sha256": sums})})


def edit_line(data: bytes, number: int, change: Callable[[bytes], bytes]) -> bytes:
    """Apply `change` to one line (1-based) of a file's bytes."""
    lines = data.split(b"\n")
    lines[number - 1] = change(lines[number - 1])
    return b"\n".join(lines)


def counts(frames: dict) -> dict[str, tuple[int, int]]:
    return {split: (len(frame), int(frame["label"].sum())) for split, frame in frames.items()}


def test_splits_have_the_glue_counts_and_schema(processed_dir: Path) -> None:
    frames = load_frames(processed_dir)
    assert counts(frames) == EXPECTED_SPLITS
    for split in SPLITS:
        schema = pq.read_schema(processed_dir / f"{split}.parquet")
        assert schema.names == list(COLUMNS)
        assert [str(schema.field(name).type) for name in COLUMNS] == ["int64", "string", "string", "int64"]
        assert frames[split]["idx"].tolist() == list(range(len(frames[split])))
        assert set(frames[split]["label"]) == {0, 1}


def test_splits_load_with_datasets(processed_dir: Path, tmp_path: Path) -> None:
    import datasets

    splits = load_splits(processed_dir, cache_dir=tmp_path / "hf")
    assert {split: (len(data), sum(data["label"])) for split, data in splits.items()} == EXPECTED_SPLITS
    assert list(splits["train"].features) == list(COLUMNS)
    files = {split: str(processed_dir / f"{split}.parquet") for split in SPLITS}
    loaded = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "hf2"))
    assert loaded["test"].num_rows == EXPECTED_SPLITS["test"][0]


def test_first_pair_is_read_exactly(processed_dir: Path) -> None:
    """The first train row holds `"` characters: with quoting on, a CSV reader would mangle it."""
    first = load_frames(processed_dir)["train"].iloc[0]
    assert first["sentence1"].startswith('Amrozi accused his brother , whom he called " the witness " ,')
    assert first["label"] == 1


def crlf_no_bom(name: str, data: bytes) -> bytes:
    return data.removeprefix(BOM).replace(b"\n", b"\r\n")


def quote_sentences(line: bytes) -> bytes:
    """Open both sentences with an unbalanced quote, and put a tab-free quoted run inside the second."""
    fields = line.split(b"\t")
    fields[3], fields[4] = b'"' + fields[3], b'"' + fields[4].replace(b" ", b' "" ', 1)
    return b"\t".join(fields)


def quotes_and_blank_lines(name: str, data: bytes) -> bytes:
    """Unbalanced quotes opening the sentences of some data lines, plus trailing blank lines (CRLF too)."""
    if name == DEV_IDS:
        return data + b"\r\n\n"
    for number in (2, 3, 50):
        data = edit_line(data, number, quote_sentences)
    return data + b"\n\r\n"


def mixed_line_endings(name: str, data: bytes) -> bytes:
    """Every other line ends in CRLF; the dev-ids file gains a BOM."""
    lines = data.split(b"\n")
    mixed = b"\n".join(line + b"\r" if i % 2 and line else line for i, line in enumerate(lines))
    return BOM + mixed if name == DEV_IDS else mixed


@pytest.mark.parametrize("edit", [crlf_no_bom, quotes_and_blank_lines, mixed_line_endings])
def test_raw_format_variants_give_the_same_splits(project_params: Params, shared_mrpc: Path, edit) -> None:
    params = install_raw(project_params, shared_mrpc, edit)
    assert prepare_splits(params) == EXPECTED_SPLITS
    frames = load_frames(project_params.path(project_params.data.processed_dir))
    for frame in frames.values():
        for column in ("sentence1", "sentence2"):
            assert not frame[column].str.contains("\r").any()


def test_quotes_stay_in_the_sentence(project_params: Params, shared_mrpc: Path) -> None:
    prepare_splits(install_raw(project_params, shared_mrpc, quotes_and_blank_lines))
    train = load_frames(project_params.path(project_params.data.processed_dir))["train"]
    assert train.iloc[0]["sentence1"].startswith('"Amrozi')
    assert train.iloc[0]["sentence2"].startswith('"Referring')


FIELDS = "tab-separated fields, got"


@pytest.mark.parametrize(
    ("name", "line", "change", "message"),
    [
        (TRAIN, 10, lambda line: line.replace(b"\t", b" ", 1), f"line 10: expected 5 {FIELDS} 4"),
        (TEST, 7, lambda line: line + b"\textra", f"line 7: expected 5 {FIELDS} 6"),
        (TRAIN, 5, lambda line: b"2" + line[1:], "line 5: Quality must be 0 or 1, got '2'"),
        (TEST, 3, lambda line: b"yes" + line[1:], "line 3: Quality must be 0 or 1, got 'yes'"),
        (DEV_IDS, 4, lambda line: line.replace(b"\t", b" "), f"line 4: expected 2 {FIELDS} 1"),
        (TRAIN, 1, lambda line: line.replace(b"Quality", b"Label"), "line 1: expected the header"),
        (TEST, 9, lambda line: line + b"\xff", "line 9: not valid UTF-8"),
    ],
)
def test_bad_raw_rows_are_rejected_with_file_and_line(
    project_params: Params, shared_mrpc: Path, name: str, line: int, change, message: str
) -> None:
    install_raw(project_params, shared_mrpc, lambda n, b: edit_line(b, line, change) if n == name else b)
    with pytest.raises(ParabenchError) as caught:
        prepare_splits(project_params)
    assert str(caught.value).startswith(f"{name} {message}")


def test_missing_raw_file_says_to_fetch(project_params: Params) -> None:
    with pytest.raises(ParabenchError, match=rf"{TRAIN} not found; run `parabench data fetch`"):
        prepare_splits(project_params)


def test_writes_are_atomic_and_reproducible(project_params: Params, shared_mrpc: Path) -> None:
    install_raw(project_params, shared_mrpc)
    processed = project_params.path(project_params.data.processed_dir)
    prepare_splits(project_params)
    first = {path.name: path.read_bytes() for path in processed.iterdir()}
    prepare_splits(project_params)
    assert {path.name: path.read_bytes() for path in processed.iterdir()} == first
    assert sorted(first) == sorted(f"{split}.parquet" for split in SPLITS)


def test_load_frames_names_a_missing_split(processed_dir: Path, tmp_path: Path) -> None:
    partial = Path(shutil.copytree(processed_dir, tmp_path / "partial"))
    (partial / "test.parquet").unlink()
    with pytest.raises(ParabenchError, match=r"test\.parquet not found"):
        load_frames(partial)


def test_cli_prepare(project_dir: Path, project_params: Params, shared_mrpc: Path) -> None:
    install_raw(project_params, shared_mrpc)
    result = CliRunner().invoke(app, ["data", "prepare"])
    assert result.exit_code == 0, result.output
    assert "train: 3668 rows, 2474 paraphrases" in result.output
    assert "test: 1725 rows, 1147 paraphrases" in result.output
