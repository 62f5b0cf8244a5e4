"""`parabench data prepare`: build the GLUE MRPC splits from the raw files as parquet, and load them back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from parabench.common.files import atomic_target, require_size
from parabench.config import ParabenchError, Params
from parabench.data.fetch import MAX_FILE_BYTES, require_raw_intact

if TYPE_CHECKING:
    import datasets
    import pandas as pd

SPLITS = ("train", "validation", "test")
COLUMNS = ("idx", "sentence1", "sentence2", "label")
RAW_HEADER = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")
SCHEMA = pa.schema(
    [("idx", pa.int64()), ("sentence1", pa.string()), ("sentence2", pa.string()), ("label", pa.int64())]
)


@dataclass(frozen=True)
class Pair:
    """One raw MRPC row."""

    id1: str
    id2: str
    sentence1: str
    sentence2: str
    label: int


def read_lines(path: Path) -> list[str]:
    """A raw file's lines: UTF-8 (BOM optional), LF or CRLF; quote characters are plain text."""
    if not path.is_file():
        raise ParabenchError(f"{path} not found; run `parabench data fetch`")
    data = require_size(path, MAX_FILE_BYTES, "MRPC's raw files have about 1 MB").read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ParabenchError(f"{path.name} line {line}: not valid UTF-8 ({error.reason})") from error
    return [line.removesuffix("\r") for line in text.split("\n")]


def split_fields(path: Path, number: int, line: str, expected: int) -> list[str]:
    """The tab-separated fields of one line; the wrong number of them is an error naming file and line."""
    fields = line.split("\t")
    if len(fields) != expected:
        raise ParabenchError(
            f"{path.name} line {number}: expected {expected} tab-separated fields, got {len(fields)}"
        )
    return fields


def parse_pair(path: Path, number: int, line: str) -> Pair:
    """One data line of msr_paraphrase_*.txt."""
    quality, id1, id2, sentence1, sentence2 = split_fields(path, number, line, len(RAW_HEADER))
    if quality not in ("0", "1"):
        raise ParabenchError(f"{path.name} line {number}: Quality must be 0 or 1, got {quality!r}")
    return Pair(id1.strip(), id2.strip(), sentence1, sentence2, int(quality))


def read_pairs(path: Path) -> list[Pair]:
    """All rows of msr_paraphrase_train.txt or msr_paraphrase_test.txt, in file order."""
    lines = read_lines(path)
    header = tuple(field.strip() for field in lines[0].split("\t")) if lines else ()
    if header != RAW_HEADER:
        raise ParabenchError(f"{path.name} line 1: expected the header {' | '.join(RAW_HEADER)}")
    return [parse_pair(path, number, line) for number, line in enumerate(lines[1:], start=2) if line.strip()]


def read_dev_ids(path: Path) -> set[tuple[str, str]]:
    """The (#1 ID, #2 ID) pairs of mrpc_dev_ids.tsv (no header)."""
    ids = set()
    for number, line in enumerate(read_lines(path), start=1):
        if line.strip():
            id1, id2 = split_fields(path, number, line, 2)
            ids.add((id1.strip(), id2.strip()))
    return ids


def to_table(pairs: list[Pair]) -> pa.Table:
    """Pairs as an arrow table in the GLUE schema, idx counting from 0 in file order."""
    columns = {
        "idx": list(range(len(pairs))),
        "sentence1": [pair.sentence1 for pair in pairs],
        "sentence2": [pair.sentence2 for pair in pairs],
        "label": [pair.label for pair in pairs],
    }
    return pa.table(columns, schema=SCHEMA)


def write_parquet_atomic(table: pa.Table, target: Path) -> None:
    """Write parquet to a temp file beside `target`, then replace it in one step."""
    with atomic_target(target) as temp:
        pq.write_table(table, temp)


def build_splits(params: Params) -> dict[str, list[Pair]]:
    """The GLUE split: validation = train-file rows listed in mrpc_dev_ids.tsv, train = the rest."""
    raw_dir = params.path(params.data.raw_dir)
    files = params.data.files
    train_file = read_pairs(raw_dir / files["train"])
    dev_ids = read_dev_ids(raw_dir / files["dev_ids"])
    return {
        "train": [pair for pair in train_file if (pair.id1, pair.id2) not in dev_ids],
        "validation": [pair for pair in train_file if (pair.id1, pair.id2) in dev_ids],
        "test": read_pairs(raw_dir / files["test"]),
    }


def split_paths(data_dir: Path) -> dict[str, Path]:
    """Where each split's parquet file lives in a processed-data folder."""
    return {split: Path(data_dir) / f"{split}.parquet" for split in SPLITS}


def require_glue_counts(params: Params, splits: dict[str, list[Pair]]) -> None:
    """Each split has GLUE's exact pairs and paraphrases (params.yaml validate.row_counts and positives):
    ParabenchError in one line naming the raw file a wrong count comes from."""
    files = params.data.files
    split_by_ids = f"{files['train']} (split by {files['dev_ids']})"
    for split, pairs in splits.items():
        got = (len(pairs), sum(pair.label for pair in pairs))
        expected = (params.validate.row_counts[split], params.validate.positives[split])
        if got != expected:
            raise ParabenchError(
                f"{files['test'] if split == 'test' else split_by_ids} gives {got[0]:,} {split} pairs "
                f"({got[1]:,} paraphrases); GLUE's MRPC has {expected[0]:,} ({expected[1]:,}) "
                "(params.yaml validate.row_counts and positives): run `parabench data fetch` for the "
                "official files"
            )


def prepare_splits(params: Params) -> dict[str, tuple[int, int]]:
    """Write data.processed_dir/{train,validation,test}.parquet; return split -> (rows, paraphrases). Raw
    files that do not parse (named by file and line), do not match their SHA-256, or do not give GLUE's
    counts are refused in one line before anything is written."""
    splits = build_splits(params)
    require_raw_intact(params)
    require_glue_counts(params, splits)
    paths = split_paths(params.path(params.data.processed_dir))
    counts = {}
    for split, pairs in splits.items():
        write_parquet_atomic(to_table(pairs), paths[split])
        counts[split] = (len(pairs), sum(pair.label for pair in pairs))
    return counts


def existing_split_paths(data_dir: Path) -> dict[str, Path]:
    """split_paths, raising ParabenchError when one is missing."""
    paths = split_paths(data_dir)
    for path in paths.values():
        if not path.is_file():
            raise ParabenchError(f"{path} not found; run `parabench data prepare`")
    return paths


def load_frames(data_dir: Path) -> dict[str, pd.DataFrame]:
    """The three splits as pandas DataFrames."""
    import pandas as pd

    return {split: pd.read_parquet(path) for split, path in existing_split_paths(data_dir).items()}


def load_splits(data_dir: Path, cache_dir: Path | None = None) -> datasets.DatasetDict:
    """The three splits as a Hugging Face DatasetDict, read with `datasets`' parquet loader
    (cache_dir: where `datasets` keeps its arrow cache; None = its default)."""
    import datasets

    cache = str(cache_dir) if cache_dir is not None else None
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_parquet(str(path), split=split, cache_dir=cache)
            for split, path in existing_split_paths(data_dir).items()
        }
    )
