# Two entry points: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out
# The component image (make image IMAGE=registry.example/esmm:1.0 && docker push ...).
IMAGE ?= esmm:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
# TensorFlow of the pinned tensorflow/serving image (k8s/base/serving/deployment.yaml); make serving-compat loads our export with it.
SERVING_TF_VERSION ?= 2.20.0
COMPAT_VENV := .venv-serving-compat
COMPAT_STAMP := $(COMPAT_VENV)/.installed-$(SERVING_TF_VERSION)

PEER_VENV := .peer-venv
# Test files run in this many processes (pytest-xdist), a file's tests together in one so that its module
# fixtures are built once; most tests keep one core busy, so two processes on two cores take ~0.6x the time.
TEST_WORKERS ?= 2

.PHONY: demo test test-fast bench clean image serving-compat serving-ops peer-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet --upgrade pip wheel
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/esmm demo --out $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

# Builds the component image every pipeline step runs in (needs a container engine).
image:
	docker build --tag $(IMAGE) .

$(COMPAT_STAMP):
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/pip install --quiet --upgrade pip
	$(COMPAT_VENV)/bin/pip install --quiet tensorflow-cpu==$(SERVING_TF_VERSION)
	touch $(COMPAT_STAMP)

# Trains a tiny model with this project's TensorFlow and checks that TensorFlow $(SERVING_TF_VERSION), the one the
# pinned tensorflow/serving image is built on, has every op of the export and gives the same scores.
serving-compat: $(STAMP) $(COMPAT_STAMP)
	rm -rf .serving_compat
	$(BIN)/python scripts/serving_compat.py --work .serving_compat --serving-python $(COMPAT_VENV)/bin/python

# Lists the op types TensorFlow $(SERVING_TF_VERSION) registers; tests/test_train.py checks every export against it.
serving-ops: $(COMPAT_STAMP)
	$(COMPAT_VENV)/bin/python scripts/serving_compat.py --write-ops tests/fixtures/serving_ops/tensorflow-$(SERVING_TF_VERSION).txt

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_ingest.py

# DeepCTR (the peer in benchmarks/bench_peer.py) needs Keras 2 and its own packages: a venv of its own.
peer-venv: $(PEER_VENV)/.installed

$(PEER_VENV)/.installed:
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install --quiet --upgrade pip wheel
	$(PEER_VENV)/bin/pip install --quiet -c constraints.txt 'tensorflow==2.21.0' 'tf_keras==2.21.0' 'deepctr==0.9.4'
	touch $@

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .serving_compat
