"""`parabench data fetch`: sources in order of precedence, SHA-256 checks, atomic and idempotent writes."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from parabench.cli import app
from parabench.common.files import sha256_file
from parabench.config import ParabenchError, Params
from parabench.data.fetch import SOURCE_ENV, fetch_raw

TRAIN, TEST, DEV_IDS = "msr_paraphrase_train.txt", "msr_paraphrase_test.txt", "mrpc_dev_ids.tsv"
NAMES = (TRAIN, TEST, DEV_IDS)


def copy_source(shared: Path, folder: Path, tamper: str | None = None, drop: str | None = None) -> Path:
    """A copy of the raw files, with one file changed by a byte (`tamper`) or left out (`drop`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        if name != drop:
            shutil.copyfile(shared / name, folder / name)
    if tamper:
        with (folder / tamper).open("ab") as handle:
            handle.write(b"\n")
    return folder


def raw_listing(params: Params) -> list[str]:
    """Every name in the raw folder, temp files included."""
    raw_dir = params.path(params.data.raw_dir)
    return sorted(path.name for path in raw_dir.iterdir()) if raw_dir.exists() else []


@pytest.fixture
def http_source(shared_mrpc: Path) -> Iterator[str]:
    """A local HTTP server serving ../shared/mrpc; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shared_mrpc))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def fetched_paths(params: Params, source: str | None) -> list[Path]:
    """fetch_raw's paths, every one of which must have been copied."""
    results = fetch_raw(params, source)
    assert all(copied for _, copied in results)
    return [path for path, _ in results]


def test_fetch_from_folder_checks_every_sum(project_params: Params, shared_mrpc: Path) -> None:
    paths = fetched_paths(project_params, str(shared_mrpc))
    assert [path.name for path in paths] == list(NAMES)
    for path in paths:
        assert sha256_file(path) == project_params.data.sha256[path.name]
    assert raw_listing(project_params) == sorted(NAMES)


def test_current_files_are_not_rewritten(project_params: Params, shared_mrpc: Path) -> None:
    first = {path: path.stat().st_mtime_ns for path in fetched_paths(project_params, str(shared_mrpc))}
    # Without a named source, files that already have the right sum are not looked at again.
    second = fetch_raw(project_params)
    assert {path: path.stat().st_mtime_ns for path, copied in second if not copied} == first


def test_a_named_source_is_checked_even_when_the_files_are_current(
    project_dir: Path, shared_mrpc: Path, tmp_path: Path
) -> None:
    assert CliRunner().invoke(app, ["data", "fetch", "--source", str(shared_mrpc)]).exit_code == 0
    again = CliRunner().invoke(app, ["data", "fetch", "--source", str(shared_mrpc)])
    assert again.exit_code == 0 and again.output.count("unchanged ") == 3 and "fetched" not in again.output
    missing = CliRunner().invoke(app, ["data", "fetch", "--source", str(tmp_path / "nonexistent")])
    assert missing.exit_code == 1 and "does not exist" in missing.output and "fetched" not in missing.output
    bad = copy_source(shared_mrpc, tmp_path / "bad", tamper=DEV_IDS)
    tampered = CliRunner().invoke(app, ["data", "fetch", "--source", str(bad)])
    assert tampered.exit_code == 1 and f"error: {DEV_IDS}: SHA-256 mismatch" in tampered.output


def test_a_tampered_raw_file_is_replaced(project_params: Params, shared_mrpc: Path) -> None:
    target = fetched_paths(project_params, str(shared_mrpc))[0]
    target.write_text("tampered", encoding="utf-8")
    fetch_raw(project_params, str(shared_mrpc))
    assert sha256_file(target) == project_params.data.sha256[TRAIN]


@pytest.mark.parametrize("name", NAMES)
def test_checksum_mismatch_names_the_file_and_leaves_nothing(
    project_params: Params, shared_mrpc: Path, tmp_path: Path, name: str
) -> None:
    source = copy_source(shared_mrpc, tmp_path / "bad", tamper=name)
    with pytest.raises(ParabenchError) as caught:
        fetch_raw(project_params, str(source))
    message = str(caught.value)
    assert name in message and "\n" not in message
    assert f"expected {project_params.data.sha256[name]}, got {sha256_file(source / name)}" in message
    listing = raw_listing(project_params)
    assert name not in listing
    assert not [entry for entry in listing if entry.endswith(".part")]


def test_missing_file_names_it(project_params: Params, shared_mrpc: Path, tmp_path: Path) -> None:
    source = copy_source(shared_mrpc, tmp_path / "partial", drop=DEV_IDS)
    with pytest.raises(ParabenchError, match=DEV_IDS):
        fetch_raw(project_params, str(source))
    assert DEV_IDS not in raw_listing(project_params)


def test_missing_source_folder_is_an_error(project_params: Params, tmp_path: Path) -> None:
    with pytest.raises(ParabenchError, match="does not exist"):
        fetch_raw(project_params, str(tmp_path / "nowhere"))


def test_precedence_source_over_env_over_params_over_fallback(
    make_params, shared_mrpc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every explicit source below is broken in a way that names it, so the error shows which one was used."""
    from_params = copy_source(shared_mrpc, tmp_path / "params_source", tamper=TRAIN)
    from_env = copy_source(shared_mrpc, tmp_path / "env_source", tamper=TRAIN)
    from_arg = copy_source(shared_mrpc, tmp_path / "arg_source", tamper=TRAIN)
    params = make_params(source=str(from_params))
    monkeypatch.setenv(SOURCE_ENV, str(from_env))
    with pytest.raises(ParabenchError, match=r"arg_source.*\(--source\)"):
        fetch_raw(params, str(from_arg))
    with pytest.raises(ParabenchError, match=rf"env_source.*\(\${SOURCE_ENV}\)"):
        fetch_raw(params, None)
    monkeypatch.delenv(SOURCE_ENV)
    with pytest.raises(ParabenchError, match=r"params_source.*data\.source"):
        fetch_raw(params, None)
    # Nothing given: the local fallback (../shared/mrpc) is used.
    fallback_params = make_params("fallback")
    assert all(path.is_file() for path in fetched_paths(fallback_params, None))


def test_official_urls_are_the_last_resort(make_params, http_source: str, tmp_path: Path) -> None:
    urls = {name: f"{http_source}/{name}" for name in NAMES}
    params = make_params(local_fallback=str(tmp_path / "absent"), official_urls=urls)
    paths = fetched_paths(params, None)
    assert [sha256_file(path) for path in paths] == [params.data.sha256[name] for name in NAMES]


def test_base_url_source(project_params: Params, http_source: str) -> None:
    paths = fetched_paths(project_params, http_source + "/")
    assert all(sha256_file(path) == project_params.data.sha256[path.name] for path in paths)


def test_failed_download_names_the_file(project_params: Params, http_source: str) -> None:
    with pytest.raises(ParabenchError, match=f"{TRAIN}: download from .*/missing/{TRAIN} failed"):
        fetch_raw(project_params, f"{http_source}/missing")
    assert raw_listing(project_params) == []


def test_cli_fetch_reports_a_mismatch_in_one_line(
    project_dir: Path, shared_mrpc: Path, tmp_path: Path
) -> None:
    source = copy_source(shared_mrpc, tmp_path / "bad", tamper=TEST)
    result = CliRunner().invoke(app, ["data", "fetch", "--source", str(source)])
    assert result.exit_code == 1
    assert f"error: {TEST}: SHA-256 mismatch" in result.output
    assert "Traceback" not in result.output
