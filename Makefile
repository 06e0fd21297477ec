# `make demo` and `make test` are the whole set-up on a fresh machine with Python 3.11+ and Node 18+:
# each creates or refreshes .venv and node_modules first (a stamp file makes that a no-op when up to date).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1

.PHONY: setup demo test synth lint bench clean

# Bytecode for the project's own modules, refreshed on every setup (~0.1 s when current): with
# PYTHONDONTWRITEBYTECODE set, as on CI machines, Python would compile them again in every CLI call, stack start and
# Lambda environment (0.2-0.4 CPU-s each). pip compiles the dependencies at install; templates are user code.
setup: $(VENV)/.stamp node_modules/.stamp
	$(BIN)/python -m compileall -q -x 'kaos/templates/' app chalicelib functions kaos cdk bench

$(VENV)/.stamp: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "pip<26.3"
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	# The SageMaker SDK's image URI catalogue, read at synth time: data only, so without its ~900 MB of dependencies.
	$(BIN)/python -m pip install -q --no-deps sagemaker-core==2.27.0
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

node_modules/.stamp: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: setup
	$(BIN)/python -m kaos.demo

test: setup
	$(BIN)/python -m pytest -n 2 --timeout 600 tests

synth: setup
	$(BIN)/python -m cdk.check

# tests/ is not under mypy: collecting them is what catches a test importing a name another module dropped.
lint: setup
	$(BIN)/ruff check app chalicelib functions cdk kaos tests bench
	$(BIN)/mypy --strict chalicelib functions cdk app/app.py kaos bench --exclude 'kaos/templates/'
	$(BIN)/python -m pytest --collect-only -q tests > /dev/null

bench: setup
	$(BIN)/python -m bench.cold_imports
	$(BIN)/python -m bench.submit
	$(BIN)/python -m bench.datums
	$(BIN)/python -m bench.lineage
	$(BIN)/python -m bench.bundle_commit
	$(BIN)/python -m bench.trace_job
	$(BIN)/python -m bench.environments
	$(BIN)/python -m bench.serving
	$(BIN)/python -m bench.grid_fit
	$(BIN)/python -m bench.stack_footprint
	$(BIN)/python -m bench.state_start
	$(BIN)/python -m bench.emulator_requests

clean:
	rm -rf $(VENV) node_modules cdk.out .cache
