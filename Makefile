# Two front doors: `make demo` and `make test`. Both build the virtualenv themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= out/demo
SEEDS ?= 0 1 2

FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: venv data demo test lint bench bench-demonet bench-woodfisher-demonet clean

venv: $(STAMP)

# torch==2.13.0 first: pip then takes the CPU wheel on disk instead of a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[train,dev]'
	touch $(STAMP)

# Fashion-MNIST comes from Debian (dataset-fashion-mnist); nothing is downloaded at run time.
data:
	@test -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz || \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)

demo: $(STAMP) data
	bash scripts/demo.sh $(PY) $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m ruff check onnxoto trainers models benchmarks tests
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP) data
	$(PY) benchmarks/partition_scaling.py
	$(PY) benchmarks/shrink_latency.py
	$(PY) benchmarks/optimizer_overhead.py

# OTOv2's DemoNet (3x32x32) with DHSPG as OTOv2's code runs it: a baseline and a DHSPG run per
# seed in SEEDS (default 0 1 2), results in benchmarks/results/demonet_official.{json,md}. Run
# folders go to out/demonet_official; killed? Run it again: finished runs are read back and a
# killed one resumes from its last epoch. Trains on CUDA when torch sees one (40-80 minutes a
# run on 2 fast CPU cores otherwise, 2.5x that on slower ones). Tested after the last epoch
# only: a resumed run's wall time counts only the training of its earlier processes.
bench-demonet: $(STAMP) data
	$(PY) benchmarks/demonet_official.py --seeds $(SEEDS) --test-last-only --out out/demonet_official

# Structured WoodFisher on DemoNet: group OBS vs group magnitude vs DHSPG at matched MACs, and
# gradual vs one-shot group OBS; benchmarks/results/woodfisher_demonet.{json,md,png}.
bench-woodfisher-demonet: $(STAMP) data
	$(PY) benchmarks/woodfisher_demonet.py --threads 2

clean:
	rm -rf $(VENV) out
