# llama2-pipeline: the two commands are `make demo` and `make test`.
# Both create .venv from nothing (python3 -m venv), install torch==2.13.0 first (on a CPU machine
# pip takes the CPU build; a bare `torch` would pull several GB of CUDA), then the project.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?=
PYTEST_ARGS ?=
# make test: pytest-xdist processes, each running whole test files (TEST_WORKERS=0: one process)
TEST_WORKERS ?= 2
TORCH_VERSION ?= 2.13.0

export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export KEDRO_DISABLE_TELEMETRY := true
export MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db
export PYTHONHASHSEED := 0
export RAY_USAGE_STATS_ENABLED := 0
# dvc stages call `kedro`: put the venv first on PATH for everything make runs
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo baseline test venv viz mlflow-ui reproduce push pull clean-data help

help:
	@echo "make demo    set up .venv and run the whole pipeline with dvc repro (PROFILE=smoke|default|gpu), then record it as your baseline"
	@echo "make baseline  commit this machine's results (dvc.lock, metrics/) so dvc metrics diff / exp show compare your own runs"
	@echo "make test    set up .venv and run the test suite"
	@echo "make viz     serve kedro viz on 127.0.0.1:4141"
	@echo "make mlflow-ui  serve mlflow ui on 127.0.0.1:5000 over mlflow.db"
	@echo "make reproduce RUN=<id>  rerun a recorded run (e.g. an RLHF round) and check its models bit for bit"
	@echo "make reproduce MODEL=champion  the same for the run behind a registered model's alias (llama2-chat)"
	@echo "make push / make pull     DVC outputs to / from the default remote (.dvc/config; DVC_STORE=/path to move it)"
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
	@$(MAKE) --no-print-directory baseline
	@echo ""
	@echo "Done. Next:"
	@echo "  data/08_reporting/report.html         the report (one self-contained page; report.md alongside)"
	@echo "  make mlflow-ui                        MLflow on http://127.0.0.1:5000: runs, params, metrics, lineage"
	@echo "  make viz                              kedro viz on http://127.0.0.1:4141: the pipelines"
	@echo "  $(BIN)/dvc metrics show               headline metrics"
	@echo "  $(BIN)/dvc exp run --set-param sft.epochs=3 && $(BIN)/dvc metrics diff   an experiment against your baseline"

# The committed dvc.lock and metrics/ come from the author's machine, and CPU results differ between
# machines from pretraining on (README, "What is bit-identical where"): record this machine's run as
# a git commit, so that `dvc metrics diff` and `dvc exp show` compare your runs with your own
# baseline. Commits only dvc.lock, params.yaml, metrics/, DVC's ignore files and the uncached report
# outputs: never data of yours (e.g. data/01_raw/byo/).
BASELINE_PATHS := dvc.lock params.yaml metrics data/params_checked.txt data/08_reporting/report.md \
	data/08_reporting/report.html data/08_reporting/report_runs.json data/08_reporting/rlhf_progress.png \
	$(wildcard data/*/.gitignore)
baseline:
	@git add -A -- $(BASELINE_PATHS)
	@if git diff --cached --quiet -- $(BASELINE_PATHS); then \
	  echo "baseline: HEAD already holds this machine's results"; \
	else \
	  git -c user.name="$$(git config user.name || echo llama2-pipeline)" \
	      -c user.email="$$(git config user.email || echo demo@localhost)" \
	      commit -q -m "Baseline: results of this machine ($$(hostname), profile $$(sed -n 's/^profile: *\([a-z0-9_]*\).*/\1/p' params.yaml))" -- $(BASELINE_PATHS) \
	  && echo "baseline: committed this machine's results ($$(git rev-parse --short HEAD)): dvc metrics diff and dvc exp show compare with them"; \
	fi

# tests/test_ui.py (kedro viz, mlflow ui) and tests/test_sharing.py (the report, the rounds in mlflow ui) open
# pages in a headless Chromium: install the Debian package when it is missing (root or passwordless sudo);
# otherwise warn, and those tests fail saying chromium is missing (they are not skipped).
test: venv
	@found=; for b in $${CHROMIUM:-chromium} chromium chromium-browser google-chrome google-chrome-stable; do \
	  command -v "$$b" >/dev/null 2>&1 && found=$$b && break; done; \
	if [ -z "$$found" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
	  if [ "$$SUDO" = none ] || ! command -v apt-get >/dev/null 2>&1; then \
	    echo "WARNING: chromium is missing and cannot be installed here (needs apt-get and root or passwordless sudo);" >&2; \
	    echo "WARNING: run 'sudo apt-get install chromium' (or set CHROMIUM=/path/to/chrome): tests/test_ui.py and tests/test_sharing.py fail without it" >&2; \
	  else \
	    echo "installing chromium (Debian package) for tests/test_ui.py and tests/test_sharing.py"; \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
	      || { $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
	      || echo "WARNING: apt-get could not install chromium: tests/test_ui.py and tests/test_sharing.py fail without it" >&2; \
	  fi; \
	fi
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# kedro viz on http://127.0.0.1:$(VIZ_PORT) (make viz VIZ_PORT=4242 for another port)
viz: VIZ_PORT ?= 4141
viz: venv
	$(BIN)/kedro viz run --host 127.0.0.1 --port $(VIZ_PORT) --no-browser

# mlflow ui on http://127.0.0.1:$(MLFLOW_PORT) over the project's store (mlflow.db); tests/test_ui.py
# runs this very command. MLflow's job runner (GenAI judge jobs, 7 more processes) is not needed to browse runs.
# First it prints the pages to open: MLflow 3 opens an experiment on its GenAI overview, these on the training
# runs, the RLHF rounds side by side and the registered models (llama2-pipeline mlflow-links).
mlflow-ui: MLFLOW_PORT ?= 5000
mlflow-ui: MLFLOW_UI_ARGS ?=
mlflow-ui: venv
	-@$(BIN)/llama2-pipeline mlflow-links --host 127.0.0.1 --port $(MLFLOW_PORT)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT) $(MLFLOW_UI_ARGS)

reproduce: venv  # make reproduce RUN=<mlflow run id>, or MODEL=<alias of llama2-chat>, e.g. MODEL=champion; REPRODUCE_ARGS=--json for a JSON report
	@test -n "$(RUN)$(MODEL)" || { echo "usage: make reproduce RUN=<mlflow run id> (or MODEL=champion)"; exit 2; }
	run="$(RUN)"; if [ -n "$(MODEL)" ]; then run=$$($(BIN)/llama2-pipeline registry --run-of $(MODEL)) || exit 2; fi; \
	$(BIN)/python -m llama2_pipeline.commands.reproduce $$run $(REPRODUCE_ARGS)

# DVC outputs to / from the default remote (`shared` in .dvc/config: ../llama2-pipeline-dvc-store beside the
# repository). DVC_STORE=/path moves it for this clone (.dvc/config.local); REMOTE=<name> picks another remote.
push pull: DVC_STORE ?=
push pull: REMOTE ?=
push pull: venv
	@if [ -n "$(DVC_STORE)" ]; then $(BIN)/dvc remote modify --local shared url "$(abspath $(DVC_STORE))"; fi
	$(BIN)/dvc $@ $(if $(REMOTE),-r $(REMOTE))
