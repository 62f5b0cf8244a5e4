"""End to end through DVC in a fresh copy of the project: fetch -> prepare -> validate, no-op, rerun."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SPLIT_ROWS = {"train": 3668, "validation": 408, "test": 1725}

pytestmark = pytest.mark.slow


def _project_files() -> list[str]:
    """Tracked files plus untracked ones git does not ignore: what a fresh clone (with local edits) holds."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    return sorted({name for name in listed.split("\0") if name and (ROOT / name).is_file()})


@pytest.fixture
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert shutil.which("git") and (ROOT / ".git").exists(), "needs git and a git checkout of the project"
    copy = tmp_path_factory.mktemp("clone") / "parabench"
    for name in _project_files():
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    for args in (["init", "-q"], ["add", "-A"]):
        subprocess.run(["git", *args], cwd=copy, check=True, capture_output=True)
    return copy


@pytest.fixture(scope="module")
def env(shared_mrpc: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PARABENCH_MRPC_SOURCE": str(shared_mrpc),
        "PARABENCH_PARAMS": "",
        "HF_HUB_OFFLINE": "1",
        "DVC_NO_ANALYTICS": "1",
    }


def dvc(project: Path, env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        ["dvc", *args], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"dvc {' '.join(args)} failed ({result.returncode}):\n{output}"
    return output


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_repro_validate_then_noop_then_rerun_after_a_change(project: Path, env: dict[str, str]) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))

    first = dvc(project, env, "repro", "validate")
    for stage in ("fetch", "prepare", "validate"):
        assert f"Running stage '{stage}'" in first, first
    assert "Running stage 'train'" not in first
    for name, digest in params["data"]["sha256"].items():
        assert sha256(project / "data/raw" / name) == digest
    for split, rows in SPLIT_ROWS.items():
        assert (project / f"data/processed/{split}.parquet").is_file()
        assert f"{split}: {rows} rows" in first, f"prepare did not report {rows} {split} rows:\n{first}"
    result = json.loads((project / "reports/validation/result.json").read_text(encoding="utf-8"))
    assert result["success"] is True
    assert any((project / "reports/validation/gx").rglob("*.html")), "no Data Docs HTML"
    assert (project / "dvc.lock").is_file()

    second = dvc(project, env, "repro", "validate")
    assert "Running stage" not in second, second
    assert "didn't change" in second or "up to date" in second, second
    assert "up to date" in dvc(project, env, "status", "--with-deps", "validate")

    changed = project / "data/raw/msr_paraphrase_test.txt"
    published = params["data"]["sha256"]["msr_paraphrase_test.txt"]
    with changed.open("ab") as handle:
        handle.write(b"x")
    status = dvc(project, env, "status", "--with-deps", "validate")
    assert "fetch:" in status and "modified:" in status and "data/raw" in status, status
    assert "validate:" not in status, status

    # By default DVC restores fetch's outputs from its run-cache (the same command ran on the same inputs).
    third = dvc(project, env, "repro", "validate")
    assert "Stage 'fetch' is cached" in third or "Running stage 'fetch'" in third, third
    assert "Stage 'prepare' didn't change" in third, third
    assert sha256(changed) == published
    assert "up to date" in dvc(project, env, "status", "--with-deps", "validate")

    # Forced, `parabench data fetch` itself runs and puts back the file with the published sum.
    with changed.open("ab") as handle:
        handle.write(b"x")
    fourth = dvc(project, env, "repro", "--force", "--single-item", "fetch")
    assert "Running stage 'fetch'" in fourth, fourth
    assert sha256(changed) == published
    assert "up to date" in dvc(project, env, "status", "--with-deps", "validate")


def test_push_then_pull_restores_raw_data(project: Path, env: dict[str, str]) -> None:
    dvc(project, env, "repro", "validate")  # a no-op after the test above; the data to push otherwise
    remote = project.parent / "parabench-dvc-storage"
    dvc(project, env, "push")
    assert remote.is_dir() and any(remote.rglob("*")), f"nothing pushed to the default remote {remote}"

    # As on a fresh clone: no data, no DVC cache; `dvc pull` brings both back from the remote.
    for gone in ("data/raw", "data/processed", ".dvc/cache"):
        shutil.rmtree(project / gone)
    dvc(project, env, "pull", "--with-deps", "validate")
    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    for name, digest in params["data"]["sha256"].items():
        assert sha256(project / "data/raw" / name) == digest
    for split in SPLIT_ROWS:
        assert (project / f"data/processed/{split}.parquet").is_file()
    assert "up to date" in dvc(project, env, "status", "--with-deps", "validate")
