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

.PHONY: help venv assets lab test test-unit test-notebooks notebooks timings bench doctor kit test-kit test-browser site clean

help:
	@echo "make lab     set up .venv, fetch the models, open JupyterLab on notebooks/"
	@echo "make test    ruff, the unit tests, and every notebook and solution under nbval"
	@echo "make assets  fetch and cache the two pretrained models (needs the network once)"
	@echo "make notebooks  execute every notebook in place, as they are committed (outputs tidied)"
	@echo "make timings execute every notebook, print its runtime, write it into README and the title cells"
	@echo "make bench   minilora vs PEFT training steps, merged vs base inference (benchmarks/)"
	@echo "make doctor  is this machine ready? one line per check, each problem with its fix (seconds)"
	@echo "make kit     an offline kit for a USB stick in ./kit (OUT=folder); then: make lab KIT=folder"
	@echo "make test-kit    build a kit, install from it with pip --no-index, run chapter 00 there (slow)"
	@echo "make test-browser  run chapter 00 in JupyterLab in headless Chromium, save a screenshot"
	@echo "make site    render every chapter and solution with its stored outputs to static HTML in site/"

venv: $(STAMP)

$(STAMP): pyproject.toml tools/torch_index.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
	  { echo "minilora needs Python >= 3.10; run: make lab PYTHON=python3.12"; exit 1; }
	$(BIN)/python -m pip install --quiet $(PIP_FROM) --upgrade pip
	@idx="$(TORCH_INDEX)"; [ -n "$$idx" ] || [ -n "$(KIT)" ] || idx=$$(sh tools/torch_index.sh); \
	  if [ -n "$(KIT)" ]; then echo "torch: installing from the kit, $(KIT)"; \
	    $(BIN)/python -m pip install --quiet $(PIP_FROM) "torch==2.13.0"; \
	  elif [ -n "$$idx" ]; then echo "torch: installing the wheel from $$idx"; \
	    $(BIN)/python -m pip install --quiet "torch==2.13.0" --index-url "$$idx"; \
	  else echo "torch: installing from PyPI (see README 'Getting the CPU-only torch' if this is a CUDA build you do not want)"; \
	    $(BIN)/python -m pip install --quiet "torch==2.13.0"; fi
	$(BIN)/python -m pip install --quiet $(PIP_FROM) -e ".[dev]"
	@touch $(STAMP)

# The JupyterLab settings the course wants (no news pop-up), for this environment's JupyterLab only.
$(LAB_SETTINGS): jupyter/overrides.json | $(STAMP)
	@mkdir -p $(dir $@) && cp jupyter/overrides.json $@

assets: venv
	$(BIN)/python -m minilora.course.assets

lab: assets $(LAB_SETTINGS)
	$(BIN)/python -m jupyter lab notebooks/

test: assets $(LAB_SETTINGS)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest tests notebooks $(NBVAL) -q -p no:cacheprovider

test-unit: venv
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest tests -q -p no:cacheprovider

test-notebooks: assets
	$(BIN)/python -m pytest notebooks $(NBVAL) -q -p no:cacheprovider

timings: assets
	$(BIN)/python tools/run_notebooks.py --timings --write-runtimes

notebooks: assets
	$(BIN)/python tools/run_notebooks.py --write-runtimes

bench: assets
	$(BIN)/python benchmarks/bench_vs_peft.py

doctor:
	@if [ -x $(BIN)/python ]; then $(BIN)/python tools/doctor.py; else $(PYTHON) tools/doctor.py; fi

kit: assets
	$(BIN)/python tools/make_kit.py $(OUT)

test-kit: assets
	MINILORA_TEST_KIT=1 $(BIN)/python -m pytest tests/test_kit.py -q -p no:cacheprovider -rs

test-browser: assets $(LAB_SETTINGS)
	MINILORA_REQUIRE_BROWSER=1 MINILORA_SCREENSHOT=docs/jupyterlab-chapter00.png \
	  $(BIN)/python -m pytest tests/test_browser.py -q -p no:cacheprovider -rs -s

site: venv
	$(BIN)/python tools/make_site.py site --solutions

clean:
	rm -rf $(VENV) .pytest_cache
