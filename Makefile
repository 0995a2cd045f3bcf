# Two entry points, as the README says: `make run` (the whole pipeline on the toy domains) and `make test`.
# Both create the virtual environment .venv on first use (Python 3.10+; torch 2.14.1 from the package index), with
# the test tools and the optional extras the suite covers (SegFormer, mmsegmentation interop).
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)

.PHONY: setup run test bench clean-data

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,segformer,interop]'
	touch $@

setup: $(VENV)/.installed

run: setup  ## the main job: toy data -> DDPM -> g_0 -> N PTL domains -> export, then the metrics
	dvc repro
	dvc metrics show

test: setup  ## the test suite (what CI runs), on two worker processes (pytest-xdist): under 5 minutes on 2 cores
	python -m pytest -q -n 2

bench: setup  ## benchmarks (print what they measure; not part of the tests)
	python bench/bench_guidance.py --threads 1
	python bench/bench_domain.py --threads 1
	python bench/bench_export.py
	python bench/bench_dvc.py

clean-data:  ## remove every pipeline output (DVC's cache stays)
	rm -rf data/toy data/diffusion data/g0 data/domains data/export data/source_pairs.json metrics
