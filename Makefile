# relay: the single entry point. `make run` and `make test` are all a newcomer needs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= deploy/relay.example.toml
# Development secrets for deploy/relay.example.toml; set your own in production.
export BW_CALLBACK_PASSWORD ?= change-me
export SKYCORE_TOKEN ?= dev-skycore-token
export PINGUEEN_TOKEN ?= dev-pingueen-token
export PINGPLUS_WHSEC ?= whsec_cmVsYXktZGV2LXBpbmdwbHVzLXNlY3JldC0zMmJ5dGU=
# make run KAFKA=127.0.0.1:9092 publishes to that broker; empty keeps events in the spool.
KAFKA ?=

.PHONY: help venv install run replay dead-letters test test-unit lint fmt bench docs kafka-jars clean

help:
	@echo "make run     start relay on localhost with $(CONFIG) (creates the virtualenv)"
	@echo "make test    install everything, start a throwaway Kafka, run the whole suite"
	@echo "make install the 'relay' command in $(VENV)"
	@echo "make lint    ruff + mypy --strict"
	@echo "make bench   ack-path and pipeline benchmark (see bench/)"

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv install: $(VENV)/.installed

run: $(VENV)/.installed
	RELAY_KAFKA_BOOTSTRAP_SERVERS=$(KAFKA) $(BIN)/relay serve --config $(CONFIG)

# Operator commands against the example config, e.g. make replay ARGS="--dry-run".
replay: $(VENV)/.installed
	RELAY_KAFKA_BOOTSTRAP_SERVERS=$(KAFKA) $(BIN)/relay replay --config $(CONFIG) $(ARGS)

dead-letters: $(VENV)/.installed
	$(BIN)/relay dead-letters --config $(CONFIG) $(ARGS)

kafka-jars:
	bash tests/kafka/fetch.sh

test: $(VENV)/.installed kafka-jars
	$(BIN)/pytest -q -p no:cacheprovider

test-unit: $(VENV)/.installed
	$(BIN)/pytest -q -m "not kafka"

lint: $(VENV)/.installed
	$(BIN)/ruff check relay tests bench
	$(BIN)/mypy

fmt: $(VENV)/.installed
	$(BIN)/ruff check --fix relay tests bench

bench: $(VENV)/.installed kafka-jars
	$(BIN)/python bench/ack_bench.py

docs: $(VENV)/.installed
	$(BIN)/relay status-table > docs/status-mapping.md

clean:
	rm -rf $(VENV) .cache var .pytest_cache .mypy_cache .ruff_cache
