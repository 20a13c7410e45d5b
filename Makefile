# minilora: `make lab` to learn, `make test` to check everything. Both create or reuse .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.minilora-installed
# Where torch comes from. Empty: decided by tools/torch_index.sh (the small CPU wheel on Linux
# machines without an NVIDIA GPU when download.pytorch.org is reachable, else PyPI's default).
TORCH_INDEX ?=
NBVAL  := --nbval --nbval-current-env --nbval-sanitize-with nbval_sanitize.cfg

.PHONY: help venv assets lab test test-unit test-notebooks notebooks timings bench clean

help:
	@echo "make lab     set up .venv, fetch the models, open JupyterLab on notebooks/"
	@echo "make test    ruff, the unit tests, and every notebook and solution under nbval"
	@echo "make assets  fetch and cache the two pretrained models (needs the network once)"
	@echo "make notebooks  execute every notebook in place, as they are committed (outputs tidied)"
	@echo "make timings execute every notebook, print its runtime, write it into README and the title cells"
	@echo "make bench   minilora vs PEFT training steps, merged vs base inference (benchmarks/)"

venv: $(STAMP)

$(STAMP): pyproject.toml tools/torch_index.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
	  { echo "minilora needs Python >= 3.10; run: make lab PYTHON=python3.12"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	@idx="$(TORCH_INDEX)"; [ -n "$$idx" ] || idx=$$(sh tools/torch_index.sh); \
	  if [ -n "$$idx" ]; then echo "torch: installing the wheel from $$idx"; \
	    $(BIN)/python -m pip install --quiet "torch==2.13.0" --index-url "$$idx"; \
	  else echo "torch: installing from PyPI (see README 'Getting the CPU-only torch' if this is a CUDA build you do not want)"; \
	    $(BIN)/python -m pip install --quiet "torch==2.13.0"; fi
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

assets: venv
	$(BIN)/python -m minilora.assets

lab: assets
	$(BIN)/python -m jupyter lab notebooks/

test: assets
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

clean:
	rm -rf $(VENV) .pytest_cache
