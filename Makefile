# Attention and Beyond: `make book` builds the static site, `make test` runs the whole suite.
# Every target creates .venv and installs requirements.txt on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_DIR := book/offline
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
CHROMIUM ?= /usr/bin/chromium
PORT ?= 8000
NBVAL := --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=900

.PHONY: help book test test-unit test-notebooks test-wheel test-site lab serve execute clean

help:
	@echo "make book     build the static site into _build/html (from the stored notebook outputs)"
	@echo "make test     run the whole test suite (unit, kernels, notebooks under nbval, wheel, site)"
	@echo "make lab      open the notebooks in JupyterLab"
	@echo "make serve    serve the built site on http://127.0.0.1:$(PORT)"
	@echo "make execute  re-run every notebook in place to refresh its stored outputs"

# --- set-up -------------------------------------------------------------------------------------
$(STAMP): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: install Python 3.10-3.13 (e.g. apt-get install python3.11 python3.11-venv), or run make PYTHON=/path/to/python3"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 13) else 1)' 2>/dev/null || { echo "error: Python 3.10-3.13 is needed and $(PYTHON) is not one: install python3.11 (with its venv module) and run make PYTHON=python3.11"; exit 1; }
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { echo "error: $(PYTHON) cannot create virtual environments: install its venv module (e.g. apt-get install python3-venv)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt
	@touch $@

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	@command -v npm >/dev/null || { echo "error: npm not found: install Node.js 18 or newer with npm (e.g. apt-get install nodejs npm); the site serves its own JavaScript from the npm registry's packages"; exit 1; }
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# --- the book -----------------------------------------------------------------------------------
book: $(STAMP) $(NODE_STAMP)
	$(BIN)/python $(NODE_DIR)/assemble.py
	$(BIN)/jupyter-book build --all .
	@echo "The book is in $(CURDIR)/_build/html (open _build/html/index.html, or run 'make serve')."

serve:
	@test -f _build/html/index.html || { echo "error: no built site: run 'make book' first"; exit 1; }
	@echo "Serving the book on http://127.0.0.1:$(PORT) (Ctrl-C to stop)"
	$(BIN)/python -m http.server $(PORT) --bind 127.0.0.1 --directory _build/html

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

execute: $(STAMP)
	$(BIN)/python book/tools/execute.py

# --- tests --------------------------------------------------------------------------------------
# Each stage prints how long it took.
define stage
	@echo "=== $(1)"; start=$$(date +%s); $(2); status=$$?; \
	echo "=== $(1): $$(( $$(date +%s) - start )) s"; exit $$status
endef

test: $(STAMP) $(NODE_STAMP)
	@test -x $(CHROMIUM) || { echo "error: $(CHROMIUM) not found: install Debian's chromium (apt-get update && apt-get install -y chromium), or set CHROMIUM=/path/to/chromium"; exit 1; }
	$(call stage,unit and kernel tests,$(BIN)/python -m pytest tests -m "not site and not wheel" -q)
	$(call stage,notebooks under strict nbval,$(BIN)/python -m pytest notebooks $(NBVAL) -q -p no:cacheprovider)
	$(call stage,wheel in a fresh virtual environment,$(BIN)/python -m pytest tests -m wheel -q)
	$(call stage,site in headless Chromium,CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest tests -m site -q)

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests -m "not site and not wheel" -q

test-notebooks: $(STAMP)
	$(BIN)/python -m pytest notebooks $(NBVAL) -q

clean:
	rm -rf _build dist build *.egg-info
