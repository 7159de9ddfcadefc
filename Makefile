# Two front doors: `make demo` and `make test`. Both build the virtualenv themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= out/demo
SEED ?= 0
TARGETS ?= 0.55 0.58 0.6 0.67
SEED_SUFFIX := $(if $(filter 0,$(SEED)),,_seed$(SEED))
LAM_HAT ?=
HAT_SUFFIX := $(if $(LAM_HAT),_hat$(LAM_HAT))

FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: venv data demo test lint bench bench-demonet clean

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

# The committed DemoNet runs: target 0.58 met the goal at seed 0; SEED=1 (or 2) TARGETS=0.58 are
# replications that did not; LAM_HAT=100 (a slower push) runs seeds 0, 1 and 2 again (copy
# out/demonet_seedN/baseline into out/demonet_seedN_hat100 to reuse the baseline). About 40
# minutes a training on a 2-core CPU (5 trainings by default). Killed? Run it again: it resumes.
bench-demonet: $(STAMP) data
	$(PY) benchmarks/otov2_demonet.py --limit-train 24000 --limit-test 5000 --epochs 8 \
		--lr 5e-3 --warmup-epochs 0 --targets $(TARGETS) $(if $(LAM_HAT),--lam-hat $(LAM_HAT)) \
		--seed $(SEED) --out out/demonet$(SEED_SUFFIX)$(HAT_SUFFIX) --reuse --resume \
		--results-name otov2_demonet_24k_lr5_warmup0$(HAT_SUFFIX)$(SEED_SUFFIX)

clean:
	rm -rf $(VENV) out
