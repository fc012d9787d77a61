# Two commands on a fresh machine:  `make run` (the main job: the retrieval capacity sweep) and
# `make test` (every test).
# Both create a project-local Python environment holding the pinned libtorch (PyPI torch 2.11.0)
# and the pinned CUDA compiler wheels, once; re-running reinstalls nothing already there.

VENV       ?= .venv
PYTHON     ?= python3
TORCH_PIN  := torch==2.11.0
NVCC_PIN   := cuda-toolkit[nvcc,crt,nvvm,cccl]==13.0.2
STAMP      := $(VENV)/.fwp-setup-torch-2.11.0-cuda-13.0.2
CARGO_FLAGS ?= --release

export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(VIRTUAL_ENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1

.PHONY: setup build test run fmt clippy clean-venv

setup: $(STAMP)

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --disable-pip-version-check "$(TORCH_PIN)" "$(NVCC_PIN)"
	touch $@

build: setup
	cargo build $(CARGO_FLAGS) --all-targets

test: setup
	cargo test $(CARGO_FLAGS)

# The main job: the retrieval experiment's quick capacity sweep (table and plot in runs/retrieval-quick/).
run: setup
	cargo run $(CARGO_FLAGS) --bin retrieval -- --preset quick

fmt:
	cargo fmt --all

clippy: setup
	cargo clippy $(CARGO_FLAGS) --all-targets -- -D warnings

clean-venv:
	rm -rf $(VENV)
