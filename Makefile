# llama2-pipeline: the two commands are `make demo` and `make test`.
# Both create .venv from nothing (python3 -m venv), install torch==2.13.0 first (on a CPU machine
# pip takes the CPU build; a bare `torch` would pull several GB of CUDA), then the project.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?=
PYTEST_ARGS ?=
TORCH_VERSION ?= 2.13.0

export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export KEDRO_DISABLE_TELEMETRY := true
export MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db
export PYTHONHASHSEED := 0
# dvc stages call `kedro`: put the venv first on PATH for everything make runs
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test venv viz mlflow-ui reproduce clean-data help

help:
	@echo "make demo    set up .venv and run the whole pipeline with dvc repro (PROFILE=smoke|default|gpu)"
	@echo "make test    set up .venv and run the test suite"
	@echo "make viz     serve kedro viz on 127.0.0.1:4141"
	@echo "make mlflow-ui  serve mlflow ui on 127.0.0.1:5000 over mlflow.db"
	@echo "make reproduce RUN=<id>  rerun a recorded run (e.g. an RLHF round) and check its models bit for bit"

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

demo: venv
	@test -d .git || (git init -q && git add -A && git -c user.name=demo -c user.email=demo@localhost commit -qm "initial")
	@if [ -n "$(PROFILE)" ]; then $(BIN)/dvc exp run --set-param profile=$(PROFILE); else $(BIN)/dvc repro; fi
	@echo ""
	@echo "Done. Next:"
	@echo "  $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000   # runs, params, metrics, lineage"
	@echo "  $(BIN)/kedro viz run --host 127.0.0.1 --port 4141                                      # the pipelines"
	@echo "  $(BIN)/dvc metrics show                                                                # headline metrics"
	@echo "  cat data/08_reporting/*.md 2>/dev/null | head -50                                      # reports"

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

viz: venv
	$(BIN)/kedro viz run --host 127.0.0.1 --port 4141 --no-browser

mlflow-ui: venv
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

reproduce: venv  # make reproduce RUN=<mlflow run id>
	@test -n "$(RUN)" || { echo "usage: make reproduce RUN=<mlflow run id>"; exit 2; }
	$(BIN)/python -m llama2_pipeline.reproduce $(RUN)
