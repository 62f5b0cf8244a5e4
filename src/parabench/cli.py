"""The `parabench` command: one subcommand per pipeline stage. No logic lives here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from parabench.config import ParabenchError, load_params

app = typer.Typer(help="Paraphrase identification benchmark: data, training, tracking, comparison, serving.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="MRPC: fetch the raw files, build the GLUE splits, validate them.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def fail(error: Exception) -> None:
    """Print a user-facing error on one line and exit non-zero."""
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(code=1)


@data_app.command("fetch")
def data_fetch(
    source: Annotated[str | None, typer.Option(help="Folder or base URL holding the three MRPC files.")] = None,
) -> None:
    """Put the raw MRPC files into data/raw, checking each SHA-256."""
    from parabench.data.fetch import fetch_raw

    try:
        for path in fetch_raw(load_params(), source):
            typer.echo(f"fetched {path}")
    except ParabenchError as error:
        fail(error)


@data_app.command("prepare")
def data_prepare() -> None:
    """Build data/processed/{train,validation,test}.parquet in the GLUE schema and split."""
    from parabench.data.prepare import prepare_splits

    try:
        for split, (rows, positives) in prepare_splits(load_params()).items():
            typer.echo(f"{split}: {rows} rows, {positives} paraphrases")
    except ParabenchError as error:
        fail(error)


@data_app.command("validate")
def data_validate(
    data_dir: Annotated[Path | None, typer.Option(help="Folder with the three parquet splits.")] = None,
) -> None:
    """Run the Great Expectations suite over the splits; non-zero exit when any expectation fails."""
    from parabench.data.validate import validate_splits

    try:
        outcome = validate_splits(load_params(), data_dir)
    except ParabenchError as error:
        fail(error)
    for failure in outcome.failures:
        typer.echo(f"FAILED {failure}", err=True)
    typer.echo(f"validation result: {outcome.result_file}")
    typer.echo(f"Data Docs: {outcome.data_docs}")
    if not outcome.success:
        typer.echo(f"error: {len(outcome.failures)} expectation(s) failed; nothing may be trained on this data",
                   err=True)
        raise typer.Exit(code=1)
    typer.echo("all expectations passed")


def main() -> None:
    """Entry point that turns any ParabenchError escaping a command into one line and exit 1."""
    try:
        app()
    except ParabenchError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
