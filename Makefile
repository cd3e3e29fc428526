# Two commands do all setup on a fresh machine (see README.md):
#   make run    install into .venv, then analyse a slide (SLIDE=..., OUT=...)
#   make test   install into .venv, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SLIDE ?= ../shared/data/wsi/cmu-1-small-region.svs
OUT ?= out
ARGS ?=

.PHONY: run test lint clean

# torch is pinned and installed first: the CPU wheel of 2.13.0, never the CUDA packages.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[gui,test]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/wsiviewer analyze $(SLIDE) --out $(OUT) $(ARGS)

test: $(BIN)/.installed
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q $(ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check wsiviewer tests benchmarks tools
	$(BIN)/lint-imports
	$(BIN)/mypy wsiviewer

clean:
	rm -rf $(VENV) build *.egg-info
