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
export RAY_USAGE_STATS_ENABLED := 0
# dvc stages call `kedro`: put the venv first on PATH for everything make runs
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test venv viz mlflow-ui reproduce clean-data help

help:
	@echo "make demo    set up .venv and run the whole pipeline with dvc repro (PROFILE=smoke|default|gpu)"
	@echo "make test    set up .venv and run the test suite"
	@echo "make viz     serve kedro viz on 127.0.0.1:4141"
	@echo "make mlflow-ui  serve mlflow ui on 127.0.0.1:5000 over mlflow.db"
	@echo "make reproduce RUN=<id>  rerun a recorded run (e.g. an RLHF round) and check its models bit for bit"
	@echo "$(BIN)/llama2-pipeline plan|examples|viz-build   GPU plan, bring-your-own-data examples, offline kedro viz site"

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
	@echo "  data/08_reporting/report.html         the report (one self-contained page; report.md alongside)"
	@echo "  make mlflow-ui                        MLflow on http://127.0.0.1:5000: runs, params, metrics, lineage"
	@echo "  make viz                              kedro viz on http://127.0.0.1:4141: the pipelines"
	@echo "  $(BIN)/dvc metrics show               headline metrics"

# tests/test_ui.py opens kedro viz in a headless Chromium: install the Debian package when it is
# missing (root or passwordless sudo); otherwise warn, and that test fails saying chromium is missing.
test: venv
	@found=; for b in $${CHROMIUM:-chromium} chromium chromium-browser google-chrome google-chrome-stable; do \
	  command -v "$$b" >/dev/null 2>&1 && found=$$b && break; done; \
	if [ -z "$$found" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
	  if [ "$$SUDO" = none ] || ! command -v apt-get >/dev/null 2>&1; then \
	    echo "WARNING: chromium is missing and cannot be installed here (needs apt-get and root or passwordless sudo);" >&2; \
	    echo "WARNING: run 'sudo apt-get install chromium' (or set CHROMIUM=/path/to/chrome): tests/test_ui.py fails without it" >&2; \
	  else \
	    echo "installing chromium (Debian package) for tests/test_ui.py"; \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
	      || { $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
	      || echo "WARNING: apt-get could not install chromium: tests/test_ui.py fails without it" >&2; \
	  fi; \
	fi
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# kedro viz on http://127.0.0.1:$(VIZ_PORT) (make viz VIZ_PORT=4242 for another port)
viz: VIZ_PORT ?= 4141
viz: venv
	$(BIN)/kedro viz run --host 127.0.0.1 --port $(VIZ_PORT) --no-browser

# mlflow ui on http://127.0.0.1:$(MLFLOW_PORT) over the project's store (mlflow.db); tests/test_ui.py
# runs this very command. MLflow's job runner (GenAI judge jobs, 7 more processes) is not needed to browse runs.
mlflow-ui: MLFLOW_PORT ?= 5000
mlflow-ui: MLFLOW_UI_ARGS ?=
mlflow-ui: venv
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT) $(MLFLOW_UI_ARGS)

reproduce: venv  # make reproduce RUN=<mlflow run id>
	@test -n "$(RUN)" || { echo "usage: make reproduce RUN=<mlflow run id>"; exit 2; }
	$(BIN)/python -m llama2_pipeline.commands.reproduce $(RUN)
