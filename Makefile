# Two commands from a clean clone: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU build of torch unless a CUDA driver is present (a plain `torch` would pull a multi-GB CUDA wheel).
TORCH_SPEC ?= $(shell if command -v nvidia-smi >/dev/null 2>&1; then echo "torch"; else echo "torch==2.13.0"; fi)

.PHONY: install test lint demo bench bench-data bench-flow bench-ablation bench-motion bench-threads clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

# Test processes side by side, one per core and one torch thread each (tests/conftest.py): on small
# tensors that beats one process with a thread pool, and stays fast beside other busy processes. Tests
# are handed out two at a time, the slow ones first (tests/conftest.py).
TEST_WORKERS ?= auto

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist load --maxschedchunk 2

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

demo: $(STAMP)
	$(PY) -m s2svr_lightning +task=demo

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

bench-data: $(STAMP)
	$(PY) benchmarks/data_loading.py

bench-flow: $(STAMP)
	$(PY) benchmarks/flow_quality.py

bench-ablation: $(STAMP)
	$(PY) benchmarks/ablation.py

# how much every synthetic config moves, in LQ px per frame (about 20 s)
bench-motion: $(STAMP)
	$(PY) benchmarks/motion.py --json outputs/motion.json

bench-threads: $(STAMP)
	$(PY) benchmarks/threads.py --busy

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
