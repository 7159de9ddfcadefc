# Two front doors: `make demo` and `make test`. Both build the virtualenv themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= out/demo

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

# torch==2.13.0 first: pip then takes the CPU wheel on disk instead of a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[train,dev]'
	touch $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh $(PY) $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m ruff check onnxoto trainers models benchmarks tests
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) benchmarks/partition_scaling.py
	$(PY) benchmarks/shrink_latency.py

clean:
	rm -rf $(VENV) out
