# minilora: `make lab` to learn, `make test` to check everything. Both create or reuse .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.minilora-installed
# Where torch comes from. Empty: decided by tools/torch_index.sh (the small CPU wheel on Linux
# machines without an NVIDIA GPU when download.pytorch.org is reachable, else PyPI's default).
TORCH_INDEX ?=
NBVAL  := --nbval --nbval-current-env --nbval-sanitize-with nbval_sanitize.cfg
# Offline: make lab KIT=path/to/kit installs from the kit's wheels (pip --no-index) and uses its models.
KIT    ?=
ifneq ($(strip $(KIT)),)
PIP_FROM := --no-index --find-links $(abspath $(KIT))/wheels
export MINILORA_CACHE := $(abspath $(KIT))/models
endif
OUT    ?= kit
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.json
# torch's pin, as pyproject.toml writes it ("torch==X.Y.Z"): the one place the course's pins are written.
TORCH_PIN := $(shell sed -n 's/^ *"\(torch==[^"]*\)".*/\1/p' pyproject.toml)

.PHONY: help venv assets lab test test-unit test-notebooks notebooks timings bench doctor kit test-kit test-browser site clean

# Each target's "## " comment is its line in `make help` (tests/test_project.py: every .PHONY target has one).
help: ## this list
	@awk -F ':.*## ' '/^[a-z-]+:.*## /{ printf "make %-15s %s\n", $$1, $$2 }' $(firstword $(MAKEFILE_LIST))

lab: assets $(LAB_SETTINGS) ## set up .venv, fetch the models, open JupyterLab on notebooks/
	$(BIN)/python -m jupyter lab notebooks/

test: assets $(LAB_SETTINGS) ## ruff, the unit tests, and every notebook and solution under nbval
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest tests notebooks $(NBVAL) -q -p no:cacheprovider

test-unit: venv ## ruff and the unit tests only (no notebooks)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest tests -q -p no:cacheprovider

test-notebooks: assets ## every notebook and solution under nbval only
	$(BIN)/python -m pytest notebooks $(NBVAL) -q -p no:cacheprovider

venv: $(STAMP) ## create .venv and install torch and the course into it (make lab does this first)

$(STAMP): pyproject.toml tools/torch_index.sh
	@[ -n "$(TORCH_PIN)" ] || { echo "pyproject.toml has no \"torch==...\" line in its dependencies"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
	  { echo "minilora needs Python >= 3.10; run: make lab PYTHON=python3.12"; exit 1; }
	$(BIN)/python -m pip install --quiet $(PIP_FROM) --upgrade pip
	@idx="$(TORCH_INDEX)"; [ -n "$$idx" ] || [ -n "$(KIT)" ] || idx=$$(sh tools/torch_index.sh); \
	  if [ -n "$(KIT)" ]; then echo "torch: installing from the kit, $(KIT)"; \
	    $(BIN)/python -m pip install --quiet $(PIP_FROM) "$(TORCH_PIN)"; \
	  elif [ -n "$$idx" ]; then echo "torch: installing the wheel from $$idx"; \
	    $(BIN)/python -m pip install --quiet "$(TORCH_PIN)" --index-url "$$idx"; \
	  else echo "torch: installing from PyPI (see README 'Getting the CPU-only torch' if this is a CUDA build you do not want)"; \
	    $(BIN)/python -m pip install --quiet "$(TORCH_PIN)"; fi
	$(BIN)/python -m pip install --quiet $(PIP_FROM) -e ".[dev]"
	@touch $(STAMP)

# The JupyterLab settings the course wants (no news pop-up), for this environment's JupyterLab only.
$(LAB_SETTINGS): jupyter/overrides.json | $(STAMP)
	@mkdir -p $(dir $@) && cp jupyter/overrides.json $@

assets: venv ## fetch and cache the two pretrained models (needs the network once)
	$(BIN)/python -m minilora.course.assets

notebooks: assets ## execute every notebook in place, as they are committed (outputs tidied)
	$(BIN)/python -m tools.run_notebooks --write-runtimes

timings: assets ## execute every notebook, print its runtime, write it into README and the title cells
	$(BIN)/python -m tools.run_notebooks --timings --write-runtimes

bench: assets ## minilora vs PEFT training steps, merged vs base inference (benchmarks/)
	$(BIN)/python benchmarks/bench_vs_peft.py

doctor: ## is this machine ready? one line per check, each problem with its fix (seconds)
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m tools.doctor; else $(PYTHON) -m tools.doctor; fi

kit: assets ## an offline kit for a USB stick in ./kit (OUT=folder); then: make lab KIT=folder
	$(BIN)/python -m tools.make_kit $(OUT)

test-kit: assets ## build a kit, install from it with pip --no-index, run chapter 00 there (slow)
	MINILORA_TEST_KIT=1 $(BIN)/python -m pytest tests/test_kit.py -q -p no:cacheprovider -rs

test-browser: assets $(LAB_SETTINGS) ## run chapter 00 in JupyterLab in headless Chromium, save a screenshot
	MINILORA_REQUIRE_BROWSER=1 MINILORA_SCREENSHOT=docs/jupyterlab-chapter00.png \
	  $(BIN)/python -m pytest tests/test_browser.py -q -p no:cacheprovider -rs -s

site: venv ## render every chapter and solution with its stored outputs to static HTML in site/
	$(BIN)/python -m tools.make_site site --solutions

clean: ## remove .venv (the cached models in ~/.cache/minilora stay)
	rm -rf $(VENV) .pytest_cache
