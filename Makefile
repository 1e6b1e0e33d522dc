# Funnelcast: `make run` starts the whole system on the embedded runtime, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: install run lint test test-unit bench clean

# The npm packages of the KafkaJS subscriber example and of the AsyncAPI validation, where npm is
# installed (their tests skip without node). Their own targets, not the venv's: npm installed after the
# venv (as .ci/run may do), or a changed lock file, still gets them installed.
NODE_MODULES := $(if $(shell command -v npm),examples/subscriber-node/node_modules/.package-lock.json \
	docs/tooling/node_modules/.package-lock.json)

install: $(STAMP) $(NODE_MODULES)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

# npm ci writes node_modules/.package-lock.json last
%/node_modules/.package-lock.json: %/package-lock.json
	npm ci --prefix $* --no-audit --no-fund --silent

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
