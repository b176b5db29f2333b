# The two commands: `make run` and `make test`. Everything else is for developers.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
RUN_STAMP := $(VENV)/.installed-run
ARGS ?=

.PHONY: run test check lint typecheck lint-proto generate check-generated bench clean install

$(BIN)/python:
	@echo ">> creating $(VENV)"
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip

# `make run` needs the runtime only; `make test` and the checks add the dev tools.
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	@echo ">> installing grpckit-shop into $(VENV)"
	@$(BIN)/python -m pip install --progress-bar off -e '.[postgres,metrics,tracing,redis,nats]'
	@touch $(RUN_STAMP)

$(STAMP): pyproject.toml | $(BIN)/python
	@echo ">> installing grpckit-shop and its dev tools into $(VENV) (the first time takes a minute)"
	@$(BIN)/python -m pip install --progress-bar off -e '.[dev]'
	@touch $(STAMP) $(RUN_STAMP)

install: $(STAMP)

run: $(RUN_STAMP)
	$(BIN)/shop up $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

typecheck: $(STAMP)
	$(BIN)/mypy

.third_party/google/type/money.proto: $(STAMP)
	@mkdir -p .third_party/google/type
	@cp "$$($(BIN)/python -c 'import google.type.money_pb2 as m, os; print(os.path.dirname(m.__file__))')/money.proto" $@

.third_party/buf/validate/validate.proto: $(STAMP) scripts/generate.py
	$(BIN)/python scripts/generate.py --export-validate-proto .third_party

lint-proto: .third_party/google/type/money.proto .third_party/buf/validate/validate.proto
	$(BIN)/buf lint
	BUF=$(BIN)/buf scripts/buf-breaking.sh

generate: $(STAMP)
	$(BIN)/python scripts/generate.py

check-generated: generate
	@git diff --exit-code --stat -- src/shop/api src/grpckit/api src/grpckit/testing/api src/buf \
	  || { echo "generated code is stale: run 'make generate' and commit the result"; exit 1; }
	@test -z "$$(git status --porcelain -- src/shop/api src/grpckit/api src/grpckit/testing/api src/buf)" \
	  || { echo "generated files are not committed: run 'make generate' and commit them"; exit 1; }

check: lint typecheck lint-proto check-generated

bench: $(STAMP)
	$(BIN)/python bench/interceptor_overhead.py
	$(BIN)/python bench/analytics_ingest.py
	$(BIN)/python bench/process_order.py
	$(BIN)/python bench/distributed.py

clean:
	rm -rf $(VENV) .shop .third_party .pytest_cache .mypy_cache .ruff_cache
