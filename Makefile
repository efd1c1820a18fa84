# The two commands of the README: `make run` and `make test`. Each builds its
# own virtualenv from nothing but Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench clean

$(STAMP): pyproject.toml setup.py src/shale/_tuple_accel.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

# `make run` serves shale.db (SQLite, in this directory) on loopback port 7480
# until Ctrl-C, with a token generated once into .shale-token (mode 0600).
# The URL is explicit so that a SHALE_URL naming a server is not served.
SERVE_URL := sqlite:///shale.db
TOKEN_FILE := .shale-token

$(TOKEN_FILE): | $(STAMP)
	$(BIN)/python -c 'import os, secrets; fd = os.open("$@", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600); os.write(fd, (secrets.token_urlsafe(32) + "\n").encode())'

run: $(STAMP) $(TOKEN_FILE)
	@echo "Serving $(SERVE_URL) on shale://127.0.0.1:7480 until Ctrl-C. In another terminal:"
	@echo "  SHALE_TOKEN=\$$(cat $(TOKEN_FILE)) $(BIN)/python examples/consumer.py"
	@echo "  SHALE_TOKEN=\$$(cat $(TOKEN_FILE)) $(BIN)/python examples/producer.py"
	@echo "or, from Python: shale.open(\"shale://127.0.0.1:7480\", token=<the contents of $(TOKEN_FILE)>)"
	exec $(BIN)/shale serve $(SERVE_URL) --token-file $(TOKEN_FILE) --port 7480

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) build src/*.egg-info src/shale/*.so .pytest_cache .mypy_cache .ruff_cache
