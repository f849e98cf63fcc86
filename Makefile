# Every target that runs code depends on the venv stamp, so `make test` and
# `make nightly` each work as one command on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MANIFEST ?= jobs/nightly.toml

# Microsoft's SARIF Multitool (a self-contained binary from npm) validates our SARIF in the tests.
SARIF_TOOL := $(VENV)/tools/node_modules/@microsoft/sarif-multitool-linux/Sarif.Multitool

.PHONY: install test lint nightly plan budget limits demo bench clean sarif-tool postgres

PIP_LOG := $(VENV)/pip.log

# pip's output goes to a log, shown only when it fails: the first lines on screen are ours.
$(STAMP): setup.cfg pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing review-runner and its dependencies into $(VENV) (log: $(PIP_LOG))"
	@( $(BIN)/python -m pip install --quiet --upgrade pip \
	   && $(BIN)/python -m pip install --quiet -e '.[test]' ) > $(PIP_LOG) 2>&1 \
	   || { cat $(PIP_LOG); echo "pip install failed (log: $(PIP_LOG))"; exit 1; }
	@touch $(STAMP)

install: $(STAMP)

# npm blocks the package's postinstall (chmod u+x), so the mode is set here.
$(SARIF_TOOL):
	npm install --silent --no-save --no-audit --no-fund --prefix $(VENV)/tools @microsoft/sarif-multitool-linux@5.7.0
	chmod u+x $(SARIF_TOOL)

sarif-tool: $(SARIF_TOOL)

# The PostgreSQL tests start a throwaway server: Debian's postgresql is installed where missing.
postgres:
	@.ci/install-postgres

test: $(STAMP) $(SARIF_TOOL) postgres
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check runner ledger jobs statedb tests benchmarks
	$(BIN)/ruff format --check runner ledger jobs statedb tests benchmarks
	$(BIN)/mypy

nightly: $(STAMP)
	$(BIN)/review-runner run $(MANIFEST)

plan: $(STAMP)
	$(BIN)/review-runner plan $(MANIFEST)

budget: $(STAMP)
	$(BIN)/review-runner budget status

limits: $(STAMP)
	$(BIN)/review-runner limits status

demo: $(STAMP)
	$(BIN)/review-runner run $(MANIFEST) --simulate

# The peers: pyrate-limiter from PyPI, repomix through npx (the npm registry).
bench: $(STAMP)
	@$(BIN)/python -m pip install --quiet -e '.[test,bench]' > $(PIP_LOG) 2>&1 \
	   || { cat $(PIP_LOG); echo "pip install failed (log: $(PIP_LOG))"; exit 1; }
	for script in benchmarks/*_bench.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
