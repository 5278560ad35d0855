# The two commands: `make run` (install, data, pretrain, search) and `make test` (install, pytest).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
FMNIST_SYSTEM := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install run test data lint clean-cache

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: a bare `torch` requirement with no torch installed pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e ".[test,launchers,dev,onnx]"
	touch $@

install: $(VENV)/.installed

# Fashion-MNIST: Debian's package when we may install it (root or passwordless sudo), else the official
# download with checksums into data/fashion-mnist.
data: install
	@if [ -f $(FMNIST_SYSTEM) ]; then echo "Fashion-MNIST: $(dir $(FMNIST_SYSTEM))"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	else \
		$(BIN)/python -m amc.data fashion_mnist data/fashion-mnist; \
	fi

run: data
	$(BIN)/python -m amc.pretrain
	@if $(BIN)/python -c "import amc.train" 2>/dev/null; then $(BIN)/python -m amc.train; \
	else echo "amc.train (the search) is not built yet: stopped after pretraining."; fi

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check amc envs agents tests benchmarks experiments

clean-cache:
	rm -rf .cache/amc
