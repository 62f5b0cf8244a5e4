"""The files around the code: CI workflow, MLproject, conda.yaml, dvc.yaml, README, .ci/run, the Makefile."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from parabench.config import RunOptions

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# Every option of a run is an MLproject parameter of `main`, "auto" (= not given) by default.
MAIN_PARAMETERS = {name: ("string", "auto") for name in RunOptions.model_fields}


def _actionlint() -> str | None:
    found = VENV_BIN / "actionlint"
    return str(found) if found.is_file() else shutil.which("actionlint")


def test_workflow_passes_actionlint() -> None:
    actionlint = _actionlint()
    assert actionlint is not None, "actionlint is not installed: it comes with the dev extra (make venv)"
    result = subprocess.run(
        [actionlint, "-no-color", ".github/workflows/ci.yml"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_runs_make_test_and_checks_mrpc_sums() -> None:
    workflow = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text(encoding="utf-8"))
    # PyYAML reads the bare key `on` as True.
    triggers = workflow.get("on", workflow.get(True))
    assert {"push", "pull_request"} <= set(triggers)
    (job,) = workflow["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    setup = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/setup-python"))
    assert setup["with"]["python-version"] == "3.11"
    assert setup["with"]["cache"] == "pip"
    scripts = "\n".join(step.get("run", "") for step in job["steps"])
    assert "make test" in scripts
    assert "sha256sum -c" in scripts
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))["data"]
    for name, digest in params["sha256"].items():
        assert f"{digest}  {name}" in scripts, f"workflow does not check the published sum of {name}"
        assert params["official_urls"][name] in scripts, f"workflow does not download {name} from its address"


def test_mlproject_main_entry_point() -> None:
    from mlflow.projects._project_spec import load_project

    project = load_project(str(ROOT))
    assert project.name == "parabench"
    entry = project.get_entry_point("main")
    assert {name: (p.type, p.default) for name, p in entry.parameters.items()} == MAIN_PARAMETERS
    command = entry.compute_command({"model": "albert-base-v2", "seed": "13"}, storage_dir=None)
    assert command.startswith("parabench train ")
    assert "--model albert-base-v2" in command and "--seed 13" in command and "--recipe auto" in command
    for name in RunOptions.model_fields:
        assert f"--{name.replace('_', '-')} " in command
    assert yaml.safe_load((ROOT / "MLproject").read_text(encoding="utf-8"))["conda_env"] == "conda.yaml"


def test_conda_env_is_python_311_with_the_project() -> None:
    env = yaml.safe_load((ROOT / "conda.yaml").read_text(encoding="utf-8"))
    assert env["name"] == "parabench"
    assert env["channels"] == ["conda-forge"]
    conda_deps = [dep for dep in env["dependencies"] if isinstance(dep, str)]
    assert "python=3.11" in conda_deps and "pip" in conda_deps
    (pip_section,) = [dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict)]
    assert any(req.startswith("torch") for req in pip_section)
    assert any(re.fullmatch(r"(-e )?\.(\[[\w,]+\])?", req) for req in pip_section)


def _stage_order(stages: dict) -> dict[str, set[str]]:
    """For each stage, the stages whose outputs it depends on."""

    def paths(entries: list) -> list[str]:
        return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]

    produced = {name: paths(s.get("outs")) + paths(s.get("metrics")) for name, s in stages.items()}
    upstream: dict[str, set[str]] = {}
    for name, stage in stages.items():
        upstream[name] = {
            other
            for dep in paths(stage.get("deps"))
            for other, outs in produced.items()
            if other != name and any(dep == out or dep.startswith(out.rstrip("/") + "/") for out in outs)
        }
    return upstream


def test_dvc_stages_run_in_order() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    assert list(stages)[:4] == ["fetch", "prepare", "validate", "train"]
    upstream = _stage_order(stages)
    assert upstream["fetch"] == set()
    assert upstream["prepare"] == {"fetch"}
    assert upstream["validate"] == {"prepare"}
    assert {"prepare", "validate"} <= upstream["train"]
    assert stages["train"]["cmd"] == "parabench train --model ${train.model} --seed ${train.seed}"
    assert list(stages)[4:] == ["teacher", "sweep", "report", "promote"]
    assert {"prepare", "validate"} <= upstream["teacher"] and stages["teacher"]["outs"] == ["data/teacher"]
    assert stages["teacher"]["frozen"] is True, "a bare `dvc repro` skips it: it needs a teacher run"
    assert {"prepare", "validate"} <= upstream["sweep"]
    assert upstream["report"] == {"sweep"} and upstream["promote"] == {"sweep", "report"}


def test_dvc_dag_agrees() -> None:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    dvc = shutil.which("dvc", path=env["PATH"])
    assert dvc is not None, "dvc is not installed: make venv installs it"
    result = subprocess.run([dvc, "dag", "--dot"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    edges = set(re.findall(r'"(\w+)"\s*->\s*"(\w+)"', result.stdout))
    assert {("fetch", "prepare"), ("prepare", "validate"), ("validate", "train")} <= edges


def test_readme_starts_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("# ")
    first_block = re.search(r"```[^\n]*\n(.*?)```", readme, flags=re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert "make run" in commands and "make test" in commands


def test_make_test_builds_the_docs_strictly_from_the_locked_venv() -> None:
    make = shutil.which("make")
    assert make is not None
    dry_run = subprocess.run([make, "-n", "test"], cwd=ROOT, capture_output=True, text=True)
    assert dry_run.returncode == 0, dry_run.stderr
    lines = dry_run.stdout.splitlines()
    docs = next(i for i, line in enumerate(lines) if '/bin/mkdocs" build --strict' in line)
    tests = next(i for i, line in enumerate(lines) if "-m pytest" in line)
    assert docs < tests, "make test builds the docs (a broken link fails) before the tests"
    lock = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    assert re.search(r"^mkdocs-material==", lock, re.M) and re.search(r"^mkdocs==", lock, re.M)


def test_ci_entry_point_runs_make_test() -> None:
    script = ROOT / ".ci/run"
    assert os.access(script, os.X_OK), ".ci/run must be executable"
    text = script.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash") or text.startswith("#!/bin/bash")
    assert "set -euo pipefail" in text
    commands = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert commands[-1] == "make test"


def test_mlproject_sweep_and_tune_entry_points_give_commands_the_cli_takes() -> None:
    import shlex

    import typer
    from mlflow.projects._project_spec import load_project

    from parabench.cli import app

    project = load_project(str(ROOT))
    commands = typer.main.get_command(app).commands
    given = {
        "sweep": {"engine": "ray", "models": "tiny-bert,tiny-distilbert", "seeds": "2", "epochs": "1"},
        "tune": {"model": "tiny-bert", "trials": "4", "max_epochs": "2", "max_train_samples": "64"},
    }
    for name, values in given.items():
        entry = project.get_entry_point(name)
        command = shlex.split(entry.compute_command(values, storage_dir=None))
        assert command[:2] == ["parabench", name]
        for key, value in values.items():
            assert command[command.index(f"--{key.replace('_', '-')}") + 1] == value
        assert command[command.index("--address") + 1] == "local"  # a local Ray unless told otherwise
        context = commands[name].make_context(name, command[2:])  # every parameter is an option it takes
        assert {key: context.params[key] for key in values} == values
