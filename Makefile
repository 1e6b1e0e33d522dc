# Funnelcast: `make run` starts the whole system on the embedded runtime, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: install run lint test test-unit bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	if command -v npm >/dev/null; then npm ci --prefix examples/subscriber-node --no-audit --no-fund --silent; fi
	if command -v npm >/dev/null; then npm ci --prefix docs/tooling --no-audit --no-fund --silent; fi
	touch $(STAMP)

run: install
	$(VENV)/bin/funnelcast up

# ruff over everything; mypy strict over shared/ and the services' domains; bandit over the product code
# (pyproject.toml holds their settings and the reasons for each exception).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy shared $(wildcard services/*/domain.py services/*/domain services/*/*/domain.py)
	$(VENV)/bin/bandit --quiet --configfile pyproject.toml --recursive shared services

test: lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

test-unit: install
	$(VENV)/bin/pytest -q tests/unit

bench: install
	$(VENV)/bin/python -m bench.backbone

clean:
	-$(VENV)/bin/funnelcast down
	rm -rf $(VENV)
