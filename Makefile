# Quick start: `make demo` (set up + run the whole pipeline on the embedded default model),
# `make test` (set up + run the test suite). Both install into .venv from requirements.lock.
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup demo test test-slow test-latest lock clean

$(VENV)/.dev: pyproject.toml requirements.lock scripts/install.sh
	bash scripts/install.sh $(VENV) dev,judge
	bash scripts/install_browser.sh $(BIN)/python || echo "no browser: the web end-to-end test cannot run here (CI installs one and fails without it)"
	touch $@

$(VENV)/.demo: $(VENV)/.dev
	bash scripts/install.sh $(VENV) demo,dev,judge
	touch $@

setup: $(VENV)/.dev

demo: $(VENV)/.demo
	$(BIN)/refusal-explorer demo

test: $(VENV)/.dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: $(VENV)/.demo
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# Drift check, not part of CI: the newest releases pyproject allows, in .venv-latest.
test-latest:
	bash scripts/test_latest.sh $(PYTEST_ARGS)

# Refresh requirements.lock from the newest releases pyproject allows (then run make test).
lock:
	bash scripts/lock.sh

clean:
	rm -rf $(VENV) .venv-latest studies
