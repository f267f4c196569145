# Quick start: `make demo` (a real ShuffleNetV2 training run on CPU) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RESULT_ROOT ?= result

.PHONY: venv demo test test-fast lint format bench bench-gpu clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[trainer,operator,dev]'
	touch $@

# A real training run on CPU: scikit-learn's handwritten digits, written out as an
# ImageFolder dataset, trained for a few epochs with ShuffleNetV2 x0.5.
demo: venv
	$(PY) -m shufflenet_trainer.demo_data data/digits
	$(VENV)/bin/shufflenet-train data/digits -a shufflenet_v2_x0_5 --image-size 64 --val-resize 64 \
		--epochs 15 -b 64 --lr 0.05 --warmup-epochs 1 -j 2 --output-dir $(RESULT_ROOT)

test: venv lint
	$(PY) -m pytest -q -ra tests

test-fast: venv
	$(PY) -m pytest -q -ra -m "not slow" tests

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: venv
	$(PY) bench/bench_shuffle.py
	$(PY) bench/bench_train_step.py
	$(PY) bench/bench_pipeline.py

# Run on a machine with a CUDA GPU: op correctness on CUDA and training throughput.
bench-gpu:
	bash bench/gpu/run.sh

clean:
	rm -rf $(VENV) build *.egg-info
