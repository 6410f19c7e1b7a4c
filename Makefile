# Quick start: `make demo` (set up + run the whole pipeline on the embedded default model),
# `make test` (set up + run the test suite). Both install into .venv as needed.
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup demo test test-slow bench clean

$(VENV)/.dev: pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV) dev
	bash scripts/install_browser.sh $(VENV) || echo "no browser: the web end-to-end test will be skipped"
	touch $@

$(VENV)/.demo: $(VENV)/.dev
	bash scripts/install.sh $(VENV) demo,dev
	touch $@

setup: $(VENV)/.dev

demo: $(VENV)/.demo
	$(BIN)/refusal-explorer demo

test: $(VENV)/.dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: $(VENV)/.demo
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) studies
