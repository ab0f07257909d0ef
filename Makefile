# The two commands of the README: `make demo` and `make test`. Each sets up .venv by itself (offline-friendly:
# torch's CPU pin is installed first when the venv has no torch, so the dependency range never pulls a CUDA build).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.bayestrex-installed

.PHONY: demo test test-slow bench lint train clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bayestrex demo --out demo-output

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) analyses/bench_kernels.py --threads 1 --out analyses/results/bench_kernels

lint: $(STAMP)
	$(VENV)/bin/ruff check .

train: $(STAMP)
	$(VENV)/bin/bayestrex train --dataset digits

clean:
	rm -rf demo-output .pytest_cache
